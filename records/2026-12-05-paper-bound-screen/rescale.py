"""A trained checkpoint with its final logit scale set so that one Lipschitz bound equals a target.

    python records/2026-12-05-paper-bound-screen/rescale.py CKPT --target 2 [--bound sharp] --out NEW.pt

Why: the final logit scale s multiplies the logits, and every bound in lipschitz.bound_report carries it as one
factor (log bound = log of the blocks' part + log n(lm_head) + log |s|). The argmax ignores it. So NEW.pt predicts
exactly the tokens CKPT predicts, with the same accuracy under every protocol, at whatever bound is asked for; its
margins z_y - max z_j, its loss and its certified accuracy under attack are what change. Accuracy at a bound says
nothing until the margins are measured with it.

--bound: sharp (the certified bound, the default) or paper_literal (the paper's recursion taken literally, not a
certificate). NEW.pt is CKPT with hp.final_logit_scale multiplied by target / bound (just below, so the bound is at
most the target after rounding) and hp.run_id set to NEW's file name; it is written atomically. Before writing,
the script checks on random token windows that the argmax is unchanged and the logits scale by that factor, and
that the recomputed bound is at most the target.
"""
from __future__ import annotations

import math
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
import torch  # noqa: E402

import lipschitz  # noqa: E402
import train_gpt as tg  # noqa: E402
from data.files import atomic_write  # noqa: E402
from tools.cli import Parser, UsageError, one_line  # noqa: E402

BOUNDS = ("sharp", "paper_literal")
BELOW = 1 - 1e-9  # the new bound sits this fraction under the target, so rounding never puts it above


def rescaled_state(state: dict, factor: float, run_id: str) -> dict:
    """The checkpoint dict with final_logit_scale multiplied by factor and the given run id; weights shared."""
    return dict(state, hp=dict(state["hp"], final_logit_scale=state["hp"]["final_logit_scale"] * factor,
                               run_id=run_id))


def logits_of(model: tg.GPT, tokens: torch.Tensor) -> torch.Tensor:
    """float64 logits over the real vocabulary of token windows (B, T)."""
    model64 = lipschitz.float64_copy(model)
    x = model64.embed(tokens)
    return lipschitz.logits64(model64, x)[..., : model.hp.vocab_size]


def check_rescaled(old: tg.GPT, new: tg.GPT, factor: float, seed: int = 0) -> None:
    """AssertionError unless new's logits are factor x old's (float64, relative 1e-9) with the same argmax."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, old.hp.vocab_size, (2, min(64, old.hp.seq_len)), generator=gen)
    a, b = logits_of(old, tokens), logits_of(new, tokens)
    assert torch.allclose(b, a * factor, rtol=1e-9, atol=0), "the logits did not scale by the factor"
    assert torch.equal(a.argmax(-1), b.argmax(-1)), "the argmax changed"


def main(argv=None) -> int:
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--target", type=float, required=True, help="the bound NEW.pt should have (> 0)")
    parser.add_argument("--bound", default="sharp", choices=BOUNDS)
    parser.add_argument("--out", required=True, help="the new checkpoint (.pt); its name becomes the run id")
    try:
        args = parser.parse(argv)
        if not (math.isfinite(args.target) and args.target > 0):
            raise UsageError(f"--target={args.target}: must be a finite number > 0")
        if not args.out.endswith(".pt") or os.path.abspath(args.out) == os.path.abspath(args.checkpoint):
            raise UsageError(f"--out={args.out}: must be a new .pt file, not the checkpoint itself")
        model, state = tg.model_from_checkpoint(args.checkpoint)
        before = lipschitz.bound_report(model)
        key = f"log10_bound_{args.bound}"
        if not math.isfinite(before[key]):
            raise UsageError(f"{args.checkpoint}: no finite {args.bound} bound ({before['reason']})")
    except (UsageError, FileNotFoundError, ValueError) as e:
        print(f"rescale.py: error: {one_line(e)}", file=sys.stderr)
        return 2
    factor = args.target / 10 ** before[key] * BELOW
    new_state = rescaled_state(state, factor, os.path.basename(args.out).removesuffix(".pt"))
    new = tg.make_model(tg.Hyperparameters(**new_state["hp"]))
    new.load_state_dict(state["model"])
    check_rescaled(model, new.eval(), factor)
    after = lipschitz.bound_report(new)
    assert 10 ** after[key] <= args.target, (after[key], args.target)
    atomic_write(args.out, lambda tmp: torch.save(new_state, tmp))
    s0, s1 = state["hp"]["final_logit_scale"], new_state["hp"]["final_logit_scale"]
    print(f"{args.checkpoint} -> {args.out}: final_logit_scale {s0:g} -> {s1:.6g} (x {factor:.6g})")
    for name in BOUNDS:
        k = f"log10_bound_{name}"
        print(f"  {name} bound: 10^{before[k]:.4f} -> 10^{after[k]:.4f} = {10 ** after[k]:.6g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
