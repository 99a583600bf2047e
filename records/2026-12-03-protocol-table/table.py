"""The protocol table of issue 17: every checkpoint scored under every protocol, seeds pooled per configuration
(mean ± sample std), beside what the run's log says (the minimum of its own validations, its val accuracy, its
sharp certified bound and the paper's literal recursion), a second table of the accuracy under every protocol,
and the README's Results line for the w_max 2 runs.

    python records/2026-12-03-protocol-table/table.py SCORES_JSON [SCORES_JSON ...] [--logs DIR] [--paper 1.29]
        [--config w2]

SCORES_JSON: the output of
    python records/2026-11-22-shakespeare-h100/gap-screen/eval_protocols.py checkpoints/protocol/*.pt --json
or several (checkpoints scored in batches as their runs finish), read as one list.
--logs: the runs' logs, <run_id>.txt (default: this folder's logs/). A configuration is the run id without its
-s<seed> suffix. Only complete runs enter the means: the checkpoint's step, the log's last step and the run's
num_iterations M (the log's, and the checkpoint's when the scores carry it) all agree; the others are listed with
the steps they reached. Scores without accuracies (older eval_protocols.py output) show "-" there. The paper's
protocols are scored on the final checkpoint only: the logs hold our protocol's validations, so "min over the run"
exists for ours alone.
"""
from __future__ import annotations

import json
import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from tools.cli import Parser, UsageError  # noqa: E402
from tools.compare import mean_std  # noqa: E402
from tools.runlog import LogFormatError, parse_log  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
COLUMNS = [("ours", "ours"), ("val_all", "whole val split"), ("paper_20x64", "paper 20x64"),
           ("paper_50x64", "paper 50x64"), ("notebook_20x512", "notebook 20x512"), ("nanogpt", "nanoGPT random"),
           ("train", "train split")]


def config_name(run_id: str) -> str:
    """'w2-s1' -> 'w2': the run id without its seed suffix."""
    return re.sub(r"-s\d+$", "", run_id)


def read_scores(path: str) -> list[dict]:
    try:
        with open(path) as f:
            scores = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: not a readable eval_protocols.py --json output ({e})") from None
    results = scores.get("results") if isinstance(scores, dict) else None
    if not isinstance(results, list) or not all(isinstance(r, dict) and "checkpoint" in r and "loss" in r
                                                for r in results):
        raise UsageError(f"{path}: no 'results' list of checkpoints with losses (make it with eval_protocols.py "
                         f"--json)")
    return results


def is_complete(ckpt_step: int, log_last_step: int, log_num_iterations: int, ckpt_num_iterations: int | None) -> bool:
    """A run is complete when its checkpoint, its log and its length agree: the checkpoint is at the log's last
    step, which is the log's M, which is the checkpoint's num_iterations (when known). A checkpoint older than
    its log (copied mid-run), or a log cut off before M, is not."""
    targets = {log_num_iterations} | ({ckpt_num_iterations} if ckpt_num_iterations is not None else set())
    return len(targets) == 1 and ckpt_step == log_last_step == log_num_iterations


def run_rows(results: list[dict], logs: str) -> list[dict]:
    """One dict per checkpoint: run id, config, step, losses and accuracies by protocol, complete, and from its
    log the last step, M, the minimum val loss over its validations and, at its last validation, val acc, the
    sharp bound and the paper-literal bound (log10)."""
    rows = []
    for r in results:
        run_id = os.path.basename(r["checkpoint"])[:-len(".pt")] if r["checkpoint"].endswith(".pt") else r["checkpoint"]
        path = os.path.join(logs, f"{run_id}.txt")
        try:
            log = parse_log(path)
        except (OSError, LogFormatError) as e:
            raise UsageError(f"{path}: no readable log for checkpoint {r['checkpoint']} ({e}); pass --logs DIR"
                             ) from None
        vals = [log.points[s]["val_loss"] for s in log.val_steps]
        rows.append(dict(run_id=run_id, config=config_name(run_id), step=r["step"], loss=r["loss"],
                         accuracy=r.get("accuracy", {}), last_step=log.last_step, num_iterations=log.num_iterations,
                         complete=is_complete(r["step"], log.last_step, log.num_iterations, r.get("num_iterations")),
                         min_ours=min(vals) if vals else None, val_acc=log.final.get("val_acc"),
                         sharp=log.final.get("lipschitz_bound_sharp_log10"),
                         paper_literal=log.final.get("lipschitz_bound_paper_literal_log10"),
                         seq_len=r.get("seq_len"), windows=r.get("windows", {})))
    return rows


def fmt(values: list) -> str:
    mean, std, n = mean_std(values)
    if mean is None:
        return "-"
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def table(rows: list[dict]) -> str:
    """Losses: per configuration (complete runs), each protocol's mean loss, the minimum of ours over the run, the
    log's last val acc, the sharp certified bound and the paper-literal recursion (log10, not a certificate)."""
    done = [r for r in rows if r["complete"]]
    configs = sorted({r["config"] for r in done})
    head = ["config", "seeds", *[name for _, name in COLUMNS], "min of ours over the run", "val acc (ours)",
            "sharp bound (log10)", "paper-literal bound (log10)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in configs:
        group = [r for r in done if r["config"] == c]
        cells = [c, str(len(group))]
        cells += [fmt([r["loss"].get(p) for r in group]) for p, _ in COLUMNS]
        cells += [fmt([r[k] for r in group]) for k in ("min_ours", "val_acc", "sharp", "paper_literal")]
        lines.append("| " + " | ".join(cells) + " |")
    for r in rows:
        if not r["complete"]:
            lines.append(f"\nnot in the means: {r['run_id']} (checkpoint at step {r['step']}, log at step "
                         f"{r['last_step']}, of {r['num_iterations']})")
    return "\n".join(lines)


def accuracy_table(rows: list[dict]) -> str:
    """Accuracies: per configuration (complete runs), the next-token accuracy under each protocol."""
    done = [r for r in rows if r["complete"]]
    head = ["config", "seeds", *[f"acc {name}" for _, name in COLUMNS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in sorted({r["config"] for r in done}):
        group = [r for r in done if r["config"] == c]
        lines.append("| " + " | ".join([c, str(len(group))]
                                       + [fmt([r["accuracy"].get(p) for r in group]) for p, _ in COLUMNS]) + " |")
    return "\n".join(lines)


def paper_tokens(row: dict) -> int | None:
    """How many leading val tokens the paper_20x64 protocol reads: from the scored windows (last token + 1), else
    20 x 64 stride-1 windows of seq_len + 1 tokens (1,536 at seq_len 256); None when neither is known."""
    w = row["windows"].get("paper_20x64")
    if w:
        return w["last_token"] + 1
    return 20 * 64 + row["seq_len"] if row.get("seq_len") else None


def results_line(rows: list[dict], paper: float, config: str = "w2") -> str:
    group = [r for r in rows if r["complete"] and r["config"] == config]
    mean, std, n = mean_std([r["loss"].get("paper_20x64") for r in group])
    if mean is None:
        return f"no complete {config} run scored under paper_20x64 yet: no Results line"
    whole, whole_std, _ = mean_std([r["loss"].get("val_all") for r in group])
    name = f"w_max {config[1:]}" if re.fullmatch(r"w[\d.]+", config) else config
    spans = {paper_tokens(r) for r in group} - {None}
    span = f"the first {spans.pop():,} characters" if len(spans) == 1 else "the first 20 x 64 stride-1 windows"
    line = (f"Under the paper's own protocol ({span} of the val split, as its final "
            f"Shakespeare sweeps score), our {name} model scores {mean:.3f}{plus_minus(std)} ({n} seed"
            f"{'s' if n != 1 else ''}), against the paper's {paper}")
    return line + ("." if whole is None else f"; on the whole val split, {whole:.3f}{plus_minus(whole_std)}.")


def plus_minus(std: float | None) -> str:
    return "" if std is None else f" ± {std:.3f}"


def main(argv=None) -> int:
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("scores", nargs="+")
    parser.add_argument("--logs", default=os.path.join(HERE, "logs"))
    parser.add_argument("--paper", type=float, default=1.29, help="the paper's number for the Results line")
    parser.add_argument("--config", default="w2", help="the configuration of the Results line")
    try:
        args = parser.parse(argv)
        results = [r for path in args.scores for r in read_scores(path)]
        seen = [r["checkpoint"] for r in results]
        twice = sorted({c for c in seen if seen.count(c) > 1})
        if twice:
            raise UsageError(f"{twice[0]} is scored in more than one of the files; pass each checkpoint's scores once")
        rows = run_rows(results, args.logs)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(rows))
    print()
    print(accuracy_table(rows))
    print()
    print(results_line(rows, args.paper, args.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
