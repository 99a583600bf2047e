"""The robustness record's table (markdown) and plot (accuracy against eps), from tools/robustness.py --json.

    python records/2026-12-05-robustness/report.py ROBUSTNESS_JSON [ROBUSTNESS_JSON ...] [--out DIR]

Several outputs (run.sh's parallel parts) are read as one list of checkpoints. Prints the table and writes
DIR/table.md and DIR/accuracy_vs_eps.png (default DIR: this folder). One row per checkpoint, ordered by its sharp certified bound (at the embedding radius r; the smallest first): the step it
reached (marked preliminary when below its num_iterations), clean accuracy, then at each eps "attacked / certified"
(fractions of the scored val tokens); then the fraction of right tokens kept (attacked / clean) at each eps, and the
largest logit-margin drop found against the certificate's margin bound M. The plot has one colour per checkpoint:
attacked accuracy solid, certified dotted, clean as a dashed level; eps on a log axis.
"""
from __future__ import annotations

import json
import math
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from data.files import atomic_write  # noqa: E402
from tools.cli import Parser, UsageError, one_line  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROW_KEYS = ("eps", "clean", "attacked", "certified")


def read_results(path: str) -> list[dict]:
    """The "results" list of a robustness.py --json output, each with "checkpoint", "step" and "rows" holding
    ROW_KEYS; UsageError (one line) naming the file otherwise."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: not a readable tools/robustness.py --json output ({one_line(e)})") from None
    results = data.get("results") if isinstance(data, dict) else None
    if not (isinstance(results, list) and results and all(
            isinstance(r, dict) and {"checkpoint", "step", "rows"} <= set(r) and isinstance(r["rows"], list)
            and r["rows"] and all(isinstance(row, dict) and set(ROW_KEYS) <= set(row) for row in r["rows"])
            for r in results)):
        raise UsageError(f"{path}: no 'results' list of checkpoints with rows of {', '.join(ROW_KEYS)} (make it "
                         f"with tools/robustness.py --json)")
    return results


def name(result: dict) -> str:
    """The checkpoint's run: its run id, else its file name without .pt."""
    return result.get("run_id") or os.path.basename(result["checkpoint"]).removesuffix(".pt")


def bound_key(result: dict) -> float:
    """Sort key: log10 of the sharp bound at r (no bound, e.g. the speedrun arch: last)."""
    b = result.get("log10_bound_sharp")
    return b if isinstance(b, (int, float)) and math.isfinite(b) else math.inf


def preliminary(result: dict) -> bool:
    """True when the checkpoint is not at its run's last step (num_iterations), or that is unknown."""
    return result.get("num_iterations") is None or result["step"] < result["num_iterations"]


def fmt_log10(value) -> str:
    return f"10^{value:.2f}" if isinstance(value, (int, float)) and math.isfinite(value) else "none (inf)"


def kept(row: dict) -> float | None:
    """attacked / clean at one eps (None when nothing was right when clean)."""
    return row["attacked"] / row["clean"] if row["clean"] > 0 else None


def margin_cell(row: dict | None) -> str:
    """"found / M": the largest margin drop found and the certificate's margin bound (M null: no bound)."""
    if row is None:
        return "-"
    M = row["margin_bound"]
    return f"{row['max_margin_drop']:.3g} / " + (f"{M:.3g}" if isinstance(M, (int, float)) else "inf")


def table(results: list[dict]) -> str:
    """The markdown table (module docstring); the eps columns are the union over checkpoints, ascending."""
    eps_all = sorted({row["eps"] for r in results for row in r["rows"]})
    head = ["run", "step", "sharp bound at r", "clean", *[f"eps {e:g}: attacked / certified" for e in eps_all]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(results, key=bound_key):
        by_eps = {row["eps"]: row for row in r["rows"]}
        step = f"{r['step']} of {r['num_iterations']} (preliminary)" if preliminary(r) else str(r["step"])
        cells = [name(r), step, fmt_log10(r.get("log10_bound_sharp")), f"{r['rows'][0]['clean']:.4f}"]
        cells += [f"{by_eps[e]['attacked']:.4f} / {by_eps[e]['certified']:.4f}" if e in by_eps else "-"
                  for e in eps_all]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Kept: attacked / clean, the fraction of the right tokens that no perturbation found flips.", "",
              "| run | sharp bound at r | " + " | ".join(f"kept at eps {e:g}" for e in eps_all) + " |",
              "|" + "---|" * (2 + len(eps_all))]
    for r in sorted(results, key=bound_key):
        by_eps = {row["eps"]: row for row in r["rows"]}
        lines.append(f"| {name(r)} | {fmt_log10(r.get('log10_bound_sharp'))} | " + " | ".join(
            f"{kept(by_eps[e]):.3f}" if e in by_eps and kept(by_eps[e]) is not None else "-" for e in eps_all) + " |")
    if all("max_margin_drop" in row and "margin_bound" in row for r in results for row in r["rows"]):
        lines += ["", "Largest logit-margin drop the attack found, against the most the certificate allows "
                  "(M = sqrt(2 V_pad) L(r + eps) eps): found / M.", "",
                  "| run | " + " | ".join(f"eps {e:g}" for e in eps_all) + " |", "|" + "---|" * (1 + len(eps_all))]
        for r in sorted(results, key=bound_key):
            by_eps = {row["eps"]: row for row in r["rows"]}
            lines.append(f"| {name(r)} | " + " | ".join(margin_cell(by_eps.get(e)) for e in eps_all) + " |")
    tokens = sorted({r.get("tokens") for r in results} - {None})
    lines.append("")
    lines.append(f"Fractions of the first {', '.join(f'{t:,}' for t in tokens)} val tokens. attacked: right when "
                 f"clean and not flipped by any PGD iterate; certified: right when clean with a logit margin above "
                 f"sqrt(2 V_pad) L(r + eps) eps (tools/robustness.py).")
    return "\n".join(lines)


def figure(results: list[dict]):
    """The accuracy-vs-eps figure (matplotlib, Agg)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colors = plt.get_cmap("tab10").colors
    for i, r in enumerate(sorted(results, key=bound_key)):
        c = colors[i % len(colors)]
        eps = [row["eps"] for row in r["rows"]]
        label = f"{name(r)} (bound {fmt_log10(r.get('log10_bound_sharp'))}{', prelim.' if preliminary(r) else ''})"
        ax.plot(eps, [row["attacked"] for row in r["rows"]], "-o", color=c, label=label, markersize=4)
        ax.plot(eps, [row["certified"] for row in r["rows"]], ":s", color=c, markersize=3)
        ax.axhline(r["rows"][0]["clean"], color=c, linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("eps (per-token RMS of the perturbation of the embedding output)")
    ax.set_ylabel("next-token accuracy")
    ax.set_ylim(0, None)
    ax.set_title("solid: attacked, dotted: certified, dashed: clean")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig


def write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def main(argv=None) -> int:
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", help="tools/robustness.py --json outputs (their checkpoints together)")
    parser.add_argument("--out", default=HERE, help="folder for table.md and accuracy_vs_eps.png")
    try:
        args = parser.parse(argv)
        results = [r for path in args.results for r in read_results(path)]
        if not os.path.isdir(args.out):
            raise UsageError(f"--out={args.out}: not a directory")
    except UsageError as e:
        print(f"report.py: error: {one_line(e)}", file=sys.stderr)
        return 2
    text = table(results)
    print(text)
    atomic_write(os.path.join(args.out, "table.md"), lambda tmp: write_text(tmp, text + "\n"))
    fig = figure(results)
    atomic_write(os.path.join(args.out, "accuracy_vs_eps.png"),
                 lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
