"""GPU step time of train_gpt.py on the speedrun configuration: ours (soft cap), ours unconstrained, and
the speedrun architecture, side by side in one run, on 1..N GPUs.

    python bench/step_gpu.py [--gpus=1,8] [--steps=30] [--split_steps=5] [--data_dir=DIR] [--field=value ...]
    python bench/step_gpu.py --cpu-smoke      # the same code path on the CPU with the smoke preset

For every GPU count and run it launches train_gpt.py (torchrun for more than one process) on synthetic
shards of uniformly random GPT-2 token ids (the loss means nothing; time and memory do), then reads
`step_avg` and `peak memory allocated` from the run's log. On one GPU it also splits a step in-process:
forward+backward (train_gpt's compiled loss), Muon.step, and the constraint inside Muon.step (CUDA events
around every constraints.apply call; no extra synchronisation inside the step). Extra `--field=value`
flags go to every train_gpt.py run (e.g. --batch_size=8 for one GPU doing the work of eight by
accumulation, which is the default geometry of the speedrun configuration).
On a machine without CUDA (and without --cpu-smoke) it says so in one line and exits 0.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data.shakespeare import GPT2_VOCAB  # noqa: E402
from data.shards import write_shard  # noqa: E402

RUNS = {  # label -> train_gpt.py flags
    "lipschitz/soft_cap": ["--arch=lipschitz", "--constraint=soft_cap"],
    "lipschitz/none": ["--arch=lipschitz", "--constraint=none"],
    "speedrun/none": ["--arch=speedrun", "--constraint=none"],
}
SMOKE_VOCAB = 256
STEP_RE = re.compile(r"^step:(\d+)/(\d+) .*step_avg:([\d.]+)ms")
PEAK_RE = re.compile(r"^peak memory allocated: (\d+) MiB")


def write_synthetic_shards(out_dir: str, vocab: int, train_tokens: int, val_tokens: int, seed: int = 0) -> tuple:
    """Uniformly random token ids in [0, vocab): one val and one train shard, plus meta.json. -> (train, val) globs."""
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, count in (("synthetic_val_000000.bin", val_tokens), ("synthetic_train_000001.bin", train_tokens)):
        path = os.path.join(out_dir, name)
        if not os.path.exists(path):
            write_shard(path, rng.integers(0, vocab, size=count, dtype=np.uint16))
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump({"vocab_size": vocab}, f)
    return os.path.join(out_dir, "*train*.bin"), os.path.join(out_dir, "*val*.bin")


def parse_log(path: str) -> dict:
    """The last step_avg (ms) and the peak memory (MiB, CUDA only) of a train_gpt.py log."""
    out = {"step_avg_ms": None, "peak_mib": None}
    with open(path) as f:
        for line in f:
            if m := STEP_RE.match(line):
                out["step_avg_ms"] = float(m.group(3))
            elif m := PEAK_RE.match(line):
                out["peak_mib"] = int(m.group(1))
    return out


def launch(nproc: int, flags: list[str], log_dir: str, run_id: str, env: dict) -> dict:
    """Runs train_gpt.py on nproc processes; returns parse_log of its log (raises with its stderr on failure)."""
    script = os.path.join(ROOT, "train_gpt.py")
    cmd = ([sys.executable, script] if nproc == 1 else
           [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script])
    cmd += flags + [f"--log_dir={log_dir}", f"--run_id={run_id}", f"--checkpoint_dir={log_dir}"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"train_gpt.py failed ({' '.join(cmd[1:])}):\n{done.stderr[-3000:]}")
    return parse_log(os.path.join(log_dir, f"{run_id}.txt"))


class Clock:
    """Marks on the device's timeline: CUDA events (read after one synchronize at the end) or wall time."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e

    def ms(self, a, b) -> float:
        return a.elapsed_time(b) if self.cuda else 1000 * (b - a)


def split_step(flags: list[str], steps: int, warmup: int, device: torch.device) -> dict:
    """ms per step of forward+backward, Muon.step and the constraint inside it (median over `steps`), in
    this process on `device`, through train_gpt's own make_model, make_optimizers, warm_up and train_step. The
    warm-up is the trainer's: it compiles the graphs and measures the kernel dispatch (kernels.measuring_dispatch)
    before restoring the initial state, so the timed steps run the kernels a training run runs."""
    import constraints
    import run_control as rc
    import train_gpt as tg
    from muon import Muon

    # lr schedule in range; the warm-up steps are the trainer's own, untimed
    hp = tg.Hyperparameters.from_args(flags + [f"--num_iterations={steps + 1}", f"--warmup_steps={warmup}"])
    hp.vocab_size = tg.read_vocab_size(hp.train_files, hp.vocab_size)
    ctx = tg.Context.local(hp, device)
    model = tg.make_model(hp).to(device)
    optimizers = tg.make_optimizers(model, hp)
    train = tg.TokenStream(hp.train_files, hp.vocab_size, "training")
    compiled, why = rc.compile_choice(hp, device)
    fns, _, _ = tg.warm_up(model, optimizers, train, hp, ctx, tg.model_fns(model, compiled), compiled, why,
                           say=lambda *args, **kwargs: None)
    clock = Clock(device)
    marks: dict = {}

    def timed_step(opt, name):
        inner = opt.step
        def step(*args, **kwargs):
            m = clock.mark()
            marks.setdefault("first_opt", m)
            marks.setdefault(name, []).append(m)
            out = inner(*args, **kwargs)
            marks[name].append(clock.mark())
            return out
        return step

    real_apply = constraints.apply
    def timed_apply(*args, **kwargs):
        marks.setdefault("constraint", []).append(clock.mark())
        out = real_apply(*args, **kwargs)
        marks["constraint"].append(clock.mark())
        return out

    for opt in optimizers:
        opt.step = timed_step(opt, "muon" if isinstance(opt, Muon) else "other_opt")
    rows = []
    constraints.apply = timed_apply
    try:
        for step in range(steps):
            marks.clear()
            start = clock.mark()
            tg.train_step(model, optimizers, train, hp, step, ctx, fns.loss)
            end = clock.mark()
            if device.type == "cuda":
                end.synchronize()
            pairs = lambda k: sum(clock.ms(a, b) for a, b in zip(marks.get(k, [])[::2], marks.get(k, [])[1::2]))  # noqa: E731
            rows.append(dict(total=clock.ms(start, end), fwd_bwd=clock.ms(start, marks["first_opt"]),
                             muon=pairs("muon"), constraint=pairs("constraint")))
    finally:
        constraints.apply = real_apply
    median = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    median["dtype"] = ctx.dtype
    return median


def device_name(cpu: bool) -> str:
    if cpu:
        import platform
        return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpus", default="", help="comma-separated process counts (default: 1 and all GPUs)")
    ap.add_argument("--steps", type=int, default=30, help="train_gpt.py --num_iterations of each run (0: no runs)")
    ap.add_argument("--split_steps", type=int, default=5, help="timed steps of the in-process split (0: no split)")
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {list(RUNS)}")
    ap.add_argument("--data_dir", default="", help="where the synthetic shards go (default: a temp dir)")
    ap.add_argument("--cpu-smoke", dest="cpu_smoke", action="store_true",
                    help="CPU, smoke preset, tiny vocab: exercises this script's whole path in seconds")
    args, extra = ap.parse_known_args(argv)
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("bench/step_gpu.py: no CUDA device on this machine, nothing measured (--cpu-smoke runs the same path on CPU)")
        return 0
    runs = args.runs.split(",")
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        print(f"error: --runs: unknown {unknown}; choose from {list(RUNS)}", file=sys.stderr)
        return 2
    cpu = args.cpu_smoke
    counts = [int(x) for x in args.gpus.split(",") if x] or (
        [1] if cpu else sorted({1, torch.cuda.device_count()}))
    tmp = tempfile.mkdtemp(prefix="step_gpu_")
    data_dir = args.data_dir or os.path.join(tmp, "data")
    if cpu:
        train_glob, val_glob = write_synthetic_shards(data_dir, SMOKE_VOCAB, 200_000, 20_000)
        base = ["--preset=smoke", f"--vocab_size={SMOKE_VOCAB}", "--bos_token=-1", "--val_tokens=2048",
                "--dtype=auto"]
    else:  # 2M val and 20M train tokens, as in the H100 baseline measurements
        train_glob, val_glob = write_synthetic_shards(data_dir, GPT2_VOCAB, 20_000_000, 2_000_000)
        base = [f"--vocab_size={GPT2_VOCAB}", "--val_tokens=393216"]
    steps = max(1, args.steps)
    base += [f"--train_files={train_glob}", f"--val_files={val_glob}", f"--num_iterations={steps}",
             f"--val_every={steps}", "--log_every=1"] + extra
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if cpu:
        env.setdefault("OMP_NUM_THREADS", str(max(1, torch.get_num_threads() // max(counts))))
    print(f"device: {device_name(cpu)}; torch {torch.__version__}; {args.steps} steps per run; "
          f"flags: {' '.join(base)}", flush=True)
    print(f"{'procs':>5} {'run':<20} {'ms/step':>9} {'peak MiB':>9} {'vs soft_cap':>11}   (logs: {tmp}/logs)", flush=True)
    results = {}
    for n in counts if args.steps > 0 else []:
        for label in runs:
            r = launch(n, base + RUNS[label], os.path.join(tmp, "logs"), f"{label.replace('/', '-')}-{n}", env)
            results[(n, label)] = r
            ref = results.get((n, "lipschitz/soft_cap"), {}).get("step_avg_ms")
            ratio = f"{r['step_avg_ms'] / ref:11.3f}" if ref and r["step_avg_ms"] else f"{'':11}"
            peak = "n/a" if r["peak_mib"] is None else str(r["peak_mib"])
            print(f"{n:>5} {label:<20} {r['step_avg_ms']:>9.1f} {peak:>9} {ratio}", flush=True)
    if args.split_steps <= 0:
        return 0
    device = torch.device("cpu") if cpu else torch.device("cuda", 0)
    if not cpu:
        torch.cuda.set_device(device)
    print(f"split of one step in-process (1 process, median of {args.split_steps} after 2 warm-up), ms:")
    print(f"{'run':<20} {'step':>8} {'fwd+bwd':>8} {'Muon':>8} {'constraint':>10} {'rest':>8} {'dtype':>6}")
    for label in runs:
        s = split_step(base + RUNS[label], args.split_steps, 2, device)
        rest = s["total"] - s["fwd_bwd"] - s["muon"]
        print(f"{label:<20} {s['total']:8.1f} {s['fwd_bwd']:8.1f} {s['muon']:8.1f} {s['constraint']:10.2f} "
              f"{rest:8.1f} {s['dtype']:>6}", flush=True)
        torch._dynamo.reset()  # drop this run's compiled graphs before the next
        if not cpu:
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
