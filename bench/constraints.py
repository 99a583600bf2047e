"""Constraint and orthogonalization cost at GPT-2 small shapes, measured side by side in one run.

    python bench/constraints.py [--device cpu|cuda] [--layers N] [--reps 3] [--methods soft_cap,...]

The stacks are what Muon batches together: 4L x 768x768 q/k/v/o, L x 3072x768 c_fc, L x 768x3072 c_proj,
1 x 50304x768 lm_head (L = --layers; default 12 on CUDA, 1 on CPU, where the hidden-matrix costs scale
linearly with L). Every matrix starts inside its cap after a Muon-sized step (norm ~1.06 w_max).

Table 1, per stack and in total, ms per step and ratios:
  msign      Muon's orthogonalization (fork coefficients, Muon's dtype: bf16 on CUDA and bf16-capable CPUs)
  <method>   constraints.apply on the whole stack (one call), and its ratio to msign
  loop/stack the same method called once per matrix, over one call on the stack (what stacking saves)
  soft_cap also against the naive form (coupling solved on the host per matrix, two passes W - a W W^T W).
Table 2 (CUDA only), the kernels: Triton vs cuBLAS for the Gram (bf16 and fp32) and the fused
product-with-residual at each stack's shapes, and the choice the per-shape dispatch made.
Times: CUDA events (median of --reps after a warm-up) on CUDA; on CPU the fastest of --reps rounds in
which the paths take turns (a shared machine's load then hits them alike).
"""
import argparse
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import constraints as C  # noqa: E402
import kernels  # noqa: E402
from muon import default_orth_dtype  # noqa: E402

W_MAX = 1.0
LR = 0.05
ETA = LR * C.FORK_MAX_SINGULAR_VALUE * 1.05   # the fork's max update norm at lr 0.05


def gpt2_small_stacks(layers, d=768, vocab=50304):
    return [("attn q/k/v/o", 4 * layers, d, d), ("mlp c_fc", layers, 4 * d, d),
            ("mlp c_proj", layers, d, 4 * d), ("lm_head", 1, vocab, d)]


def naive_alpha(w_max, eta):
    k = w_max + eta
    roots = np.roots([-k**9, 3 * k**7, -3 * k**5, 0.0, k - w_max])
    return min(r.real for r in roots if abs(r.imag) < 1e-9 and r.real >= 0)


def naive_soft_cap(W, w_max=W_MAX, eta=ETA):
    """Per matrix, coupling solved on the host each call, two passes on the smaller Gram side (float32)."""
    out = torch.empty_like(W)
    for i in range(W.shape[0]):
        alpha = naive_alpha(w_max, eta)
        m, n = W.shape[-2:]
        c = math.sqrt(n / m)
        M = W[i].float() * c
        for sign in (-1.0, 1.0):
            M = torch.addmm(M, M, M.mT @ M, alpha=sign * alpha) if m >= n else torch.addmm(M, M @ M.mT, M, alpha=sign * alpha)
        out[i] = (M / c).to(W.dtype)
    return out


def constrain(method):
    return lambda W: C.apply(W, method, W_MAX, lr=LR, max_update_norm=ETA, check_finite=False)


def per_matrix(fn):
    return lambda W: torch.stack([fn(W[i:i + 1])[0] for i in range(W.shape[0])])


def timings(fns: dict, x, reps: int, device) -> dict:
    """ms per call of each fn(x): CUDA events (median of reps after a warm-up) or CPU wall time
    (fastest of reps interleaved rounds after a warm-up). The warm-up measures the kernel dispatch as
    train_gpt's does, so the timed calls run the kernels the trainer runs (not the cuBLAS-only default)."""
    with kernels.measuring_dispatch():
        for fn in fns.values():
            fn(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
        out = {}
        for key, fn in fns.items():
            ts = []
            for _ in range(reps):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn(x)
                b.record()
                b.synchronize()
                ts.append(a.elapsed_time(b))
            out[key] = float(np.median(ts))
        return out
    best = {key: math.inf for key in fns}
    for _ in range(reps):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn(x)
            best[key] = min(best[key], 1000 * (time.perf_counter() - t0))
    return best


def stack_inside_cap(count, m, n, dtype, device, gen):
    """count matrices (count, m, n) with RMS->RMS norm 1.06 (a Muon step past the cap), in `dtype`."""
    W = torch.randn(count, m, n, generator=gen, device="cpu").to(device)
    W = W * (1.06 / C.rms_norm_op(W).clamp_min(1e-12))[:, None, None]
    return W.to(dtype)


def kernel_table(stacks, reps, device):
    """Triton vs cuBLAS at each stack's Gram and fused-residual shapes (CUDA only)."""
    print("\nkernels, ms per call on the whole stack (Triton / cuBLAS; < 1 means Triton wins):")
    print(f"{'stack':28s} {'op':24s} {'triton':>9s} {'cublas':>9s} {'ratio':>7s}")
    gen = torch.Generator().manual_seed(1)
    for name, count, m, n in stacks:
        for dtype in (torch.bfloat16, torch.float32):
            X = torch.randn(count, m, n, generator=gen).to(device, dtype)
            Xs = X.mT if m >= n else X                      # the small-side Gram, strided as in constraints
            s = min(m, n)
            P = torch.randn(count, s, s, generator=gen).to(device, dtype)
            cases = {
                f"gram {str(dtype)[6:]}": (lambda t: kernels.triton_sym_mm(Xs, Xs, out_dtype=torch.float32),
                                           lambda t: kernels.torch_sym_mm(Xs, Xs, out_dtype=torch.float32)),
                f"X P + X {str(dtype)[6:]}": ((lambda t: kernels.triton_mm_add(X, P, beta=1.0, R=X)) if m >= n else
                                             (lambda t: kernels.triton_mm_add(P, X, beta=1.0, R=X)),
                                             (lambda t: kernels.torch_mm_add(X, P, beta=1.0, R=X)) if m >= n else
                                             (lambda t: kernels.torch_mm_add(P, X, beta=1.0, R=X))),
            }
            for op, (tri, cub) in cases.items():
                try:
                    t = timings(dict(triton=tri, cublas=cub), None, reps, device)
                except Exception as e:  # noqa: BLE001 - report a kernel that does not build, keep going
                    print(f"{name:28s} {op:24s} failed: {str(e).splitlines()[0][:60]}")
                    continue
                print(f"{f'{count} x {m}x{n} {name}':28s} {op:24s} {t['triton']:9.3f} {t['cublas']:9.3f} "
                      f"{t['triton'] / t['cublas']:7.2f}")
            del X, P
    chosen = {}
    for key, choice in kernels.DISPATCH_CHOICES.items():
        chosen.setdefault(choice, 0)
        chosen[choice] += 1
    print(f"dispatch after the runs above: {chosen} (op, shape, dtype) keys chose triton/torch")


def table_row(label: str, t: dict, methods: list[str], loop: bool) -> str:
    """One row of table 1 from ms timings t: msign, then each method with its ratio to msign (and loop/stack)."""
    row = f"{label:28s} {t['msign']:9.1f}"
    for meth in methods:
        row += f" {t[meth]:18.1f} {t[meth] / t['msign']:7.2f}"
        if loop:
            row += f" {t[meth + ' loop'] / t[meth]:10.2f}"
    return row + (f" {t['naive'] / t['soft_cap']:14.2f}" if "naive" in t else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--layers", type=int, default=0, help="GPT-2 small layers (default 12 on CUDA, 1 on CPU)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--methods", default="soft_cap,spectral_normalize,hard_cap")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="the weights' dtype")
    ap.add_argument("--no-loop", dest="loop", action="store_false", help="skip the per-matrix loop column")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench/constraints.py: --device cuda but no CUDA device on this machine; nothing measured")
        return
    device = torch.device(args.device)
    layers = args.layers or (12 if device.type == "cuda" else 1)
    dtype = getattr(torch, args.dtype)
    orth = default_orth_dtype(device)
    methods = [m for m in args.methods.split(",") if m]
    stacks = gpt2_small_stacks(layers)
    where = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{where}; torch {torch.__version__}; weights {args.dtype}, msign in {str(orth)[6:]}; GPT-2 small, "
          f"{layers} layers; w_max {W_MAX}, eta {ETA:.4f}; {'median' if device.type == 'cuda' else 'best'} of {args.reps}")
    gen = torch.Generator().manual_seed(0)
    total = {}
    hdr = f"{'stack':28s} {'msign':>9s}" + "".join(f" {m:>18s} {'/msign':>7s}" + (f" {'loop/stack':>10s}" if args.loop else "")
                                                for m in methods) + f" {'naive/soft_cap':>14s}"
    print(hdr)
    print("-" * len(hdr))
    for name, count, m, n in stacks:
        W = stack_inside_cap(count, m, n, dtype, device, gen)
        fns = {"msign": lambda X: C.msign(X.to(orth), coeffs="fork")}
        for meth in methods:
            fns[meth] = constrain(meth)
            if args.loop and count > 1:
                fns[meth + " loop"] = per_matrix(constrain(meth))
        if "soft_cap" in methods:
            fns["naive"] = naive_soft_cap
        t = timings(fns, W, args.reps, device)
        for meth in methods:  # one matrix: the loop is the stack
            t.setdefault(meth + " loop", t[meth])
        for key, v in t.items():
            total[key] = total.get(key, 0.0) + v
        print(table_row(f"{count} x {m}x{n} {name}", t, methods, args.loop), flush=True)
        del W
    print("-" * len(hdr))
    print(table_row("GPT-2 small step (sum)", total, methods, args.loop))
    targets = dict(soft_cap=0.35, spectral_normalize=1.0, hard_cap=3.0)
    print("targets (method / msign per step): " + ", ".join(
        f"{m} <= {targets[m]} -> {total[m] / total['msign']:.2f}" for m in methods if m in targets))
    if device.type == "cuda":
        kernel_table(stacks, args.reps, device)


if __name__ == "__main__":
    main()
