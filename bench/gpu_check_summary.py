"""The Python half of bench/gpu_check.sh: reads its results folder into results.md, prints the versions, and
checks (for --dry-run) that what the script would run parses. Standard library only, except where noted.

    python bench/gpu_check_summary.py summary RAW_DIR RESULTS_MD   # (re)write results.md from the stage outputs
    python bench/gpu_check_summary.py versions               # python, torch, CUDA, triton, GPU, commit (imports torch)
    python bench/gpu_check_summary.py shards DIR VOCAB TRAIN_TOKENS VAL_TOKENS   # synthetic shards (imports torch)
    python bench/gpu_check_summary.py dry-check [--anchor=PATH] :: OURS FLAGS :: OURS FLAGS ... :: STEP_GPU ARGS

The raw folder (in gpu_check.sh's scratch folder while it runs, packed into OUT_DIR/raw.tar.gz after every stage):
stages.tsv (one row per stage: name, rc, seconds used, its box, the time it was given, the command; rc is a
number, or "skipped" / "missing"), and <stage>.out / <stage>.err for each stage that ran (stdout / stderr; the
runs' stderr holds TORCH_LOGS=recompiles,graph_breaks).
"""
import os
import re
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> title, in the order gpu_check.sh runs them
STAGES = {
    "versions": "python, torch, triton, CUDA, GPU, commit",
    "shards": "synthetic shards",
    "anchor": "speedrun record #21 (anchor), 1 GPU",
    "soft_cap": "ours --constraint=soft_cap",
    "none": "ours --constraint=none",
    "kernels": "constraint kernels (bench/constraints.py --device cuda)",
    "muon": "Muon split (bench/step_gpu.py --steps=0 --split_steps)",
    "tests": "tests (pytest tests/test_cuda.py)",
}
RUNS = ("anchor", "soft_cap", "none")

# train lines of train_gpt.py and of the anchor (their validation lines carry val_loss: and do not match)
TRAIN_STEP_RE = re.compile(r"^step:(\d+)/(\d+) (?:train_loss:\S+ )?train_time:(\d+(?:\.\d+)?)ms step_avg:([\d.]+)ms")
PEAK_RE = re.compile(r"^(train )?peak memory allocated: (\d+) MiB")
# a row of bench/step_gpu.py's split table: run, step, fwd+bwd, Muon, constraint, rest (ms), dtype
SPLIT_RE = re.compile(r"^(\S+/\S+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(-?[\d.]+)\s+(\S+)\s*$")
ERROR_RE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception|Interrupt|Failed|Unsupported)\b")
TIMEOUT_RCS = (124, 137)  # GNU timeout: 124 after its signal, 137 when -k had to kill


# -----------------------------------------------------------------------------
# Parsers (tests call these on fabricated logs)

def parse_run(text: str) -> dict:
    """Step times and peak memory from a train_gpt.py or anchor console output.

    Returns steps ({step: cumulative train ms}, with {0: 0}), total (the run's step count), last (the last step
    logged), step_avg_ms (the logged step_avg at the last step), median_step_ms (median over steps of the
    per-step time between consecutive step lines, robust to one slow step), peak_mib (the training peak when
    the log has one, as the anchor's `train peak memory allocated` before its larger validation forward,
    else `peak memory allocated`) and peak_kind ("train", "end" or None)."""
    steps, total, step_avg = {0: 0.0}, None, None
    peaks = {}
    for line in text.splitlines():
        if m := TRAIN_STEP_RE.match(line):
            step, total = int(m.group(1)), int(m.group(2))
            steps[step] = float(m.group(3))
            step_avg = float(m.group(4))
        elif m := PEAK_RE.match(line):
            peaks["train" if m.group(1) else "end"] = int(m.group(2))
    keys = sorted(steps)
    per_step = [(steps[b] - steps[a]) / (b - a) for a, b in zip(keys, keys[1:])]
    kind = "train" if "train" in peaks else ("end" if "end" in peaks else None)
    return dict(steps=steps, total=total, last=keys[-1], step_avg_ms=step_avg,
                median_step_ms=statistics.median(per_step) if per_step else None,
                peak_mib=peaks.get(kind) if kind else None, peak_kind=kind)


def time_ratio(a: dict, b: dict):
    """(train time of a / train time of b at the last step both logged, that step), or (None, None).
    Both runs compress the same window and lr schedules to their step count, so a common step compares like
    with like even when one of them was cut short."""
    common = (set(a["steps"]) & set(b["steps"])) - {0}
    if not common:
        return None, None
    k = max(common)
    return (a["steps"][k] / b["steps"][k] if b["steps"][k] else None), k


def first_error_line(text: str) -> str | None:
    """The line that says what went wrong: pytest's first FAILED/ERROR summary line, else the first exception
    line (`SomethingError: ...`, the root cause in a chained traceback), else an `error:` line."""
    lines = [ln.strip() for ln in text.splitlines()]
    for ln in lines:
        if ln.startswith(("FAILED ", "ERROR ")):
            return ln
    for ln in lines:
        if ERROR_RE.match(ln) or ln.lower().startswith("error:"):
            return ln
    return None


def last_line(text: str) -> str | None:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else None


def parse_split(text: str) -> dict:
    """bench/step_gpu.py's split table: {run: dict(step, fwd_bwd, muon, constraint, rest (ms), dtype)}."""
    out = {}
    for line in text.splitlines():
        if m := SPLIT_RE.match(line):
            out[m.group(1)] = dict(zip(("step", "fwd_bwd", "muon", "constraint", "rest"),
                                       map(float, m.groups()[1:6])), dtype=m.group(7))
    return out


def pytest_outcome(text: str) -> str | None:
    """pytest's final count line (e.g. '3 passed, 1 skipped in 4.2s'), or None."""
    found = None
    for line in text.splitlines():
        s = line.strip().strip("=").strip()
        if re.search(r"\b\d+ (passed|failed|errors?|skipped|deselected|xfailed|xpassed)\b", s) or \
                s.startswith("no tests ran"):
            found = s
    return found


def count_compile_events(text: str) -> tuple[int, int]:
    """(recompiles, graph breaks) logged under TORCH_LOGS=recompiles,graph_breaks (one record each; the
    phrases are the ones torch's own tests rely on)."""
    return text.count("Recompiling function"), text.count("Graph break in user code")


def read_stages(out_dir: str) -> list[dict]:
    """The rows of stages.tsv, each classified: status ok / failed / timeout / killed / skipped / missing."""
    rows = []
    path = os.path.join(out_dir, "stages.tsv")
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 6:
                continue
            name, rc, secs, box, given, cmd = parts[:6]
            rows.append(dict(name=name, rc=rc, seconds=int(secs), box=int(box), given=int(given), cmd=cmd,
                             status=classify(name, rc, int(secs), int(given))))
    return rows


def classify(name: str, rc: str, seconds: int, given: int) -> str:
    if rc in ("skipped", "missing"):
        return rc
    code = int(rc)
    if code == 0:
        return "ok"
    if code == 124 or (code == 137 and seconds >= given):
        return "timeout"
    if code > 128:
        return "killed"
    return "failed"


def _read(out_dir: str, name: str) -> str:
    try:
        with open(os.path.join(out_dir, name), errors="replace") as f:
            return f.read()
    except OSError:
        return ""


# -----------------------------------------------------------------------------
# results.md

def _ms(x):
    return "-" if x is None else f"{x:.1f}"


def _ratio(x):
    return "-" if x is None else f"{x:.3f}"


def stage_note(out_dir: str, row: dict, run: dict | None) -> str:
    """One line on a stage that did not simply pass."""
    name, status = row["name"], row["status"]
    out, err = _read(out_dir, f"{name}.out"), _read(out_dir, f"{name}.err")
    if status == "skipped":
        return "skipped (" + (out.strip() or "GPU_CHECK_SKIP") + ")"
    if status == "missing":
        return out.strip() or "not run: its script is missing"
    progress = ""
    if run is not None and run["last"]:
        progress = f"reached step {run['last']}/{run['total']}; "
    if status == "timeout":
        return (f"TIMED OUT after {row['seconds']} s (given {row['given']} s); {progress}"
                f"last output: {last_line(out) or last_line(err) or '(none)'}")
    if name == "tests" and row["rc"] == "5":  # pytest's "no tests ran": the file or its CUDA tests went missing
        return f"FAILED, no tests ran: {pytest_outcome(out) or last_line(err) or '(no output)'}"
    if status in ("failed", "killed"):
        what = f"rc {row['rc']}" + (" (killed by a signal; out of memory?)" if status == "killed" else "")
        return f"FAILED, {what}; {progress}first error: {first_error_line(err) or first_error_line(out) or last_line(err) or last_line(out) or '(no output)'}"
    if "stopped by bench/gpu_check.sh" in err:
        return "stopped after its train peak line (its final validation is not needed here)"
    if name == "tests":
        return pytest_outcome(out) or ""
    return ""


def build_markdown(out_dir: str) -> str:
    rows = {r["name"]: r for r in read_stages(out_dir)}
    runs = {n: parse_run(_read(out_dir, f"{n}.out")) for n in RUNS if n in rows}
    md = ["# bench/gpu_check.sh results", ""]
    versions = _read(out_dir, "versions.out").strip()
    md += ["## Device and versions", "", "```", versions or "(versions stage did not run)", "```", ""]

    md += ["## Stages", "", "| stage | status | seconds | box s | given s | note |", "|---|---|---|---|---|---|"]
    for name, title in STAGES.items():
        if name not in rows:
            md.append(f"| {name}: {title} | not reached | | | | |")
            continue
        r = rows[name]
        note = stage_note(out_dir, r, runs.get(name)).replace("|", "\\|")
        md.append(f"| {name}: {title} | {r['status']} | {r['seconds']} | {r['box']} | {r['given']} | {note} |")
    timed_out = [n for n, r in rows.items() if r["status"] == "timeout"]
    failed = [n for n, r in rows.items() if r["status"] in ("failed", "killed", "missing")]
    names = lambda ns: ", ".join(f"`{n}`" for n in ns) or "no stage"  # noqa: E731 - a stage is called none
    md += ["", f"timed out: {names(timed_out)}; failed: {names(failed)}", ""]

    md += ["## Step time and memory (one GPU doing 8 x 48K tokens per step by accumulation, synthetic shards)", "",
           "ms/step = the logged step_avg at the last step reached (training only, validation excluded); median = "
           "median per-step time between step lines; peak = the training peak for the anchor (its "
           "`train peak memory allocated`, before its larger validation forward), `peak memory allocated` at the "
           "end for ours (its validation forward is smaller than a training step). GiB = MiB / 1024.", "",
           "| run | steps | ms/step | median ms | peak MiB | peak GiB | recompiles | graph breaks |",
           "|---|---|---|---|---|---|---|---|"]
    for name in RUNS:
        if name not in runs:
            continue
        r = runs[name]
        rec, gb = count_compile_events(_read(out_dir, f"{name}.err"))
        steps = f"{r['last']}/{r['total']}" if r["total"] else "0"
        peak = "-" if r["peak_mib"] is None else str(r["peak_mib"])
        gib = "-" if r["peak_mib"] is None else f"{r['peak_mib'] / 1024:.1f}"
        md.append(f"| {STAGES[name]} | {steps} | {_ms(r['step_avg_ms'])} | {_ms(r['median_step_ms'])} | {peak} | "
                  f"{gib} | {rec} | {gb} |")
    md += ["", "ratios (time: train time at the last step both runs logged, so runs cut short still compare at "
           "the same point of the schedules; memory: the peaks above):", ""]
    for a, b in (("soft_cap", "anchor"), ("none", "anchor"), ("soft_cap", "none")):
        if a not in runs or b not in runs:
            continue
        t, k = time_ratio(runs[a], runs[b])
        pa, pb = runs[a]["peak_mib"], runs[b]["peak_mib"]
        mem = pa / pb if pa and pb else None
        at = f" (at step {k}/{runs[a]['total']}" + (", PARTIAL" if k != runs[a]["total"] else "") + ")" if k else ""
        label = {"soft_cap": "ours soft_cap", "none": "ours none", "anchor": "anchor"}
        md.append(f"- {label[a]} / {label[b]}: time {_ratio(t)}{at}, memory {_ratio(mem)}")
    md.append("")

    md += ["## Muon (in-process split of one step, bench/step_gpu.py; CUDA events, median)", ""]
    split = parse_split(_read(out_dir, "muon.out"))
    if split:
        md += ["| run | step ms | fwd+bwd | Muon (incl. constraint) | constraint | rest | dtype |",
               "|---|---|---|---|---|---|---|"]
        for label, s in split.items():
            md.append(f"| {label} | {s['step']:.1f} | {s['fwd_bwd']:.1f} | {s['muon']:.1f} | {s['constraint']:.2f} | "
                      f"{s['rest']:.1f} | {s['dtype']} |")
        md.append("")
        for label, s in split.items():
            share = f"{s['muon'] / s['step']:.1%}" if s["step"] else "-"
            cshare = f"{s['constraint'] / s['step']:.1%}" if s["step"] else "-"
            line = f"- {label}: Muon {s['muon']:.1f} ms/step = {share} of the split's step; constraint {cshare}"
            run = runs.get("soft_cap") if label == "lipschitz/soft_cap" else runs.get("none")
            if run and run["step_avg_ms"]:
                line += f"; Muon / the run's step_avg ({run['step_avg_ms']:.1f} ms) = {s['muon'] / run['step_avg_ms']:.1%}"
            md.append(line)
    else:
        md.append("no split measured (see the muon stage above)")
    md.append("")

    kernels = _read(out_dir, "kernels.out").strip()
    md += ["## Constraint kernels (bench/constraints.py --device cuda)", "", "```",
           "\n".join(kernels.splitlines()[:120]) or "(no output)", "```", ""]
    md += ["Beside this file, raw.tar.gz: <stage>.out / <stage>.err of each stage, logs/ (the runs' own logs, "
           "the anchor's under logs/ too), stages.tsv, plan.txt.", ""]
    return "\n".join(md)


def write_summary(raw_dir: str, md_path: str) -> str:
    text = build_markdown(raw_dir)
    with open(md_path + ".tmp", "w") as f:
        f.write(text)
    os.replace(md_path + ".tmp", md_path)
    return text


# -----------------------------------------------------------------------------
# versions (stage 1) and the dry-run check

def _cmd_output(cmd: list[str]) -> str:
    import subprocess
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({type(e).__name__})"
    return done.stdout.strip() if done.returncode == 0 else f"unavailable (rc {done.returncode})"


def versions() -> int:
    import platform
    print(f"python: {platform.python_version()} ({sys.executable})")
    print(f"nvidia-smi: {_cmd_output(['nvidia-smi', '--query-gpu=name,driver_version,memory.total', '--format=csv,noheader'])}")
    commit = _cmd_output(["git", "rev-parse", "--short", "HEAD"])
    dirty = _cmd_output(["git", "status", "--porcelain", "--untracked-files=no"])
    changed = len(dirty.splitlines()) if not dirty.startswith("unavailable") else 0
    if commit.startswith("unavailable") and os.environ.get("GPU_CHECK_COMMIT"):  # a copy without .git
        commit = f"{os.environ['GPU_CHECK_COMMIT']} (as GPU_CHECK_COMMIT says; no git here)"
    print(f"commit: {commit}" + (f" (+{changed} changed tracked files)" if changed else ""))
    for mod in ("numpy", "pytest"):
        try:
            print(f"{mod}: {__import__(mod).__version__}")
        except Exception as e:  # noqa: BLE001 - report, keep going
            print(f"{mod}: unavailable ({type(e).__name__}: {e})")
    try:
        import triton
        print(f"triton: {triton.__version__}")
    except Exception as e:  # noqa: BLE001
        print(f"triton: unavailable ({type(e).__name__}: {e})")
    import torch
    print(f"torch: {torch.__version__} (CUDA {torch.version.cuda})")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print(f"gpu: {torch.cuda.device_count()} x {p.name}, {p.total_memory / 2**30:.1f} GiB, "
              f"capability {p.major}.{p.minor}")
    else:
        print("gpu: none visible to torch")
    return 0


def _import_paths():
    """bench/ for step_gpu, then the root before it (bench/constraints.py must not shadow constraints.py)."""
    for path in (os.path.join(ROOT, "bench"), ROOT):
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)


def shards(out_dir: str, vocab: int, train_tokens: int, val_tokens: int) -> int:
    """Stage 3: bench/step_gpu.py's write_synthetic_shards (imports torch via step_gpu)."""
    _import_paths()
    from step_gpu import write_synthetic_shards
    train, val = write_synthetic_shards(out_dir, vocab, train_tokens, val_tokens)
    print(f"train: {train} ({train_tokens} tokens)\nval: {val} ({val_tokens} tokens)\nvocab: {vocab}")
    return 0


PROJECT_FILES = ("train_gpt.py", "constraints.py", "kernels.py", "lipschitz.py", "muon.py", "bench/step_gpu.py",
                 "bench/constraints.py", "bench/gpu_check_summary.py")


def dry_check(argv: list[str]) -> int:
    """Everything gpu_check.sh would run parses: the Python files compile, train_gpt.py accepts each run's
    flags, bench/step_gpu.py knows the split's runs and (on a machine without CUDA, where it stops after
    parsing) accepts its arguments, bench/constraints.py accepts --device cuda. Prints one `problem:` line per
    problem; exit status 1 if any."""
    anchor = ""
    if argv and argv[0].startswith("--anchor="):
        anchor = argv.pop(0).split("=", 1)[1]
    groups, cur = [], None
    for a in argv:
        if a == "::":
            cur = []
            groups.append(cur)
        elif cur is not None:
            cur.append(a)
    problems = []
    for rel in PROJECT_FILES + ((anchor,) if anchor else ()):
        path = os.path.join(ROOT, rel)
        try:
            with open(path) as f:
                compile(f.read(), path, "exec")
        except (OSError, SyntaxError) as e:
            problems.append(f"{rel} does not compile: {type(e).__name__}: {e}")
    _import_paths()
    try:
        import torch
        import train_gpt
        import step_gpu
    except Exception as e:  # noqa: BLE001
        print(f"problem: cannot import train_gpt / bench/step_gpu.py: {type(e).__name__}: {e}")
        return 1
    *ours, split = groups if groups else ([], )
    for flags in ours:
        try:
            train_gpt.Hyperparameters.from_args(flags)
        except (ValueError, TypeError) as e:
            problems.append(f"train_gpt.py rejects {' '.join(flags)}: {e}")
    runs = next((a.split("=", 1)[1] for a in split if a.startswith("--runs=")), "")
    for r in filter(None, runs.split(",")):
        if r not in step_gpu.RUNS:
            problems.append(f"bench/step_gpu.py has no run {r!r} (it has {', '.join(step_gpu.RUNS)})")
    for fn in ("write_synthetic_shards", "split_step"):
        if not hasattr(step_gpu, fn):
            problems.append(f"bench/step_gpu.py lacks {fn}()")
    if not torch.cuda.is_available():  # both stop right after parsing their arguments here
        import contextlib
        import io
        import runpy
        for script, args in (("bench/step_gpu.py", [a for a in split if a != "--cpu-smoke"]),
                             ("bench/constraints.py", ["--device", "cuda"])):
            saved = sys.argv
            sys.argv = [script] + args
            buf = io.StringIO()
            try:
                with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                    if script.endswith("step_gpu.py"):
                        rc = step_gpu.main(args)
                    else:
                        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
                        rc = 0
            except SystemExit as e:
                rc = e.code
            except Exception as e:  # noqa: BLE001
                rc = f"{type(e).__name__}: {e}"
            finally:
                sys.argv = saved
            if rc not in (0, None):
                problems.append(f"{script} {' '.join(args)}: exit {rc}: {last_line(buf.getvalue()) or ''}")
    for p in problems:
        print(f"problem: {p}")
    print(f"python checks: {len(PROJECT_FILES) + bool(anchor)} files compile-checked, {len(ours)} train_gpt flag "
          f"sets parsed, torch {torch.__version__}, CUDA {'available' if torch.cuda.is_available() else 'not available'}")
    return 1 if problems else 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "summary" and len(rest) == 2:
        print(write_summary(*rest))
        return 0
    if cmd == "versions" and not rest:
        return versions()
    if cmd == "shards" and len(rest) == 4:
        return shards(rest[0], *map(int, rest[1:]))
    if cmd == "dry-check":
        return dry_check(rest)
    print(f"usage: {__doc__.splitlines()[2].strip()} (and versions, shards, dry-check)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
