"""Read training logs in the speedrun's format: ours (train_gpt.py), modded-nanogpt's, and forks'.

    from tools.runlog import parse_log, load_runs, LogFormatError, RunLog

Log format (what train_gpt.py writes to ``logs/<run_id>.txt``; modded-nanogpt's record logs follow
the same outline without the ``config:`` line and the extra metrics):

1. Preamble: the source code of the run, each file followed by a separator line of exactly 100
   ``=`` characters (``run_control.SEPARATOR``), then versions and hardware (nvidia-smi output, ...),
   possibly with further separators. The preamble is arbitrary text and may itself contain lines that
   look like run lines, so only the text after the LAST separator line is parsed (all of it if there
   is none). There, every line must match one of the patterns below in full (anchored regexes); any
   other line is ignored. (So a resumed run must not append a second preamble to its old log: it would
   hide the steps before it. Write a new log, or append run lines only.) The sections before the first
   one that reports versions or hardware are the source: their sha256 (``RunLog.source_hash``) tells
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
6. Stops and resumes (train_gpt.py): ``stopped by SIGTERM at step N/M; checkpoint ...`` or
   ``stopped at step N/M (--max_steps_this_run=K); checkpoint ...`` where a run stopped before its
   end (a signal may stop it between two logged steps, so N counts as a step it reached), and
   ``resumed run ID from step N/M (CHECKPOINT)`` where a resumed run appended its next part to the
   log: its config line, then run lines, no preamble. A resumed log reads as one run up to its last
   step, noted "resumed at step N".

A run is complete when it has a validation at its final step M; otherwise it is noted as truncated
at its last step (the largest N of its step and stop lines), with its last validation ("no
validation after step 0" when it has only the untrained model's) and the validations missing, when
the config has val_every.
A run whose train or val loss is logged as non-finite is marked diverged. A file with no step lines
after the last separator, or that is empty, binary, not UTF-8 or unreadable, is not a log
(LogFormatError naming the file and the defect).

Files named explicitly are read whatever their extension. Directories are searched recursively
(hidden files and folders and ``__pycache__`` excepted): ``*.txt``, ``*.log`` and ``*.out`` files are
read as logs; a file of any other extension is read when it holds a log after a separator line
(modded-nanogpt forks append the training log to their ``.py`` source that way).

API: ``parse_log(path) -> RunLog`` (``.config``: the config dict or None; ``.points``:
{step: {key: float}} of validation and metric lines; ``.train``: training lines as dicts with "step";
``.step_lines``: the raw text of every step line read; ``.final``, ``.complete``, ``.series(key)``),
``load_runs(paths, err) -> [RunLog]`` (every log under the paths; stderr names each file skipped),
``find_logs(paths)``, ``LogFormatError``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field

from run_control import SEPARATOR

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
# train_gpt.py's lines where a run stops before its end (by a signal or --max_steps_this_run) and resumes
STOPPED_LINE = re.compile(r"stopped (?:by [A-Z0-9]+ )?at step (\d+)/(\d+)\b.*")
RESUMED_LINE = re.compile(r"resumed run \S+ from step (\d+)/(\d+)\b.*")
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
    stopped_at: N of the last ``stopped ... at step N/M`` line (None without one).
    resumed_from: N of each ``resumed run ... from step N/M`` line, in file order.
    """
    path: str
    config: dict | None
    num_iterations: int
    points: dict[int, dict[str, float]]
    train: list[dict[str, float]] = field(default_factory=list)
    peak_memory: str | None = None
    finished_marker: bool = False
    stopped_at: int | None = None
    resumed_from: list[int] = field(default_factory=list)
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
        """The last step the run reached: of its step lines, or where it said it stopped (a signal may
        stop it between two logged steps)."""
        stops = [] if self.stopped_at is None else [self.stopped_at]
        return max([int(t["step"]) for t in self.train] + list(self.points) + stops, default=0)

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
    configs = 0
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
            configs += 1
            if run.config is None:
                run.config = _config(m.group(1), path, number)
        elif m := PEAK_MEMORY_LINE.fullmatch(line):
            run.peak_memory = m.group(1)
        elif FINISHED_LINE.fullmatch(line):
            run.finished_marker = True
        elif m := STOPPED_LINE.fullmatch(line):
            run.stopped_at = int(m.group(1))
        elif m := RESUMED_LINE.fullmatch(line):
            run.resumed_from.append(int(m.group(1)))
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
    if configs > 1 + len(run.resumed_from):  # each resume appends its config: those are expected
        run.notes.append("several config lines, the first is used")
    if run.resumed_from:
        run.notes.append(f"resumed at step {', '.join(map(str, run.resumed_from))}")
    if run.diverged_at is not None:
        run.notes.insert(0, f"diverged: non-finite loss at step {run.diverged_at}")
    if not run.complete:
        run.notes.insert(0, _truncation_note(run))
    return run


def _truncation_note(run: RunLog) -> str:
    m = run.num_iterations
    if not run.val_steps:
        return f"truncated at step {run.last_step}/{m}: no validation logged"
    last = run.final["step"]
    note = f"truncated at step {run.last_step}/{m}: " + (f"last validation at step {last}" if last > 0
                                                          else "no validation after step 0")
    config = run.config or {}
    val_every = config.get("val_every") or config.get("val_loss_every")
    if isinstance(val_every, int) and val_every > 0:
        first = 0 if config.get("val_at_start", 1) else val_every  # val_at_start=0: none at step 0
        expected = set(range(first, m, val_every)) | {m}
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


