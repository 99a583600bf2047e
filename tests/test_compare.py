"""tools/compare.py on synthetic logs: parsing (ours, modded-nanogpt's, truncated, malformed),
grouping, statistics against numpy/scipy, the table, the CLI and the plots."""
import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings, strategies as st

from tools import compare
from tools.compare import LogFormatError, group_runs, parse_log, summary_table

SEP = "=" * 100

# Source code in the preamble, with lines that look like run lines: the parser must ignore them.
FAKE_CODE = """import torch
print0(f"step:{step}/{train_steps} val_loss:{val_loss:.4f} train_time:{t:.0f}ms step_avg:{a:.2f}ms")
step:1/2 val_loss:0.1234 val_acc:0.9 train_time:1ms step_avg:1ms
step:2/2 val_loss:0.0001 val_acc:0.99 train_time:2ms step_avg:1ms
step:2/2 lipschitz_bound_log10:-7
config: {"seed": 999, "w_max": 123}
peak memory allocated: 1 MiB
run finished
"""


def config(seed, w_max=8.0, constraint="soft_cap", num_iterations=4, tokens_per_step=1024, **kw):
    return {"run_id": f"run-{constraint}-{w_max}-{seed}", "preset": "shakespeare", "arch": "lipschitz",
            "constraint": constraint, "w_max": w_max, "seed": seed, "num_iterations": num_iterations,
            "train_seq_len": 256, "batch_size": 4, "world_size": 1,
            "tokens_per_step": tokens_per_step, "val_every": 2, **kw}


def our_log(cfg, vals, stop_after=None):
    """Text of a train_gpt.py log. vals: {step: (val_loss, val_acc, bound_log10_text, act_max)};
    training lines for every step; stop_after truncates after that step's training line."""
    m = cfg["num_iterations"]
    lines = [FAKE_CODE, SEP, "# lipschitz.py", "def certified_bound(model): ...", SEP,
             "Running Python 3.12", "Running PyTorch 2.13.0 on cpu", SEP,
             "config: " + json.dumps(cfg)]
    for step in range(m + 1):
        t = 100 * step
        if step in vals:
            loss, acc, bound, act = vals[step]
            lines += [f"step:{step}/{m} val_loss:{loss:.4f} val_acc:{acc:.4f} train_time:{t}ms step_avg:50.00ms",
                      f"step:{step}/{m} lipschitz_bound_log10:{bound}",
                      f"step:{step}/{m} max_weight_norm qkv:1.0000 o:0.9900 fc:1.0100 proj:0.5000 "
                      f"lm_head:{8 + step / 10:.4f} emb_row_rms:1.0000",
                      f"step:{step}/{m} act_max_entry:{act} act_max_rms:{act / 10}"]
        if step == m:
            break
        lines.append(f"step:{step + 1}/{m} train_time:{t + 100}ms step_avg:100.00ms")
        if stop_after is not None and step + 1 >= stop_after:
            return "\n".join(lines) + "\n"
    lines += ["peak memory allocated: 123 MiB reserved: 456 MiB", "run finished"]
    return "\n".join(lines) + "\n"


def speedrun_log(final_loss, m=3):
    """A modded-nanogpt style log: code, separators, nvidia-smi, no config, no val_acc,
    train_loss on training lines, 'nanms' averages, older peak memory wording."""
    lines = [FAKE_CODE, SEP, "Running PyTorch 2.6.0", "| NVIDIA-SMI 550.127.05 |", SEP,
             "Training dataloader files: ['a.bin']", SEP,
             f"step:0/{m} val_loss:10.8258 train_time:0ms step_avg:nanms"]
    for step in range(1, m + 1):
        lines.append(f"step:{step}/{m} train_loss:{5 - step / 10:.4f} train_time:{150 * step}ms step_avg:nanms")
    lines += [f"step:{m}/{m} val_loss:{final_loss:.4f} train_time:{150 * m + 5}ms step_avg:151.67ms",
              "peak memory consumption: 31563 MiB"]
    return "\n".join(lines) + "\n"


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


VALS = {0: (4.1744, 0.0152, "0.0", 1.0), 2: (2.5, 0.3, "12.5", 20.0), 4: (2.25, 0.35, "1e+300", 148480.0)}


# ---------------------------------------------------------------------------- parsing

def test_parse_our_log_exact_numbers_and_ignores_preamble(tmp_path):
    run = parse_log(write(tmp_path / "a.txt", our_log(config(1), VALS)))
    assert run.config == config(1)
    assert run.num_iterations == 4 and run.complete and run.notes == []
    assert run.val_steps == [0, 2, 4]  # no fake step:1/2 or step:2/2 from the code
    assert run.peak_memory == "123 MiB reserved: 456 MiB" and run.finished_marker
    assert [t["step"] for t in run.train] == [1, 2, 3, 4]
    assert run.train[2] == {"step": 3, "train_time": 300.0, "step_avg": 100.0}
    final = run.final
    assert final["step"] == 4 and final["val_loss"] == 2.25 and final["val_acc"] == 0.35
    assert final["train_time"] == 400.0 and final["step_avg"] == 50.0
    assert final["lipschitz_bound_log10"] == 1e300
    assert final["max_weight_norm.lm_head"] == 8.4 and final["max_weight_norm.o"] == 0.99
    assert final["act_max_entry"] == 148480.0 and final["act_max_rms"] == 14848.0
    assert run.points[2]["lipschitz_bound_log10"] == 12.5
    assert run.series("val_loss") == ([0, 2, 4], [4.1744, 2.5, 2.25])
    s = compare.run_summary(run)
    assert s == {"val_loss": 2.25, "val_acc": 0.35, "log10_bound": 1e300, "act_max_entry": 148480.0,
                 "step": 4, "train_time_s": 0.4, "tokens": 4 * 1024}


def test_parse_inf_bound_and_plain_bound(tmp_path):
    vals = {0: (4.0, 0.0, "inf", 1.0), 4: (3.0, 0.1, "inf", 2.0)}
    run = parse_log(write(tmp_path / "a.txt", our_log(config(1), vals)))
    assert run.final["lipschitz_bound_log10"] == math.inf
    assert compare.log10_bound({"lipschitz_bound": 1000.0}) == pytest.approx(3.0)
    assert compare.log10_bound({"lipschitz_bound": 1000.0, "lipschitz_bound_log10": 2.5}) == 2.5
    assert compare.log10_bound({"val_loss": 1.0}) is None


def test_parse_speedrun_log(tmp_path, monkeypatch):
    run = parse_log(write(tmp_path / "rec" / "x.txt", speedrun_log(3.2785)))
    assert run.config is None and run.complete
    assert run.val_steps == [0, 3]
    assert run.final == {"step": 3, "val_loss": 3.2785, "train_time": 455.0, "step_avg": 151.67}
    assert math.isnan(run.train[0]["step_avg"]) and run.train[0]["train_loss"] == 4.9
    assert run.peak_memory == "31563 MiB" and not run.finished_marker
    assert compare.run_summary(run)["val_acc"] is None and compare.run_summary(run)["tokens"] is None
    assert list(group_runs([run])) == [f"speedrun ({tmp_path / 'rec'})"]  # outside the cwd: absolute
    monkeypatch.chdir(tmp_path)
    assert list(group_runs([run])) == ["speedrun (rec)"]


def test_parse_truncated_log(tmp_path):
    run = parse_log(write(tmp_path / "t.txt", our_log(config(1), VALS, stop_after=3)))
    assert not run.complete and run.last_step == 3 and run.peak_memory is None
    assert run.final["step"] == 2 and run.final["val_loss"] == 2.5
    assert run.notes[0].startswith("truncated at step 3/4: last validation at step 2")
    assert "1 validations missing (4)" in run.notes[0]
    row = summary_table(group_runs([run])).splitlines()[2].split(" | ")
    assert row[1] == "1" and row[2] == "2.5000" and row[6] == "2" and "all runs truncated" in row[10]
    # killed before the first validation finished its extra lines, or before any validation at all
    text = our_log(config(1), VALS)
    run0 = parse_log(write(tmp_path / "t0.txt", text[:text.index("step:0/4 lipschitz_bound_log10")]))
    assert run0.val_steps == [0] and "lipschitz_bound_log10" not in run0.final


def test_truncated_before_any_validation(tmp_path):
    text = SEP + "\nconfig: " + json.dumps(config(1)) + "\nstep:1/4 train_time:100ms step_avg:100.00ms\n"
    run = parse_log(write(tmp_path / "t.txt", text))
    assert run.final == {} and not run.complete
    assert run.notes == ["truncated at step 1/4: no validation logged"]
    assert compare.run_summary(run)["val_loss"] is None


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"   \n\n", "empty file"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file"),
    (b"caf\xe9 step:1/2 val_loss:3\n", "not UTF-8"),
    (b"hello\nthis is a README\n", "no 'step:N/M ...' lines"),
    ((FAKE_CODE + SEP + "\nRunning PyTorch\n").encode(), "no 'step:N/M ...' lines"),
    (("config: {not json\nstep:1/2 val_loss:3.0 train_time:1ms step_avg:1ms\n").encode(), "not valid JSON"),
])
def test_malformed_files_raise_naming_file_and_reason(tmp_path, content, reason):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(LogFormatError, match=reason) as e:
        parse_log(str(p))
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_unreadable_path(tmp_path):
    with pytest.raises(LogFormatError, match="unreadable"):
        parse_log(str(tmp_path / "missing.txt"))
    with pytest.raises(LogFormatError, match="unreadable"):
        parse_log(str(tmp_path))  # a directory


def test_lines_must_match_in_full(tmp_path):
    text = (SEP + "\nstep:1/2 train_time:100ms step_avg:100.00ms\n"
            "step:2/2 val_loss:3.0 train_time:200ms step_avg:100.00ms extra words: here\n"
            "xstep:2/2 val_loss:1.0 train_time:200ms step_avg:100.00ms\n"
            "step:2/2 val_loss:abc\n")
    run = parse_log(write(tmp_path / "a.txt", text))
    assert run.points == {} and len(run.train) == 1


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True),
                       st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=6),
       st.sampled_from(["{!r}", "{:.4f}", "{:.6e}", "{}ms", "{:.3f}s"]))
def test_step_tokens_round_trip(values, spec):
    """Any float written by Python's formatting (repr, fixed, exponent, with 'ms', or 's' for
    seconds) parses back to the same float in ms (the formatted one; seconds times 1000),
    including inf, -inf, nan and huge/tiny values."""
    tokens = " ".join(f"{k}:{spec.format(v)}" for k, v in values.items())
    assert compare.STEP_LINE.fullmatch(f"step:3/10 {tokens}")
    parsed = compare.parse_step_tokens(tokens)
    scale = 1000.0 if spec.endswith("}s") else 1.0
    expected = {k: float(spec.format(v).removesuffix("s").removesuffix("m")) * scale for k, v in values.items()}
    assert parsed.keys() == expected.keys()
    for k, v in expected.items():
        assert parsed[k] == v or (math.isnan(v) and math.isnan(parsed[k]))


def test_bare_word_prefixes_following_keys():
    assert compare.parse_step_tokens("a:1 norm qkv:2 o:3 act x:4") == {
        "a": 1.0, "norm.qkv": 2.0, "norm.o": 3.0, "act.x": 4.0}


# ---------------------------------------------------------------------------- grouping and stats

def _seed_logs(tmp_path, sub, w_max, losses, constraint="soft_cap"):
    paths = []
    for seed, loss in enumerate(losses):
        vals = {0: (4.0, 0.0, "0.0", 1.0), 4: (loss, 0.3 + seed / 100, f"{w_max * 10 + seed}", 50.0 + seed)}
        paths.append(write(tmp_path / sub / f"s{seed}.txt", our_log(config(seed, w_max, constraint), vals)))
    return paths


A_LOSSES = [3.50, 3.55, 3.47]
B_LOSSES = [3.30, 3.31, 3.26, 3.33]


def test_group_by_config_minus_seed(tmp_path):
    runs = [parse_log(p) for p in _seed_logs(tmp_path, "a", 1.0, A_LOSSES) + _seed_logs(tmp_path, "b", 8.0, B_LOSSES)]
    groups = group_runs(runs)
    assert list(groups) == ["w_max=1.0", "w_max=8.0"]
    assert [r.seed for r in groups["w_max=8.0"]] == [0, 1, 2, 3]
    assert "w_max" in compare.default_group_keys(runs) and "seed" not in compare.default_group_keys(runs)
    # explicit keys: grouping by constraint alone merges both
    merged = group_runs(runs, ["constraint"])
    assert list(merged) == ["constraint=soft_cap"] and len(merged["constraint=soft_cap"]) == 7
    assert list(group_runs(runs, ["seed"])) == ["seed=0", "seed=1", "seed=2", "seed=3"]
    assert list(group_runs(runs, ["train_seq_len"])) == ["train_seq_len=256"]
    # one group only: label shows the headline keys
    assert list(group_runs(runs[:3])) == ["preset=shakespeare arch=lipschitz constraint=soft_cap w_max=1.0"]


def test_default_keys_skip_paths_and_resume(tmp_path):
    cfg = config(0, log_dir="logs", checkpoint_dir="ck", resume="x.pt", logit_scale=1.0, log_every=10,
                 checkpoint_every=0, max_steps_this_run=0)
    run = parse_log(write(tmp_path / "a.txt", our_log(cfg, VALS)))
    keys = compare.default_group_keys([run])
    assert "logit_scale" in keys and "w_max" in keys
    assert not {"log_dir", "checkpoint_dir", "resume", "seed", "run_id", "log_every", "checkpoint_every",
                "max_steps_this_run"} & set(keys)


def test_mean_std_and_ttest_match_numpy_scipy(tmp_path):
    runs = [parse_log(p) for p in _seed_logs(tmp_path, "a", 1.0, A_LOSSES) + _seed_logs(tmp_path, "b", 8.0, B_LOSSES)]
    groups = group_runs(runs)
    mean, std, n = compare.mean_std(B_LOSSES)
    assert n == 4 and mean == pytest.approx(np.mean(B_LOSSES), abs=1e-15)
    assert std == pytest.approx(np.std(B_LOSSES, ddof=1), rel=1e-12)
    assert compare.mean_std([2.0]) == (2.0, None, 1) and compare.mean_std([None]) == (None, None, 0)
    p = scipy.stats.ttest_ind(B_LOSSES, A_LOSSES, equal_var=False, alternative="less").pvalue
    assert compare.welch_p_less(B_LOSSES, A_LOSSES) == pytest.approx(p, rel=1e-12)
    assert p < 0.01  # a real difference, so the test below reads a meaningful number

    table = summary_table(groups)  # baseline: the first group (w_max=1.0)
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in table.splitlines()[2:4]}
    b = rows["w_max=8.0"]
    assert b[1] == "4"
    assert b[2] == f"{np.mean(B_LOSSES):.4f} ± {np.std(B_LOSSES, ddof=1):.4f}"
    accs = [0.30, 0.31, 0.32, 0.33]
    assert b[3] == f"{np.mean(accs):.4f} ± {np.std(accs, ddof=1):.4f}"
    assert b[4] == f"{np.mean([80, 81, 82, 83]):.1f}"  # log10 bound
    assert b[5] == f"{np.mean([50, 51, 52, 53]):.3g}"  # max act entry
    assert b[6] == "4" and b[7] == "0.4 ± 0.0" and b[8] == "4.10K"
    assert b[9] == f"{p:.3g}"
    assert rows["w_max=1.0"][9] == "baseline"
    # baseline chosen by substring: now the other direction, A < B is not significant
    table_b = summary_table(groups, baseline="8.0")
    p_rev = scipy.stats.ttest_ind(A_LOSSES, B_LOSSES, equal_var=False, alternative="less").pvalue
    assert f"| {p_rev:.3g} |" in table_b and p_rev > 0.99
    with pytest.raises(ValueError, match="matches no group"):
        summary_table(groups, baseline="adamw")


def test_single_seed_gives_na_p_and_no_std(tmp_path):
    runs = [parse_log(p) for p in _seed_logs(tmp_path, "a", 1.0, A_LOSSES) + _seed_logs(tmp_path, "b", 8.0, [3.3])]
    row = next(line for line in summary_table(group_runs(runs)).splitlines() if line.startswith("| w_max=8.0"))
    cells = row.split(" | ")
    assert cells[2] == "3.3000" and cells[9] == "n/a"


def test_truncated_runs_excluded_from_group_stats_but_listed(tmp_path):
    paths = _seed_logs(tmp_path, "a", 1.0, A_LOSSES)
    vals = {0: (4.0, 0.0, "0.0", 1.0), 2: (9.9, 0.1, "5", 5.0), 4: (3.0, 0.3, "10", 50.0)}
    paths.append(write(tmp_path / "a" / "trunc.txt", our_log(config(7, 1.0), vals, stop_after=3)))
    groups = group_runs([parse_log(p) for p in paths])
    table = summary_table(groups)
    row = table.splitlines()[2].split(" | ")
    assert row[1] == "3 of 4" and row[2].startswith(f"{np.mean(A_LOSSES):.4f}")
    assert "1 truncated run(s) excluded" in row[10]
    listing = compare.runs_table(groups)
    trunc_row = next(line for line in listing.splitlines() if "trunc.txt" in line).split(" | ")
    assert trunc_row[3] == "9.9000" and trunc_row[7] == "2/4" and "truncated at step 3/4" in trunc_row[10]


def test_diverged_and_inf_bound_reported(tmp_path):
    vals = {0: (4.0, 0.0, "inf", 1.0), 4: (math.nan, 0.0, "inf", math.inf)}
    paths = [write(tmp_path / f"d{s}.txt", our_log(config(s, 0.0, "none"), vals)) for s in range(2)]
    row = summary_table(group_runs([parse_log(p) for p in paths])).splitlines()[2].split(" | ")
    assert row[2] == "nan ± nan" and row[4] == "inf" and row[5] == "inf" and "2 of 2 diverged" in row[10]


def test_run_stopped_on_nan_train_loss(tmp_path):
    """train_gpt.py logs 'step:N/M train_loss:nan' (no train_time) and stops: truncated + diverged."""
    text = our_log(config(1), VALS, stop_after=3) + "step:4/4 train_loss:nan\n"
    run = parse_log(write(tmp_path / "nan.txt", text))
    assert not run.complete and run.diverged_at == 4 and run.final["step"] == 2
    assert run.notes[0].startswith("truncated at step 4/4") and run.notes[1] == "diverged: non-finite loss at step 4"
    assert parse_log(write(tmp_path / "ok.txt", our_log(config(1), VALS))).diverged_at is None


def test_missing_scipy_prints_na_with_note(tmp_path, monkeypatch):
    runs = [parse_log(p) for p in _seed_logs(tmp_path, "a", 1.0, A_LOSSES) + _seed_logs(tmp_path, "b", 8.0, B_LOSSES)]
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    table = summary_table(group_runs(runs))
    assert table.splitlines()[3].split(" | ")[9] == "n/a"
    assert "scipy is not installed" in table


# ---------------------------------------------------------------------------- CLI and plots

def test_cli_reports_bad_files_and_keeps_others(tmp_path, capsys):
    _seed_logs(tmp_path / "runs", "a", 1.0, A_LOSSES)
    write(tmp_path / "runs" / "speedrun" / "x.txt", speedrun_log(3.28))
    (tmp_path / "runs" / "garbage.txt").write_bytes(bytes(range(256)))
    (tmp_path / "runs" / "empty.txt").write_bytes(b"")
    (tmp_path / "runs" / "notes.md").write_text("step:1/2 val_loss:3.0 looks like a log line, but a .md holds no log")
    plots = tmp_path / "plots"
    code = compare.main([str(tmp_path / "runs"), "--plots", str(plots), "--baseline", "speedrun"])
    out, err = capsys.readouterr()
    assert code == 0
    err_lines = err.splitlines()
    assert any("garbage.txt" in e and "binary file" in e for e in err_lines)
    assert any("empty.txt" in e and "empty file" in e for e in err_lines)
    assert any("notes.md" in e and "not a log file" in e for e in err_lines)  # every skip is named
    assert err_lines[-len(compare.PLOT_FILES) - 1] == "compare.py: read 4 log(s), skipped 3 file(s)"
    assert "| preset=shakespeare arch=lipschitz constraint=soft_cap w_max=1.0 | 3 |" in out
    assert "speedrun (" in out and "baseline: speedrun (" in out
    for name in compare.PLOT_FILES:
        data = (plots / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000


def test_cli_exit_2_when_nothing_parses(tmp_path, capsys):
    (tmp_path / "e.txt").write_bytes(b"")
    assert compare.main([str(tmp_path / "e.txt"), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "e.txt: empty file" in err and "no log could be parsed" in err
    assert not (tmp_path / "plots").exists()


def test_cli_unknown_baseline_exit_2(tmp_path, capsys):
    p = write(tmp_path / "a.txt", our_log(config(1), VALS))
    assert compare.main([p, "--no-plots", "--baseline", "nope"]) == 2
    assert "matches no group" in capsys.readouterr().err


def test_plots_with_nothing_to_draw_are_skipped_with_a_note(tmp_path):
    """Speedrun logs have no bound or activations: those plots are not written, one line each says why."""
    run = parse_log(write(tmp_path / "s" / "x.txt", speedrun_log(3.28)))
    err = io.StringIO()
    written = compare.write_plots(group_runs([run]), str(tmp_path / "plots"), err=err)
    assert [os.path.basename(p) for p in written] == ["val_loss_vs_step.png", "val_loss_vs_time.png"]
    assert all(os.path.getsize(p) > 1000 for p in written)
    assert sorted(os.listdir(tmp_path / "plots")) == sorted(os.path.basename(p) for p in written)  # no temp files
    notes = err.getvalue().splitlines()
    assert notes == ["compare.py: no bound_vs_step.png: no run logs a certified bound",
                     "compare.py: no max_act_vs_step.png: no run logs act_max_entry",
                     "compare.py: no frontier.png: no group has a finite final val loss and certified bound"]


def test_script_runs_from_command_line(tmp_path):
    p = write(tmp_path / "a.txt", our_log(config(1), VALS))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, os.path.join(root, "tools", "compare.py"), p, "--no-plots",
                          "--group-by", "constraint,w_max"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert ("| constraint=soft_cap w_max=8.0 | 1 | 2.2500 | 0.3500 | 1e+300 | 148,480 | 4 | 0.4 | 4.10K "
            "| baseline |  |") in res.stdout


def test_resumed_log_appends_config_and_lines(tmp_path):
    """train_gpt.py --resume appends a second config line (no preamble) and the remaining steps:
    the run reads as one complete run, grouped by its first config."""
    first = our_log(config(1, max_steps_this_run=3), VALS, stop_after=3)
    rest = our_log(config(1, resume="ck.pt"), VALS)
    rest = rest[rest.index("step:4/4 train_time"):]
    run = parse_log(write(tmp_path / "r.txt", first + "config: " + json.dumps(config(1, resume="ck.pt")) + "\n" + rest))
    assert run.complete and run.val_steps == [0, 2, 4] and run.final["val_loss"] == 2.25
    assert run.config["max_steps_this_run"] == 3 and run.notes == ["several config lines, the first is used"]
    other = parse_log(write(tmp_path / "o.txt", our_log(config(2), VALS)))
    assert len(group_runs([run, other])) == 1


# ---------------------------------------------------------------------------- formats of the public logs

def optimization_track_log(final_loss=3.27699, m=3250, extra=True):
    """The optimization track's format: train_time in seconds, step_avg in ms, extra val fields."""
    lines = [FAKE_CODE, SEP, "Running Python 3.12.7", "Running PyTorch 2.9.0", SEP]
    for step in (0, 1625, m):
        t = 0.155 * step
        loss = 10.8258 if step == 0 else (4.1 if step < m else final_loss)
        fields = f" val_avg_loss:{loss + 0.01:.5f} val_ema_loss:{loss - 0.01:.5f}" if extra else ""
        lines.append(f"step:{step}/{m} val_loss:{loss:.5f}{fields} train_time:{t:.3f}s step_avg:155.18ms")
        if step < m:
            lines.append(f"step:{step + 1}/{m} train_time:{t + 0.155:.3f}s step_avg:155.00ms")
    lines[-1] = f"step:{m}/{m} val_loss:{final_loss:.5f} val_avg_loss:3.28 train_time:503.556s step_avg:155.18ms"
    return "\n".join(lines) + "\n"


def test_optimization_track_seconds_and_extra_fields(tmp_path):
    run = parse_log(write(tmp_path / "opt" / "r.txt", optimization_track_log()))
    assert run.complete and run.num_iterations == 3250 and run.notes == []
    assert run.final["val_loss"] == 3.27699 and run.final["val_avg_loss"] == 3.28
    assert run.final["train_time"] == pytest.approx(503556.0, rel=1e-12)  # seconds -> ms, one float rounding
    assert run.final["step_avg"] == 155.18
    assert run.points[1625]["val_ema_loss"] == pytest.approx(4.09)
    assert run.train[0] == {"step": 1, "train_time": pytest.approx(155.0), "step_avg": 155.0}
    s = compare.run_summary(run)
    assert s["val_loss"] == 3.27699 and s["train_time_s"] == pytest.approx(503.556, rel=1e-12) and s["step"] == 3250
    # the speedrun's ms format and this one side by side in one table
    other = parse_log(write(tmp_path / "ms" / "r.txt", speedrun_log(3.2785)))
    table = summary_table(group_runs([run, other]))
    assert "| 3.2770 |" in table and "| 503.6 |" in table and "| 3.2785 |" in table


def test_rejected_log_names_the_line_and_why(tmp_path):
    text = optimization_track_log().replace("train_time:503.556s", "train_time:503.556sec")
    bad_only = "\n".join(line for line in text.splitlines() if "sec" in line or not line.startswith("step:"))
    p = write(tmp_path / "bad.txt", bad_only + "\n")
    with pytest.raises(LogFormatError) as e:
        parse_log(p)
    msg = str(e.value)
    line_no = bad_only.splitlines().index(next(x for x in bad_only.splitlines() if "sec" in x)) + 1
    assert msg.startswith(p) and "\n" not in msg
    assert f"line {line_no} " in msg and "'train_time:503.556sec' is neither key:number" in msg
    # a log with some good lines is read, and the ignored line is noted with the same reason
    run = parse_log(write(tmp_path / "some.txt", text))
    assert run.final["step"] == 1625 and "1 step line(s) ignored" in run.notes[1]
    assert "train_time:503.556sec" in run.notes[1]


def fork_script(final_loss=5.3999, m=20, code_tail=""):
    """The paper's nanogpt fork: its .py source, then (after separators) its training log with
    multi-line weight, activation and gradient blocks."""
    lines = ["import torch", 'print0(f"step:{step}/{train_steps} val_loss:{val_loss:.4f}")',
             "step:1/2 val_loss:0.5 train_time:1ms step_avg:1ms", 'print0(">>> Act Max Entries:")' + code_tail,
             SEP, "Running Python 3.10.12", "Running PyTorch 2.8.0", "| NVIDIA-SMI 550.90.07  Driver |", SEP]
    for step in range(0, m + 1, 10):
        loss = final_loss if step == m else 10.8258 - step / 10
        lines += [">>> Weights:",
                  "_orig_mod.embed.weight                   (50257, 768) :  l1->RMS:1.1172, RMS->RMS:31.1008",
                  "_orig_mod.blocks.0.attn.attn_q.weight    (768, 768)   : RMS->RMS:1.1461",
                  ">>> Act RMS Norms:", "Embed:     1.0000", f"Block #0: {0.9 + step / 100:.4f}", "Block #1: 0.8438",
                  "Logits:    9.0000",
                  ">>> Act Max Entries:", "Embed:     5.2812", f"Block #0: {4.8 + step:.4f}", "Block #1: 4.4375",
                  f"Logits:    {30 + step:.4f}",
                  f"step:{step}/{m} val_loss:{loss:.4f} val_acc:0.2140 train_time:{150 * step}ms step_avg:150.00ms"]
        if step < m:
            lines += [">>> Grads:", "_orig_mod.embed.weight   (50257, 768) :  l1->RMS:0.0000, RMS->RMS:-0.0000",
                      f"step:{step + 10}/{m} train_time:{150 * step + 1500}ms step_avg:150.00ms"]
    lines.append("peak memory allocated: 29585 MiB reserved: 47290 MiB")
    return "\n".join(lines) + "\n"


def test_fork_log_in_a_py_file_and_its_multiline_blocks(tmp_path):
    run = parse_log(write(tmp_path / "fork" / "train_spectral_cap.py", fork_script()))
    assert run.complete and run.val_steps == [0, 10, 20] and run.notes == []
    f = run.final
    assert f["val_loss"] == 5.3999 and f["val_acc"] == 0.214 and f["train_time"] == 3000.0
    # the residual stream's largest entry: embed and blocks, not the logits
    assert f["act_max_entry"] == 24.8 and f["act_max_entry.logits"] == 50.0 and f["act_max_entry.block1"] == 4.4375
    assert f["act_max_rms"] == pytest.approx(1.1) and f["act_max_rms.embed"] == 1.0
    assert run.points[0]["act_max_entry"] == 5.2812
    assert all("act_max_entry" not in t for t in run.train)  # blocks belong to validation lines only
    assert compare.run_summary(run)["act_max_entry"] == 24.8
    assert all("Block" not in line for line in run.step_lines)


def test_multiline_block_without_its_validation_line_is_dropped(tmp_path):
    text = fork_script()
    cut = text.rindex("step:20/20 val_loss")
    run = parse_log(write(tmp_path / "f.txt", text[:cut] + "step:20/20 train_time:3000ms step_avg:150.00ms\n"))
    assert not run.complete and "act_max_entry" not in run.points.get(20, {})
    assert run.points[10]["act_max_entry"] == 14.8
    assert "1 multi-line block(s) not followed by a validation line ignored" in run.notes
    # a block, then a training line, then a validation line: whose block it was is ambiguous
    moved = text.replace("Logits:    40.0000\nstep:10/20 val_loss",
                         "Logits:    40.0000\nstep:10/20 train_time:1500ms step_avg:150.00ms\nstep:10/20 val_loss")
    assert moved != text
    run = parse_log(write(tmp_path / "g.txt", moved))
    assert "act_max_entry" not in run.points[10] and run.points[20]["act_max_entry"] == 24.8
    assert "1 multi-line block(s) not followed by a validation line ignored" in run.notes


def test_directory_scan_reads_logs_in_scripts_and_names_every_skip(tmp_path):
    d = tmp_path / "runs"
    write(d / "fork" / "train_spectral_cap.py", fork_script())
    write(d / "fork" / "helper.py", FAKE_CODE)  # code with log-like lines but no log after a separator
    write(d / "fork" / "README.md", "# notes\nstep:1/2 val_loss:3.0 train_time:1ms step_avg:1ms\n")
    write(d / "console.out", speedrun_log(3.3))
    write(d / "ckpt.pt", "")
    (d / "ckpt.pt").write_bytes(b"PK\x03\x04\x00\x00" + bytes(100))
    write(d / ".git" / "HEAD", "ref: refs/heads/main\n")
    err = io.StringIO()
    runs = compare.load_runs([str(d)], err=err)
    assert sorted(os.path.basename(r.path) for r in runs) == ["console.out", "train_spectral_cap.py"]
    lines = err.getvalue().splitlines()
    for name, reason in [("helper.py", "not a log file"), ("README.md", "not a log file"),
                         ("ckpt.pt", "binary file")]:
        assert sum(name in x and reason in x for x in lines) == 1, (name, lines)
    assert lines[-1] == "compare.py: read 2 log(s), skipped 3 file(s); 1 hidden file(s)/folder(s) not scanned"
    # named explicitly, a script is read whatever its extension (and without a separator)
    assert compare.load_runs([str(d / "fork" / "helper.py")], err=io.StringIO())[0].val_steps == [1, 2]


# ---------------------------------------------------------------------------- mixed groups and --group-by

def test_source_hash_tells_identical_code_apart(tmp_path):
    a1 = parse_log(write(tmp_path / "a1.txt", speedrun_log(3.28)))
    a2 = parse_log(write(tmp_path / "a2.txt", speedrun_log(3.30).replace("| NVIDIA-SMI 550", "| NVIDIA-SMI 560")))
    b = parse_log(write(tmp_path / "b.txt", speedrun_log(3.29).replace("import torch", "import torch, os")))
    assert a1.source_hash == a2.source_hash != b.source_hash  # hardware is not source; code is
    assert len(a1.source_hash) == 12
    ours = [parse_log(p) for p in _seed_logs(tmp_path, "o", 1.0, A_LOSSES)]
    assert len({r.source_hash for r in ours}) == 1 and ours[0].source_hash != a1.source_hash
    assert parse_log(write(tmp_path / "n.txt", "step:1/1 val_loss:3.0 train_time:1ms step_avg:1ms\n")).source_hash is None


def test_mixed_folder_warns_and_group_by_splits_it(tmp_path, capsys):
    d = tmp_path / "records"
    write(d / "record-1.txt", speedrun_log(3.28))
    write(d / "record-2.txt", speedrun_log(3.27))
    write(d / "reference.txt", speedrun_log(3.31).replace("import torch", "import torch  # reference"))
    write(d / "longer.txt", speedrun_log(3.20, m=4))
    runs = compare.load_runs([str(d)], err=io.StringIO())
    groups = group_runs(runs)
    assert len(groups) == 1
    (label, found), = compare.group_warnings(groups).items()
    assert found == ["mixes step counts 3, 4",
                     "mixes 2 different source codes (--group-by source splits them)"]
    assert "warning: mixes step counts 3, 4" in summary_table(groups)
    by_source = group_runs(runs, ["source"])
    assert sorted(len(g) for g in by_source.values()) == [1, 3]
    assert all(label.startswith("speedrun source=") for label in by_source)
    by_file = group_runs(runs, ["file"])
    assert len(by_file) == 4 and compare.group_warnings(by_file) == {}
    by_name = group_runs(runs, compare.parse_group_by(r"re:^(record|reference)"))
    assert {label: len(g) for label, g in by_name.items()} == {
        "speedrun re=record": 2, "speedrun re=(no match)": 1, "speedrun re=reference": 1}
    # the CLI prints the warning on stderr and splits with --group-by
    assert compare.main([str(d), "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "compare.py: warning: group 'speedrun (" in err and "mixes step counts 3, 4" in err
    assert compare.main([str(d), "--no-plots", "--group-by", "source,dir"]) == 0
    out, err = capsys.readouterr()
    assert "mixes step counts 3, 4" in err and "source codes" not in err  # longer.txt shares the records' code
    assert out.count("| speedrun source=") == 2 + 4  # two groups in the summary, four runs listed


def test_group_by_parsing():
    assert compare.parse_group_by("w_max, constraint") == ["w_max", "constraint"]
    assert compare.parse_group_by(r"w_max,re:(\w+),s\d") == ["w_max", r"re:(\w+),s\d"]  # the regex keeps its comma
    with pytest.raises(ValueError, match="invalid regex"):
        compare.parse_group_by("re:(")
    with pytest.raises(ValueError, match="no key"):
        compare.parse_group_by(" , ")


def test_group_by_regex_on_our_file_names(tmp_path):
    paths = []
    for name, w in [("softcap-w1", 1.0), ("softcap-w2", 2.0)]:
        for seed in range(2):
            vals = {0: (4.0, 0.0, "0.0", 1.0), 4: (3.0 - w / 10 + seed / 100, 0.3, "5", 5.0)}
            paths.append(write(tmp_path / f"{name}-s{seed}.txt", our_log(config(seed, w), vals)))
    runs = [parse_log(p) for p in paths]
    groups = group_runs(runs, [r"re:(.*)-s\d+\.txt"])
    assert {label: len(g) for label, g in groups.items()} == {"re=softcap-w1": 2, "re=softcap-w2": 2}


def test_redundant_keys_left_out_of_labels_and_named(tmp_path):
    paths = []
    for w in (1.0, 2.0):
        vals = {0: (4.0, 0.0, "0.0", 1.0), 4: (3.0, 0.3, "5", 5.0)}
        paths.append(write(tmp_path / f"w{w}.txt", our_log(config(0, w, lm_head_w_max=w), vals)))
    groups = group_runs([parse_log(p) for p in paths])
    assert list(groups) == ["w_max=1.0", "w_max=2.0"] and groups.hidden == {"lm_head_w_max": "w_max"}
    assert "lm_head_w_max (with w_max)" in summary_table(groups)


# ---------------------------------------------------------------------------- truncated groups, plots

def test_truncated_group_marked_in_table_and_plots(tmp_path):
    """Like the spectral_normalize runs stopped at step 1550 of 2000: the group says so everywhere."""
    paths = _seed_logs(tmp_path, "a", 1.0, A_LOSSES)
    paths.append(write(tmp_path / "t" / "t.txt", our_log(config(0, 1.0, "spectral_normalize"), VALS, stop_after=3)))
    groups = group_runs([parse_log(p) for p in paths])
    label = "constraint=spectral_normalize"
    assert compare.truncation_mark(groups[label]) == "(stopped at 2/4)"
    assert compare.truncation_mark(groups["constraint=soft_cap"]) == ""
    assert f"| {label} (stopped at 2/4) | 1 | 2.5000 |" in summary_table(groups)
    figs = compare.make_figures(groups)
    try:
        texts = [t.get_text() for t in figs["val_loss_vs_step.png"].legends[0].get_texts()]
        assert texts[1] == f"{label}\n(stopped at 2/4) (n=1)" and "stopped" not in texts[0]
        assert any("stopped at 2/4" in t.get_text() for t in figs["frontier.png"].legends[0].get_texts())
    finally:
        _close(figs)


def _close(figs):
    import matplotlib.pyplot as plt
    for fig in figs.values():
        if fig is not None:
            plt.close(fig)


def _fifteen_groups(tmp_path):
    """15 configurations that differ in several long-named keys (one stopped early), 1-2 seeds each,
    plus two speedrun folders given by absolute path."""
    paths = []
    for g in range(15):
        extra = {"muon_lr": [0.025, 0.05, 0.1][g % 3], "final_logit_scale": [4.0, 8.0, 16.0][g // 5],
                 "lm_head_w_max": [1.0, 2.0, 4.0][g % 3], "lm_head_lr": [0.005, 0.02][g % 2],
                 "attn_logit_scale": 8.0 + (g == 7), "optimizer": "adamw" if g == 14 else "muon"}
        for seed in range(1 + g % 2):
            final = 1.45 + g / 100 + seed / 1000 + (2.0 if g == 13 else 0.0)  # one far-off group
            vals = {s: (final + (5.5 - final) * math.exp(-s / 2) * (s < 8), 0.5, f"{8 + g / 10}", 4.0 + g)
                    for s in range(0, 9, 2)}
            cfg = config(seed, [1.0, 2.0, 3.0, 4.0, 5.0][g % 5], "soft_cap" if g < 12 else "spectral_normalize",
                         num_iterations=8, **extra)
            paths.append(write(tmp_path / "runs" / f"g{g}-s{seed}.txt",
                               our_log(cfg, vals, stop_after=5 if g == 12 else None)))
    for sub in ("2024-10-14_ModernArch", "2025-01-16_Sub3Min"):
        paths.append(write(tmp_path / "records" / "track_1_short" / sub / "log.txt", speedrun_log(3.28, m=8)))
    return group_runs([parse_log(p) for p in paths])


def test_plots_at_15_groups_are_readable(tmp_path):
    """Legend outside every axes (bounding boxes, labels and ticks included), one colour+linestyle
    per group, short labels without absolute paths, a zoomed panel that hides no close group."""
    groups = _fifteen_groups(tmp_path)
    assert len(groups) == 17
    figs = compare.make_figures(groups)
    try:
        for name, fig in figs.items():
            assert fig is not None, name
            fig.canvas.draw()
            renderer = fig.canvas.get_renderer()
            (legend,) = fig.legends
            box = legend.get_window_extent(renderer)
            fig_box = fig.bbox
            assert box.x0 >= fig_box.x0 - 1 and box.y0 >= fig_box.y0 - 1  # inside the figure
            for ax in fig.axes:
                assert not box.overlaps(ax.get_tightbbox(renderer)), name
            texts = [t.get_text() for t in legend.get_texts()]
            n = 17 if name.startswith("val_loss") else 15  # speedrun logs have no bound or activations
            assert len(texts) == n and len(set(texts)) == n
            assert all(len(line) <= compare.MAX_LABEL for t in texts for line in t.split("\n")), texts
            assert all(str(tmp_path) not in t for t in texts)
            if name != "frontier.png":
                looks = [(h.get_color(), h.get_linestyle()) for h in legend.legend_handles]
                assert len(set(looks)) == n, looks
        texts = [t.get_text() for t in figs["val_loss_vs_step.png"].legends[0].get_texts()]
        assert "speedrun 2024-10-14_ModernArch (n=1)" in texts, texts
        assert any(t.startswith("optimizer=adamw") for t in texts)
        zoom = figs["val_loss_vs_step.png"].axes[1]
        lo, hi = zoom.get_ylim()
        assert lo < 1.45 and 1.45 + 14 / 100 < hi < 3.0  # every close group in range, the far ones not
        assert "3 group(s) above the range" in zoom.get_title()  # group 13 and the two speedrun folders
    finally:
        _close(figs)


def test_group_styles_unique():
    styles = compare.group_styles(120)
    assert len({(s["color"], s["linestyle"]) for s in styles[:40]}) == 40
    assert len({(s["color"], s["linestyle"], s["marker"]) for s in styles}) == 120
    assert len({(s["color"], s["marker"]) for s in styles[:100]}) == 100


def test_cli_unwritable_plots_dir_one_line(tmp_path, capsys):
    p = write(tmp_path / "a.txt", our_log(config(1), VALS))
    blocker = write(tmp_path / "file", "x")
    assert compare.main([p, "--plots", os.path.join(blocker, "plots")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"compare.py: --plots {blocker}/plots: {blocker} is not a directory")
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert compare.main([p, "--plots", str(ro / "plots")]) == 2
        assert "is not writable" in capsys.readouterr().err
    # the check passes, but writing fails anyway (e.g. a full disk): still one line
    def fail(*a, **k):
        raise PermissionError(13, "Permission denied")
    import unittest.mock
    with unittest.mock.patch.object(compare, "_save_atomic", fail):
        assert compare.main([p, "--plots", str(tmp_path / "plots")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (f"compare.py: --plots {tmp_path}/plots: cannot write (Permission denied); "
                       "give a writable directory or --no-plots")


def test_cli_bad_group_by_regex(tmp_path, capsys):
    p = write(tmp_path / "a.txt", our_log(config(1), VALS))
    assert compare.main([p, "--no-plots", "--group-by", "re:(unclosed"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("compare.py: --group-by: invalid regex '(unclosed'") and err.count("\n") == 1


def test_step_lines_exposed_for_format_checks(tmp_path):
    run = parse_log(write(tmp_path / "a.txt", our_log(config(1), VALS)))
    assert run.step_lines[0] == "step:0/4 val_loss:4.1744 val_acc:0.0152 train_time:0ms step_avg:50.00ms"
    assert len(run.step_lines) == 4 * 3 + 4  # 3 validations of 4 lines, 4 training lines


def test_copied_log_warns_repeated_seed(tmp_path):
    """The same run in two folders (a record copied from the shared logs) would double its n."""
    a = write(tmp_path / "shared" / "s0.txt", our_log(config(0), VALS))
    b = write(tmp_path / "record" / "s0.txt", our_log(config(0), VALS))
    c = write(tmp_path / "record" / "s1.txt", our_log(config(1), VALS))
    groups = group_runs([parse_log(p) for p in (a, b, c)])
    assert list(compare.group_warnings(groups).values()) == [["repeats seed 0 (--group-by file lists the runs)"]]
    assert compare.group_warnings(group_runs([parse_log(p) for p in (b, c)])) == {}


def test_one_flag_sweep_table_shows_the_changed_flag(tmp_path):
    """A sweep that changes one flag per run: full labels would list all seven keys in every row."""
    base = {"muon_lr": 0.05, "embed_lr": 0.1, "final_logit_scale": 8.0, "attn_logit_scale": 8.0,
            "lm_head_lr": 0.005, "lm_head_w_max": 2.0, "micro_batch_size": 64}
    changes = [{}] + [{k: v * 2} for k, v in base.items()]
    paths = [write(tmp_path / f"r{i}.txt", our_log(config(0, 2.0, **{**base, **c}), VALS))
             for i, c in enumerate(changes)]
    groups = group_runs([parse_log(p) for p in paths])
    assert len(groups) == 8 and all(len(label) > 120 for label in groups)
    table = summary_table(groups, baseline="reference")
    rows = [line.split(" | ")[0].lstrip("| ") for line in table.splitlines()[2:10]]
    assert rows == ["reference", "muon_lr=0.1", "embed_lr=0.2", "final_logit_scale=16.0", "attn_logit_scale=16.0",
                    "lm_head_lr=0.01", "lm_head_w_max=4.0", "micro_batch_size=128"]
    assert "| reference | 1 | 2.2500 |" in table and "| baseline |" in table.splitlines()[2]
    assert ("Group labels list the changes from the most common setting: muon_lr=0.05 embed_lr=0.1 "
            "final_logit_scale=8.0 attn_logit_scale=8.0 lm_head_lr=0.005 lm_head_w_max=2.0 micro_batch_size=64.") in table
    assert compare.find_baseline(groups, "muon_lr=0.1") == list(groups)[1]  # its table label, exactly
    assert compare.runs_table(groups).splitlines()[3].startswith("| muon_lr=0.1 | r1.txt |")


def test_bound_flag_selects_the_sharp_certificate(tmp_path, capsys):
    """--bound=sharp reads lipschitz_bound_sharp_log10; a log without it shows no bound, not another one's."""
    def log(name, sharp):
        extra = f" lipschitz_bound_sharp_log10:{sharp}" if sharp is not None else ""
        (tmp_path / name).write_text(
            f'config: {{"w_max": {len(name)}, "seed": 0}}\n'
            f"step:10/10 val_loss:2.0 val_acc:0.3 train_time:100ms step_avg:10.00ms\n"
            f"step:10/10 lipschitz_bound_log10:5.0{extra}\n")
    log("new.txt", 3.4)
    log("older.txt", None)
    assert compare.main([str(tmp_path), "--bound=sharp", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "| 3.4 |" in out and "| 5.0 |" not in out
    runs = compare.select_bound(compare.load_runs([str(tmp_path)]), "sharp")
    bounds = {os.path.basename(r.path): compare.log10_bound(r.points[10]) for r in runs}
    assert bounds == {"new.txt": 3.4, "older.txt": None}
