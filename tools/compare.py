"""Compare speedrun-format training logs: a markdown table with significance tests, and plots.

Usage:
    python tools/compare.py LOG_OR_DIR... [--baseline S] [--group-by k1,k2] [--plots DIR] [--no-plots]

Directories are searched recursively for ``*.txt``; files named explicitly are read whatever their
extension. Runs are grouped (seeds of one configuration form a group), and the table gives per group
the mean and sample standard deviation over seeds of the final validation loss and accuracy, the
certified Lipschitz bound, the largest activation entry, steps, training time and tokens, with a
one-sided Welch t-test of each group's final val loss against the baseline group. A second table
lists every run. Plots (PNG, matplotlib Agg): val_loss_vs_step, val_loss_vs_time, bound_vs_step,
max_act_vs_step and frontier (final val loss against log10 certified bound, one point per group).

Log format (what train_gpt.py writes to ``logs/<run_id>.txt``; modded-nanogpt's record logs follow
the same outline without the ``config:`` line and the extra metrics):

1. Preamble: the source of the project modules, each followed by a separator line of exactly 100
   ``=`` characters, then versions and hardware (nvidia-smi output, ...), possibly with further
   separators. The preamble is arbitrary text and may itself contain lines that look like run lines,
   so only the text after the LAST separator line is parsed (all of it if there is none). There,
   every line must match one of the patterns below in full (anchored regexes); any other line is
   ignored. (So a resumed run must not append a second preamble to its old log: it would hide the
   steps before it. Write a new log, or append run lines only.)
2. ``config: {json}``: one line, the run's Hyperparameters as a JSON object (every field, e.g.
   run_id, preset, arch, constraint, w_max, seed, num_iterations, seq_len, batch_size, val_every,
   plus world_size and tokens_per_step). Absent in modded-nanogpt logs. A resumed run appends
   another config line to its log; the first one counts.
3. Step lines ``step:N/M`` followed by space-separated tokens. A token is either ``key:value`` or a
   bare word. The value is a float as Python spells it (``3.2785``, ``1e+300``, ``inf``, ``-inf``,
   ``nan``), optionally with the unit suffix ``ms`` which is dropped (times stay in milliseconds).
   A bare word prefixes the keys after it, joined by a dot, until the next bare word:
   ``max_weight_norm qkv:1.0 o:0.9`` gives ``max_weight_norm.qkv`` and ``max_weight_norm.o``.
   Lines are classified by their keys:
   - validation, has ``val_loss``:
     ``step:N/M val_loss:X val_acc:Y train_time:Tms step_avg:Sms`` (val_acc optional);
   - training, has ``train_time`` but no ``val_loss``:
     ``step:N/M train_time:Tms step_avg:Sms``, optionally ``train_loss:X`` after ``step:N/M``;
   - any other step line adds its keys to the metrics of step N. train_gpt.py writes, after each
     validation: ``step:N/M lipschitz_bound_log10:B`` (log10 of the certified bound; may be inf;
     optionally ``lipschitz_bound:X`` too),
     ``step:N/M max_weight_norm qkv:A o:B fc:C proj:D lm_head:E emb_row_rms:F`` and
     ``step:N/M act_max_entry:X act_max_rms:Y``.
   Lines for the same step merge; a key logged twice for one step keeps its last value.
4. Optional end markers: ``peak memory allocated: ...`` (or modded-nanogpt's older
   ``peak memory consumption: ...``), and ``run finished`` or ``done``.

A run is complete when it has a validation at its final step M; otherwise it is reported as
truncated, with its last validation (and the validations missing, when the config has val_every).
A group's statistics use its complete runs, or its truncated ones if none is complete. A run
whose train or val loss is logged as non-finite is marked diverged. A file with no step lines after the last separator, or that is
empty, binary, not UTF-8 or unreadable, is skipped with a one-line message on stderr. The exit code
is 0 if at least one log was parsed and 2 otherwise.

Grouping: by every config key except seed, run_id, resume*, log/checkpoint paths, log_every,
checkpoint_every and max_steps_this_run (or by the ``--group-by`` keys); group labels show the
keys whose values differ between groups. Logs without a config line are grouped by directory and
labelled ``speedrun (DIR)``. tokens = final step * tokens_per_step from the config.

Importable API: ``parse_log(path) -> RunLog``, ``group_runs(runs, keys=None) -> {label: [RunLog]}``,
``summary_table(groups, baseline=None) -> str``, ``runs_table(groups) -> str``,
``write_plots(groups, out_dir) -> [paths]``, ``main(argv) -> exit code``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass, field

SEPARATOR = "=" * 100

_NUMBER = r"[-+]?(?:inf(?:inity)?|nan|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)"
_KEY = r"[A-Za-z_][A-Za-z0-9_.\-]*"
_TOKEN = rf"(?:{_KEY}:{_NUMBER}(?:ms)?|{_KEY})"
STEP_LINE = re.compile(rf"step:(\d+)/(\d+)((?:[ \t]+{_TOKEN})*)[ \t]*", re.IGNORECASE)
KEY_VALUE = re.compile(rf"({_KEY}):({_NUMBER})(?:ms)?", re.IGNORECASE)
CONFIG_LINE = re.compile(r"config:[ \t]*(\{.*)")
PEAK_MEMORY_LINE = re.compile(r"peak memory (?:allocated|consumption):?[ \t]*(.*)")
FINISHED_LINE = re.compile(r"(?:run finished|done)\b.*", re.IGNORECASE)

# Config keys that differ between seeds of one configuration, or only steer logging, checkpoints
# and chunked (resumed) runs without changing what is trained: never group by them.
_UNGROUPED_KEYS = {"seed", "run_id", "log_every", "checkpoint_every", "max_steps_this_run"}
_PATH_SUFFIXES = ("dir", "_path", "_file")
_HEADLINE_KEYS = ("preset", "arch", "constraint", "w_max")


class LogFormatError(ValueError):
    """A file that is not a readable speedrun-format log; the message names the file and the defect."""


@dataclass
class RunLog:
    """One training run parsed from its log.

    points: step -> metrics of every non-training step line at that step (val_loss, val_acc,
    train_time and step_avg in ms, lipschitz_bound_log10, act_max_entry, max_weight_norm.qkv, ...).
    train: one dict per training line (step, train_time, step_avg in ms, optional train_loss).
    num_iterations: M of the last ``step:N/M`` line.
    """
    path: str
    config: dict | None
    num_iterations: int
    points: dict[int, dict[str, float]]
    train: list[dict[str, float]] = field(default_factory=list)
    peak_memory: str | None = None
    finished_marker: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def val_steps(self) -> list[int]:
        return sorted(s for s, p in self.points.items() if "val_loss" in p)

    @property
    def final(self) -> dict[str, float]:
        """Metrics of the last validated step (empty if the run never validated), with 'step'."""
        steps = self.val_steps
        return {"step": steps[-1], **self.points[steps[-1]]} if steps else {}

    @property
    def last_step(self) -> int:
        return max([int(t["step"]) for t in self.train] + list(self.points), default=0)

    @property
    def complete(self) -> bool:
        """True when the final step M was validated."""
        return self.final.get("step") == self.num_iterations

    @property
    def diverged_at(self) -> int | None:
        """First step whose logged train or val loss is not finite (None if there is none)."""
        bad = [int(t["step"]) for t in self.train if not math.isfinite(t.get("train_loss", 0.0))]
        bad += [s for s, p in self.points.items()
                if not all(math.isfinite(p.get(k, 0.0)) for k in ("train_loss", "val_loss"))]
        return min(bad, default=None)

    @property
    def seed(self):
        return (self.config or {}).get("seed")

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of `key` over the logged steps, in step order."""
        steps = [s for s in sorted(self.points) if key in self.points[s]]
        return steps, [self.points[s][key] for s in steps]


# ----------------------------------------------------------------------------------------------
# Parsing

def parse_step_tokens(tokens: str) -> dict[str, float]:
    """Parse the tokens after ``step:N/M`` into {key: float}; bare words prefix the keys after them."""
    out: dict[str, float] = {}
    prefix = ""
    for token in tokens.split():
        m = KEY_VALUE.fullmatch(token)
        if m is None:
            prefix = token + "."
            continue
        out[prefix + m.group(1)] = float(m.group(2))
    return out


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise LogFormatError(f"{path}: unreadable ({e.strerror or e})") from None
    if not data.strip():
        raise LogFormatError(f"{path}: empty file")
    if b"\x00" in data:
        raise LogFormatError(f"{path}: binary file (contains NUL bytes), not a text log")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LogFormatError(f"{path}: not UTF-8 text (invalid byte at offset {e.start})") from None


def _run_lines(lines: list[str]) -> list[str]:
    """The lines after the last separator line (all lines if there is none)."""
    last = max((i for i, line in enumerate(lines) if line.rstrip() == SEPARATOR), default=-1)
    return lines[last + 1:]


def parse_log(path: str) -> RunLog:
    """Parse one speedrun-format log (see the module docstring). Raises LogFormatError naming the
    file and the defect when it is unreadable, empty, binary or has no step lines."""
    lines = _run_lines(_read_text(path).splitlines())
    config = None
    points: dict[int, dict[str, float]] = {}
    train: list[dict[str, float]] = []
    totals: list[int] = []
    peak_memory, finished_marker, notes = None, False, []
    for line in lines:
        line = line.strip()
        if m := STEP_LINE.fullmatch(line):
            step, total = int(m.group(1)), int(m.group(2))
            totals.append(total)
            metrics = parse_step_tokens(m.group(3))
            if "train_time" in metrics and "val_loss" not in metrics:
                train.append({"step": step, **metrics})
            else:
                points.setdefault(step, {}).update(metrics)
        elif m := CONFIG_LINE.fullmatch(line):
            if config is not None:
                notes.append("several config lines, the first is used")
                continue
            try:
                config = json.loads(m.group(1))
            except json.JSONDecodeError as e:
                raise LogFormatError(f"{path}: config line is not valid JSON ({e.msg})") from None
            if not isinstance(config, dict):
                raise LogFormatError(f"{path}: config line is not a JSON object")
        elif m := PEAK_MEMORY_LINE.fullmatch(line):
            peak_memory = m.group(1)
        elif FINISHED_LINE.fullmatch(line):
            finished_marker = True
    if not totals:
        raise LogFormatError(f"{path}: no 'step:N/M ...' lines after the last {len(SEPARATOR)}-'=' "
                             f"separator; not a speedrun-format log")
    if len(set(totals)) > 1:
        notes.append(f"inconsistent total steps {sorted(set(totals))}, using the last")
    run = RunLog(path=path, config=config, num_iterations=totals[-1], points=points, train=train,
                 peak_memory=peak_memory, finished_marker=finished_marker, notes=notes)
    if run.diverged_at is not None:
        run.notes.insert(0, f"diverged: non-finite loss at step {run.diverged_at}")
    if not run.complete:
        run.notes.insert(0, _truncation_note(run))
    return run


def _truncation_note(run: RunLog) -> str:
    m = run.num_iterations
    if not run.val_steps:
        return f"truncated at step {run.last_step}/{m}: no validation logged"
    note = f"truncated at step {run.last_step}/{m}: last validation at step {run.final['step']}"
    val_every = (run.config or {}).get("val_every") or (run.config or {}).get("val_loss_every")
    if isinstance(val_every, int) and val_every > 0:
        expected = set(range(0, m, val_every)) | {m}
        missing = sorted(expected - set(run.val_steps))
        if missing:
            note += f", {len(missing)} validations missing ({_step_list(missing)})"
    else:
        note += f", final validation at step {m} missing"
    return note


def _step_list(steps: list[int]) -> str:
    return ", ".join(map(str, steps)) if len(steps) <= 4 else f"{steps[0]}, {steps[1]}, ..., {steps[-1]}"


def find_logs(paths: list[str]) -> list[str]:
    """Expand directories into their *.txt files (recursively, sorted); keep files as given."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                out.extend(os.path.join(root, f) for f in sorted(files) if f.endswith(".txt"))
        else:
            out.append(p)
    return list(dict.fromkeys(out))


def load_runs(paths: list[str], err=None) -> list[RunLog]:
    """Parse every log under `paths`; report each bad file on one line of `err` (default stderr)
    and go on."""
    err = sys.stderr if err is None else err
    runs = []
    for p in find_logs(paths):
        try:
            runs.append(parse_log(p))
        except LogFormatError as e:
            print(f"compare.py: skipping {e}", file=err)
    return runs


# ----------------------------------------------------------------------------------------------
# Grouping and statistics

def default_group_keys(runs: list[RunLog]) -> list[str]:
    """Every config key of the runs except seed, run_id, resume*, log/checkpoint paths and the
    logging/checkpoint cadence keys."""
    keys: dict[str, None] = {}
    for r in runs:
        keys.update(dict.fromkeys(r.config or {}))
    return [k for k in keys if k not in _UNGROUPED_KEYS and not k.startswith("resume")
            and not (("log" in k or "checkpoint" in k) and k.endswith(_PATH_SUFFIXES))]


def _value_text(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def _speedrun_label(run: RunLog) -> str:
    d = os.path.dirname(os.path.abspath(run.path))
    rel = os.path.relpath(d)
    return f"speedrun ({d if rel.startswith('..') else rel})"


def group_runs(runs: list[RunLog], keys: list[str] | None = None) -> dict[str, list[RunLog]]:
    """Group runs that differ only in seed (or agree on `keys`). Runs without a config are grouped
    by directory. Returns {label: runs} in order of first appearance; a label lists the keys whose
    values differ between the groups (or preset/arch/constraint/w_max when there is one group)."""
    keys = default_group_keys(runs) if keys is None else list(keys)
    with_config = [r for r in runs if r.config is not None]
    ident = {id(r): tuple(_value_text(r.config.get(k, "?")) for k in keys) for r in with_config}
    varying = [k for i, k in enumerate(keys) if len({v[i] for v in ident.values()}) > 1]
    shown = varying or [k for k in _HEADLINE_KEYS if k in keys] or keys[:4]
    groups: dict[str, list[RunLog]] = {}
    for r in runs:
        if r.config is None:
            label = _speedrun_label(r)
        else:
            label = " ".join(f"{k}={_value_text(r.config.get(k, '?'))}" for k in shown) or "all"
        groups.setdefault(label, []).append(r)
    return groups


def log10_bound(point: dict[str, float]) -> float | None:
    """log10 of the certified Lipschitz bound logged at a step, or None if it was not logged."""
    if "lipschitz_bound_log10" in point:
        return point["lipschitz_bound_log10"]
    if "lipschitz_bound" in point:
        b = point["lipschitz_bound"]
        return math.log10(b) if b > 0 else (math.nan if b != 0 else -math.inf)
    return None


def run_summary(run: RunLog) -> dict[str, float | None]:
    """Final numbers of one run: val_loss, val_acc, log10_bound, act_max_entry, step,
    train_time_s, tokens (step * tokens_per_step from the config); None where not logged."""
    f = run.final
    tps = (run.config or {}).get("tokens_per_step")
    step = f.get("step")
    return {
        "val_loss": f.get("val_loss"),
        "val_acc": f.get("val_acc"),
        "log10_bound": log10_bound(f),
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
        notes.append("all runs truncated: last validations used")
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
    """Label of the baseline group: an exact label match, else the first label containing
    `baseline` (case-insensitive), else the first group when `baseline` is None."""
    labels = list(groups)
    if not labels:
        raise ValueError("no runs to compare")
    if baseline is None:
        return labels[0]
    if baseline in groups:
        return baseline
    for label in labels:
        if baseline.lower() in label.lower():
            return label
    raise ValueError(f"--baseline {baseline!r} matches no group; groups are: " + "; ".join(labels))


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


def summary_table(groups: dict[str, list[RunLog]], baseline: str | None = None) -> str:
    """Markdown table, one row per group: mean ± sample std over seeds of the final val loss, val
    acc, train time; mean log10 certified bound and max activation entry; steps; tokens; and the
    p-value of the one-sided Welch t-test that the group's final val loss is below the baseline's.
    `baseline` selects the baseline group by label substring (default: the first group)."""
    base_label = find_baseline(groups, baseline)
    used = {label: stats_runs(runs) for label, runs in groups.items()}
    final_losses = lambda runs: [x for x in (run_summary(r)["val_loss"] for r in runs) if x is not None]  # noqa: E731
    base_losses = final_losses(used[base_label][0])
    scipy_missing = False
    rows = []
    for label, (runs, notes) in used.items():
        s = [run_summary(r) for r in runs]
        col = lambda k: [x[k] for x in s]  # noqa: E731
        if label == base_label:
            p_text = "baseline"
        else:
            try:
                p_text = _fmt_p(welch_p_less(final_losses(runs), base_losses))
            except ImportError:
                scipy_missing, p_text = True, "n/a"
        rows.append([label, str(len(groups[label])) if len(runs) == len(groups[label])
                     else f"{len(runs)} of {len(groups[label])}",
                     _fmt_mean_std(col("val_loss"), ".4f"), _fmt_mean_std(col("val_acc"), ".4f"),
                     _fmt_log10(mean_std(col("log10_bound"))[0]),
                     _fmt_magnitude(mean_std(col("act_max_entry"))[0]),
                     _fmt_steps(col("step")), _fmt_mean_std(col("train_time_s"), ".1f"),
                     _fmt_tokens(mean_std(col("tokens"))[0]), p_text, "; ".join(notes)])
    header = ["group", "n", "val loss", "val acc", "log10 bound", "max act entry", "steps",
              "train time (s)", "tokens", "p (loss < baseline)", "notes"]
    text = _table(header, rows)
    text += ("\n\nMean ± sample std over seeds of the final validation; log10 bound and max act "
             "entry are means over seeds. p: one-sided Welch t-test that the group's mean final val "
             f"loss is below the baseline's (baseline: {base_label}); n/a when either group has "
             "fewer than 2 runs.")
    if scipy_missing:
        text += "\nNote: p-values are n/a because scipy is not installed (pip install -r requirements-dev.txt)."
    return text


def runs_table(groups: dict[str, list[RunLog]]) -> str:
    """Markdown table with one row per run (its final validation and status)."""
    rows = []
    for label, runs in groups.items():
        for r in runs:
            s = run_summary(r)
            rows.append([label, os.path.basename(r.path), _fmt_value(r.seed), _fmt(s["val_loss"], ".4f"),
                         _fmt(s["val_acc"], ".4f"), _fmt_log10(s["log10_bound"]),
                         _fmt_magnitude(s["act_max_entry"]),
                         "n/a" if s["step"] is None else f"{s['step']}/{r.num_iterations}",
                         _fmt(s["train_time_s"], ".1f"), _fmt_tokens(s["tokens"]),
                         "; ".join((["complete"] if r.complete else []) + r.notes)])
    header = ["group", "log", "seed", "val loss", "val acc", "log10 bound", "max act entry",
              "step", "train time (s)", "tokens", "status"]
    return _table(header, rows)


def _fmt_value(v) -> str:
    return "n/a" if v is None else _value_text(v)


# ----------------------------------------------------------------------------------------------
# Plots

PLOT_FILES = ("val_loss_vs_step.png", "val_loss_vs_time.png", "bound_vs_step.png",
              "max_act_vs_step.png", "frontier.png")


def _finite_pairs(xs, ys):
    pairs = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None
             and math.isfinite(x) and math.isfinite(y)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _curve_plot(plt, groups, path, key, xkey, xlabel, ylabel, title, logy=False):
    """One line per run, one colour per group, of `key` against step or train time (xkey)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for i, (label, runs) in enumerate(groups.items()):
        color = f"C{i % 10}"
        first = True
        for r in runs:
            steps, ys = r.series(key)
            if xkey == "step":
                xs = steps
            else:
                xs = [r.points[s].get("train_time", math.nan) / 1000 for s in steps]
            xs, ys = _finite_pairs(xs, ys)
            if logy:
                xs, ys = _finite_pairs(xs, [y if y > 0 else None for y in ys])
            if not xs:
                continue
            ax.plot(xs, ys, color=color, lw=1.2, alpha=0.8, marker="." if len(xs) < 30 else None,
                    label=f"{label} (n={len(runs)})" if first else None)
            first, drawn = False, True
    if logy and drawn:
        ax.set_yscale("log")
    if drawn:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.2))  # below the axes: never hides data
    else:
        ax.text(0.5, 0.5, f"no run logs {key}", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _frontier_plot(plt, groups, path):
    """Final val loss against log10 certified bound: one point per group (mean, error bars =
    sample std over seeds). Groups with no finite bound are drawn as horizontal lines."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for i, (label, runs) in enumerate(groups.items()):
        used, _ = stats_runs(runs)
        s = [run_summary(r) for r in used]
        loss, loss_std, _ = mean_std([x["val_loss"] for x in s])
        if loss is None or not math.isfinite(loss):
            continue
        bound, bound_std, _ = mean_std([x["log10_bound"] for x in s])
        color = f"C{i % 10}"
        if bound is None or not math.isfinite(bound):
            ax.axhline(loss, color=color, ls="--", lw=1,
                       label=f"{label}: bound {'inf' if bound is not None else 'n/a'}")
        else:
            ax.errorbar([bound], [loss], xerr=None if not bound_std else [bound_std],
                        yerr=None if not loss_std else [loss_std], fmt="o", color=color,
                        capsize=3, label=f"{label} (n={len(used)})")
        drawn = True
    if drawn:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.2))  # below the axes: never hides data
    else:
        ax.text(0.5, 0.5, "no finite final val loss", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="log10 certified Lipschitz bound", ylabel="final val loss",
           title="loss vs certified bound (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_plots(groups: dict[str, list[RunLog]], out_dir: str) -> list[str]:
    """Write the PLOT_FILES PNGs into out_dir (created if needed); returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, name) for name in PLOT_FILES]
    _curve_plot(plt, groups, paths[0], "val_loss", "step", "step", "val loss", "validation loss")
    _curve_plot(plt, groups, paths[1], "val_loss", "time", "train time (s)", "val loss",
                "validation loss vs training time")
    _curve_plot(plt, groups, paths[2], "lipschitz_bound_log10", "step", "step",
                "log10 certified Lipschitz bound", "certified bound")
    _curve_plot(plt, groups, paths[3], "act_max_entry", "step", "step", "max |activation| entry",
                "largest activation entry", logy=True)
    _frontier_plot(plt, groups, paths[4])
    return paths


# ----------------------------------------------------------------------------------------------
# CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="LOG_OR_DIR")
    parser.add_argument("--baseline", default=None,
                        help="substring of the baseline group's label (default: the first group)")
    parser.add_argument("--group-by", default=None,
                        help="comma-separated config keys to group by (default: all but seed/run_id/paths)")
    parser.add_argument("--plots", default="plots", help="directory for the PNG plots (default: plots)")
    parser.add_argument("--no-plots", action="store_true", help="do not write plots")
    args = parser.parse_args(argv)

    runs = load_runs(args.paths)
    if not runs:
        print("compare.py: no log could be parsed", file=sys.stderr)
        return 2
    keys = None if args.group_by is None else [k.strip() for k in args.group_by.split(",") if k.strip()]
    groups = group_runs(runs, keys)
    try:
        table = summary_table(groups, args.baseline)
    except ValueError as e:
        print(f"compare.py: {e}", file=sys.stderr)
        return 2
    print(table)
    print()
    print(runs_table(groups))
    if not args.no_plots:
        for p in write_plots(groups, args.plots):
            print(f"wrote {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
