"""bench/loss.py runs end to end on a tiny input, and its two variants compute the same loss."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_loss_bench_runs_and_both_variants_agree():
    if not os.path.exists("/proc/self/status"):
        pytest.skip("the CPU measurement reads /proc/self/status (VmHWM)")
    cmd = [sys.executable, os.path.join(ROOT, "bench", "loss.py"), "--tokens=96", "--d_model=16", "--repeats=1",
           "--chunk_mib=4", "--device=cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "chunk 20 tokens" in done.stdout  # 4 MiB of float32 rows of the padded vocab 50304
    losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)", done.stdout)]
    assert len(losses) == 2 and abs(losses[0] - losses[1]) < 1e-5
    assert re.search(r"chunked/whole: time [\d.]+x, peak memory [\d.]+x", done.stdout)
