"""tools/compare.py on synthetic logs: parsing (ours, modded-nanogpt's, truncated, malformed),
grouping, statistics against numpy/scipy, the table, the CLI and the plots."""
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
       st.sampled_from(["{!r}", "{:.4f}", "{:.6e}", "{}ms"]))
def test_step_tokens_round_trip(values, spec):
    """Any float written by Python's formatting (repr, fixed, exponent, with 'ms') parses back to
    the same float (the formatted one), including inf, -inf, nan and huge/tiny values."""
    tokens = " ".join(f"{k}:{spec.format(v)}" for k, v in values.items())
    assert compare.STEP_LINE.fullmatch(f"step:3/10 {tokens}")
    parsed = compare.parse_step_tokens(tokens)
    expected = {k: float(spec.format(v).removesuffix("ms")) for k, v in values.items()}
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


def test_plots_with_nothing_to_draw_still_written(tmp_path):
    """Speedrun logs have no bound or activations: those plots say so instead of failing."""
    run = parse_log(write(tmp_path / "s" / "x.txt", speedrun_log(3.28)))
    for p in compare.write_plots(group_runs([run]), str(tmp_path / "plots")):
        assert os.path.getsize(p) > 1000


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
