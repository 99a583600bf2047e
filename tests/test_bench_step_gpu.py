"""bench/step_gpu.py: its log parsing, its no-GPU answer, and its whole path on the CPU (--cpu-smoke)."""
import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import step_gpu  # noqa: E402


def test_parse_log_takes_the_last_step_avg_and_the_peak_memory(tmp_path):
    log = tmp_path / "run.txt"
    log.write_text("config: {}\nstep:0/3 val_loss:10.8 val_acc:0.0 train_time:0ms step_avg:0.00ms\n"
                   "step:1/3 train_loss:10.9 train_time:812ms step_avg:812.00ms\n"
                   "step:3/3 train_loss:10.7 train_time:2301ms step_avg:767.00ms\n"
                   "step:3/3 lipschitz_bound_log10:9.1 lipschitz_bound:1.2e9\n"
                   "peak memory allocated: 31570 MiB\n")
    assert step_gpu.parse_log(str(log)) == {"step_avg_ms": 767.0, "peak_mib": 31570}


def test_synthetic_shards_are_uniform_token_ids_with_meta(tmp_path):
    from data.shards import read_shard
    train, val = step_gpu.write_synthetic_shards(str(tmp_path), 300, 5000, 1000)
    tokens = read_shard(str(tmp_path / "synthetic_train_000001.bin"), vocab_size=300)
    assert len(tokens) == 5000 and tokens.max() < 300 and len(set(tokens.tolist())) > 250
    assert (tmp_path / "meta.json").read_text() == '{"vocab_size": 300}'
    assert train.endswith("*train*.bin") and val.endswith("*val*.bin")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without CUDA")
def test_without_cuda_it_says_so_in_one_line_and_exits_0():
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "step_gpu.py")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == ""
    assert len(done.stdout.strip().splitlines()) == 1 and "no CUDA" in done.stdout


@pytest.mark.slow
def test_cpu_smoke_runs_train_gpt_and_the_in_process_split():
    """Two runs side by side through train_gpt.py's command line and log, then the in-process split."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "step_gpu.py"), "--cpu-smoke", "--steps=2",
                           "--split_steps=1", "--runs=lipschitz/soft_cap,speedrun/none"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert out.startswith("device: CPU")
    for label in ("lipschitz/soft_cap", "speedrun/none"):
        assert re.search(rf"^\s+1 {label}\s+[\d.]+\s+n/a\s+[\d.]+$", out, re.M), out
        m = re.search(rf"^{label}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(-?[\d.]+)\s+(bf16|fp32)$", out, re.M)
        assert m, out
        step, fwd_bwd, muon, constraint = (float(m.group(i)) for i in range(1, 5))
        assert fwd_bwd > 0 and muon > 0 and fwd_bwd + muon <= step * 1.001 and constraint <= muon


def test_the_split_step_warms_up_under_the_measured_dispatch_as_the_trainer_does(tmp_path, monkeypatch, one_thread):
    """The split's Muon stage must time the kernels a training run runs: its warm-up is train_gpt's, inside
    kernels.measuring_dispatch(), and the timed steps come after it (CPU, smoke preset: no measuring happens
    here, only the order of the calls is checked)."""
    import contextlib

    import kernels
    events = []

    @contextlib.contextmanager
    def spy():
        events.append("measure")
        yield
        events.append("measured")
    monkeypatch.setattr(kernels, "measuring_dispatch", spy)
    train, val = step_gpu.write_synthetic_shards(str(tmp_path), step_gpu.SMOKE_VOCAB, 20_000, 5_000)
    flags = ["--preset=smoke", f"--vocab_size={step_gpu.SMOKE_VOCAB}", "--bos_token=-1", f"--train_files={train}",
             f"--val_files={val}", "--compile=no"]
    s = step_gpu.split_step(flags, steps=1, warmup=1, device=torch.device("cpu"))
    assert events == ["measure", "measured"]
    assert s["fwd_bwd"] > 0 and s["muon"] > 0 and s["constraint"] <= s["muon"]
