"""bench/gpu_check.sh and bench/gpu_check_summary.py: the dry run, the no-CUDA answer, the stage time boxes,
the parsing of train_gpt.py / anchor / step_gpu.py outputs into results.md, and (slow) the whole path on the CPU."""
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "gpu_check.sh")
# loaded from its path: bench/ on sys.path would let bench/constraints.py shadow constraints.py in later tests
_spec = importlib.util.spec_from_file_location("gpu_check_summary", os.path.join(ROOT, "bench", "gpu_check_summary.py"))
gs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gs)

STAGES = ["versions", "shards", "anchor", "soft_cap", "none", "kernels", "muon", "tests"]

# what train_gpt.py prints on CUDA (console lines carry an eta suffix), cut to 3 steps
OURS = """preset speedrun: ...
step:0/3 val_loss:10.8249 val_acc:0.0000 train_time:0ms step_avg:0.00ms
step:0/3 lipschitz_bound_log10:-inf lipschitz_bound:0
step:1/3 train_loss:10.8249 train_time:1400ms step_avg:1400.00ms eta:0m03s
step:2/3 train_loss:10.8249 train_time:2900ms step_avg:1450.00ms eta:0m01s
step:3/3 train_loss:10.8250 train_time:4500ms step_avg:1500.00ms
step:3/3 val_loss:10.8251 val_acc:0.0000 train_time:4500ms step_avg:1500.00ms
peak memory allocated: 53710 MiB
run soft_cap complete: step 3/3
"""
# the anchor's console: its log path, step lines, the training peak, the final validation, the overall peak
ANCHOR = """logs/7f3c.txt
step:1/3 train_time:700ms step_avg:700.00ms
step:2/3 train_time:1450ms step_avg:725.00ms
step:3/3 train_time:2250ms step_avg:750.00ms
train peak memory allocated: 32000 MiB reserved: 33000 MiB
step:3/3 val_loss:10.8300 train_time:2250ms step_avg:750.00ms
peak memory allocated: 40000 MiB reserved: 41000 MiB
"""
NONE_PARTIAL = """step:0/3 val_loss:10.8249 val_acc:0.0000 train_time:0ms step_avg:0.00ms
step:1/3 train_loss:10.8249 train_time:1300ms step_avg:1300.00ms eta:0m03s
step:2/3 train_loss:10.8249 train_time:2800ms step_avg:1400.00ms eta:0m01s
"""
TRACEBACK = """W1203 12:00:01 123 torch/_dynamo/guards.py:99] [0/1] [__recompiles] Recompiling function loss in train_gpt.py:476
Traceback (most recent call last):
  File "train_gpt.py", line 1244, in <module>
    outcome = main()
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 9.38 GiB
"""
SPLIT = """device: 1 x NVIDIA H200; torch 2.11.0; 0 steps per run; flags: ...
procs run                    ms/step  peak MiB vs soft_cap   (logs: /tmp/step_gpu_x/logs)
split of one step in-process (1 process, median of 3 after 2 warm-up), ms:
run                      step  fwd+bwd     Muon constraint     rest  dtype
lipschitz/soft_cap     1430.0   1360.0     68.0      12.50      2.0   bf16
"""


def raw(out):
    """OUT_DIR/raw.tar.gz unpacked beside it; returns the raw folder."""
    import tarfile
    with tarfile.open(os.path.join(out, "raw.tar.gz")) as t:
        t.extractall(os.path.join(out, "unpacked"), filter="data")
    return os.path.join(out, "unpacked", "raw")


def run_script(*args, env=None, timeout=300):
    full = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    full.update({"PYTHON": sys.executable, **(env or {})})
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, cwd=ROOT, env=full,
                          timeout=timeout)


# ----------------------------------------------------------------------------- parsers

def test_parse_run_reads_train_gpt_steps_and_peak():
    r = gs.parse_run(OURS)
    assert (r["last"], r["total"]) == (3, 3)
    assert r["step_avg_ms"] == 1500.0  # the logged step_avg at the last step, not the val line's
    assert r["median_step_ms"] == 1500.0  # per-step 1400, 1500, 1600
    assert (r["peak_mib"], r["peak_kind"]) == (53710, "end")
    assert r["steps"] == {0: 0.0, 1: 1400.0, 2: 2900.0, 3: 4500.0}


def test_parse_run_takes_the_anchors_training_peak_not_its_final_one():
    r = gs.parse_run(ANCHOR)
    assert (r["last"], r["step_avg_ms"], r["median_step_ms"]) == (3, 750.0, 750.0)
    assert (r["peak_mib"], r["peak_kind"]) == (32000, "train")


def test_ratios_compare_at_the_last_common_step():
    ours, anchor, partial = gs.parse_run(OURS), gs.parse_run(ANCHOR), gs.parse_run(NONE_PARTIAL)
    assert gs.time_ratio(ours, anchor) == (pytest.approx(4500 / 2250), 3)
    assert gs.time_ratio(ours, partial) == (pytest.approx(2900 / 2800), 2)  # partial: step 2, not 3
    assert gs.time_ratio(ours, gs.parse_run("no step lines")) == (None, None)


def test_first_error_line_finds_the_exception_not_the_log_noise():
    assert gs.first_error_line(TRACEBACK) == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 9.38 GiB"
    assert gs.first_error_line("x\nFAILED tests/test_a.py::test_b - AssertionError: 1 != 2\nE   AssertionError") \
        == "FAILED tests/test_a.py::test_b - AssertionError: 1 != 2"
    assert gs.first_error_line("error: no training shards match 'x'") == "error: no training shards match 'x'"
    assert gs.first_error_line("all fine\n") is None
    assert gs.count_compile_events(TRACEBACK) == (1, 0)


def test_parse_split_and_pytest_outcome():
    s = gs.parse_split(SPLIT)
    assert s == {"lipschitz/soft_cap": dict(step=1430.0, fwd_bwd=1360.0, muon=68.0, constraint=12.5, rest=2.0,
                                            dtype="bf16")}
    assert gs.pytest_outcome("..\n3 passed, 1 skipped in 4.20s\n") == "3 passed, 1 skipped in 4.20s"
    assert gs.pytest_outcome("\n514 deselected in 15.9s\n") == "514 deselected in 15.9s"


@pytest.mark.parametrize("name,rc,secs,given,status", [
    ("soft_cap", "0", 90, 120, "ok"), ("tests", "5", 10, 65, "failed"), ("tests", "1", 10, 65, "failed"),
    ("anchor", "124", 110, 110, "timeout"), ("anchor", "137", 118, 110, "timeout"),
    ("none", "137", 20, 70, "killed"), ("kernels", "skipped", 0, 0, "skipped"), ("anchor", "missing", 0, 0, "missing")])
def test_classify(name, rc, secs, given, status):
    assert gs.classify(name, rc, secs, given) == status


def test_results_md_from_a_fabricated_results_folder(tmp_path):
    out = tmp_path
    rows = [("versions", "0", 4, 15, 15), ("shards", "0", 3, 15, 61), ("anchor", "0", 100, 110, 168),
            ("soft_cap", "0", 110, 120, 188), ("none", "124", 70, 70, 148), ("kernels", "1", 5, 25, 83),
            ("muon", "0", 35, 40, 103), ("tests", "1", 30, 65, 76)]
    (out / "stages.tsv").write_text("".join(f"{n}\t{rc}\t{s}\t{b}\t{g}\tcmd {n}\n" for n, rc, s, b, g in rows))
    (out / "versions.out").write_text("torch: 2.11.0+cu130 (CUDA 13.0)\ngpu: 1 x NVIDIA H200\n")
    (out / "tests.out").write_text("F.\nFAILED tests/test_x.py::test_y - AssertionError: boom\n1 failed, 1 passed in 3s\n")
    (out / "anchor.out").write_text(ANCHOR)
    (out / "soft_cap.out").write_text(OURS)
    (out / "soft_cap.err").write_text("[__recompiles] Recompiling function loss\n" * 2)
    (out / "none.out").write_text(NONE_PARTIAL)
    (out / "kernels.err").write_text(TRACEBACK)
    (out / "muon.out").write_text(SPLIT)
    md = gs.write_summary(str(out), str(out / "results.md"))
    assert (out / "results.md").read_text() == md
    assert "gpu: 1 x NVIDIA H200" in md and "| versions: python, torch, triton, CUDA, GPU, commit | ok |" in md
    assert "| ours --constraint=soft_cap | 3/3 | 1500.0 | 1500.0 | 53710 | 52.5 | 2 | 0 |" in md
    assert "| ours --constraint=none | 2/3 |" in md
    assert "- ours soft_cap / anchor: time 2.000 (at step 3/3), memory 1.678" in md
    assert "- ours soft_cap / ours none: time 1.036 (at step 2/3, PARTIAL), memory -" in md
    assert "timed out: `none`; failed: `kernels`, `tests`" in md
    assert "| tests: tests (pytest tests/test_cuda.py) | failed | 30 | 65 | 76 |" in md
    assert "TIMED OUT after 70 s (given 148 s); reached step 2/3" in md
    assert "first error: FAILED tests/test_x.py::test_y - AssertionError: boom" in md
    assert "first error: torch.OutOfMemoryError: CUDA out of memory" in md
    assert "Muon 68.0 ms/step = 4.8% of the split's step; constraint 0.9%; Muon / the run's step_avg (1500.0 ms) = 4.5%" in md


# ----------------------------------------------------------------------------- the script

def test_dry_run_exits_0_and_prints_every_stage(tmp_path):
    done = run_script("--dry-run", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    for i, name in enumerate(STAGES, 1):
        assert f"{i}. {name} " in done.stdout
    assert "total: 460 s of boxes" in done.stdout and "dry run: all is well" in done.stdout
    assert "--constraint=soft_cap" in done.stdout and "bench/constraints.py --device cuda" in done.stdout
    assert done.stdout.count("--warmup_steps=2 --val_at_start=0") == 2  # both timed runs of ours
    assert "pytest -q -p no:cacheprovider tests/test_cuda.py -m cuda" in done.stdout  # that file alone
    assert (tmp_path / "plan.txt").exists() and not (tmp_path / "raw").exists()


def test_dry_run_reports_one_line_per_problem_and_fails():
    done = run_script("--dry-run", env={"PYTHON": "/nonexistent/python3", "GPU_CHECK_STEPS": "0",
                                        "GPU_CHECK_SKIP": "bogus", "GPU_CHECK_BOX_anchor": "300"})
    assert done.returncode == 1
    problems = [ln for ln in done.stdout.splitlines() if ln.startswith("problem:")]
    assert len(problems) == 4, done.stdout
    assert any("GPU_CHECK_STEPS=0" in p for p in problems) and any("no stage bogus" in p for p in problems)
    assert any("655 s, over 470 s" in p for p in problems) and any("/nonexistent/python3" in p for p in problems)
    assert "8. tests" in done.stdout  # the plan is still printed


def test_without_cuda_a_plain_run_says_so_in_one_line_and_exits_2(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("checks the answer on a machine without CUDA")
    done = run_script(str(tmp_path / "out"), timeout=120)
    assert done.returncode == 2
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and "no CUDA" in lines[0] and "--dry-run" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_stage_past_its_box_is_killed_and_reported_as_timed_out(tmp_path):
    slow = tmp_path / "python"
    slow.write_text(f'#!/bin/sh\ncase "$*" in *" versions"*) sleep 60 ;; esac\nexec {sys.executable} "$@"\n')
    slow.chmod(0o755)
    out = tmp_path / "out"
    done = run_script("--cpu-smoke", str(out), timeout=120, env={
        "PYTHON": str(slow), "GPU_CHECK_BOX_versions": "5",
        "GPU_CHECK_SKIP": "tests,shards,anchor,soft_cap,none,kernels,muon"})
    assert done.returncode == 0, done.stdout + done.stderr
    rows = gs.read_stages(raw(out))
    assert [r["status"] for r in rows] == ["timeout"] + ["skipped"] * 7
    assert rows[0]["seconds"] <= 7
    md = (out / "results.md").read_text()
    assert "timed out: `versions`; failed: no stage" in md and "TIMED OUT after" in md


def test_the_anchor_is_stopped_after_its_train_peak_line_and_counts_as_passed(tmp_path):
    fake = tmp_path / "anchor.py"  # prints what the anchor prints up to its training peak, then would validate
    fake.write_text("import os, time\n"
                    "print('logs/x.txt')\n"
                    "for k in range(1, 4):\n"
                    "    print(f'step:{k}/3 train_time:{700 * k}ms step_avg:700.00ms')\n"
                    "print('train peak memory allocated: 32000 MiB reserved: 33000 MiB')\n"
                    "assert os.environ['NUM_ITERS'] == '3' and os.environ['TRAIN_GLOB'].endswith('*train*.bin')\n"
                    "time.sleep(60)\n"
                    "print('step:3/3 val_loss:10.8 train_time:2100ms step_avg:700.00ms')\n")
    out = tmp_path / "out"
    done = run_script("--cpu-smoke", str(out), timeout=120, env={
        "GPU_CHECK_ANCHOR": str(fake), "GPU_CHECK_STEPS": "3",
        "GPU_CHECK_SKIP": "versions,tests,shards,soft_cap,none,kernels,muon"})
    assert done.returncode == 0, done.stdout + done.stderr
    row = [r for r in gs.read_stages(raw(out)) if r["name"] == "anchor"][0]
    assert row["status"] == "ok" and row["seconds"] < 20
    md = (out / "results.md").read_text()
    assert "| speedrun record #21 (anchor), 1 GPU | 3/3 | 700.0 | 700.0 | 32000 | 31.2 |" in md
    assert "stopped after its train peak line" in md


def slow_stage_python(tmp_path, stage):
    """A python that sleeps 60 s when run for gpu_check_summary.py's `stage` subcommand, else is this one."""
    slow = tmp_path / "python"
    slow.write_text(f'#!/bin/sh\ncase "$*" in *" {stage}"*) sleep 60 ;; esac\nexec {sys.executable} "$@"\n')
    slow.chmod(0o755)
    return slow


def start_script(tmp_path, env, until):
    """gpu_check.sh --cpu-smoke in its own process group, read until a console line starts with `until`."""
    import signal  # noqa: F401 - the callers signal the group
    full = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    full.update({"TMPDIR": str(tmp_path / "tmp"), **env})
    (tmp_path / "tmp").mkdir()
    proc = subprocess.Popen(["bash", SCRIPT, "--cpu-smoke", str(tmp_path / "out")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=full, start_new_session=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(until):
            return proc, seen
    raise AssertionError("the script ended before " + until + ":\n" + "".join(seen))


def test_a_terminated_run_packs_what_it_has_and_leaves_no_scratch(tmp_path):
    """TERM from outside mid-stage: the stage is stopped, OUT_DIR ends with results.md and raw.tar.gz only, and
    the scratch folder (shards, checkpoints; under TMPDIR, never OUT_DIR) is gone."""
    import signal
    proc, _ = start_script(tmp_path, {"PYTHON": str(slow_stage_python(tmp_path, "shards"))}, "== shards")
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 143, out
    assert sorted(os.listdir(tmp_path / "out")) == ["raw.tar.gz", "results.md"]
    assert os.listdir(tmp_path / "tmp") == []  # the scratch folder went with it
    rows = gs.read_stages(raw(tmp_path / "out"))
    assert [r["name"] for r in rows] == ["versions"] and rows[0]["status"] == "ok"
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| shards: synthetic shards | not reached |" in md


def test_a_killed_run_leaves_at_most_what_it_had_packed(tmp_path):
    """SIGKILL to every process of the run (no trap runs): OUT_DIR holds only results.md and raw.tar.gz as packed
    after the last completed stage, never the shards or a half-written raw folder."""
    import signal
    proc, _ = start_script(tmp_path, {"PYTHON": str(slow_stage_python(tmp_path, "shards"))}, "== shards")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert sorted(os.listdir(tmp_path / "out")) == ["raw.tar.gz", "results.md"]
    assert [r["name"] for r in gs.read_stages(raw(tmp_path / "out"))] == ["versions"]


def test_cpu_smoke_fast_stages_leave_two_files_and_every_stage_in_results(tmp_path):
    """The quick part of the path on the CPU (versions, shards, the anchor failing without CUDA or missing, the
    kernel table's no-CUDA answer); the others are skipped. The whole path: test_cpu_smoke_runs_the_whole_path."""
    out = tmp_path / "out"
    done = run_script("--cpu-smoke", str(out), timeout=300, env={
        "GPU_CHECK_SKIP": "soft_cap,none,muon,tests", "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(os.listdir(out)) == ["raw.tar.gz", "results.md"]
    assert not [f for f in os.listdir(tmp_path) if f.startswith("gpu_check.")]  # scratch removed
    md = (out / "results.md").read_text()
    for name, title in gs.STAGES.items():
        assert f"| {name}: {title} |" in md
    status = {r["name"]: r["status"] for r in gs.read_stages(raw(out))}
    assert status["versions"] == status["shards"] == status["kernels"] == "ok"
    assert status["anchor"] in ("failed", "missing") and status["tests"] == "skipped"


@pytest.mark.slow
def test_cpu_smoke_runs_the_whole_path(tmp_path):
    """Every stage on the CPU (smoke preset; 2-3 minutes on 2 shared cores): shards, the anchor (fails without
    CUDA, or is missing), ours twice, the kernel table's no-CUDA answer, the Muon split, and the tests stage
    running tests/test_cuda.py's CPU tests with nothing failed; OUT_DIR ends with results.md and raw.tar.gz."""
    out = tmp_path / "out"
    done = run_script("--cpu-smoke", str(out), timeout=900, env={"TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(os.listdir(out)) == ["raw.tar.gz", "results.md"]  # two files: the device tool returns 8
    status = {r["name"]: r["status"] for r in gs.read_stages(raw(out))}
    assert status == dict(versions="ok", shards="ok", anchor=status["anchor"], soft_cap="ok", none="ok",
                          kernels="ok", muon="ok", tests="ok")
    assert status["anchor"] in ("failed", "missing")
    md = (out / "results.md").read_text()
    assert "| ours --constraint=soft_cap | 4/4 |" in md and "| ours --constraint=none | 4/4 |" in md
    assert "| lipschitz/soft_cap |" in md and "Muon / the run's step_avg" in md
    assert "first error:" in md or "anchor script missing" in md
    tests_row = next(line for line in md.splitlines() if line.startswith("| tests:"))
    assert " passed" in tests_row and "failed" not in tests_row.split("|")[-2], tests_row
    unpacked = os.path.join(out, "unpacked", "raw")
    assert "tests/test_cuda.py" in open(os.path.join(unpacked, "stages.tsv")).read()
    assert os.path.exists(os.path.join(unpacked, "logs", "soft_cap.txt"))
