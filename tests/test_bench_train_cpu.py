"""bench/train_cpu.py runs end to end on the smoke preset, with the compiled run beside the eager ones."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt")


def test_train_cpu_bench_prints_ratios_including_compiled(tmp_path):
    from data import shakespeare
    shakespeare.build(input_path=TINY if os.path.exists(TINY) else None, out_dir=str(tmp_path))
    cmd = [sys.executable, os.path.join(ROOT, "bench", "train_cpu.py"), "--preset=smoke", "--steps=2", "--compiled",
           f"--train_files={tmp_path}/*train*.bin", f"--val_files={tmp_path}/*val*.bin", "--dtype=fp32"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"step time constrained / unconstrained: \d+\.\d{3}", done.stdout)
    assert re.search(r"step time compiled / eager \(constrained\): \d+\.\d{3}", done.stdout)
