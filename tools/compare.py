"""Compare speedrun-format training logs: a markdown table with significance tests, and plots.

Usage:
    python tools/compare.py LOG_OR_DIR... [--baseline S] [--group-by K1,K2|re:REGEX] [--plots DIR] [--no-plots]

Files named explicitly are read whatever their extension. Directories are searched recursively
(hidden files and folders and ``__pycache__`` excepted): ``*.txt``, ``*.log`` and ``*.out`` files are
read as logs; a file of any other extension is read when it holds a log after a separator line
(modded-nanogpt forks append the training log to their ``.py`` source that way). stderr names every
file skipped and why, then how many were read. Runs are grouped (seeds of one configuration form a
group), and the table gives per group the mean and sample standard deviation over seeds of the
final validation loss and accuracy, the certified Lipschitz bound, the largest activation entry,
steps, training time and tokens, with a one-sided Welch t-test of each group's final val loss
against the baseline group. A second table lists every run. Plots (PNG, matplotlib Agg):
val_loss_vs_step and val_loss_vs_time (each with a zoomed panel of the last 30% of training),
bound_vs_step, max_act_vs_step and frontier (final val loss against log10 certified bound, one
point per group); a plot with nothing to draw is not written, and stderr says so.

Log format (what train_gpt.py writes to ``logs/<run_id>.txt``; modded-nanogpt's record logs follow
the same outline without the ``config:`` line and the extra metrics):

1. Preamble: the source code of the run, each file followed by a separator line of exactly 100
   ``=`` characters, then versions and hardware (nvidia-smi output, ...), possibly with further
   separators. The preamble is arbitrary text and may itself contain lines that look like run lines,
   so only the text after the LAST separator line is parsed (all of it if there is none). There,
   every line must match one of the patterns below in full (anchored regexes); any other line is
   ignored. (So a resumed run must not append a second preamble to its old log: it would hide the
   steps before it. Write a new log, or append run lines only.) The sections before the first one
   that reports versions or hardware are the source: their sha256 (``RunLog.source_hash``) tells
   runs of identical code apart.
2. ``config: {json}``: one line, the run's Hyperparameters as a JSON object (every field, e.g.
   run_id, preset, arch, constraint, w_max, seed, num_iterations, seq_len, batch_size, val_every,
   plus world_size and tokens_per_step). Absent in modded-nanogpt logs. A resumed run appends
   another config line to its log; the first one counts.
3. Step lines ``step:N/M`` followed by space-separated tokens. A token is either ``key:value`` or a
   bare word. The value is a float as Python spells it (``3.2785``, ``1e+300``, ``inf``, ``-inf``,
   ``nan``), optionally with a unit suffix ``ms`` or ``s``: times are kept in milliseconds, so ``s``
   multiplies by 1000 (``train_time:503.556s`` is 503556 ms). Any keys may appear
   (``val_avg_loss:3.3 val_ema_loss:3.2``). A bare word prefixes the keys after it, joined by a dot,
   until the next bare word: ``max_weight_norm qkv:1.0 o:0.9`` gives ``max_weight_norm.qkv`` and
   ``max_weight_norm.o``. A line that starts with ``step:`` but does not follow this grammar is
   ignored and reported (its line number and the token at fault). Lines are classified by keys:
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
4. Multi-line blocks (the Lipschitz paper's nanogpt fork): a line ``>>> Act Max Entries:`` or
   ``>>> Act RMS Norms:`` followed by lines ``LABEL: NUMBER`` (``Embed: 5.28``, ``Block #0: 4.84``,
   ..., ``Logits: 0.0``). A block belongs to the validation line that immediately follows it (other
   blocks of such lines in between allowed); it gives ``act_max_entry`` / ``act_max_rms`` (the largest
   entry over the residual stream, i.e. every label but Logits) and per label
   ``act_max_entry.embed``, ``act_max_entry.block0``, ..., ``act_max_entry.logits``. A block not
   followed by a validation line is ambiguous and dropped (noted). Other ``>>>`` blocks are ignored.
5. Optional end markers: ``peak memory allocated: ...`` (or modded-nanogpt's older
   ``peak memory consumption: ...``), and ``run finished`` or ``done``.

A run is complete when it has a validation at its final step M; otherwise it is reported as
truncated, with its last validation (and the validations missing, when the config has val_every).
A group's statistics use its complete runs, or its truncated ones if none is complete; a group of
truncated runs is labelled "(stopped at S/M)" in the table and the plots. A run whose train or val
loss is logged as non-finite is marked diverged. A file with no step lines after the last separator,
or that is empty, binary, not UTF-8 or unreadable, is skipped with a one-line message on stderr.
The exit code is 0 if at least one log was parsed and 2 otherwise (or on a bad argument).

Grouping: by every config key except seed, run_id, resume*, log/checkpoint paths, log_every,
checkpoint_every and max_steps_this_run; logs without a config line by directory, labelled
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

Importable API: ``parse_log(path) -> RunLog`` (``.config``: the config dict or None;
``.points``: {step: {key: float}} of validation and metric lines; ``.train``: training lines as
dicts with "step"; ``.step_lines``: the raw text of every step line read; ``.final``, ``.complete``,
``.series(key)``), ``load_runs(paths, err) -> [RunLog]``, ``group_runs(runs, keys=None) -> Groups``
({label: [RunLog]}), ``group_warnings(groups) -> {label: [str]}``,
``summary_table(groups, baseline=None) -> str``, ``runs_table(groups) -> str``,
``make_figures(groups) -> {file name: figure}``, ``write_plots(groups, out_dir, err=None) -> [paths]``,
``main(argv) -> exit code``.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import math
import os
import re
import statistics
import sys
import tempfile
import textwrap
import warnings
from dataclasses import dataclass, field

SEPARATOR = "=" * 100

_NUMBER = r"[-+]?(?:inf(?:inity)?|nan|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)"
_KEY = r"[A-Za-z_][A-Za-z0-9_.\-]*"
_TOKEN = rf"(?:{_KEY}:{_NUMBER}(?:ms|s)?|{_KEY})"
STEP_LINE = re.compile(rf"step:(\d+)/(\d+)((?:[ \t]+{_TOKEN})*)[ \t]*", re.IGNORECASE)
STEP_HEAD = re.compile(r"step:(\d+)/(\d+)(?=[ \t]|$)", re.IGNORECASE)
KEY_VALUE = re.compile(rf"({_KEY}):({_NUMBER})(ms|s)?", re.IGNORECASE)
BARE_WORD = re.compile(_KEY)
CONFIG_LINE = re.compile(r"config:[ \t]*(\{.*)")
PEAK_MEMORY_LINE = re.compile(r"peak memory (?:allocated|consumption):?[ \t]*(.*)")
FINISHED_LINE = re.compile(r"(?:run finished|done)\b.*", re.IGNORECASE)
BLOCK_HEAD = re.compile(r">>>[ \t]*(.+?):?[ \t]*")
BLOCK_ENTRY = re.compile(rf"([A-Za-z][\w #.\-]*?)[ \t]*:[ \t]*({_NUMBER})", re.IGNORECASE)
# Block titles (lower case) read as metrics; the metric is the max over every label but logits.
BLOCK_METRICS = {"act max entries": "act_max_entry", "act rms norms": "act_max_rms"}
# A preamble section that reports versions or hardware ends the source code (train_gpt.py and
# modded-nanogpt print these after the code).
_ENVIRONMENT = re.compile(r"^(?:Running (?:Python|PyTorch) \d|python \d[\w.+]*[ \t]+torch \d|\|[ \t]*NVIDIA-SMI \d)",
                          re.MULTILINE)

# In directory scans: extensions read as logs as they are; any other file needs a separator line.
LOG_EXTENSIONS = (".txt", ".log", ".out")
_BINARY = "binary file (contains NUL bytes), not a text log"
_NOT_A_LOG = (f"not a log file ({', '.join(LOG_EXTENSIONS)}) and no line of {len(SEPARATOR)} '=' "
              "with a log after it")
_MAX_LOG_BYTES = 1 << 30
_SNIFF_BYTES = 1 << 13

# Config keys that differ between seeds of one configuration, or only steer logging, checkpoints
# and chunked (resumed) runs without changing what is trained: never group by them.
_UNGROUPED_KEYS = {"seed", "run_id", "log_every", "checkpoint_every", "max_steps_this_run"}
_PATH_SUFFIXES = ("dir", "_path", "_file")
_HEADLINE_KEYS = ("preset", "arch", "constraint", "w_max")
PSEUDO_KEYS = ("file", "dir", "source")
REGEX_KEY_PREFIX = "re:"


class LogFormatError(ValueError):
    """A file that is not a readable speedrun-format log; the message names the file and the defect.
    reason: set (without the file name) when the file is plainly no log (binary, or not a log by
    its extension and holding none after a separator): a directory scan lists those by reason."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason


@dataclass
class RunLog:
    """One training run parsed from its log.

    points: step -> metrics of every non-training step line at that step (val_loss, val_acc,
    train_time and step_avg in ms, lipschitz_bound_log10, act_max_entry, max_weight_norm.qkv, ...).
    train: one dict per training line (step, train_time, step_avg in ms, optional train_loss).
    num_iterations: M of the last ``step:N/M`` line.
    source_hash: sha256 (hex, 12 digits) of the source code in the preamble, None without one.
    step_lines: the text of every step line read, in file order.
    """
    path: str
    config: dict | None
    num_iterations: int
    points: dict[int, dict[str, float]]
    train: list[dict[str, float]] = field(default_factory=list)
    peak_memory: str | None = None
    finished_marker: bool = False
    notes: list[str] = field(default_factory=list)
    source_hash: str | None = None
    step_lines: list[str] = field(default_factory=list)

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

def token_value(number: str, unit: str | None) -> float:
    """A logged number in the log's units; times in seconds (unit 's') become milliseconds."""
    return float(number) * (1000.0 if unit and unit.lower() == "s" else 1.0)


def parse_step_tokens(tokens: str) -> dict[str, float]:
    """Parse the tokens after ``step:N/M`` into {key: float}; bare words prefix the keys after them.
    Raises ValueError naming the first token that is neither ``key:number[ms|s]`` nor a bare word."""
    out: dict[str, float] = {}
    prefix = ""
    for token in tokens.split():
        m = KEY_VALUE.fullmatch(token)
        if m is not None:
            out[prefix + m.group(1)] = token_value(m.group(2), m.group(3))
        elif BARE_WORD.fullmatch(token):
            prefix = token + "."
        else:
            raise ValueError(f"token {token!r} is neither key:number (optionally with unit ms or s) "
                             f"nor a bare word")
    return out


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
            if b"\x00" in head:  # checked before reading the rest: checkpoints and shards are large
                raise LogFormatError(f"{path}: {_BINARY}", _BINARY)
            if os.fstat(f.fileno()).st_size > _MAX_LOG_BYTES:
                raise LogFormatError(f"{path}: larger than {_MAX_LOG_BYTES >> 20} MiB, not a training log")
            data = head + f.read()
    except OSError as e:
        raise LogFormatError(f"{path}: unreadable ({e.strerror or e})") from None
    if not data.strip():
        raise LogFormatError(f"{path}: empty file")
    if b"\x00" in data:
        raise LogFormatError(f"{path}: {_BINARY}", _BINARY)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LogFormatError(f"{path}: not UTF-8 text (invalid byte at offset {e.start})") from None


def _last_separator(lines: list[str]) -> int:
    """Index of the last separator line, -1 if there is none."""
    return max((i for i, line in enumerate(lines) if line.rstrip() == SEPARATOR), default=-1)


def source_hash(preamble: list[str]) -> str | None:
    """sha256 (12 hex digits) of the source code in a preamble: its separator-delimited sections
    before the first that reports versions or hardware, trailing whitespace ignored. None if empty."""
    sections, current = [], []
    for line in preamble:
        if line.rstrip() == SEPARATOR:
            sections.append(current)
            current = []
        else:
            current.append(line.rstrip())
    sections.append(current)
    code = []
    for section in sections:
        if _ENVIRONMENT.search("\n".join(section)):
            break
        code.extend(section)
    text = "\n".join(code).strip()
    return hashlib.sha256(text.encode()).hexdigest()[:12] if text else None


def _block_metrics(title: str, entries: list[tuple[str, float]]) -> dict[str, float]:
    """Metrics of one recognised multi-line block (empty for other blocks)."""
    key = BLOCK_METRICS.get(title.strip().lower())
    if key is None or not entries:
        return {}
    out = {f"{key}.{re.sub(r'[^a-z0-9]+', '', label.lower())}": v for label, v in entries}
    residual = [v for label, v in entries if not label.lower().startswith("logit")]
    if residual:
        out[key] = max(residual)
    return out


def _clip(line: str, width: int = 80) -> str:
    return line if len(line) <= width else line[:width - 3] + "..."


class _Blocks:
    """Multi-line blocks (item 4 of the module docstring): collected line by line; their metrics go
    to the validation line right after them, and are dropped (counted) before any other line."""

    def __init__(self):
        self.block: tuple[str, list[tuple[str, float]]] | None = None
        self.pending: dict[str, float] = {}
        self.dropped = 0

    def feed(self, line: str) -> bool:
        """True when `line` (stripped) is a block's heading or entry."""
        if self.block is not None:
            if m := BLOCK_ENTRY.fullmatch(line):
                self.block[1].append((m.group(1).strip(), float(m.group(2))))
                return True
            self.pending.update(_block_metrics(*self.block))
            self.block = None
        if m := BLOCK_HEAD.fullmatch(line):
            self.block = (m.group(1), [])
            return True
        return False

    def claim(self, metrics: dict[str, float] | None = None) -> dict[str, float]:
        """The pending block metrics if `metrics` are a validation line's, else {} (dropping them)."""
        out, self.pending = self.pending, {}
        if out and (metrics is None or "val_loss" not in metrics):
            self.dropped += 1
            return {}
        return out

    def finish(self) -> None:
        self.feed("")
        self.claim()


def _step_line_error(line: str, head: re.Match, number: int) -> str:
    """Why a line starting with ``step:N/M`` does not follow the grammar, with its line number."""
    try:
        parse_step_tokens(line[head.end():])
        why = "does not match 'step:N/M key:value ...'"
    except ValueError as e:
        why = str(e)
    return f"line {number} {_clip(line)!r}: {why}"


def _config(text: str, path: str, number: int) -> dict:
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise LogFormatError(f"{path}: line {number}: config line is not valid JSON ({e.msg})") from None
    if not isinstance(config, dict):
        raise LogFormatError(f"{path}: line {number}: config line is not a JSON object")
    return config


def parse_log(path: str, require_separator: bool = False) -> RunLog:
    """Parse one speedrun-format log (see the module docstring). Raises LogFormatError naming the
    file and the defect when it is unreadable, empty, binary or has no valid step lines (then
    naming the first step line that failed and why). require_separator: the log must follow a
    separator line (for files that are not logs by their extension)."""
    lines = _read_text(path).splitlines()
    sep = _last_separator(lines)
    if require_separator and sep < 0:
        raise LogFormatError(f"{path}: {_NOT_A_LOG}", _NOT_A_LOG)
    run = RunLog(path=path, config=None, num_iterations=0, points={},
                 source_hash=source_hash(lines[:sep]) if sep >= 0 else None)
    totals: list[int] = []
    bad_lines: list[str] = []
    blocks = _Blocks()
    for number, raw in enumerate(lines[sep + 1:], start=sep + 2):
        line = raw.strip()
        if blocks.feed(line) or not line:
            continue
        head = STEP_HEAD.match(line)
        m = STEP_LINE.fullmatch(line) if head else None
        if m is None:
            blocks.claim()
        if head and m is None:
            bad_lines.append(_step_line_error(line, head, number))
        elif m is not None:
            step = int(m.group(1))
            totals.append(int(m.group(2)))
            run.step_lines.append(line)
            metrics = parse_step_tokens(m.group(3))
            metrics = {**blocks.claim(metrics), **metrics}
            if "train_time" in metrics and "val_loss" not in metrics:
                run.train.append({"step": step, **metrics})
            else:
                run.points.setdefault(step, {}).update(metrics)
        elif m := CONFIG_LINE.fullmatch(line):
            if run.config is not None:
                run.notes.append("several config lines, the first is used")
            else:
                run.config = _config(m.group(1), path, number)
        elif m := PEAK_MEMORY_LINE.fullmatch(line):
            run.peak_memory = m.group(1)
        elif FINISHED_LINE.fullmatch(line):
            run.finished_marker = True
    blocks.finish()
    if not totals:
        where = f"after the last {len(SEPARATOR)}-'=' separator (line {sep + 1})" if sep >= 0 else "in the file"
        if bad_lines:
            raise LogFormatError(f"{path}: no valid 'step:N/M ...' lines {where}; {len(bad_lines)} "
                                 f"rejected, the first: {bad_lines[0]}")
        raise LogFormatError(f"{path}: no 'step:N/M ...' lines {where}; not a speedrun-format log")
    run.num_iterations = totals[-1]
    if bad_lines:
        run.notes.append(f"{len(bad_lines)} step line(s) ignored, the first: {bad_lines[0]}")
    if blocks.dropped:
        run.notes.append(f"{blocks.dropped} multi-line block(s) not followed by a validation line ignored")
    if len(set(totals)) > 1:
        run.notes.append(f"inconsistent total steps {sorted(set(totals))}, using the last")
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


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__pycache__"


def find_logs(paths: list[str]) -> tuple[list[tuple[str, bool]], int]:
    """Expand directories into their files (recursively, sorted), keep files as given.
    Returns ([(path, needs_separator)], number of hidden files and folders not scanned):
    needs_separator is True for files found in a directory whose extension is not a log's."""
    out: dict[str, bool] = {}
    hidden = 0
    for p in paths:
        if not os.path.isdir(p):
            out.setdefault(p, False)
            continue
        for root, dirs, files in os.walk(p):
            hidden += sum(map(_hidden, dirs + files))
            dirs[:] = sorted(d for d in dirs if not _hidden(d))
            for f in sorted(files):
                if not _hidden(f):
                    out.setdefault(os.path.join(root, f), not f.lower().endswith(LOG_EXTENSIONS))
    return list(out.items()), hidden


def load_runs(paths: list[str], err=None) -> list[RunLog]:
    """Parse every log under `paths`; report on `err` (default stderr) each file skipped with the
    reason (one line per file, or per reason for files plainly no log), then how many were read."""
    err = sys.stderr if err is None else err
    files, hidden = find_logs(paths)
    runs = []
    plainly_not_logs: dict[str, list[str]] = {}  # reason -> files: one line each, not one per file
    for p, needs_separator in files:
        try:
            runs.append(parse_log(p, require_separator=needs_separator))
        except LogFormatError as e:
            if e.reason is None:
                print(f"compare.py: skipping {e}", file=err)
            else:
                plainly_not_logs.setdefault(e.reason, []).append(p)
    for reason, skipped in plainly_not_logs.items():
        print(f"compare.py: skipping {len(skipped)} file(s), {reason}: {', '.join(skipped)}", file=err)
    summary = f"compare.py: read {len(runs)} log(s), skipped {len(files) - len(runs)} file(s)"
    if hidden:
        summary += f"; {hidden} hidden file(s)/folder(s) not scanned"
    print(summary, file=err)
    return runs


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
    """Every config key of the runs except seed, run_id, resume*, log/checkpoint paths and the
    logging/checkpoint cadence keys."""
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
    last validated step(s) S (a range when they differ) of its truncated runs."""
    if any(r.complete for r in runs):
        return ""
    last = sorted({r.final.get("step") for r in runs if r.val_steps})
    totals = sorted({r.num_iterations for r in runs})
    if not last:
        return f"(stopped before any validation, of {'/'.join(map(str, totals))})"
    at = str(last[0]) if len(last) == 1 else f"{last[0]}-{last[-1]}"
    return f"(stopped at {at}/{'/'.join(map(str, totals))})"


def display_label(label: str, runs: list[RunLog]) -> str:
    mark = truncation_mark(runs)
    return f"{label} {mark}" if mark else label


# ----------------------------------------------------------------------------------------------
# Statistics

def log10_bound(point: dict[str, float]) -> float | None:
    """log10 of the certified Lipschitz bound logged at a step, or None if it was not logged."""
    if "lipschitz_bound_log10" in point:
        return point["lipschitz_bound_log10"]
    if "lipschitz_bound" in point:
        b = point["lipschitz_bound"]
        return math.log10(b) if b > 0 else (math.nan if b != 0 else -math.inf)
    return None


# --bound: which logged certificate the table and plots use (the first is logged by every version)
BOUND_FIELDS = {"appendix_c": "lipschitz_bound_log10", "sharp": "lipschitz_bound_sharp_log10"}


def select_bound(runs: list[RunLog], which: str) -> list[RunLog]:
    """The runs with `which` certificate (a key of BOUND_FIELDS) as their lipschitz_bound_log10, in place; a
    log that lacks it (older code) then shows no bound rather than another certificate's."""
    field_name = BOUND_FIELDS[which]
    for run in runs:
        for point in run.points.values():
            if field_name in point:
                point["lipschitz_bound_log10"] = point[field_name]
            else:
                point.pop("lipschitz_bound_log10", None)
                point.pop("lipschitz_bound", None)
    return runs


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


def summary_table(groups: dict[str, list[RunLog]], baseline: str | None = None) -> str:
    """Markdown table, one row per group: mean ± sample std over seeds of the final val loss, val
    acc, train time; mean log10 certified bound and max activation entry; steps; tokens; and the
    p-value of the one-sided Welch t-test that the group's final val loss is below the baseline's.
    `baseline` selects the baseline group by label substring (default: the first group)."""
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
        s = [run_summary(r) for r in runs]
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
    header = ["group", "n", "val loss", "val acc", "log10 bound", "max act entry", "steps",
              "train time (s)", "tokens", "p (loss < baseline)", "notes"]
    text = _table(header, rows)
    text += ("\n\nMean ± sample std over seeds of the final validation; log10 bound and max act "
             "entry are means over seeds. p: one-sided Welch t-test that the group's mean final val "
             f"loss is below the baseline's (baseline: {shown[base_label]}); n/a when either group has "
             "fewer than 2 runs.")
    if shown_note:
        text += "\n" + shown_note
    hidden = getattr(groups, "hidden", {})
    if hidden:
        text += ("\nNot shown in the labels (their values vary together with a shown key): "
                 + ", ".join(f"{k} (with {v})" for k, v in hidden.items()) + ".")
    if scipy_missing:
        text += "\nNote: p-values are n/a because scipy is not installed (pip install -r requirements-dev.txt)."
    return text


def runs_table(groups: dict[str, list[RunLog]]) -> str:
    """Markdown table with one row per run (its final validation and status)."""
    shown, _ = table_labels(groups)
    rows = []
    for label, runs in groups.items():
        for r in runs:
            s = run_summary(r)
            rows.append([shown[label], os.path.basename(r.path), _fmt_value(r.seed), _fmt(s["val_loss"], ".4f"),
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
MAX_LABEL = 40  # characters per line of a legend label
LABEL_LINES = 3  # lines of a legend label before its "(stopped at ...)" mark and run count
ZOOM_FRACTION = 0.3  # the zoomed panel shows the last 30% of training
_COLORS = [f"C{i}" for i in range(10)]
_LINESTYLES = ["-", "--", ":", "-."]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<"]


def group_styles(n: int) -> list[dict]:
    """n (colour, linestyle, marker) combinations: colours cycle fastest, then linestyles and
    markers together. Distinct (colour, linestyle) for n <= 40, (colour, marker) for the frontier's
    points for n <= 100, all three for n <= 200."""
    out = []
    for i in range(n):
        c, rest = i % len(_COLORS), i // len(_COLORS)
        out.append({"color": _COLORS[c], "linestyle": _LINESTYLES[rest % len(_LINESTYLES)],
                    "marker": _MARKERS[rest % len(_MARKERS)]})
    return out


def _common_dir(paths: list[str]) -> str:
    try:
        return os.path.commonpath([os.path.abspath(p) for p in paths])
    except ValueError:  # different drives
        return ""


def _shorten(text: str, width: int = 2 * MAX_LABEL) -> str:
    """At most `width` characters, an ellipsis marking a cut."""
    return text if len(text) <= width else text[:width - 1] + "…"


def wrap_label(text: str, max_lines: int | None = None) -> str:
    """`text` on lines of at most MAX_LABEL characters (broken at spaces where possible), the last
    line ending in an ellipsis when it does not fit in max_lines."""
    lines = textwrap.wrap(text, MAX_LABEL, break_on_hyphens=False) or [""]
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [_shorten(lines[max_lines - 1] + " …", MAX_LABEL)]
    return "\n".join(lines)


def short_labels(groups: Groups | dict, width: int | None = 2 * MAX_LABEL) -> tuple[dict[str, str], str | None]:
    """({label: legend label}, reference text or None). A speedrun group is labelled by its folder
    (or file) relative to the folder all speedrun groups share. Configured groups keep their labels
    when these all fit on LABEL_LINES lines of MAX_LABEL characters (self-explanatory); otherwise
    each is labelled by the key=value pairs that differ from the most common value over the
    groups, rarest values first ("reference" when none does; the reference text lists the common
    values), cut to `width` characters (None: uncut). Labels stay unique."""
    labels = list(groups)
    fields = getattr(groups, "fields", {})
    cut = (lambda text: text) if width is None else (lambda text: _shorten(text, width))  # noqa: E731
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


def _legend_entries(groups) -> list[str]:
    """Legend text per group: short label, truncation mark and run count."""
    labels, _ = short_labels(groups)
    out = []
    for label, runs in groups.items():
        mark = truncation_mark(runs)
        head = wrap_label(labels[label], LABEL_LINES)
        out.append(head + "\n" + wrap_label(f"{mark} (n={len(runs)})".strip()) if mark
                   else wrap_label(f"{labels[label]} (n={len(runs)})", LABEL_LINES + 1))
    return out


def _legend_title(groups) -> str | None:
    _, reference = short_labels(groups)
    if reference is None:
        return None
    return wrap_label("changes from the most common setting: " + reference)


def _finite_pairs(xs, ys):
    pairs = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None
             and math.isfinite(x) and math.isfinite(y)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _curves(groups, key: str, xkey: str, logy: bool) -> list[list[tuple[list, list]]]:
    """Per group, per run: (xs, ys) of the finite points of `key` against step or train time (s)."""
    out = []
    for runs in groups.values():
        per_run = []
        for r in runs:
            steps, ys = r.series(key)
            xs = steps if xkey == "step" else [r.points[s].get("train_time", math.nan) / 1000 for s in steps]
            xs, ys = _finite_pairs(xs, ys)
            if logy:
                xs, ys = _finite_pairs(xs, [y if y > 0 else None for y in ys])
            per_run.append((xs, ys))
        out.append(per_run)
    return out


def _zoom_limits(curves, fraction: float) -> tuple[tuple[float, float], tuple[float, float], int] | None:
    """((x0, x1), (y0, y1), groups off scale) of the last `fraction` of the x-range. The y-range
    covers the lowest point there and every point of the groups whose final value is within 5x the
    distance from that lowest point to the median final value (so a few far-off groups do not
    flatten the rest); the groups left out are counted."""
    xs = [x for g in curves for xr, _ in g for x in xr]
    if not xs:
        return None
    x1 = max(xs)
    x0 = x1 - fraction * (x1 - min(xs))
    ends = []  # per group with points in the window: (its points there, its lowest final value)
    for g in curves:
        w = [y for xr, yr in g for x, y in zip(xr, yr) if x >= x0]
        if w:
            ends.append((w, min(yr[-1] for xr, yr in g if xr and xr[-1] >= x0)))
    if not ends or x1 == x0:
        return None
    lo = min(min(w) for w, _ in ends)
    spread = max(statistics.median(f for _, f in ends) - lo, 1e-3 * abs(lo), 1e-12)
    kept = [w for w, f in ends if f <= lo + 5 * spread]
    hi = max(max(w) for w in kept)
    pad = 0.05 * (hi - lo) if hi > lo else 0.05 * (abs(hi) or 1.0)
    return (x0, x1), (lo - pad, hi + pad), len(ends) - len(kept)


def _figure(plt, panels: int, texts: list[str], title: str | None):
    """Figure with `panels` axes side by side, tall enough for a legend of `texts` (7 pt: ~0.12 in
    per text line, ~0.05 in between entries) and its title, which goes to their right."""
    lines = sum(t.count("\n") + 1 for t in texts) + (title.count("\n") + 1 if title else 0)
    columns = 1 if len(texts) <= 30 else 2
    height = max(4.5, (0.125 * lines + 0.06 * len(texts)) / columns + 1.0)
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels + 3.2 * columns, height), squeeze=False,
                             layout="constrained")
    return fig, list(axes[0])


def _add_legend(fig, handles, texts, title):
    # "outside" with constrained layout reserves the legend's space next to the axes: never on data
    fig.legend(handles, texts, loc="outside right upper", fontsize=7, title=title, title_fontsize=7,
               ncols=1 if len(texts) <= 30 else 2, frameon=False)


def _curve_figure(plt, groups, key, xkey, xlabel, ylabel, title, logy=False, zoom=False):
    """One line per run, one colour+linestyle per group, of `key` against step or train time
    (xkey), with a zoomed panel of the end of training when `zoom`. None when nothing to draw."""
    curves = _curves(groups, key, xkey, logy)
    if not any(xr for g in curves for xr, _ in g):
        return None
    limits = _zoom_limits(curves, ZOOM_FRACTION) if zoom else None
    styles = group_styles(len(groups))
    texts = _legend_entries(groups)
    fig, axes = _figure(plt, 2 if limits else 1, texts, _legend_title(groups))
    handles = []
    for g, (per_run, style) in enumerate(zip(curves, styles)):
        runs = list(groups.values())[g]
        handle = None
        for ax in axes:
            for (xs, ys), r in zip(per_run, runs):
                if not xs:
                    continue
                (line,) = ax.plot(xs, ys, color=style["color"], ls=style["linestyle"], lw=1.2, alpha=0.85)
                handle = handle or line
                if not r.complete:  # where a truncated run stopped
                    ax.plot(xs[-1:], ys[-1:], color=style["color"], marker="x", ms=6, ls="none")
        handles.append(handle)
    keep = [i for i, h in enumerate(handles) if h is not None]
    for ax in axes:
        if logy:
            ax.set_yscale("log")
        ax.set(xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
    axes[0].set_title(title, fontsize=10)
    if limits:
        (x0, x1), (y0, y1), off = limits
        axes[1].set_xlim(x0, x1)
        axes[1].set_ylim(y0, y1)
        axes[1].set_title(f"last {ZOOM_FRACTION:.0%} of training"
                          + (f" ({off} group(s) above the range)" if off else ""), fontsize=10)
    _add_legend(fig, [handles[i] for i in keep], [texts[i] for i in keep], _legend_title(groups))
    return fig


def _frontier_figure(plt, groups):
    """Final val loss against log10 certified bound: one point per group (mean, error bars =
    sample std over seeds); groups with an infinite bound as horizontal lines. None when no group
    has both a finite final loss and a finite bound."""
    points = []
    for runs in groups.values():
        used, _ = stats_runs(runs)
        s = [run_summary(r) for r in used]
        loss, loss_std, _ = mean_std([x["val_loss"] for x in s])
        bound, bound_std, _ = mean_std([x["log10_bound"] for x in s])
        points.append((loss, loss_std, bound, bound_std))
    finite = lambda x: x is not None and math.isfinite(x)  # noqa: E731
    if not any(finite(loss) and finite(bound) for loss, _, bound, _ in points):
        return None
    styles = group_styles(len(groups))
    texts = _legend_entries(groups)
    fig, (ax,) = _figure(plt, 1, texts, _legend_title(groups))
    handles, kept = [], []
    for i, ((loss, loss_std, bound, bound_std), style) in enumerate(zip(points, styles)):
        if not finite(loss):
            continue
        if finite(bound):
            h = ax.errorbar([bound], [loss], xerr=[bound_std] if finite(bound_std) else None,
                            yerr=[loss_std] if finite(loss_std) else None, fmt=style["marker"],
                            color=style["color"], capsize=3)
        elif bound is not None and bound == math.inf:
            h = ax.axhline(loss, color=style["color"], ls=style["linestyle"], lw=1)
            texts[i] += ": bound inf"
        else:
            continue
        handles.append(h)
        kept.append(texts[i])
    ax.set(xlabel="log10 certified Lipschitz bound", ylabel="final val loss")
    title = "loss vs certified bound (mean ± std over seeds)"
    bars = [(loss - (std if finite(std) else 0), loss + (std if finite(std) else 0), loss)
            for loss, std, *_ in points if finite(loss)]  # each group's error bar, ending at its mean
    limits = _zoom_limits([[([0.0, 0.5, 1.0], list(bar))] for bar in bars], 1.0)
    if limits and limits[2]:  # a few far-off groups would flatten the rest: leave them out of range
        ax.set_ylim(*limits[1])
        title += f"\n({limits[2]} group(s) above the range)"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    _add_legend(fig, handles, kept, _legend_title(groups))
    return fig


def make_figures(groups: dict[str, list[RunLog]]) -> dict[str, object]:
    """{PLOT_FILES name: matplotlib Figure, or None when there is nothing to draw}. The caller
    closes the figures (write_plots does)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return {
        PLOT_FILES[0]: _curve_figure(plt, groups, "val_loss", "step", "step", "val loss",
                                     "validation loss", zoom=True),
        PLOT_FILES[1]: _curve_figure(plt, groups, "val_loss", "time", "train time (s)", "val loss",
                                     "validation loss vs training time", zoom=True),
        PLOT_FILES[2]: _curve_figure(plt, groups, "lipschitz_bound_log10", "step", "step",
                                     "log10 certified Lipschitz bound", "certified bound"),
        PLOT_FILES[3]: _curve_figure(plt, groups, "act_max_entry", "step", "step",
                                     "max |activation| entry", "largest activation entry", logy=True),
        PLOT_FILES[4]: _frontier_figure(plt, groups),
    }


_EMPTY_REASONS = {PLOT_FILES[0]: "no run logs val_loss", PLOT_FILES[1]: "no run logs val_loss with train_time",
                  PLOT_FILES[2]: "no run logs a certified bound", PLOT_FILES[3]: "no run logs act_max_entry",
                  PLOT_FILES[4]: "no group has a finite final val loss and certified bound"}


def _save_atomic(fig, path: str) -> None:
    """Write the PNG to a temporary file in the same folder, then rename: never a partial file."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_plots(groups: dict[str, list[RunLog]], out_dir: str, err=None) -> list[str]:
    """Write the PLOT_FILES PNGs that have something to show into out_dir (created if needed);
    one line on `err` (default stderr) per plot left out. Returns the paths written. Raises OSError
    when out_dir cannot be written."""
    import matplotlib.pyplot as plt

    err = sys.stderr if err is None else err
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, fig in make_figures(groups).items():
        if fig is None:
            print(f"compare.py: no {name}: {_EMPTY_REASONS[name]}", file=err)
            continue
        try:
            path = os.path.join(out_dir, name)
            _save_atomic(fig, path)
            written.append(path)
        finally:
            plt.close(fig)
    return written


def check_writable_dir(path: str) -> str | None:
    """None when `path` is, or can be created as, a writable directory; else why not."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        return f"{probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


# ----------------------------------------------------------------------------------------------
# CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="LOG_OR_DIR")
    parser.add_argument("--baseline", default=None,
                        help="substring of the baseline group's label (default: the first group)")
    parser.add_argument("--group-by", default=None,
                        help="comma-separated config keys and pseudo-keys file, dir, source, and last "
                             "re:REGEX (on the file name) to group by (default: all config keys but "
                             "seed/run_id/paths; logs without config by folder)")
    parser.add_argument("--plots", default="plots", help="directory for the PNG plots (default: plots)")
    parser.add_argument("--no-plots", action="store_true", help="do not write plots")
    parser.add_argument("--bound", choices=tuple(BOUND_FIELDS), default="appendix_c",
                        help="certified bound for the table and plots: appendix_c (lipschitz_bound_log10, logged by "
                             "every version) or sharp (lipschitz_bound_sharp_log10, the tightest)")
    args = parser.parse_args(argv)

    try:
        keys = None if args.group_by is None else parse_group_by(args.group_by)
    except ValueError as e:
        print(f"compare.py: {e}", file=sys.stderr)
        return 2
    if not args.no_plots and (why := check_writable_dir(args.plots)):
        print(f"compare.py: --plots {args.plots}: {why}; give a writable directory or --no-plots",
              file=sys.stderr)
        return 2
    runs = select_bound(load_runs(args.paths), args.bound)
    if not runs:
        print("compare.py: no log could be parsed", file=sys.stderr)
        return 2
    groups = group_runs(runs, keys)
    try:
        table = summary_table(groups, args.baseline)
    except ValueError as e:
        print(f"compare.py: {e}", file=sys.stderr)
        return 2
    for label, found in group_warnings(groups).items():
        for w in found:
            print(f"compare.py: warning: group '{label}' {w}", file=sys.stderr)
    print(table)
    print()
    print(runs_table(groups))
    if not args.no_plots:
        try:
            for p in write_plots(groups, args.plots):
                print(f"wrote {p}", file=sys.stderr)
        except OSError as e:
            print(f"compare.py: --plots {args.plots}: cannot write ({e.strerror or e}); give a "
                  "writable directory or --no-plots", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
