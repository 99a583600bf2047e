"""tools/compare.py on synthetic logs (built by tests/test_runlog.py's helpers): grouping, statistics against
numpy/scipy, the tables, the CLI."""
import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

from test_runlog import (A_LOSSES, B_LOSSES, SEP, VALS, _seed_logs, config, fork_script, optimization_track_log, our_log,
                         speedrun_log, write)
import train_gpt as tg
from test_train_gpt import shards, smoke_args  # noqa: F401  (shards: a fixture)
from tools import compare, plots
from tools.compare import group_runs, summary_table
from tools.runlog import load_runs, parse_log

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------- what a run reports

def test_run_summary_of_each_format(tmp_path):
    run = parse_log(write(tmp_path / "a.txt", our_log(config(1), VALS)))
    assert compare.run_summary(run) == {"val_loss": 2.25, "val_acc": 0.35, "log10_bound": 1e300,
                                        "act_max_entry": 148480.0, "step": 4, "train_time_s": 0.4, "tokens": 4 * 1024}
    speedrun = compare.run_summary(parse_log(write(tmp_path / "rec" / "x.txt", speedrun_log(3.2785))))
    assert speedrun["val_acc"] is None and speedrun["tokens"] is None
    fork = parse_log(write(tmp_path / "fork" / "train_spectral_cap.py", fork_script()))
    assert compare.run_summary(fork)["act_max_entry"] == 24.8
    opt = compare.run_summary(parse_log(write(tmp_path / "opt" / "r.txt", optimization_track_log())))
    assert opt["val_loss"] == 3.27699 and opt["train_time_s"] == pytest.approx(503.556, rel=1e-12) and opt["step"] == 3250
    text = SEP + "\nconfig: " + json.dumps(config(1)) + "\nstep:1/4 train_time:100ms step_avg:100.00ms\n"
    assert compare.run_summary(parse_log(write(tmp_path / "t.txt", text)))["val_loss"] is None


def test_log10_bound_of_each_form():
    assert compare.log10_bound({"lipschitz_bound": 1000.0}, "appendix_c") == pytest.approx(3.0)  # its plain value
    assert compare.log10_bound({"lipschitz_bound": 1000.0, "lipschitz_bound_log10": 2.5}, "appendix_c") == 2.5
    assert compare.log10_bound({"lipschitz_bound": 1000.0, "lipschitz_bound_log10": 2.5}) is None  # not the sharp one
    assert compare.log10_bound({"lipschitz_bound_sharp_log10": 1.5, "lipschitz_bound_log10": 2.5}) == 1.5
    assert compare.log10_bound({"val_loss": 1.0}, "tight") is None


def test_speedrun_logs_grouped_by_folder(tmp_path, monkeypatch):
    run = parse_log(write(tmp_path / "rec" / "x.txt", speedrun_log(3.2785)))
    assert list(group_runs([run])) == [f"speedrun ({tmp_path / 'rec'})"]  # outside the cwd: absolute
    monkeypatch.chdir(tmp_path)
    assert list(group_runs([run])) == ["speedrun (rec)"]


def test_truncated_run_row(tmp_path):
    run = parse_log(write(tmp_path / "t.txt", our_log(config(1), VALS, stop_after=3)))
    row = summary_table(group_runs([run])).splitlines()[2].split(" | ")
    assert row[1] == "1" and row[2] == "2.5000" and row[6] == "2" and "all runs truncated" in row[10]


def test_resumed_log_groups_with_its_first_config(tmp_path):
    first = our_log(config(1, max_steps_this_run=3), VALS, stop_after=3)
    rest = our_log(config(1, resume="ck.pt"), VALS)
    rest = rest[rest.index("step:4/4 train_time"):]
    run = parse_log(write(tmp_path / "r.txt", first + "config: " + json.dumps(config(1, resume="ck.pt")) + "\n" + rest))
    other = parse_log(write(tmp_path / "o.txt", our_log(config(2), VALS)))
    assert len(group_runs([run, other])) == 1


def test_seconds_and_milliseconds_logs_in_one_table(tmp_path):
    run = parse_log(write(tmp_path / "opt" / "r.txt", optimization_track_log()))
    other = parse_log(write(tmp_path / "ms" / "r.txt", speedrun_log(3.2785)))
    table = summary_table(group_runs([run, other]))
    assert "| 3.2770 |" in table and "| 503.6 |" in table and "| 3.2785 |" in table


# ---------------------------------------------------------------------------- grouping and stats

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


RUN_CONTROL = dict(compile="no", warmup_steps=0, log_every=10, val_every=100, val_at_start=1, checkpoint_every=0,
                   checkpoint_minutes=10.0, checkpoint_dir="ck", log_dir="logs", resume="x.pt", max_steps_this_run=0,
                   memory_check=1, micro_batch_size=8)


def test_default_keys_skip_run_control_and_paths(tmp_path):
    """Only the fields that say what a run computes; not the seed, run id or how the run is managed."""
    run = parse_log(write(tmp_path / "a.txt", our_log(config(0, logit_scale=1.0, **RUN_CONTROL), VALS)))
    keys = compare.default_group_keys([run])
    assert "logit_scale" in keys and "w_max" in keys and "num_iterations" in keys
    assert not ({"seed", "run_id"} | set(RUN_CONTROL)) & set(keys)


def test_groups_labelled_by_what_differs_in_what_they_compute(tmp_path):
    """Two runs that differ in num_iterations and compile: labelled by num_iterations (compile, val_every and the
    other run-control fields change how a run is managed, not what it computes)."""
    def sorted_config(**kw):  # as train_gpt.py logs it: keys sorted, so compile comes before num_iterations
        return dict(sorted(config(**kw).items()))
    a = write(tmp_path / "a.txt", our_log(sorted_config(seed=0, num_iterations=4, compile="no", val_every=2), VALS))
    vals6 = {**VALS, 6: (2.0, 0.4, "9", 5.0)}
    b = write(tmp_path / "b.txt", our_log(sorted_config(seed=0, num_iterations=6, compile="yes", val_every=3), vals6))
    groups = group_runs([parse_log(a), parse_log(b)])
    assert list(groups) == ["num_iterations=4", "num_iterations=6"] and groups.hidden == {}
    # the same computation managed differently (compile, cadence, micro-batches) is one configuration
    c = write(tmp_path / "c.txt", our_log(config(1, num_iterations=4, **RUN_CONTROL), VALS))
    assert [len(g) for g in group_runs([parse_log(a), parse_log(c)]).values()] == [2]


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


def test_missing_scipy_prints_na_with_note(tmp_path, monkeypatch):
    runs = [parse_log(p) for p in _seed_logs(tmp_path, "a", 1.0, A_LOSSES) + _seed_logs(tmp_path, "b", 8.0, B_LOSSES)]
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    table = summary_table(group_runs(runs))
    assert table.splitlines()[3].split(" | ")[9] == "n/a"
    assert "scipy is not installed" in table


# ---------------------------------------------------------------------------- CLI

def test_cli_reports_bad_files_and_keeps_others(tmp_path, capsys):
    _seed_logs(tmp_path / "runs", "a", 1.0, A_LOSSES)
    write(tmp_path / "runs" / "speedrun" / "x.txt", speedrun_log(3.28))
    (tmp_path / "runs" / "garbage.txt").write_bytes(bytes(range(256)))
    (tmp_path / "runs" / "empty.txt").write_bytes(b"")
    (tmp_path / "runs" / "notes.md").write_text("step:1/2 val_loss:3.0 looks like a log line, but a .md holds no log")
    out_dir = tmp_path / "plots"
    code = compare.main([str(tmp_path / "runs"), "--plots", str(out_dir), "--baseline", "speedrun"])
    out, err = capsys.readouterr()
    assert code == 0
    err_lines = err.splitlines()
    assert any("garbage.txt" in e and "binary file" in e for e in err_lines)
    assert any("empty.txt" in e and "empty file" in e for e in err_lines)
    assert any("notes.md" in e and "not a log file" in e for e in err_lines)  # every skip is named
    assert err_lines[-len(plots.PLOT_FILES) - 1] == "compare.py: read 4 log(s), skipped 3 file(s)"
    assert "| preset=shakespeare arch=lipschitz constraint=soft_cap w_max=1.0 | 3 |" in out
    assert "speedrun (" in out and "baseline: speedrun (" in out
    for name in plots.PLOT_FILES:
        data = (out_dir / name).read_bytes()
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


def test_script_runs_from_command_line(tmp_path):
    p = write(tmp_path / "a.txt", our_log(config(1), VALS))
    res = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "compare.py"), p, "--no-plots",
                          "--group-by", "constraint,w_max"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert ("| constraint=soft_cap w_max=8.0 | 1 | 2.2500 | 0.3500 | 1e+300 | 148,480 | 4 | 0.4 | 4.10K "
            "| baseline |  |") in res.stdout


# ---------------------------------------------------------------------------- mixed groups and --group-by

def test_mixed_folder_warns_and_group_by_splits_it(tmp_path, capsys):
    d = tmp_path / "records"
    write(d / "record-1.txt", speedrun_log(3.28))
    write(d / "record-2.txt", speedrun_log(3.27))
    write(d / "reference.txt", speedrun_log(3.31).replace("import torch", "import torch  # reference"))
    write(d / "longer.txt", speedrun_log(3.20, m=4))
    runs = load_runs([str(d)], err=io.StringIO())
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


def test_cli_unwritable_plots_dir_one_line(tmp_path, capsys):
    p = write(tmp_path / "a.txt", our_log(config(1), VALS))
    blocker = write(tmp_path / "file", "x")
    assert compare.main([p, "--plots", os.path.join(blocker, "plots")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"compare.py: --plots {blocker}/plots: cannot write there (Not a directory)")
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert compare.main([p, "--plots", str(ro / "plots")]) == 2
        assert "cannot write there (Permission denied)" in capsys.readouterr().err
    # the check passes, but writing fails anyway (e.g. a full disk): still one line
    def fail(*a, **k):
        raise PermissionError(13, "Permission denied")
    import unittest.mock
    with unittest.mock.patch.object(plots, "_save_png", fail):
        assert compare.main([p, "--plots", str(tmp_path / "plots")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (f"compare.py: --plots {tmp_path}/plots: cannot write (Permission denied); "
                       "give a writable directory or --no-plots")


@pytest.mark.parametrize("args, says", [(["--bound=exact"], "argument --bound: invalid choice: 'exact'"),
                                        (["--nonsense"], "unrecognized arguments: --nonsense"),
                                        ([], "the following arguments are required: LOG_OR_DIR")])
def test_cli_bad_arguments_one_line(tmp_path, capsys, args, says):
    p = write(tmp_path / "a.txt", our_log(config(1), VALS))
    assert compare.main(([p] if args else []) + args) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("compare.py: ") and says in err, err


def test_cli_bad_group_by_regex(tmp_path, capsys):
    p = write(tmp_path / "a.txt", our_log(config(1), VALS))
    assert compare.main([p, "--no-plots", "--group-by", "re:(unclosed"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("compare.py: --group-by: invalid regex '(unclosed'") and err.count("\n") == 1


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
            "lm_head_lr": 0.005, "lm_head_w_max": 2.0, "muon_momentum_warmup_steps": 300}
    changes = [{}] + [{k: v * 2} for k, v in base.items()]
    paths = [write(tmp_path / f"r{i}.txt", our_log(config(0, 2.0, **{**base, **c}), VALS))
             for i, c in enumerate(changes)]
    groups = group_runs([parse_log(p) for p in paths])
    assert len(groups) == 8 and all(len(label) > 120 for label in groups)
    table = summary_table(groups, baseline="reference")
    rows = [line.split(" | ")[0].lstrip("| ") for line in table.splitlines()[2:10]]
    assert rows == ["reference", "muon_lr=0.1", "embed_lr=0.2", "final_logit_scale=16.0", "attn_logit_scale=16.0",
                    "lm_head_lr=0.01", "lm_head_w_max=4.0", "muon_momentum_warmup_steps=600"]
    assert "| reference | 1 | 2.2500 |" in table and "| baseline |" in table.splitlines()[2]
    assert ("Group labels list the changes from the most common setting: muon_lr=0.05 embed_lr=0.1 "
            "final_logit_scale=8.0 attn_logit_scale=8.0 lm_head_lr=0.005 lm_head_w_max=2.0 muon_momentum_warmup_steps=300.") in table
    assert compare.find_baseline(groups, "muon_lr=0.1") == list(groups)[1]  # its table label, exactly
    assert compare.runs_table(groups).splitlines()[3].startswith("| muon_lr=0.1 | r1.txt |")


def _bound_logs(tmp_path):
    """Two runs at step 10/10: new.txt logs every form of the bound, older.txt (older code) only Appendix C's."""
    def log(name, forms):
        (tmp_path / name).write_text(
            f'config: {{"w_max": {len(name)}, "seed": 0}}\n'
            f"step:10/10 val_loss:2.0 val_acc:0.3 train_time:100ms step_avg:10.00ms\n"
            f"step:10/10 lipschitz_bound_log10:5.0 lipschitz_bound:1e5 {forms}\n")
    log("new.txt", "lipschitz_bound_tight_log10:4.2 lipschitz_bound_sharp_log10:3.4 "
                   "lipschitz_bound_paper_literal_log10:2.1")
    log("older.txt", "")
    return load_runs([str(tmp_path)], err=io.StringIO())


def test_default_bound_is_the_certified_sharp_one(tmp_path, capsys):
    """The bound a run's end-of-run summary prints (lipschitz_bound_sharp_log10), called the certified bound;
    a log without it (older code) shows none rather than another form's, and a note says how to see that."""
    assert compare.DEFAULT_BOUND == "sharp" and compare.BOUNDS["sharp"].log_key == "lipschitz_bound_sharp_log10"
    runs = _bound_logs(tmp_path)
    bounds = {os.path.basename(r.path): compare.run_summary(r)["log10_bound"] for r in runs}
    assert bounds == {"new.txt": 3.4, "older.txt": None}
    capsys.readouterr()
    assert compare.main([str(tmp_path), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "| log10 certified bound |" in out and "| 3.4 |" in out and "| 5.0 |" not in out
    assert "Certified bound (lipschitz_bound_sharp_log10): " in out
    assert "1 run(s) log no certified bound (older code): --bound=appendix_c shows the Appendix C bound they log." in out
    import matplotlib.pyplot as plt
    figs = plots.make_figures(compare.plot_input(group_runs(runs)))
    try:
        assert figs["bound_vs_step.png"].axes[0].get_ylabel() == "log10 certified bound"
        assert figs["frontier.png"].axes[0].get_xlabel() == "log10 certified bound"
        assert [list(line.get_ydata()) for line in figs["bound_vs_step.png"].axes[0].lines] == [[3.4]]
    finally:
        for fig in figs.values():
            plt.close(fig)


@pytest.mark.parametrize("bound, name, value", [("appendix_c", "Appendix C bound", "5.0"),
                                                ("tight", "tight bound", "4.2"),
                                                ("paper_literal", "paper-literal bound", "2.1")])
def test_other_bound_forms_named_for_what_they_are(tmp_path, capsys, bound, name, value):
    _bound_logs(tmp_path)
    assert compare.main([str(tmp_path), "--no-plots", f"--bound={bound}"]) == 0
    out = capsys.readouterr().out
    assert f"| log10 {name} |" in out and f"| {value} |" in out and "log10 certified bound" not in out
    if bound == "paper_literal":
        assert "NOT a certificate" in out
    if bound != "appendix_c":  # the older log has only the Appendix C form
        assert "1 run(s) log no " + name in out
    older = next(r for r in _bound_logs(tmp_path) if r.path.endswith("older.txt"))
    assert compare.log10_bound(older.final, bound) == (5.0 if bound == "appendix_c" else None)



def test_truncated_group_marked_in_table(tmp_path):
    """Like the spectral_normalize runs stopped at step 1550 of 2000: the group says so in the table."""
    paths = _seed_logs(tmp_path, "a", 1.0, A_LOSSES)
    paths.append(write(tmp_path / "t" / "t.txt", our_log(config(0, 1.0, "spectral_normalize"), VALS, stop_after=3)))
    groups = group_runs([parse_log(p) for p in paths])
    label = "constraint=spectral_normalize"
    assert compare.truncation_mark(groups[label]) == "(stopped at 2/4)"
    assert compare.truncation_mark(groups["constraint=soft_cap"]) == ""
    assert f"| {label} (stopped at 2/4) | 1 | 2.5000 |" in summary_table(groups)


# ---------------------------------------------------------------------------- a record's table, pinned

H100_2000 = os.path.join(ROOT, "records", "2026-11-22-shakespeare-h100", "logs", "shakespeare-2000")
# What compare.py prints for that record folder with the bound its table.md was made with: its table.md but
# for the bound's name. Any change to this text is a change of what compare reports, to be made on purpose.
H100_2000_TABLE = """\
| group | n | val loss | val acc | log10 Appendix C bound | max act entry | steps | train time (s) | tokens | p (loss < baseline) | notes |
|---|---|---|---|---|---|---|---|---|---|---|
| arch=lipschitz constraint=none optimizer=adamw w_max=1.0 | 3 | 1.5070 ± 0.0063 | 0.5671 ± 0.0011 | 28.8 | 5.1 | 2000 | 56.5 ± 15.0 | 32.77M | baseline |  |
| arch=lipschitz constraint=none optimizer=muon w_max=1.0 | 3 | 3.1998 ± 0.0676 | 0.1692 ± 0.0105 | 35.4 | 3,538 | 2000 | 82.1 ± 14.3 | 32.77M | 1 |  |
| arch=lipschitz constraint=soft_cap optimizer=muon w_max=1.0 | 3 | 2.0189 ± 0.0034 | 0.4098 ± 0.0024 | 3.4 | 3.39 | 2000 | 93.5 ± 12.2 | 32.77M | 1 |  |
| arch=lipschitz constraint=soft_cap optimizer=muon w_max=2.0 | 3 | 1.4631 ± 0.0029 | 0.5587 ± 0.0004 | 8.7 | 4.97 | 2000 | 93.6 ± 15.0 | 32.77M | 0.00109 |  |
| arch=lipschitz constraint=soft_cap optimizer=muon w_max=3.0 | 3 | 1.4494 ± 0.0081 | 0.5744 ± 0.0013 | 12.6 | 5.32 | 2000 | 92.3 ± 14.2 | 32.77M | 0.000422 |  |
| arch=lipschitz constraint=spectral_normalize optimizer=muon w_max=1.0 (stopped at 1550/2000) | 1 | 2.1213 | 0.3844 | 3.4 | 3.39 | 1550 | 431.5 | 25.40M | n/a | all runs truncated: last validations used |
| arch=lipschitz constraint=spectral_normalize optimizer=muon w_max=2.0 (stopped at 1550/2000) | 1 | 1.5866 | 0.5231 | 9.0 | 5 | 1550 | 432.8 | 25.40M | n/a | all runs truncated: last validations used |
| arch=lipschitz constraint=spectral_normalize optimizer=muon w_max=3.0 (stopped at 1550/2000) | 1 | 1.4634 | 0.5624 | 13.2 | 4.43 | 1550 | 431.7 | 25.40M | n/a | all runs truncated: last validations used |
| arch=speedrun constraint=none optimizer=muon w_max=1.0 | 3 | 2.7088 ± 0.0120 | 0.5448 ± 0.0018 | inf | 7,735 | 2000 | 85.4 ± 13.7 | 32.77M | 1 |  |

Mean ± sample std over seeds of the final validation; log10 Appendix C bound and max act entry are means over seeds. p: one-sided Welch t-test that the group's mean final val loss is below the baseline's (baseline: arch=lipschitz constraint=none optimizer=adamw w_max=1.0); n/a when either group has fewer than 2 runs.
Appendix C bound (lipschitz_bound_log10): the paper's Appendix C bound made sound per head, never below the tight one; logged by every version.
Not shown in the labels (their values vary together with a shown key): lm_head_w_max (with w_max), weight_decay (with optimizer).

| group | log | seed | val loss | val acc | log10 Appendix C bound | max act entry | step | train time (s) | tokens | status |
|---|---|---|---|---|---|---|---|---|---|---|
| arch=lipschitz constraint=none optimizer=adamw w_max=1.0 | adamw-wd-s0.txt | 0 | 1.5044 | 0.5682 | 28.7 | 5.2 | 2000/2000 | 39.3 | 32.77M | complete |
| arch=lipschitz constraint=none optimizer=adamw w_max=1.0 | adamw-wd-s1.txt | 1 | 1.5024 | 0.5660 | 28.7 | 5.25 | 2000/2000 | 65.1 | 32.77M | complete |
| arch=lipschitz constraint=none optimizer=adamw w_max=1.0 | adamw-wd-s2.txt | 2 | 1.5142 | 0.5670 | 29.0 | 4.84 | 2000/2000 | 65.3 | 32.77M | complete |
| arch=lipschitz constraint=none optimizer=muon w_max=1.0 | normfree-unconstrained-s0.txt | 0 | 3.2087 | 0.1712 | 35.6 | 4,494 | 2000/2000 | 65.7 | 32.77M | complete |
| arch=lipschitz constraint=none optimizer=muon w_max=1.0 | normfree-unconstrained-s1.txt | 1 | 3.1281 | 0.1785 | 35.0 | 2,284 | 2000/2000 | 91.0 | 32.77M | complete |
| arch=lipschitz constraint=none optimizer=muon w_max=1.0 | normfree-unconstrained-s2.txt | 2 | 3.2625 | 0.1578 | 35.7 | 3,835 | 2000/2000 | 89.6 | 32.77M | complete |
| arch=lipschitz constraint=soft_cap optimizer=muon w_max=1.0 | softcap-w1-s0.txt | 0 | 2.0225 | 0.4081 | 3.4 | 3.27 | 2000/2000 | 79.4 | 32.77M | complete |
| arch=lipschitz constraint=soft_cap optimizer=muon w_max=1.0 | softcap-w1-s1.txt | 1 | 2.0184 | 0.4125 | 3.4 | 3.5 | 2000/2000 | 99.8 | 32.77M | complete |
| arch=lipschitz constraint=soft_cap optimizer=muon w_max=1.0 | softcap-w1-s2.txt | 2 | 2.0157 | 0.4088 | 3.4 | 3.4 | 2000/2000 | 101.3 | 32.77M | complete |
| arch=lipschitz constraint=soft_cap optimizer=muon w_max=2.0 | softcap-w2-s0.txt | 0 | 1.4664 | 0.5584 | 8.7 | 4.84 | 2000/2000 | 76.4 | 32.77M | complete |
| arch=lipschitz constraint=soft_cap optimizer=muon w_max=2.0 | softcap-w2-s1.txt | 1 | 1.4609 | 0.5592 | 8.7 | 4.85 | 2000/2000 | 100.8 | 32.77M | complete |
| arch=lipschitz constraint=soft_cap optimizer=muon w_max=2.0 | softcap-w2-s2.txt | 2 | 1.4620 | 0.5586 | 8.7 | 5.22 | 2000/2000 | 103.6 | 32.77M | complete |
| arch=lipschitz constraint=soft_cap optimizer=muon w_max=3.0 | softcap-w3-s0.txt | 0 | 1.4507 | 0.5743 | 12.6 | 5.53 | 2000/2000 | 76.0 | 32.77M | complete |
| arch=lipschitz constraint=soft_cap optimizer=muon w_max=3.0 | softcap-w3-s1.txt | 1 | 1.4407 | 0.5757 | 12.6 | 5.28 | 2000/2000 | 102.1 | 32.77M | complete |
| arch=lipschitz constraint=soft_cap optimizer=muon w_max=3.0 | softcap-w3-s2.txt | 2 | 1.4568 | 0.5732 | 12.6 | 5.14 | 2000/2000 | 98.8 | 32.77M | complete |
| arch=lipschitz constraint=spectral_normalize optimizer=muon w_max=1.0 | specnorm-w1-s0.txt | 0 | 2.1213 | 0.3844 | 3.4 | 3.39 | 1550/2000 | 431.5 | 25.40M | truncated at step 1575/2000: last validation at step 1550, 9 validations missing (1600, 1650, ..., 2000) |
| arch=lipschitz constraint=spectral_normalize optimizer=muon w_max=2.0 | specnorm-w2-s0.txt | 0 | 1.5866 | 0.5231 | 9.0 | 5 | 1550/2000 | 432.8 | 25.40M | truncated at step 1575/2000: last validation at step 1550, 9 validations missing (1600, 1650, ..., 2000) |
| arch=lipschitz constraint=spectral_normalize optimizer=muon w_max=3.0 | specnorm-w3-s0.txt | 0 | 1.4634 | 0.5624 | 13.2 | 4.43 | 1550/2000 | 431.7 | 25.40M | truncated at step 1575/2000: last validation at step 1550, 9 validations missing (1600, 1650, ..., 2000) |
| arch=speedrun constraint=none optimizer=muon w_max=1.0 | speedrun-arch-s0.txt | 0 | 2.6987 | 0.5461 | inf | 7,913 | 2000/2000 | 69.6 | 32.77M | complete |
| arch=speedrun constraint=none optimizer=muon w_max=1.0 | speedrun-arch-s1.txt | 1 | 2.7220 | 0.5428 | inf | 6,505 | 2000/2000 | 93.8 | 32.77M | complete |
| arch=speedrun constraint=none optimizer=muon w_max=1.0 | speedrun-arch-s2.txt | 2 | 2.7057 | 0.5456 | inf | 8,787 | 2000/2000 | 92.9 | 32.77M | complete |
"""


def test_record_table_pinned(capsys):
    assert compare.main([H100_2000, "--bound=appendix_c", "--no-plots"]) == 0
    out, err = capsys.readouterr()
    assert out == H100_2000_TABLE
    assert err == "compare.py: read 21 log(s), skipped 0 file(s)\n"


# ---------------------------------------------------------------------------- what users' folders hold

@pytest.fixture(scope="module")
def trained_folder(shards, tmp_path_factory):  # noqa: F811
    """A folder of logs the real trainer wrote (smoke preset): resumed.txt, a run of 30 steps stopped at step 10
    and resumed to step 21 (val_every=100: no validation after step 0); short.txt, a run of 8 steps with another
    compile, stopped at its validation at step 2 (no run completes: the end-of-run sample takes seconds);
    untrained.txt, short.txt cut after step 0 (what a run ended before its first step, e.g. by a second signal,
    leaves)."""
    out = tmp_path_factory.mktemp("trained")
    resumed = ["--run_id=resumed", "--num_iterations=30", "--val_every=100", "--val_tokens=1024", "--compile=no"]
    tg.main(smoke_args(shards, out, *resumed, "--max_steps_this_run=10"))
    tg.main(smoke_args(shards, out, *resumed, "--max_steps_this_run=11", f"--resume={out}/ckpt/resumed.pt"))
    tg.main(smoke_args(shards, out, "--run_id=short", "--num_iterations=8", "--val_every=2", "--val_tokens=1024",
                       "--compile=auto", "--max_steps_this_run=2"))
    lines = (out / "logs" / "short.txt").read_text().splitlines(keepends=True)
    last = max(i for i, line in enumerate(lines) if line.startswith("step:0/"))
    (out / "logs" / "untrained.txt").write_text("".join(lines[:last + 1]))
    return out / "logs"


def test_resumed_run_reported_at_its_last_step(trained_folder):
    run = parse_log(str(trained_folder / "resumed.txt"))
    assert run.last_step == 21 and run.resumed_from == [10] and run.val_steps == [0] and not run.complete
    assert run.notes == ["truncated at step 21/30: no validation after step 0, 1 validations missing (30)",
                         "resumed at step 10"]
    s = compare.run_summary(run)
    assert s["step"] == 21 and s["tokens"] == 21 * run.config["tokens_per_step"] and s["val_loss"] is None
    assert s["train_time_s"] == run.train[-1]["train_time"] / 1000 and run.train[-1]["step"] == 21
    assert compare.truncation_mark([run]) == "(stopped at 21/30)"


def test_folder_with_resumed_and_untrained_logs(trained_folder, capsys):
    """The resumed run is one run at its last step; the log without a training step is skipped (one line), not
    a group of its own or a repeat of short.txt's seed; groups are labelled by num_iterations, not compile
    (nor val_every or max_steps_this_run)."""
    assert compare.main([str(trained_folder), "--no-plots"]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        "compare.py: read 3 log(s), skipped 0 file(s)",
        f"compare.py: skipping 1 log(s) with no training step (nothing logged after step 0): {trained_folder}/untrained.txt"]
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| num_iterations=")]
    assert [r[0] for r in rows] == ["| num_iterations=30 (stopped at 21/30)", "| num_iterations=8 (stopped at 2/8)",
                                    "| num_iterations=30", "| num_iterations=8"]
    assert rows[0][1:3] == ["1", "n/a"] and rows[0][6] == "21" and rows[0][8] == "21.50K"
    assert rows[1][2] != "n/a" and rows[1][6] == "2"  # validated at step 2: its val loss there
    assert rows[2][1] == "resumed.txt" and rows[2][7] == "21/30" and rows[2][9] == "21.50K"
    assert rows[3][1] == "short.txt" and rows[3][7] == "2/8" and rows[3][10].startswith("truncated at step 2/8")
    assert "repeats seed" not in out + err and "untrained.txt" not in out


def test_only_untrained_logs_exit_2(trained_folder, tmp_path, capsys):
    p = write(tmp_path / "u.txt", (trained_folder / "untrained.txt").read_text())
    assert compare.main([p, "--no-plots"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == "compare.py: no log has a training step; nothing to compare" and len(err) == 3


def test_closed_pipe_ends_quietly(tmp_path):
    """`compare.py FOLDER | head -1`: the reader is gone before the table is written (here it closed the pipe
    before the start); exit 0, and stderr holds just what it holds on a normal run: no traceback."""
    _seed_logs(tmp_path, "runs", 1.0, A_LOSSES)
    cmd = [sys.executable, os.path.join(ROOT, "tools", "compare.py"), str(tmp_path / "runs"), "--no-plots"]
    normal = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert normal.returncode == 0 and normal.stdout.startswith("| group |")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        closed = subprocess.run(cmd, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert closed.returncode == 0 and closed.stderr == normal.stderr == "compare.py: read 3 log(s), skipped 0 file(s)\n"
