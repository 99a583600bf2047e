"""bench/loss.py runs end to end on a tiny input, and its two variants compute the same loss."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_loss_bench_runs_and_both_variants_agree():
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("the CPU measurement resets and reads the peak RSS through /proc (Linux)")
    cmd = [sys.executable, os.path.join(ROOT, "bench", "loss.py"), "--tokens=96", "--d_model=16", "--repeats=1",
           "--chunk_mib=4", "--device=cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "chunk 20 tokens" in done.stdout  # 4 MiB of float32 rows of the padded vocab 50304
    losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)", done.stdout)]
    assert len(losses) == 4 and max(losses) - min(losses) < 1e-5  # whole, chunked, each eager and compiled
    for suffix in ("", "-compiled"):
        assert re.search(rf"chunked/whole{suffix}: time [\d.]+x, peak memory [\d.]+x", done.stdout)
