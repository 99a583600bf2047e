"""Compare speedrun-format training logs: a markdown table with significance tests, and plots.

Usage:
    python tools/compare.py LOG_OR_DIR... [--baseline S] [--group-by K1,K2|re:REGEX] [--plots DIR] [--no-plots]

The logs are read by tools/runlog.py (its docstring is the log format, and which files of a folder
are read); stderr names every file skipped and why, then how many were read. Runs are grouped (seeds
of one configuration form a group), and the table gives per group the mean and sample standard
deviation over seeds of the final validation loss and accuracy, the certified Lipschitz bound, the
largest activation entry, steps, training time and tokens, with a one-sided Welch t-test of each
group's final val loss against the baseline group. A second table lists every run. Plots (PNG,
matplotlib Agg, by tools/plots.py): val_loss_vs_step and val_loss_vs_time (each with a zoomed panel
of the last 30% of training), bound_vs_step, max_act_vs_step and frontier (final val loss against
log10 certified bound, one point per group); a plot with nothing to draw is not written, and stderr
says so.

The certified bound is the sharp one (``lipschitz_bound_sharp_log10``), the bound a run's end-of-run
summary prints; a log of older code that lacks it shows none (a note says so). ``--bound`` picks
another form, named for what it is in the tables and plots: ``tight``, ``appendix_c`` (logged by
every version) or ``paper_literal`` (the paper's recursion verbatim, not a certificate).

A run is reported at its last validation after step 0 (its final one when complete). A run without
one (a resumed run stopped before its next validation, say) is reported at its last step: step,
train time and tokens there, no validation metrics. A resumed log is one run. A group's statistics
use its complete runs, or its truncated ones if none is complete; a group of truncated runs is
labelled "(stopped at S/M)", S the step its runs are reported at, in the table and the plots. A log
with no training step (nothing logged after step 0) is skipped; one line on stderr counts and names
those. The exit code is 0 if at least one log was compared and 2 otherwise (or on a bad argument);
a reader that closes the pipe early (``| head``) ends it quietly, exit code 0.

Grouping: by the config keys that say what a run computes: every one except seed, run_id, the
run-control fields (run_control.RESUME_MAY_CHANGE: compile, warmup_steps, log_every, val_every,
val_at_start, checkpoint_*, max_steps_this_run, memory_check, micro_batch_size, ...), resume* and
log/checkpoint paths; logs without a config line by directory, labelled
``speedrun (DIR)``. ``--group-by`` replaces these keys with a comma-separated list of config keys and
the pseudo-keys ``file`` (one group per log), ``dir`` (its folder), ``source`` (the hash of its
source code) and, last, ``re:REGEX`` (the first group, or the whole match, of REGEX searched in the
file name; the rest of the argument is the regex). Logs without a config are grouped by the
pseudo-keys only. Group labels show the keys whose values differ between groups, less those whose
values split the runs exactly like a shown key's (named under the table). When these labels are
too long for a legend (a sweep), the tables and plots show each configured group by its changes
from the most common setting, which is named under the table and in the legend. A group that
mixes step counts or source code, or repeats a seed, gets a warning on stderr and in its notes.
tokens = final step * tokens_per_step from the config.

Importable API: ``group_runs(runs, keys=None) -> Groups`` ({label: [RunLog]}),
``group_warnings(groups) -> {label: [str]}``, ``summary_table(groups, baseline=None, bound=...) -> str``,
``runs_table(groups, bound=...) -> str``, ``run_summary(run, bound=...)``, ``mean_std(values)``,
``welch_p_less(a, b)``, ``plot_input(groups, bound=...) -> tools.plots.PlotInput``, ``main(argv) -> exit
code``; the runs come from ``tools.runlog.load_runs``, the plots from ``tools.plots.write_plots``.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import sys
import textwrap
import warnings
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script: tools/ is on the path, the project root is not
    sys.path.insert(0, ROOT)

from data.files import writable_dir_problem  # noqa: E402
from run_control import RESUME_MAY_CHANGE  # noqa: E402
from tools import plots  # noqa: E402
from tools.cli import Parser, UsageError, one_line  # noqa: E402
from tools.plots import LABEL_LINES, MAX_LABEL, PlotGroup, PlotInput, shorten  # noqa: E402
from tools.runlog import RunLog, load_runs  # noqa: E402

# Config keys never grouped by: the seed and run id differ between the seeds of one configuration, and the
# run-control fields (those a resumed run may change) decide how a run is managed, not what it computes.
_UNGROUPED_KEYS = {"seed", "run_id"} | RESUME_MAY_CHANGE
_PATH_SUFFIXES = ("dir", "_path", "_file")
_HEADLINE_KEYS = ("preset", "arch", "constraint", "w_max")
PSEUDO_KEYS = ("file", "dir", "source")
REGEX_KEY_PREFIX = "re:"


# ----------------------------------------------------------------------------------------------
# Grouping

class Groups(dict):
    """{label: [RunLog]} in order of first appearance, plus what the labels are made of:
    fields[label]: the (key, value text) pairs shown in the label; hidden: {key shown nowhere
    because it varies together with an earlier key: that key}."""

    def __init__(self, *args, fields=None, hidden=None):
        super().__init__(*args)
        self.fields: dict[str, list[tuple[str, str]]] = fields or {}
        self.hidden: dict[str, str] = hidden or {}


def default_group_keys(runs: list[RunLog]) -> list[str]:
    """Every config key of the runs except seed, run_id, the run-control fields
    (run_control.RESUME_MAY_CHANGE: compile, val_every, checkpoint_every, micro_batch_size, ...),
    resume* and log/checkpoint paths: the keys that say what a run computes."""
    keys: dict[str, None] = {}
    for r in runs:
        keys.update(dict.fromkeys(r.config or {}))
    return [k for k in keys if k not in _UNGROUPED_KEYS and not k.startswith("resume")
            and not (("log" in k or "checkpoint" in k) and k.endswith(_PATH_SUFFIXES))]


def parse_group_by(text: str) -> list[str]:
    """``--group-by`` text -> keys. Comma-separated; a key starting with ``re:`` takes the rest of
    the text as its regex (commas included). Raises ValueError for an invalid regex or no key."""
    keys: list[str] = []
    rest = text
    while rest:
        if rest.lstrip().startswith(REGEX_KEY_PREFIX):
            pattern = rest.lstrip()[len(REGEX_KEY_PREFIX):]
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"--group-by: invalid regex {pattern!r} ({e})") from None
            keys.append(REGEX_KEY_PREFIX + pattern)
            break
        head, _, rest = rest.partition(",")
        if head.strip():
            keys.append(head.strip())
    if not keys:
        raise ValueError("--group-by: no key given (config keys, file, dir, source or re:REGEX)")
    return keys


def _value_text(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def _display_path(path: str) -> str:
    """A path relative to the working directory when it is inside it, else absolute."""
    a = os.path.abspath(path)
    rel = os.path.relpath(a)
    return a if rel.startswith("..") else rel


def _pseudo_value(run: RunLog, key: str) -> str:
    if key == "file":
        return _display_path(run.path)
    if key == "dir":
        return _display_path(os.path.dirname(os.path.abspath(run.path)))
    if key == "source":
        return run.source_hash or "none"
    m = re.search(key[len(REGEX_KEY_PREFIX):], os.path.basename(run.path))
    if m is None:
        return "(no match)"
    return next((g for g in m.groups() if g is not None), m.group(0))


def _is_pseudo(key: str) -> bool:
    return key in PSEUDO_KEYS or key.startswith(REGEX_KEY_PREFIX)


def _key_name(key: str) -> str:
    return "re" if key.startswith(REGEX_KEY_PREFIX) else key


def _partition(values: list[str]) -> tuple[int, ...]:
    """Canonical form of which items share a value (first-appearance numbering)."""
    ids: dict[str, int] = {}
    return tuple(ids.setdefault(v, len(ids)) for v in values)


def group_runs(runs: list[RunLog], keys: list[str] | None = None) -> Groups:
    """Group runs that differ only in seed (or agree on `keys`, see the module docstring). Runs
    without a config are grouped by directory unless `keys` has pseudo-keys. Returns Groups
    ({label: runs} in order of first appearance); a label lists the keys whose values differ
    between the groups (or preset/arch/constraint/w_max when there is one group), less those that
    split the runs exactly like a shown key (preset/arch/constraint/w_max, else the earlier key),
    listed in Groups.hidden."""
    keys = default_group_keys(runs) if keys is None else list(keys)
    pseudo = [k for k in keys if _is_pseudo(k)]

    def ident(r: RunLog) -> tuple[tuple[str, str], ...]:
        if r.config is None:
            if not pseudo:
                return (("dir", _display_path(os.path.dirname(os.path.abspath(r.path)))),)
            return tuple((k, _pseudo_value(r, k)) for k in pseudo)
        return tuple((k, _pseudo_value(r, k) if _is_pseudo(k) else _value_text(r.config.get(k, "?")))
                     for k in keys)

    idents = [ident(r) for r in runs]
    with_config = [i for r, i in zip(runs, idents) if r.config is not None]
    varying = [k for j, k in enumerate(keys) if len({i[j][1] for i in with_config}) > 1]
    hidden: dict[str, str] = {}
    shown: list[str] = []
    split = {k: _partition([i[keys.index(k)][1] for i in with_config]) for k in varying}
    # a key whose values split the runs exactly like another adds nothing: show the headline one
    for k in sorted(varying, key=lambda k: k not in _HEADLINE_KEYS):
        same = next((s for s in shown if split[s] == split[k]), None)
        if same is None:
            shown.append(k)
        else:
            hidden[k] = same
    shown = [k for k in varying if k in shown]
    if not varying:
        shown = [k for k in _HEADLINE_KEYS if k in keys] or keys[:4]
    groups = Groups()
    for r, i in zip(runs, idents):
        if r.config is None:
            fields = [(k, v) for k, v in i if k in pseudo or not pseudo]
            if pseudo:
                label = "speedrun " + " ".join(f"{_key_name(k)}={v}" for k, v in fields)
            else:
                label = f"speedrun ({fields[0][1]})"
        else:
            fields = [(k, v) for k, v in i if k in shown]
            label = " ".join(f"{_key_name(k)}={v}" for k, v in fields) or "all"
        groups.setdefault(label, []).append(r)
        groups.fields.setdefault(label, fields)
    groups.hidden = hidden
    return groups


def split_untrained(runs: list[RunLog]) -> tuple[list[RunLog], list[RunLog]]:
    """(runs with a training step, runs without one): a log that holds nothing after step 0 (a run
    ended before its first step, e.g. by a second signal) has no result to compare."""
    trained = [r for r in runs if r.last_step > 0]
    return trained, [r for r in runs if r.last_step == 0]


def group_warnings(groups: dict[str, list[RunLog]]) -> dict[str, list[str]]:
    """{label: warnings} for groups whose runs mix step counts or source code (by source hash), or
    repeat a seed."""
    out: dict[str, list[str]] = {}
    for label, runs in groups.items():
        found = []
        steps = sorted({r.num_iterations for r in runs})
        if len(steps) > 1:
            found.append(f"mixes step counts {', '.join(map(str, steps))}")
        sources = {r.source_hash for r in runs if r.source_hash is not None}
        if len(sources) > 1:
            found.append(f"mixes {len(sources)} different source codes (--group-by source splits them)")
        seeds = collections.Counter(_value_text(r.seed) for r in runs if r.seed is not None)
        repeated = sorted(seed for seed, n in seeds.items() if n > 1)
        if repeated:  # the same run logged twice (a copied log), or a setting missing from the grouping
            found.append(f"repeats seed {', '.join(repeated)} (--group-by file lists the runs)")
        if found:
            out[label] = found
    return out


def truncation_mark(runs: list[RunLog]) -> str:
    """'' when the group's statistics come from complete runs, else '(stopped at S/M)' with the
    step(s) S its truncated runs are reported at (reported_point; a range when they differ)."""
    if any(r.complete for r in runs):
        return ""
    last = sorted({reported_point(r)["step"] for r in runs})
    totals = sorted({r.num_iterations for r in runs})
    at = str(last[0]) if len(last) == 1 else f"{last[0]}-{last[-1]}"
    return f"(stopped at {at}/{'/'.join(map(str, totals))})"


def display_label(label: str, runs: list[RunLog]) -> str:
    mark = truncation_mark(runs)
    return f"{label} {mark}" if mark else label


# ----------------------------------------------------------------------------------------------
# Statistics

@dataclass(frozen=True)
class BoundForm:
    """One form of the Lipschitz bound train_gpt.py logs at each validation (lipschitz.bound_report)."""
    log_key: str  # the log key of its log10
    name: str  # what the tables and plots call it
    what: str  # what it is, for the note under the table


# --bound: the form the tables and plots use. The sharp one is the run's certified bound, the one its
# end-of-run summary prints; the others are named for what they are wherever they appear.
BOUNDS = {
    "sharp": BoundForm("lipschitz_bound_sharp_log10", "certified bound",
                       "lipschitz.py's sharp certified bound, the one a run's end-of-run summary prints"),
    "tight": BoundForm("lipschitz_bound_tight_log10", "tight bound",
                       "the per-term (tight) certified bound, never below the sharp one"),
    "appendix_c": BoundForm("lipschitz_bound_log10", "Appendix C bound",
                            "the paper's Appendix C bound made sound per head, never below the tight one; "
                            "logged by every version"),
    "paper_literal": BoundForm("lipschitz_bound_paper_literal_log10", "paper-literal bound",
                               "the paper's Appendix C recursion verbatim, NOT a certificate for multi-head "
                               "attention"),
}
DEFAULT_BOUND = "sharp"


def log10_bound(point: dict[str, float], bound: str = DEFAULT_BOUND) -> float | None:
    """log10 of the `bound` form (a key of BOUNDS) logged at a step, or None if it was not logged: a log
    of older code, which lacks the newer forms, shows no bound rather than another form's."""
    form = BOUNDS[bound]
    if form.log_key in point:
        return point[form.log_key]
    if bound == "appendix_c" and "lipschitz_bound" in point:  # its plain value, logged beside the log10
        b = point["lipschitz_bound"]
        return math.log10(b) if b > 0 else (math.nan if b != 0 else -math.inf)
    return None


def reported_point(run: RunLog) -> dict[str, float]:
    """The step the tables report a run at, with its metrics and 'step': its last validation after step
    0 (the final one when complete). A run without one, whose only validation (if any) is of the untrained
    model, is reported at its last step, with the train time last logged and no validation metrics."""
    final = run.final
    if final and (final["step"] > 0 or run.complete):
        return final
    return {"step": run.last_step, **({"train_time": run.train[-1]["train_time"]} if run.train else {})}


def run_summary(run: RunLog, bound: str = DEFAULT_BOUND) -> dict[str, float | None]:
    """Final numbers of one run, at reported_point(run): val_loss, val_acc, log10_bound (the `bound`
    form), act_max_entry, step, train_time_s, tokens (step * tokens_per_step from the config); None
    where not logged."""
    f = reported_point(run)
    tps = (run.config or {}).get("tokens_per_step")
    step = f.get("step")
    return {
        "val_loss": f.get("val_loss"),
        "val_acc": f.get("val_acc"),
        "log10_bound": log10_bound(f, bound),
        "act_max_entry": f.get("act_max_entry"),
        "step": step,
        "train_time_s": f["train_time"] / 1000 if "train_time" in f else None,
        "tokens": step * tps if step is not None and isinstance(tps, (int, float)) else None,
    }


def mean_std(values: list[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample std with ddof=1 or None when n < 2, n) over the values that are not None."""
    xs = [v for v in values if v is not None]
    n = len(xs)
    if n == 0:
        return None, None, 0
    if not all(math.isfinite(x) for x in xs):  # inf bounds, diverged losses: no spread to report
        return sum(xs) / n, (None if n < 2 else math.nan), n
    mean = math.fsum(xs) / n
    if n < 2:
        return mean, None, n
    return mean, math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)), n


def stats_runs(runs: list[RunLog]) -> tuple[list[RunLog], list[str]]:
    """The runs a group's statistics use: its complete runs, or all of them if none is complete;
    plus notes on what was left out."""
    complete = [r for r in runs if r.complete]
    notes = []
    if complete and len(complete) < len(runs):
        notes.append(f"{len(runs) - len(complete)} truncated run(s) excluded")
    elif not complete:
        unvalidated = sum(1 for r in runs if "val_loss" not in reported_point(r))
        notes.append("all runs truncated: last validations used" + (
            f", {unvalidated} run(s) not validated after step 0" if unvalidated else ""))
    used = complete or runs
    diverged = sum(1 for r in runs if r.diverged_at is not None)
    if diverged:
        notes.append(f"{diverged} of {len(runs)} diverged (non-finite loss)")
    return used, notes


def welch_p_less(a: list[float], b: list[float]) -> float | None:
    """p-value of the one-sided Welch t-test that mean(a) < mean(b); None when either has fewer
    than two values or the test is undefined. Raises ImportError when scipy is missing."""
    import scipy.stats  # lazy: scipy is a test/analysis dependency, not needed to read logs
    if len(a) < 2 or len(b) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero variance gives nan with a RuntimeWarning: reported n/a
        p = float(scipy.stats.ttest_ind(a, b, equal_var=False, alternative="less").pvalue)
    return p if math.isfinite(p) else None


def find_baseline(groups: dict[str, list[RunLog]], baseline: str | None) -> str:
    """Label of the baseline group: an exact match of a label or of its text in the tables, else
    the first label (or its text) containing `baseline` (case-insensitive), else the first group
    when `baseline` is None."""
    labels = list(groups)
    if not labels:
        raise ValueError("no runs to compare")
    if baseline is None:
        return labels[0]
    if baseline in groups:
        return baseline
    shown, _ = table_labels(groups)
    exact = [label for label in labels if shown[label] == baseline]
    if exact:
        return exact[0]
    for label in labels:
        if baseline.lower() in label.lower() or baseline.lower() in shown[label].lower():
            return label
    raise ValueError(f"--baseline {baseline!r} matches no group; groups are: " + "; ".join(labels))


def table_labels(groups: dict[str, list[RunLog]]) -> tuple[dict[str, str], str | None]:
    """({label: text in the tables}, note or None). When the labels are too long for a legend,
    configured groups are shown by their changes from the most common setting (uncut), which the
    note names; otherwise, and for speedrun groups, the labels themselves."""
    shorts, reference = short_labels(groups, width=None)
    if reference is None:
        return {label: label for label in groups}, None
    return ({label: shorts[label] if runs[0].config is not None else label for label, runs in groups.items()},
            f"Group labels list the changes from the most common setting: {reference}.")


# ----------------------------------------------------------------------------------------------
# Tables

def _fmt(x: float | None, spec: str) -> str:
    if x is None:
        return "n/a"
    if not math.isfinite(x):
        return str(x)
    return format(x, spec)


def _fmt_mean_std(values, spec: str) -> str:
    mean, std, _ = mean_std(values)
    if mean is None:
        return "n/a"
    return _fmt(mean, spec) + ("" if std is None else " ± " + _fmt(std, spec))


def _fmt_log10(x: float | None) -> str:
    """110.27 -> '110.3'; 1e300 -> '1e+300' (a log10 bound can itself be astronomically large)."""
    return _fmt(x, ".1f" if x is None or not math.isfinite(x) or abs(x) < 1e4 else ".3g")


def _fmt_magnitude(x: float | None) -> str:
    """148480 -> '148,480'; 14.23 -> '14.2'."""
    if x is None or not math.isfinite(x):
        return _fmt(x, "")
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def _fmt_tokens(x: float | None) -> str:
    if x is None:
        return "n/a"
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if x >= scale:
            return f"{x / scale:.2f}{suffix}"
    return f"{x:.0f}"


def _fmt_steps(steps: list[int | None]) -> str:
    s = sorted({x for x in steps if x is not None})
    return "n/a" if not s else str(s[0]) if len(s) == 1 else f"{s[0]}-{s[-1]}"


def _fmt_p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_table(groups: dict[str, list[RunLog]], baseline: str | None = None, bound: str = DEFAULT_BOUND) -> str:
    """Markdown table, one row per group: mean ± sample std over seeds of the final val loss, val
    acc, train time; mean log10 bound (the `bound` form, a key of BOUNDS) and max activation entry;
    steps; tokens; and the p-value of the one-sided Welch t-test that the group's final val loss is
    below the baseline's. `baseline` selects the baseline group by label substring (default: the
    first group). Notes under the table say which bound it is, and count the runs that do not log it."""
    base_label = find_baseline(groups, baseline)
    shown, shown_note = table_labels(groups)
    used = {label: stats_runs(runs) for label, runs in groups.items()}
    final_losses = lambda runs: [x for x in (run_summary(r)["val_loss"] for r in runs) if x is not None]  # noqa: E731
    base_losses = final_losses(used[base_label][0])
    scipy_missing = False
    mixed = group_warnings(groups)
    rows = []
    for label, (runs, notes) in used.items():
        notes = notes + ["warning: " + w for w in mixed.get(label, [])]
        s = [run_summary(r, bound) for r in runs]
        col = lambda k: [x[k] for x in s]  # noqa: E731
        if label == base_label:
            p_text = "baseline"
        else:
            try:
                p_text = _fmt_p(welch_p_less(final_losses(runs), base_losses))
            except ImportError:
                scipy_missing, p_text = True, "n/a"
        rows.append([display_label(shown[label], groups[label]), str(len(groups[label])) if len(runs) == len(groups[label])
                     else f"{len(runs)} of {len(groups[label])}",
                     _fmt_mean_std(col("val_loss"), ".4f"), _fmt_mean_std(col("val_acc"), ".4f"),
                     _fmt_log10(mean_std(col("log10_bound"))[0]),
                     _fmt_magnitude(mean_std(col("act_max_entry"))[0]),
                     _fmt_steps(col("step")), _fmt_mean_std(col("train_time_s"), ".1f"),
                     _fmt_tokens(mean_std(col("tokens"))[0]), p_text, "; ".join(notes)])
    form = BOUNDS[bound]
    header = ["group", "n", "val loss", "val acc", f"log10 {form.name}", "max act entry", "steps",
              "train time (s)", "tokens", "p (loss < baseline)", "notes"]
    text = _table(header, rows)
    text += (f"\n\nMean ± sample std over seeds of the final validation; log10 {form.name} and max act "
             "entry are means over seeds. p: one-sided Welch t-test that the group's mean final val "
             f"loss is below the baseline's (baseline: {shown[base_label]}); n/a when either group has "
             "fewer than 2 runs.")
    text += f"\n{form.name[0].upper() + form.name[1:]} ({form.log_key}): {form.what}."
    older = [r for rs in groups.values() for r in rs if log10_bound(reported_point(r), bound) is None
             and log10_bound(reported_point(r), "appendix_c") is not None]
    if older:
        text += (f"\n{len(older)} run(s) log no {form.name} (older code): --bound=appendix_c shows the "
                 f"{BOUNDS['appendix_c'].name} they log.")
    if shown_note:
        text += "\n" + shown_note
    hidden = getattr(groups, "hidden", {})
    if hidden:
        text += ("\nNot shown in the labels (their values vary together with a shown key): "
                 + ", ".join(f"{k} (with {v})" for k, v in hidden.items()) + ".")
    if scipy_missing:
        text += "\nNote: p-values are n/a because scipy is not installed (pip install -r requirements-dev.txt)."
    return text


def runs_table(groups: dict[str, list[RunLog]], bound: str = DEFAULT_BOUND) -> str:
    """Markdown table with one row per run (its final validation, with the `bound` form, and status)."""
    shown, _ = table_labels(groups)
    rows = []
    for label, runs in groups.items():
        for r in runs:
            s = run_summary(r, bound)
            rows.append([shown[label], os.path.basename(r.path), _fmt_value(r.seed), _fmt(s["val_loss"], ".4f"),
                         _fmt(s["val_acc"], ".4f"), _fmt_log10(s["log10_bound"]),
                         _fmt_magnitude(s["act_max_entry"]),
                         "n/a" if s["step"] is None else f"{s['step']}/{r.num_iterations}",
                         _fmt(s["train_time_s"], ".1f"), _fmt_tokens(s["tokens"]),
                         "; ".join((["complete"] if r.complete else []) + r.notes)])
    header = ["group", "log", "seed", "val loss", "val acc", f"log10 {BOUNDS[bound].name}", "max act entry",
              "step", "train time (s)", "tokens", "status"]
    return _table(header, rows)


def _fmt_value(v) -> str:
    return "n/a" if v is None else _value_text(v)


# ----------------------------------------------------------------------------------------------
# Short labels (tables and plot legends), and what the plots draw

def _common_dir(paths: list[str]) -> str:
    try:
        return os.path.commonpath([os.path.abspath(p) for p in paths])
    except ValueError:  # different drives
        return ""


def short_labels(groups: Groups | dict, width: int | None = 2 * MAX_LABEL) -> tuple[dict[str, str], str | None]:
    """({label: legend label}, reference text or None). A speedrun group is labelled by its folder
    (or file) relative to the folder all speedrun groups share. Configured groups keep their labels
    when these all fit on LABEL_LINES lines of MAX_LABEL characters (self-explanatory); otherwise
    each is labelled by the key=value pairs that differ from the most common value over the
    groups, rarest values first ("reference" when none does; the reference text lists the common
    values), cut to `width` characters (None: uncut). Labels stay unique."""
    labels = list(groups)
    fields = getattr(groups, "fields", {})
    cut = (lambda text: text) if width is None else (lambda text: shorten(text, width))  # noqa: E731
    if not fields:
        return {label: cut(label) for label in labels}, None
    configured = [label for label in labels if groups[label][0].config is not None]
    fits = lambda text: len(textwrap.wrap(text, MAX_LABEL, break_on_hyphens=False)) <= LABEL_LINES  # noqa: E731
    keep = all(fits(label) for label in configured)
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for label in configured:
        for k, v in fields[label]:
            counts[k][v] += 1
    common = {k: c.most_common(1)[0][0] for k, c in counts.items()}
    speedrun_paths = [v for label in labels if label not in configured for _, v in fields[label]]
    root = _common_dir(speedrun_paths) if len(speedrun_paths) > 1 else None
    out: dict[str, str] = {}
    for label in labels:
        if label in configured:
            # rarest values first: what sets this group apart survives a cut
            diff = [f"{_key_name(k)}={v}" for k, v in sorted(
                fields[label], key=lambda kv: counts[kv[0]][kv[1]]) if v != common[k]]
            out[label] = label if keep else cut(" ".join(diff) or "reference")
        else:
            parts = []
            for k, v in fields[label]:
                rel = os.path.relpath(os.path.abspath(v), root) if root and k in ("dir", "file") else None
                parts.append((os.path.basename(v) or v) if rel is None or rel == "." else rel)
            out[label] = cut("speedrun " + " ".join(parts))
    seen: collections.Counter = collections.Counter(out.values())
    for i, label in enumerate(labels):  # a clash after shortening: number them
        if seen[out[label]] > 1:
            out[label] = cut(out[label])[:-5] + f" [{i + 1}]"
    reference = None if keep else " ".join(f"{_key_name(k)}={v}" for k, v in common.items())
    return out, reference


def plot_input(groups: dict[str, list[RunLog]], bound: str = DEFAULT_BOUND) -> PlotInput:
    """What tools/plots.py draws of `groups`: per group its runs, legend label (short_labels), truncation
    mark and the mean ± std over seeds of the final val loss and `bound` (a key of BOUNDS), over the runs
    its statistics use (stats_runs), as in the summary table."""
    labels, reference = short_labels(groups)
    out = []
    for label, runs in groups.items():
        s = [run_summary(r, bound) for r in stats_runs(runs)[0]]
        out.append(PlotGroup(runs, labels[label], truncation_mark(runs), mean_std([x["val_loss"] for x in s])[:2],
                             mean_std([x["log10_bound"] for x in s])[:2]))
    return PlotInput(out, BOUNDS[bound].log_key, BOUNDS[bound].name, reference)


# ----------------------------------------------------------------------------------------------
# CLI

def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="LOG_OR_DIR")
    parser.add_argument("--baseline", default=None,
                        help="substring of the baseline group's label (default: the first group)")
    parser.add_argument("--group-by", default=None,
                        help="comma-separated config keys and pseudo-keys file, dir, source, and last "
                             "re:REGEX (on the file name) to group by (default: the config keys that say what "
                             "a run computes, i.e. all but seed, run_id, paths and run-control fields; logs "
                             "without config by folder)")
    parser.add_argument("--plots", default="plots", help="directory for the PNG plots (default: plots)")
    parser.add_argument("--no-plots", action="store_true", help="do not write plots")
    parser.add_argument("--bound", choices=tuple(BOUNDS), default=DEFAULT_BOUND,
                        help="the bound in the tables and plots (default: %(default)s): "
                             + "; ".join(f"{k}: the {f.name}, {f.log_key}" for k, f in BOUNDS.items()))
    try:
        args = parser.parse(argv)
    except UsageError as e:
        print(f"compare.py: {one_line(e)}; see --help", file=sys.stderr)
        return 2

    try:
        keys = None if args.group_by is None else parse_group_by(args.group_by)
    except ValueError as e:
        print(f"compare.py: {e}", file=sys.stderr)
        return 2
    if not args.no_plots and (why := writable_dir_problem(args.plots)):
        print(f"compare.py: --plots {args.plots}: {why}; give a writable directory or --no-plots",
              file=sys.stderr)
        return 2
    runs = load_runs(args.paths)
    if not runs:
        print("compare.py: no log could be parsed", file=sys.stderr)
        return 2
    runs, untrained = split_untrained(runs)
    if untrained:
        print(f"compare.py: skipping {len(untrained)} log(s) with no training step (nothing logged after step 0): "
              + ", ".join(r.path for r in untrained), file=sys.stderr)
    if not runs:
        print("compare.py: no log has a training step; nothing to compare", file=sys.stderr)
        return 2
    groups = group_runs(runs, keys)
    try:
        table = summary_table(groups, args.baseline, args.bound)
    except ValueError as e:
        print(f"compare.py: {e}", file=sys.stderr)
        return 2
    for label, found in group_warnings(groups).items():
        for w in found:
            print(f"compare.py: warning: group '{label}' {w}", file=sys.stderr)
    print(table)
    print()
    print(runs_table(groups, args.bound))
    if not args.no_plots:
        try:
            for p in plots.write_plots(plot_input(groups, args.bound), args.plots):
                print(f"wrote {p}", file=sys.stderr)
        except OSError as e:
            print(f"compare.py: --plots {args.plots}: cannot write ({e.strerror or e}); give a "
                  "writable directory or --no-plots", file=sys.stderr)
            return 2
    return 0


def run_cli(argv: list[str] | None = None) -> int:
    """main(argv) for the command line, where a reader that closes the pipe early (``| head``) ends it
    quietly: exit status 0, no traceback."""
    try:
        code = main(argv)
        sys.stdout.flush()  # here, not at exit: the table's end may still be buffered when the reader is gone
        return code
    except BrokenPipeError:
        # Python flushes stdout once more at exit; on devnull that flush cannot fail and print a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(run_cli())
