"""run_control.py: old checkpoints resume exactly, a stop signal takes effect between micro-batches and never
waits forever, the ETA counts training and validation on their own clocks, and steps that would take too long
are refused before step 0."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import run_control as rc
import train_gpt as tg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "smoke-resume-2026-12-05")
TINY = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Byte-level tiny-Shakespeare shards, built as the fixture's run built them."""
    from data import shakespeare
    if not os.path.exists(TINY):
        pytest.skip("../shared/data/tinyshakespeare.txt is not here")
    out = tmp_path_factory.mktemp("shards")
    shakespeare.build(input_path=TINY, out_dir=str(out))
    return out


def data_args(shards, tmp_path):
    return [f"--train_files={shards}/*train*.bin", f"--val_files={shards}/*val*.bin", f"--log_dir={tmp_path}/logs",
            f"--checkpoint_dir={tmp_path}/ckpt"]


def train_losses(log_path: str) -> dict[int, float]:
    return {int(line.split("/")[0][5:]): float(line.split("train_loss:")[1].split()[0])
            for line in open(log_path) if line.startswith("step:") and " train_loss:" in line}


def test_a_checkpoint_from_before_the_split_resumes_exactly(shards, tmp_path, one_thread):
    """The fixture: a smoke checkpoint at step 8 of 16 written by the train_gpt.py of 2026-12-05 (before run
    management moved out, and before the fields it lacks existed), and the losses that run logged at steps
    9-16 uninterrupted. Today's code resumes it and logs the same losses. Only the data and output paths are
    rewritten (they were a temp dir). 2e-4: the log keeps 4 decimals (5e-5 each way) and float32 BLAS
    rounding of another CPU moves 8 steps of a 2-layer model by far less."""
    with open(FIXTURE + ".json") as f:
        want = json.load(f)
    state = torch.load(FIXTURE + ".pt", map_location="cpu", weights_only=True)
    assert "window_pattern" not in state["hp"] and "lm_head_fp8" not in state["hp"]  # older than those fields
    args = want["args"] + data_args(shards, tmp_path)
    paths = dict(a[2:].split("=", 1) for a in data_args(shards, tmp_path))
    state["hp"].update(paths)
    ckpt = os.path.join(tmp_path, "old.pt")
    torch.save(state, ckpt)
    result = tg.main(args + ["--run_id=part", f"--resume={ckpt}"])
    got = train_losses(result["log"])
    assert sorted(got) == list(range(9, 17))
    for step, loss in want["train_loss"].items():
        assert got[int(step)] == pytest.approx(loss, abs=2e-4), step
    assert result["val_loss"] == pytest.approx(want["val_loss"], abs=1e-3)


def test_a_signal_inside_a_step_stops_at_the_next_micro_batch_and_resumes_exactly(shards, tmp_path, monkeypatch,
                                                                                  one_thread):
    """24 micro-batches per step; SIGINT arrives as the 5th micro-batch of step 4 (index 3) is drawn. The run
    trains on no more of them, drops the partial gradient, checkpoints step 3 (the last completed) and says
    how to continue; the resumed run ends with the weights of an uninterrupted one."""
    common = ["--preset=smoke", "--num_iterations=6", "--val_every=3", "--log_every=1", "--dtype=fp32",
              "--compile=no", "--batch_size=24", "--micro_batch_size=1", "--checkpoint_minutes=0",
              *data_args(shards, tmp_path)]
    full = tg.main(common + ["--run_id=full"])
    real = tg.micro_batches
    seen: list[tuple[int, int]] = []

    def signalling(stream, hp, step, ctx):
        for i, batch in enumerate(real(stream, hp, step, ctx)):
            seen.append((step, i))
            if (step, i) == (3, 4):
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    monkeypatch.setattr(tg, "micro_batches", signalling)
    part = tg.main(common + ["--run_id=part"])
    assert part["stopped"] == "SIGINT" and part["step"] == 3
    assert seen[-1] == (3, 4)  # the 5th micro-batch was drawn, never trained on
    assert rc.read_checkpoint(part["checkpoint"])["step"] == 3
    monkeypatch.setattr(tg, "micro_batches", real)
    tg.main(common + ["--run_id=part", f"--resume={part['checkpoint']}"])
    a, b = (rc.read_checkpoint(os.path.join(tmp_path, "ckpt", f"{r}.pt")) for r in ("full", "part"))
    assert a["step"] == b["step"] == 6
    for name in a["model"]:
        torch.testing.assert_close(b["model"][name], a["model"][name], rtol=0, atol=0, msg=name)


SLOW_STEP = """
import sys, time
sys.path.insert(0, {root!r})
import train_gpt as tg
real = tg.GPT.loss
def slow(self, *a):
    if self.hp.run_id == "slow" and getattr(tg, "_steps", 0) >= 4:  # 2 calls of the step-time probe, 2 steps
        print("SLOW", flush=True)
        time.sleep(120)  # one micro-batch far longer than the grace period
    tg._steps = getattr(tg, "_steps", 0) + 1
    return real(self, *a)
tg.GPT.loss = slow
tg.main(sys.argv[1:])
"""


def test_a_micro_batch_that_outlasts_the_grace_period_ends_the_process_with_one_line(shards, tmp_path):
    """After SIGTERM, a micro-batch still running when --stop_grace_seconds run out: the process ends (without
    waiting for the op) saying that no checkpoint was written and which one is the last good."""
    args = ["--preset=smoke", "--num_iterations=50", "--compile=no", "--stop_grace_seconds=2", "--run_id=slow",
            "--checkpoint_every=1", *data_args(shards, tmp_path)]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_STEP.format(root=ROOT), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    for line in proc.stdout:
        if line.startswith("SLOW"):
            break
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the process outlived its grace period")
    assert proc.returncode == 128 + signal.SIGTERM, err
    last = err.strip().splitlines()[-1]
    assert "did not end within --stop_grace_seconds=2" in last and "no checkpoint was written" in last
    assert f"the last good checkpoint is {tmp_path}/ckpt/slow.pt" in last


def test_eta_counts_training_and_validation_each_on_its_own_clock():
    """Steps of 1 s and validations of 6 s every 5 steps, 100 steps: at step 10 the ETA is within 30% of the
    true remaining time (90 s of steps + 18 validations x 6 s), with a fake clock."""
    now = [0.0]
    hp = tg.Hyperparameters.from_preset("smoke", num_iterations=100, val_every=5, log_every=1, val_tokens=8192)
    progress = rc.Progress(hp, 1, torch.device("cpu"), lambda *a, **k: None, lambda *a: None, lambda v: v,
                           0, 100, 0.0, clock=lambda: now[0])
    for step in range(10):
        if rc.validation_due(hp, step):
            now[0] += 6.0
            progress.validated(step, 6.0)
        progress.step_begins()
        now[0] += 1.0
        progress.step_ends(step + 1, torch.tensor(1.0), False, 0, "none.pt")
    truth = 90 * 1.0 + rc.remaining_validations(hp, 10, 100) * 6.0
    assert rc.remaining_validations(hp, 10, 100) == 18
    assert abs(progress.eta(10) - truth) <= 0.3 * truth


def test_a_step_over_the_time_limit_is_refused_before_step_0(shards, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tg, "make_optimizers", lambda *a: pytest.fail("got past the step-time check"))
    with pytest.raises(ValueError) as e:
        tg.main(["--preset=smoke", "--max_step_seconds=1e-9", *data_args(shards, tmp_path)])
    msg = str(e.value)
    assert "\n" not in msg and "one training step would take about" in msg
    assert "--batch_size=16 or --seq_len=64" in msg and "--max_step_seconds" in msg


def test_a_sequence_longer_than_the_val_budget_is_refused_at_once(shards, tmp_path, monkeypatch):
    """--preset=smoke --seq_len=100000: validation could not score even one sequence of its 8192-token budget."""
    monkeypatch.setattr(tg, "make_model", lambda hp: pytest.fail("built a model"))
    with pytest.raises(ValueError, match=r"^--val_tokens=8192 is less than one sequence of --seq_len=100000"):
        tg.main(["--preset=smoke", "--seq_len=100000", *data_args(shards, tmp_path)])


def test_step_time_report_warns_when_a_micro_batch_outlasts_the_grace_period():
    hp = tg.Hyperparameters.from_preset("shakespeare", batch_size=100000)
    line = rc.step_time_report(1500.0, 1.0, hp, "--batch_size=100000")
    assert line.startswith("step time estimate: about 25m00s per step") and "grace" not in line
    assert "longer than --stop_grace_seconds=60" in rc.step_time_report(1500.0, 90.0, hp, "")
    with pytest.raises(ValueError, match=r"about 1h40m here \(over --max_step_seconds=3600\): lower --batch_size"):
        rc.step_time_report(6000.0, 1.0, hp, "--batch_size=100000")


def test_old_checkpoint_fields_are_filled_with_what_reproduces_them():
    saved = {"blocks_mass": 0.0, "w_max": 2.0}
    assert rc.current_fields(saved, "x.pt") == {**rc.ADDED_FIELDS, "w_max": 2.0}
    with pytest.raises(ValueError, match="trained with --blocks_mass"):
        rc.current_fields({"blocks_mass": 0.5}, "x.pt")
    assert set(rc.ADDED_FIELDS) <= {f for f in tg.Hyperparameters.__dataclass_fields__}


def test_retired_flags_are_gone_and_old_checkpoints_with_them_off_still_load(tmp_path):
    """blocks_mass, residual_lr_decay and embed_grad_norm_max left train_gpt.py; a checkpoint that carries
    them at their "off" values loads, one trained with them on is refused in one line."""
    for flag in ("--blocks_mass=5", "--residual_lr_decay=0.5", "--embed_grad_norm_max=10"):
        with pytest.raises(ValueError, match="unknown hyperparameter " + flag.split("=")[0]):
            tg.Hyperparameters.from_args([flag])
    h = tg.Hyperparameters.from_preset("smoke", n_layer=2, n_head=2, head_dim=16, d_model=32, vocab_size=64,
                                       seq_len=16, batch_size=2, micro_batch_size=2)
    model = tg.make_model(h)
    path = str(tmp_path / "old.pt")
    rc.save_checkpoint(path, model, [], h, 0, 0.0)
    state = torch.load(path, weights_only=True)
    state["hp"].update(blocks_mass=0.0, residual_lr_decay=1.0, embed_grad_norm_max=0.0)
    torch.save(state, path)
    loaded, _ = tg.model_from_checkpoint(path)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    state["hp"]["residual_lr_decay"] = 0.5
    torch.save(state, path)
    with pytest.raises(ValueError, match="trained with --residual_lr_decay"):
        tg.model_from_checkpoint(path)


def test_a_stop_during_a_validation_validates_once_and_checkpoints_that_step(shards, tmp_path, monkeypatch,
                                                                             one_thread):
    """SIGINT arrives while step 4 is being validated: the next step stops before its first micro-batch, and
    the loop comes back to step 4 to checkpoint it, without validating it again."""
    real = tg.evaluate

    def signalling(model, val, hp, ctx, window, fns=None):
        if len(seen) == 1:  # the second validation: step 4
            os.kill(os.getpid(), signal.SIGINT)
        seen.append(1)
        return real(model, val, hp, ctx, window, fns)

    seen: list[int] = []
    monkeypatch.setattr(tg, "evaluate", signalling)
    result = tg.main(["--preset=smoke", "--num_iterations=12", "--val_every=4", "--log_every=1", "--compile=no",
                      "--run_id=valstop", *data_args(shards, tmp_path)])
    assert result["stopped"] == "SIGINT" and result["step"] == 4
    log = open(result["log"]).read()
    assert log.count("step:4/12 val_loss:") == 1 and "step:5/12 train_loss" not in log
    assert rc.read_checkpoint(result["checkpoint"])["step"] == 4


def test_old_checkpoints_with_token_windows_are_refused():
    with pytest.raises(ValueError, match="token-exact attention windows"):
        rc.current_fields({"window_max": 1792}, "old.pt")
    assert rc.current_fields({"window_max": 0}, "old.pt")["window_pattern"] == "L"


def test_under_torchrun_a_first_signal_waits_for_the_ranks_to_agree():
    """world 2: the first SIGINT only asks (no grace timer, no exit); the ranks stop at their next sync."""
    import time
    with rc.StopSignals(False, world=2, grace=0.1) as stop:
        stop.arm()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)  # a grace timer would have ended the process by now
        assert stop.received == signal.SIGINT and stop.heard == [signal.SIGINT]
