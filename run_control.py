"""Run management beside the trainer: the log, checkpoints and resume, the compile, memory and step-time checks,
stop signals, and the host-sync cadence with its clock and time estimates. train_gpt.py holds the model, the
step and the loop; this module holds what a run needs around them and imports nothing of train_gpt.py (the
hyperparameters arrive as a dataclass instance, read by field name)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import torch
import torch.distributed as dist

from data.files import atomic_write, writable_dir_problem

SEPARATOR = "=" * 100  # ends each source file copied into a log, and the hardware summary (tools/runlog.py reads it)
ROOT = os.path.dirname(os.path.abspath(__file__))

# -----------------------------------------------------------------------------
# The log: the source of every project module, versions and hardware, then speedrun-format lines


def project_sources(main_file: str) -> list[str]:
    """main_file, then every project module imported so far (not tests, not site-packages)."""
    paths = [os.path.abspath(main_file)]
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if not (isinstance(f, str) and os.path.isabs(f) and f.endswith(".py") and os.path.isfile(f)):
            continue
        rel = os.path.relpath(f, ROOT)
        if rel.startswith("..") or rel.split(os.sep)[0] == "tests" or "site-packages" in rel.split(os.sep):
            continue
        if f not in paths:
            paths.append(f)
    return paths


def hardware_summary(device: torch.device) -> str:
    lines = [f"python {platform.python_version()}  torch {torch.__version__}  numpy {np.__version__}",
             f"platform {platform.platform()}  cpus {os.cpu_count()}  threads {torch.get_num_threads()}"]
    if device.type == "cuda":
        try:
            lines.append(subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=10).stdout)
        except (OSError, subprocess.SubprocessError):
            lines.append(f"cuda {torch.version.cuda}  {torch.cuda.get_device_name(device)}")
    return "\n".join(lines)


def ensure_writable_dir(path: str, flag: str) -> None:
    """Create `path` if needed and prove a file can be written there, so a bad --log_dir/--checkpoint_dir
    fails at start-up, not after the run."""
    why = writable_dir_problem(path)
    if why:
        raise ValueError(f"--{flag}={path}: {why}; pass a writable directory")


class Logger:
    """Writes <log_dir>/<run_id>.txt (rank 0 only) and echoes run lines to the console. A new run's log starts
    with the source of main_file and every project module, and the hardware; a resumed run's appends."""

    def __init__(self, hp, rank: int, world: int, device, resumed: bool, dtype: str, main_file: str):
        self.path = None
        if rank != 0:
            return
        self.path = os.path.join(hp.log_dir, f"{hp.run_id}.txt")
        with open(self.path, "a" if resumed else "w") as f:
            if not resumed:
                for src in project_sources(main_file):
                    with open(src) as code:
                        f.write(f"# {os.path.relpath(src, ROOT)}\n{code.read()}\n{SEPARATOR}\n")
                f.write(hardware_summary(device) + f"\n{SEPARATOR}\n")
            config = dict(dataclasses.asdict(hp), world_size=world, tokens_per_step=hp.batch_size * hp.seq_len,
                          dtype_used=dtype)
            f.write("config: " + json.dumps(config, sort_keys=True) + "\n")

    def __call__(self, line: str, console: bool = True, console_suffix: str = ""):
        if self.path is None:
            return
        if console:
            print(line + console_suffix, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


def log_validation(log: Logger, hp, step: int, val_loss, val_acc, stats, progress, report: dict, norms: dict):
    """A validation's lines: loss and accuracy, the certified bounds (lipschitz.bound_report), the largest
    weight norm per family, and the residual stream's largest entry and token RMS (per layer: log only)."""
    head = f"step:{step}/{hp.num_iterations}"
    log(f"{head} val_loss:{val_loss:.4f} val_acc:{val_acc:.4f} train_time:{progress.train_ms:.0f}ms "
        f"step_avg:{progress.train_ms / max(1, progress.timed_steps):.2f}ms")
    log(f"{head} lipschitz_bound_log10:{report['log10_bound']:.4f} lipschitz_bound:{report['bound']:.6g} "
        f"lipschitz_bound_tight_log10:{report['log10_bound_tight']:.4f} "
        f"lipschitz_bound_sharp_log10:{report['log10_bound_sharp']:.4f} "
        f"lipschitz_bound_paper_literal_log10:{report['log10_bound_paper_literal']:.4f}")
    log(f"{head} max_weight_norm " + " ".join(f"{k}:{v:.4f}" for k, v in norms.items()))
    if stats:
        log(f"{head} act_max_entry:{max(s[0] for s in stats):.4f} act_max_rms:{max(s[1] for s in stats):.4f}")
        log(f"{head} act_per_layer " + " ".join(f"L{i}_entry:{e:.3f} L{i}_rms:{r:.3f}"
                                                for i, (e, r) in enumerate(stats)), console=False)


def report_end(hp, world: int, log: Logger, say, summary: dict, step: int, signum: int, argv: list[str],
               ckpt_path: str, dtype: str, sample) -> dict:
    """How the run ended (complete, stopped by a signal, or at --max_steps_this_run) and how to continue it,
    with a sample() of the model's text after a complete run; -> the result dict main() returns."""
    result = dict(run_id=hp.run_id, log=log.path, checkpoint=ckpt_path, dtype=dtype, **{**summary, "step": step})
    resume_hint = f"continue with: {launch_command(argv, world)} --resume={ckpt_path}"
    if signum:
        result["stopped"] = signal.Signals(signum).name
        kept = os.path.exists(ckpt_path)
        log(f"stopped by {result['stopped']} at step {step}/{hp.num_iterations}; "
            + (f"checkpoint {ckpt_path}" if kept else "no checkpoint (no step completed)"))
        if kept:
            say(resume_hint)
    elif step < hp.num_iterations:
        log(f"stopped at step {step}/{hp.num_iterations} (--max_steps_this_run={hp.max_steps_this_run}); "
            f"checkpoint {ckpt_path}")
        say(resume_hint)
    else:
        bound = f", certified Lipschitz bound 10^{summary['log10_bound']:.2f}" if "log10_bound" in summary else ""
        say(f"run {hp.run_id} complete: step {step}/{hp.num_iterations}, val_loss {summary.get('val_loss', 0):.4f}, "
            f"val_acc {summary.get('val_acc', 0):.4f}{bound}\n  log: {log.path}\n  checkpoint: {ckpt_path}")
        if log.path is not None:  # rank 0
            say(sample())
    return result


def already_complete(saved: dict, hp, say) -> dict:
    """What main() returns, and says, for --resume of a run that has reached num_iterations: nothing to train."""
    done = saved.get("summary", {})
    say(f"--resume={hp.resume}: run {hp.run_id} is already complete (step {saved['step']}/{hp.num_iterations}"
        + (f", val_loss {done['val_loss']:.4f}" if "val_loss" in done else "") + "); nothing to train")
    return dict(run_id=hp.run_id, checkpoint=hp.resume, log=None, complete=True, **done)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def launch_command(argv: list[str], world: int) -> str:
    """The command line that ran this process, for 'continue with' hints (without any --resume)."""
    args = " ".join(a for a in argv if not a.startswith("--resume="))
    if world > 1:
        return f"torchrun --standalone --nproc_per_node={world} train_gpt.py {args}".rstrip()
    return f"python train_gpt.py {args}".rstrip()


# -----------------------------------------------------------------------------
# Processes: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; NCCL on CUDA, gloo on CPU


def setup_distributed():
    """-> (rank, world_size, device). A plain `python train_gpt.py` is world size 1, no process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=device if cuda else None)
    return rank, world, device


def all_reduce_max(values: list[float], device) -> list[float]:
    """Elementwise maxima of host numbers over the ranks of an initialised process group."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def all_reduce_sum(values: list[float], world: int, device) -> list[float]:
    """Sums of host numbers over ranks (no device round trip in a single process)."""
    if world == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# -----------------------------------------------------------------------------
# Checkpoints: written atomically (temp file, then rename), read with weights_only=True

CHECKPOINT_KEYS = ("step", "train_ms", "hp", "model", "optimizers", "rng")
# Fields older checkpoints may carry that the trainer no longer has, with the value that meant "off". The gap
# study's blocks_mass, residual_lr_decay and embed_grad_norm_max changed nothing and left; the logs of
# records/2026-11-22-shakespeare-h100/gap-screen hold the source that ran them.
RETIRED_FIELDS = {"blocks_mass": 0.0, "residual_lr_decay": 1.0, "embed_grad_norm_max": 0.0}
# Fields newer than some checkpoints, with the value that reproduces what those checkpoints trained: every block
# at one window (the old windows were token-exact: such checkpoints are refused), attention in every block,
# the lm_head in the autocast dtype, a step-0 validation.
ADDED_FIELDS = {"window_pattern": "L", "attn_skip_layers": "", "lm_head_fp8": 0, "val_at_start": 1,
                "max_step_seconds": 3600.0, "stop_grace_seconds": 60.0}
# Fields a resumed run may change: they decide how the run is managed, not what it computes.
RESUME_MAY_CHANGE = {"resume", "max_steps_this_run", "memory_check", "log_dir", "checkpoint_dir", "checkpoint_every",
                     "checkpoint_minutes", "log_every", "val_every", "compile", "warmup_steps", "micro_batch_size",
                     "val_at_start", "max_step_seconds", "stop_grace_seconds"}


def save_checkpoint(path: str, model, optimizers, hp, step: int, train_ms: float, summary: dict | None = None,
                    tokenizer: dict | None = None):
    """Rank 0's view: model, optimizer states, step (which fixes the loader position), RNG, the last
    validation's numbers (`summary`) so a finished run can report them without a model, and how its tokens
    decode (`tokenizer`) so samples need no data folder."""
    state = dict(step=step, train_ms=train_ms, hp=dataclasses.asdict(hp), model=model.state_dict(),
                 optimizers=[opt.state_dict() for opt in optimizers], rng=torch.get_rng_state(),
                 summary=dict(summary or {}), tokenizer=dict(tokenizer or {}))
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def read_checkpoint(path: str, flag: str = "") -> dict:
    """The project's one checkpoint reader: the dict save_checkpoint wrote. Anything else (missing, truncated,
    foreign) raises FileNotFoundError/ValueError with one line naming the file (as `flag=path`) and the problem."""
    name = f"{flag}={path}" if flag else path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: no such checkpoint file")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a truncated one has no directory
        raise ValueError(f"{name}: not a readable checkpoint (truncated, or not a file torch.save wrote)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{name}: not a checkpoint of train_gpt.py (it holds Python objects beyond tensors and "
                         f"plain data; it was not loaded)") from None
    except Exception:  # torch raises RuntimeError, EOFError, zipfile and OS errors for truncated or foreign files
        raise ValueError(f"{name}: not a readable checkpoint (truncated, or not a file torch.save wrote)") from None
    missing = [k for k in CHECKPOINT_KEYS if not (isinstance(state, dict) and k in state)]
    if missing:
        raise ValueError(f"{name}: not a checkpoint of train_gpt.py (it lacks {', '.join(missing)})")
    state["hp"] = current_fields(state["hp"], name)
    return state


def current_fields(saved: dict, name: str) -> dict:
    """A checkpoint's hyperparameter dict in today's fields: retired fields at their "off" value dropped, added
    fields at the value that reproduces the run. One-line ValueError for a retired field that was on."""
    saved = dict(saved)
    if "window_pattern" not in saved and saved.get("window_max", 0) > 0:
        raise ValueError(f"{name}: trained with token-exact attention windows, which this train_gpt.py counts in "
                         f"blocks of 128 now: it would train another model; start a new run")
    for key, off in RETIRED_FIELDS.items():
        if key in saved and saved.pop(key) != off:
            raise ValueError(f"{name}: trained with --{key}, which this train_gpt.py no longer has (the log of "
                             f"that run holds the source that trained it)")
    return {**ADDED_FIELDS, **saved}


def hp_from_checkpoint(cls, saved: dict, path: str):
    """cls(**saved): the Hyperparameters of a checkpoint's `hp` dict (as read_checkpoint returns it)."""
    try:
        return cls(**saved)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: its hyperparameters do not fit this train_gpt.py ({' '.join(str(e).split())})"
                         ) from None


def check_resumable(saved: dict, hp, path: str):
    """ValueError unless hp computes what the checkpoint's run computed (run-control fields may differ)."""
    diff = {k: (saved.get(k), v) for k, v in dataclasses.asdict(hp).items()
            if k not in RESUME_MAY_CHANGE and saved.get(k) != v}
    if diff:
        raise ValueError(f"--resume={path}: hyperparameters differ from the checkpoint (saved, given): {diff}; "
                         f"pass the checkpoint's values or start a new run")


def load_checkpoint(state: dict, model, optimizers) -> tuple[int, float]:
    """Restores weights, optimizer states and the RNG; -> (step, train_ms)."""
    model.load_state_dict(state["model"])
    for opt, s in zip(optimizers, state["optimizers"], strict=True):
        opt.load_state_dict(s)
    torch.set_rng_state(state["rng"])
    return state["step"], state["train_ms"]


def state_dict_mismatch(want: dict, got: dict) -> str:
    """'' when `got` has exactly the keys and shapes of `want`, else a short description of the difference."""
    if not isinstance(got, dict):
        return f"the weights are a {type(got).__name__}, not a dict of tensors"
    parts = []
    for label, names in (("missing", [k for k in want if k not in got]),
                         ("unexpected", [k for k in got if k not in want]),
                         ("wrong shape", [f"{k} {tuple(getattr(got[k], 'shape', ()))} != {tuple(want[k].shape)}"
                                          for k in want if k in got
                                          and tuple(getattr(got[k], "shape", ())) != tuple(want[k].shape)])):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            parts.append(f"{label}: {', '.join(names[:3])}{more}")
    return "; ".join(parts)


def weights_finite(model: torch.nn.Module) -> bool:
    return bool(torch.stack([p.isfinite().all() for p in model.parameters()]).all())


# -----------------------------------------------------------------------------
# Checks before step 0: compile, memory, time of one step

COMPILE_MIN_CPU_STEPS = 500  # compile="auto" on a CPU: ~1 minute of compiling buys ~15% per step (fp32, 2 cores)


def compile_choice(hp, device: torch.device) -> tuple[bool, str]:
    """(whether to torch.compile the loss and eval graphs, why, for the log). "auto" compiles on CUDA, and on a
    CPU when the run is long enough to repay the compile and inductor's C++ compiler ($CXX or g++) is there."""
    if hp.compile != "auto":
        return hp.compile == "yes", f"--compile={hp.compile}"
    if device.type == "cuda":
        return True, "auto: CUDA"
    if hp.num_iterations < COMPILE_MIN_CPU_STEPS:
        return False, f"auto: a CPU run of under {COMPILE_MIN_CPU_STEPS} steps"
    cxx = os.environ.get("CXX") or "g++"
    if shutil.which(cxx) is None:
        return False, f"auto: no C++ compiler ({cxx}) for inductor on this CPU; install g++ for ~15% faster steps"
    return True, f"auto: a CPU run of {hp.num_iterations} steps, {cxx} found"


def free_memory_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can use now: free CUDA memory, or the OS's MemAvailable (None if unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            kib = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f)}
        return 1024 * kib["MemAvailable"]
    except (OSError, KeyError, ValueError):
        return None


def check_fits(parts: dict[str, int], free: int | None, device: torch.device, shrink: str) -> None:
    """ValueError (one line: the estimate, the free memory, the largest parts, the flags in `shrink`) when the
    estimated step memory `parts` exceeds `free` bytes; nothing when it fits or free is unknown."""
    need = sum(parts.values())
    if free is None or need <= free:
        return
    gib = lambda b: f"{b / 2**30:.1f} GiB"  # noqa: E731
    biggest = ", ".join(f"{k} {gib(v)}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]) if v)
    raise ValueError(f"a training step needs about {gib(need)} on {device.type} ({biggest}) but {gib(free)} is "
                     f"free: lower {shrink}; --memory_check=0 skips this estimate")


def step_time_report(step_seconds: float, micro_seconds: float, hp, shrink: str) -> str:
    """The console line stating a step's estimated time; ValueError (one line, naming the flags in `shrink`)
    when it exceeds --max_step_seconds."""
    if hp.max_step_seconds and step_seconds > hp.max_step_seconds:
        raise ValueError(f"one training step would take about {format_duration(step_seconds)} here (over "
                         f"--max_step_seconds={hp.max_step_seconds:g}): lower {shrink}, or raise "
                         f"--max_step_seconds (0 = no limit)")
    per_step = f"{step_seconds:.3g} s" if step_seconds < 60 else format_duration(step_seconds)
    line = f"step time estimate: about {per_step} per step, from this device's measured rate"
    if micro_seconds > hp.stop_grace_seconds:
        line += (f"; one micro-batch takes about {format_duration(micro_seconds)}, longer than "
                 f"--stop_grace_seconds={hp.stop_grace_seconds:g}, so a stop may end the run without a checkpoint "
                 f"of the step under way")
    return line


# -----------------------------------------------------------------------------
# Stop signals


class StopSignals:
    """SIGINT/SIGTERM ask the loop to stop at the next micro-batch boundary, checkpoint the last completed step
    and exit cleanly (`received` holds the signal number). A watcher thread hears each signal at once, even
    while the main thread sits in a long native op (where Python handlers wait for the op to return): after
    the first (single process) it allows `grace` seconds to reach a checkpoint (`reached_checkpoint()`), then
    ends the process with one line naming the last good checkpoint; a second signal ends it at once. Under
    torchrun (world > 1) the ranks stop together at the next log step, with no grace timer, and only a second
    SIGINT ends a rank at once: a worker may get SIGTERM twice for one stop, and the second must not cost the
    checkpoint."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool, world: int = 1, grace: float = 60.0, last_good=lambda: None):
        self.received, self.announce, self.grace, self.last_good = 0, announce, grace, last_good
        self.armed = False  # before training starts there is nothing to checkpoint: a signal ends the process
        self.world, self.at_once = world, self.SIGNALS if world == 1 else (signal.SIGINT,)
        self.previous, self.heard, self.checkpointed = {}, [], threading.Event()
        self.wake = self.wakeup_fd = None

    def __enter__(self):
        try:
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread: leave the handlers alone
            self.previous = {}
            return self
        self.wake, writer = socket.socketpair()
        writer.setblocking(False)
        self.wakeup_fd = (writer, signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False))
        threading.Thread(target=self._watch, daemon=True).start()
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        if self.wakeup_fd:
            writer, old = self.wakeup_fd
            signal.set_wakeup_fd(old)
            self.checkpointed.set()
            writer.close()
            self.wake.close()

    def arm(self):
        """Training starts: from now on a stop checkpoints the last completed step."""
        self.armed = True

    def reached_checkpoint(self):
        """The loop is at a checkpoint: a stop already heard is in hand, and its grace period no longer applies."""
        if self.heard or self.received:
            self.checkpointed.set()

    def _handle(self, signum, frame):
        self.received = self.received or signum

    def _watch(self):
        while True:
            try:
                data = self.wake.recv(16)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum not in self.SIGNALS:
                    continue
                self.heard.append(signum)
                if not self.armed:
                    self._exit(signum, f"{signal.Signals(signum).name} before training started", step=False)
                elif len(self.heard) == 1:
                    where = "the next micro-batch" if self.world == 1 else "the next log step, where the ranks agree,"
                    if self.announce:
                        print(f"\n{signal.Signals(signum).name}: stopping at {where} and saving a checkpoint "
                              f"(again to abort at once, without one)", file=sys.stderr, flush=True)
                    if self.world == 1:  # ranks stop together, at a sync: one rank's timer must not end it alone
                        threading.Thread(target=self._expire, args=(signum,), daemon=True).start()
                elif signum in self.at_once:
                    self._exit(signum, "aborted by a second signal")

    def _expire(self, signum):
        if not self.checkpointed.wait(self.grace):
            self._exit(signum, f"the current micro-batch did not end within --stop_grace_seconds={self.grace:g}")

    def _exit(self, signum, why: str, step: bool = True):
        last = self.last_good()
        kept = f"the last good checkpoint is {last}" if last and os.path.exists(last) else "no checkpoint was saved"
        lost = "no checkpoint was written for the step under way" if step else "nothing was trained"
        print(f"{why}: {lost}; {kept}", file=sys.stderr, flush=True)
        end_children()  # inductor's compile workers would outlive an os._exit
        os._exit(128 + signum)


def end_children():
    """SIGKILL this process's children (Linux /proc; elsewhere nothing)."""
    me = str(os.getpid())
    for pid in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else []):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = f.read().rsplit(")", 1)[1].split()[1]
            if ppid == me:
                os.kill(int(pid), signal.SIGKILL)
        except (OSError, IndexError):
            continue


# -----------------------------------------------------------------------------
# The host-sync cadence, the training clock and time estimates

ESTIMATE_AFTER = 3  # timed steps before the console says how long the whole run will take


def validation_due(hp, step: int) -> bool:
    return (step % hp.val_every == 0 or step == hp.num_iterations) and (step > 0 or bool(hp.val_at_start))


def remaining_validations(hp, step: int, end_step: int) -> int:
    return sum(1 for s in range(step + 1, end_step + 1) if validation_due(hp, s))


def host_sync_due(hp, step: int, end_step: int, world: int, host_event: bool, start_step: int = 0) -> bool:
    """Whether the trainer waits for the device after `step`: at log, validation and checkpoint steps, the
    last step and the step of the time estimate, and (single process) when a stop signal or a timed
    checkpoint is pending. Between them the host queues steps without waiting. With several ranks, signals
    and timed checkpoints wait for the next log step, where one reduction makes every rank agree."""
    return (step % hp.log_every == 0 or step % hp.val_every == 0 or step >= end_step
            or step == start_step + ESTIMATE_AFTER
            or step == hp.num_iterations or bool(hp.checkpoint_every and step % hp.checkpoint_every == 0)
            or (world == 1 and host_event))


def remaining_seconds(train_s_per_step: float, steps_left: int, val_seconds: float, vals_left: int) -> float:
    """Time to the end: training steps at the measured training time per step, plus validations at the
    measured time of one (training and validation each on its own clock)."""
    return train_s_per_step * steps_left + val_seconds * vals_left


class Progress:
    """The loop's bookkeeping between host syncs: the training clock (validation and checkpoints excluded),
    the train losses queued on the device, the reduction that makes every rank agree on them and on stops and
    timed checkpoints, the log lines and the time estimates."""

    def __init__(self, hp, world: int, device, log, say, reduce_sum, start_step: int, end_step: int,
                 train_ms: float, clock=time.perf_counter, resumed: bool = False):
        self.hp, self.world, self.device, self.log, self.say = hp, world, device, log, say
        self.reduce_sum, self.clock = reduce_sum, clock
        self.start_step, self.end_step, self.train_ms, self.train_ms_at_start = start_step, end_step, train_ms, train_ms
        self.timed_steps = start_step  # cumulative over resumes, as train_ms is
        self.pending: list[torch.Tensor] = []
        self.synced, self.t0 = True, 0.0
        self.want_ckpt = self.stopping = False
        self.last_ckpt = time.monotonic()
        self.val_seconds: list[float] = []
        self.validated_step = start_step if resumed else -1  # a resumed run's start step was validated before

    def step_begins(self):
        if self.synced:  # the clock restarts after validation and checkpoints, which are not training time
            self.t0 = self.clock()

    def validation_due(self, step: int) -> bool:
        """A validation at `step`: due by the schedule, not done yet (a stop inside the next step comes back to
        this step), and not the start of a run that is already stopping."""
        return (validation_due(self.hp, step) and step != self.validated_step
                and not (step == self.start_step and self.stopping))

    def validated(self, step: int, seconds: float):
        self.validated_step = step
        self.val_seconds.append(seconds)

    def checkpointed(self):
        self.last_ckpt, self.want_ckpt = time.monotonic(), False

    def checkpoint_due(self, step: int, last: bool) -> bool:
        return step > self.start_step and (last or self.want_ckpt
                                           or bool(self.hp.checkpoint_every and step % self.hp.checkpoint_every == 0))

    def step_ends(self, step: int, loss: torch.Tensor, signalled: bool, rank: int, ckpt_path: str):
        """After `step` has been queued: sync with the device when due, agree with the other ranks on the
        losses, a stop and a timed checkpoint, and log."""
        self.pending.append(loss)
        self.timed_steps += 1
        hp = self.hp
        due = rank == 0 and hp.checkpoint_minutes > 0 and time.monotonic() - self.last_ckpt > 60 * hp.checkpoint_minutes
        self.synced = host_sync_due(hp, step, self.end_step, self.world, signalled or due, self.start_step)
        if self.synced:  # else the host runs ahead of the device until the next log, validation or checkpoint
            self._sync(step, signalled, due, ckpt_path)

    def abandon(self, step: int, ckpt_path: str):
        """A stop arrived inside the step after `step` (single process): log the steps queued since the last
        sync, and stop."""
        if self.pending:
            self._sync(step, True, False, ckpt_path)
        self.synced, self.stopping = True, True

    def _sync(self, step: int, signalled: bool, due: bool, ckpt_path: str):
        hp = self.hp
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.train_ms += 1000 * (self.clock() - self.t0)
        # one reduction makes every rank agree on the losses since the last sync (a NaN on any rank reaches all),
        # a stop signal and a timed checkpoint
        *loss_sums, stops, dues = self.reduce_sum(torch.stack(self.pending).float().tolist()
                                                  + [float(signalled), float(due)])
        self.pending.clear()
        losses = [x / self.world for x in loss_sums]
        self.want_ckpt, self.stopping = dues > 0, stops > 0
        bad = [i for i, x in enumerate(losses) if not math.isfinite(x)]
        if bad:
            first_bad = step - len(losses) + 1 + bad[0]
            self.log(f"step:{first_bad}/{hp.num_iterations} train_loss:{losses[bad[0]]}")
            kept = f"the last good checkpoint is {ckpt_path}" if os.path.exists(ckpt_path) else "no checkpoint was saved"
            raise FloatingPointError(f"training loss became {losses[bad[0]]} at step {first_bad}; stopping "
                                     f"({kept}). Try a smaller learning rate or a tighter --w_max")
        if step == self.start_step + ESTIMATE_AFTER and step < self.end_step:
            self.say(self.estimate_line(step))
        if step % hp.log_every == 0 or step == self.end_step:
            self.log(f"step:{step}/{hp.num_iterations} train_loss:{losses[-1]:.4f} train_time:{self.train_ms:.0f}ms "
                     f"step_avg:{self.train_ms / self.timed_steps:.2f}ms",
                     console_suffix=f" eta:{format_duration(self.eta(step))}" if step < self.end_step else "")

    def seconds_per_step(self, step: int) -> float:
        """Training time per step measured in this process (resumes start afresh)."""
        return (self.train_ms - self.train_ms_at_start) / 1000 / max(1, step - self.start_step)

    def val_estimate(self, step: int) -> float:
        """Seconds per validation: the fastest measured (the first also compiles the eval graph), else a forward
        pass over val_tokens at a third of the training time per token (forward only)."""
        if self.val_seconds:
            return min(self.val_seconds)
        return self.seconds_per_step(step) * self.hp.val_tokens / (self.hp.batch_size * self.hp.seq_len) / 3

    def eta(self, step: int) -> float:
        return remaining_seconds(self.seconds_per_step(step), self.end_step - step, self.val_estimate(step),
                                 remaining_validations(self.hp, step, self.end_step))

    def estimate_line(self, step: int) -> str:
        """The console's early answer to "how long will this take", from the first timed steps."""
        per_step, n_val = self.seconds_per_step(step), remaining_validations(self.hp, step, self.end_step)
        return (f"time estimate: {self.end_step - step} more steps at {per_step:.2f} s/step (first "
                f"{ESTIMATE_AFTER} steps) and {n_val} validations at about {self.val_estimate(step):.1f} s take "
                f"about {format_duration(self.eta(step))}")
