"""Certify a checkpoint: the certified Lipschitz bound, layer by layer, and the worst ratio a search finds.

    python tools/certify.py checkpoints/RUN.pt [--restarts 5] [--steps 200] [--seq_len 16] [--batch 4]
                                               [--seed 0] [--progress_every 5]

Prints, per layer: weight norms (RMS->RMS; q/k/v also the largest per-head norm), the activation
bound r before and after the block, each sublayer's Lipschitz bound and the cumulative bound in the
certified variants ("paper" = Theorem C.1 per head, "tight" = per-term form, "sharp" = per-term with the
query shared across heads and the residual mixing used); then the totals side by side with the ratios,
and the largest ||f(x1)-f(x2)|| / ||x1-x2|| found by lipschitz.worst_pair, with tightness = found / bound.

Time: the bounds take seconds. The search (the attack) takes restarts x steps gradient steps, each on
batch x seq_len tokens in float64: about 0.5 s a step for the Shakespeare preset's model on a 2-core
CPU, so about 9 minutes with the defaults (5 x 200 steps; 8.6 minutes measured). Meanwhile stderr shows its progress (restart
i of n, step, the best ratio so far and the time left) every --progress_every seconds.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import lipschitz  # noqa: E402
import train_gpt as tg  # noqa: E402
from run_control import format_duration  # noqa: E402
from tools.cli import Parser, UsageError, int_at_least, one_line  # noqa: E402,F401

PROGRESS_EVERY_S = 5  # seconds between progress lines of the search: a sign of life, not a flood


def load_model(path: str) -> tuple[tg.GPT, dict]:
    """The model saved by train_gpt.save_checkpoint, in eval mode, and the checkpoint dict
    (train_gpt.model_from_checkpoint)."""
    return tg.model_from_checkpoint(path)


def fmt(log10_value: float) -> str:
    """A number given by its log10: plain when moderate, 1e+N.NN when astronomically large or small."""
    if log10_value == -math.inf:
        return "0"
    if not math.isfinite(log10_value):
        return "inf"
    if -3 <= log10_value < 6:
        return f"{10 ** log10_value:.4g}"
    return f"1e{log10_value:+.2f}"


def lg(x: float) -> float:
    return math.log10(x) if x > 0 else -math.inf


def report_table(rep: dict) -> str:
    """The per-layer breakdown of lipschitz.bound_report as aligned text."""
    cols = ["layer", "q", "k", "v", "q_h", "k_h", "v_h", "o", "ov", "fc", "proj", "proj.fc", "r_in", "r_out",
            "r_out_sharp", "attn_paper", "attn_tight", "attn_sharp", "mlp", "mlp_blk_sharp", "cum_paper",
            "cum_tight", "cum_sharp"]
    rows = []
    for i, row in enumerate(rep["layers"]):
        n = row["norms"]
        rows.append([str(i)] + [f"{n[k]:.4g}" for k in ("q", "k", "v")]
                    + [f"{max(n[k + '_heads']):.4g}" for k in ("q", "k", "v")]
                    + [f"{n[k]:.4g}" for k in ("o", "ov", "fc", "proj", "proj_fc")]
                    + [fmt(row[k]) for k in ("log10_r_in", "log10_r_out", "log10_r_out_sharp", "log10_attn_paper",
                                             "log10_attn_tight", "log10_attn_sharp", "log10_mlp",
                                             "log10_mlp_block_sharp", "log10_cum_paper", "log10_cum_tight",
                                             "log10_cum_sharp")])
    widths = [max(len(c), *(len(r[j]) for r in rows)) if rows else len(c) for j, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def comparison_lines(rep: dict) -> list[str]:
    """The certified bounds side by side: each variant, its log10, and sharp / it."""
    new = rep["log10_bound_sharp"]
    lines = []
    for key, name in (("sharp", "log10_bound_sharp"), ("tight", "log10_bound_tight"), ("paper", "log10_bound"),
                      ("paper_literal", "log10_bound_paper_literal")):
        ratio = "" if key == "sharp" else f"  sharp / {key} = {fmt(new - rep[name])}"
        lines.append(f"bound [{key}] = {fmt(rep[name])} (log10 {rep[name]:.4f}){ratio}  -- {rep['theorems'][key]}")
    return lines


class AttackProgress:
    """lipschitz.worst_pair's progress callback: a line on `out` (default stderr) at most every `every_s`
    seconds (0: after every step), saying restart i of n, the step, the best ratio so far and the time left
    at the pace so far. `clock`: seconds, monotonic."""

    def __init__(self, restarts: int, steps: int, every_s: float, out=None, clock=time.monotonic):
        self.restarts, self.steps, self.every_s = restarts, steps, every_s
        self.out = sys.stderr if out is None else out
        self.clock = clock
        self.start = self.last = clock()

    def __call__(self, restart: int, step: int, best: float) -> None:
        now = self.clock()
        if now - self.last < self.every_s:
            return
        self.last = now
        done = (restart - 1) * self.steps + step
        left = (now - self.start) / done * (self.restarts * self.steps - done)
        print(f"attack: restart {restart} of {self.restarts}, step {step} of {self.steps}, best ratio so far "
              f"{best:.6g}, about {format_duration(left)} left", file=self.out, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = Parser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n")[-1],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a checkpoint train_gpt.py saved (checkpoints/RUN.pt)")
    ap.add_argument("--restarts", type=int_at_least("--restarts", 1), default=5,
                    help="search restarts, each a batch of pairs (default: %(default)s)")
    ap.add_argument("--steps", type=int_at_least("--steps", 1), default=200,
                    help="gradient-ascent steps per restart (default: %(default)s)")
    ap.add_argument("--seq_len", type=int_at_least("--seq_len", 1), default=16,
                    help="tokens per searched sequence (default: %(default)s)")
    ap.add_argument("--batch", type=int_at_least("--batch", 1), default=4,
                    help="pairs optimized together per restart (default: %(default)s)")
    ap.add_argument("--seed", type=int_at_least("--seed", 0), default=0,
                    help="seed of the search's random starts (default: %(default)s)")
    ap.add_argument("--progress_every", type=int_at_least("--progress_every", 0), default=PROGRESS_EVERY_S,
                    help="seconds between the search's progress lines on stderr; 0: every step "
                         "(default: %(default)s)")
    return ap.parse(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        model, state = load_model(args.checkpoint)
    except (UsageError, FileNotFoundError, ValueError) as e:
        print(f"certify.py: error: {one_line(e)}", file=sys.stderr)
        return 2
    hp = model.hp
    print(f"checkpoint {args.checkpoint}: step {state.get('step', '?')}, arch {hp.arch}, {hp.n_layer} layers, "
          f"d {hp.d_model}, {hp.n_head} heads of {hp.head_dim}, s {hp.attn_logit_scale}, "
          f"constraint {hp.constraint} w_max {hp.w_max} lm_head_w_max {hp.lm_head_w_max} emb_w_max {hp.emb_w_max}")
    rep = lipschitz.bound_report(model)
    if rep["reason"] is not None:
        print(f"certified Lipschitz bound: inf ({rep['reason']})")
        return 0
    print(f"inputs: embedding outputs with ||x||_inf-RMS <= {rep['radius']}; norms RMS->RMS, "
          f"q_h/k_h/v_h = largest per-head norm, ov = n(W_O blockdiag W_V), proj.fc = n(W_proj W_fc); "
          f"r = activation bound (inf-RMS)")
    print(report_table(rep))
    print(f"lm_head norm {rep['lm_head_norm']:.4g}, final logit scale {rep['final_logit_scale']:.4g}")
    print("\n".join(comparison_lines(rep)))
    print(f"attack: searching for the worst ratio, {args.restarts} restarts x {args.steps} steps of {args.batch} "
          f"pairs of {args.seq_len} tokens; progress every "
          + (f"{args.progress_every} s" if args.progress_every else "step"), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    res = lipschitz.worst_pair(model, seq_len=args.seq_len, batch=args.batch, restarts=args.restarts,
                               steps=args.steps, seed=args.seed,
                               progress=AttackProgress(args.restarts, args.steps, args.progress_every))
    secs = time.perf_counter() - t0
    print(f"empirical worst ratio {res.ratio:.6g} ({res.kind} restart; {args.restarts} restarts x {args.steps} "
          f"steps, {secs:.1f}s); per restart: " + ", ".join(f"{k} {r:.4g}" for k, r in res.per_restart))
    for key, name in (("sharp", "log10_bound_sharp"), ("tight", "log10_bound_tight"), ("paper", "log10_bound")):
        print(f"tightness [{key}] = worst / bound = {fmt(lg(res.ratio) - rep[name])}")
    if lg(res.ratio) > rep["log10_bound_sharp"] + 1e-9:
        print("UNSOUND: the search exceeded the certified bound", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
