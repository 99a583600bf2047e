"""Weight constraints for stacks of matrices in the RMS->RMS geometry.

Every method maps a weight W of shape (..., d_out, d_in) to a constrained weight of the same shape,
dtype and device. All caps `w_max` are in the RMS->RMS operator norm

    ||W||_* = sqrt(d_in / d_out) * sigma_max(W),

so each method acts on the singular values of M = W * sqrt(d_in / d_out) and scales back.

Guarantees after `apply` (M's singular values s, cap w_max):
    none                   nothing
    weight_decay           W <- (1 - lr*wd) W                               (no bound)
    spectral_weight_decay  top singular value s1 <- s1 (1 - lr*wd)           (no bound)
    spectral_normalize     W <- W / max(1, s1_up / w_max), s1_up >= s1     (certified: <= w_max; lands >= w_max / 1.002)
    spectral_hammer        top singular value s1 <- w_max                   (no bound under high-rank updates)
    soft_cap               s <- f(s) = s - 3a^2 s^5 + 3a^3 s^7 - a^4 s^9     (<= w_max given ||W||_* <= k, see soft_cap_alpha)
    hard_cap               s <- min(s, w_max) on the short-side Gram        (~1e-3 near s = w_max in fp32; below the cap past ~5 w_max)
    hard_cap_poly          the paper's four fixed quintic steps             (approximate: max ~1.011 w_max, breaks past ~3.7 w_max)
    svd_cap                s <- min(s, w_max) by an SVD                     (exact reference, slow)
    stiefel                s <- w_max for every nonzero s (polar factor)
PROPERTIES records each method's kind (decay, coupled to Muon, caps, exact, stateful, shardable).

Everything is a function of the short-side Gram X^T X (tall orientation), batched over stacks of
equal-shape matrices, with no host synchronisation (no .item(), no data-dependent Python branches) and
no small QR/eigh. Because only the Gram couples the long side, a caller may hold a slice of each
matrix's long side and sum the Grams across slices (LongSideShards): Muon splits the lm_head that way.

The products (Gram, small polynomial, final product with a fused `beta * R + alpha * A @ B` epilogue)
go through kernels.ops_for(X): on CUDA the faster of its Triton kernels and cuBLAS per shape (measured in
train_gpt's untimed warm-up, see kernels.py), elsewhere torch ops; the results agree to rounding either way.
Imports run one way: this module uses kernels, kernels knows nothing of constraints. The caps compute
in float32 for bf16/fp16 weights (the soft cap must hold to 1e-2 over thousands of steps in bf16);
Muon's msign runs in the dtype it is given (bf16 on GPU).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Callable

import torch
from torch import Tensor

import kernels

__all__ = [
    "METHODS", "apply", "rms_norm_op", "soft_cap_alpha", "soft_cap_map", "msign", "cap_row_rms",
    "FORK_NS_COEFFS", "FORK_MAX_SINGULAR_VALUE", "POLAR_EXPRESS_COEFFS", "HARD_CAP_POLY_COEFFS",
    "PROPERTIES", "MethodInfo", "LongSideShards", "SPECTRAL_UNDERSHOOT",
]

# ----------------------------------------------------------------------------------------------
# Constants (from the papers and projects named beside each)

# modded-nanogpt's five Newton-Schulz quintic steps X <- a X + (b A + c A^2) X, A = X X^T.
FORK_NS_COEFFS = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)
FORK_MAX_SINGULAR_VALUE = 1.14502  # largest singular value the five fork steps can output

# Polar Express (Amsel et al. 2025), degree 5, lower bound 1e-3. Every step but the last is
# evaluated at x / 1.01 (safety against round-off pushing values past the interval they were fit on).
_POLAR_EXPRESS_RAW = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),  # the fixed point; repeated when more steps are asked for
)
_PE_SAFETY = 1.01
POLAR_EXPRESS_COEFFS = tuple(
    (a / _PE_SAFETY, b / _PE_SAFETY**3, c / _PE_SAFETY**5) for a, b, c in _POLAR_EXPRESS_RAW[:-1]
) + (_POLAR_EXPRESS_RAW[-1],)

# The paper's public hard cap: four quintic steps W <- W (a I + b G + c G^2), G = W^T W, at w_max = 1.
HARD_CAP_POLY_COEFFS = (
    (0.805032, 0.206361, -0.019763),
    (0.649867, 0.162935, -0.011150),
    (1.810259, -0.200265, 0.008251),
    (1.004384, -0.183490, 0.014413),
)

HARD_CAP_SIGN_STEPS = 12       # Polar Express steps for sign(G - I) (the last, fixed-point step repeated)
HARD_CAP_ROOT_STEPS = 6        # Newton-Schulz quintic steps for max(G, I)^(-1/2): exact up to ~5 w_max inputs
HARD_CAP_BOUND_SQUARINGS = 3   # a loose (<= n^(1/16)) but certified bound on lambda_max(G) suffices to start
_ROOT_QUINTIC = (15 / 8, -10 / 8, 3 / 8)
STIEFEL_MSIGN_STEPS = 12


# ----------------------------------------------------------------------------------------------
# Small shape helpers

def _rms_scale(W: Tensor, shards: "LongSideShards | None" = None) -> float:
    """c = sqrt(d_in / d_out): sigma_max(c W) is the RMS->RMS norm of W (of the whole matrix when W
    is a slice of its long side)."""
    d_out, d_in = W.shape[-2], W.shape[-1]
    if shards is not None:
        d_out, d_in = (shards.length, d_in) if d_out >= d_in else (d_out, shards.length)
    return math.sqrt(d_in / d_out)


def _as_batch(W: Tensor) -> Tensor:
    """(..., m, n) -> (B, m, n), a view when possible."""
    return W.reshape(-1, W.shape[-2], W.shape[-1])


def _is_tall(X: Tensor) -> bool:
    return X.shape[-2] >= X.shape[-1]


def _tall(X: Tensor) -> Tensor:
    """The orientation with rows >= cols (a transposed view for wide matrices)."""
    return X if _is_tall(X) else X.mT


def _compute_dtype(W: Tensor) -> torch.dtype:
    return W.dtype if W.dtype in (torch.float32, torch.float64) else torch.float32


# ----------------------------------------------------------------------------------------------
# Sums over the long side (completed across shards)


def _sums_over_shards(t: Tensor, reduce) -> Tensor:
    """A sum over the long side of a matrix (a Gram, a squared norm), completed across shards by
    `reduce` when the caller holds only a slice of that side (see apply's gram_reduce)."""
    return t if reduce is None else reduce(t)


def _gram(ops, X: Tensor, reduce=None, out_dtype: torch.dtype | None = None) -> Tensor:
    """X^T X of each tall X (B, m, n), m >= n: (B, n, n), summed over shards by `reduce`."""
    Xs = X.mT
    return _sums_over_shards(ops.sym_mm(Xs, Xs, out_dtype=out_dtype), reduce)


# ----------------------------------------------------------------------------------------------
# Norms

def rms_norm_op(W: Tensor) -> Tensor:
    """Exact RMS->RMS operator norm sqrt(d_in/d_out) * sigma_max(W) of each matrix in (..., d_out, d_in).

    Returns float32 of shape W.shape[:-2] (computed by an SVD in float32, float64 for float64 input).
    """
    _check_matrix(W, "W")
    X = W.to(_compute_dtype(W))
    return (torch.linalg.matrix_norm(X, ord=2) * _rms_scale(W)).float()


# ----------------------------------------------------------------------------------------------
# msign: polar factor U V^T

def _msign_steps(coeffs, steps: int | None) -> tuple[tuple[float, float, float], ...]:
    if isinstance(coeffs, str):
        table = {"polar_express": POLAR_EXPRESS_COEFFS, "fork": FORK_NS_COEFFS}.get(coeffs)
        if table is None:
            raise ValueError(f"msign: unknown coeffs {coeffs!r}; use 'polar_express', 'fork' or a list of (a, b, c)")
    else:
        table = tuple(tuple(float(x) for x in abc) for abc in coeffs)
        if not table or any(len(abc) != 3 for abc in table):
            raise ValueError("msign: coeffs must be a non-empty list of (a, b, c) triples")
    steps = len(table) if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"msign: steps must be >= 1, got {steps}")
    return table[:steps] + (table[-1],) * max(0, steps - len(table))


def _quintic_steps(Y: Tensor, schedule, reduce=None) -> Tensor:
    """Y <- a Y + (b A + c A^2) Y, A = Y Y^T, for each (a, b, c) of the schedule; Y (B, r, K) with r <= K.
    With `reduce`, Y holds a slice of the K side and A is summed across slices (the sum in float32)."""
    ops = kernels.ops_for(Y)
    sum_dtype = torch.float64 if Y.dtype == torch.float64 else torch.float32
    for a, b, c in schedule:
        A = ops.sym_mm(Y, Y)                                   # Y Y^T, in Y's dtype (bf16 GEMMs stay bf16)
        if reduce is not None:
            A = reduce(A.to(sum_dtype)).to(Y.dtype)
        Bm = ops.sym_mm(A, A, alpha=c, beta=b, D=A)           # b A + c A^2
        Y = ops.mm_add(Bm, Y, alpha=1.0, beta=a, R=Y)         # a Y + (b A + c A^2) Y
    return Y


def msign(X: Tensor, steps: int | None = None, coeffs="polar_express", *, gram_reduce=None) -> Tensor:
    """Polar factor U V^T of each matrix in X (..., m, n) by quintic Newton-Schulz-type steps
    X <- a X + (b A + c A^2) X, A = X X^T, on the smaller Gram side (A is min(m, n) square; X^T X for
    m >= n).

    X is first divided by its Frobenius norm (times 1.01 for Polar Express), so every singular value
    starts in (0, 1]. coeffs: "polar_express" (8 steps to converge from 1e-3; more steps repeat the
    last, fixed-point polynomial), "fork" (modded-nanogpt's 5 steps; output singular values lie in
    roughly [0.7, FORK_MAX_SINGULAR_VALUE], not exactly 1), or a list of (a, b, c).
    Runs in X's dtype (bf16 for Muon on GPU, float32 for the caps); zero singular values stay zero.
    gram_reduce: see apply (X is then a slice of each matrix's long side; the result is the same
    slice of the polar factor, since every step multiplies the slice by a function of the Gram).
    Returns a new tensor with X's shape and dtype.
    """
    _check_matrix(X, "X")
    schedule = _msign_steps(coeffs, steps)
    Y = _as_batch(X)
    transposed = _is_tall(Y)
    if transposed:
        Y = Y.mT  # the Gram A = Y Y^T is on the smaller side
    safety = _PE_SAFETY if coeffs == "polar_express" else 1.0
    acc_dtype = torch.float64 if X.dtype == torch.float64 else torch.float32
    sq = _sums_over_shards(Y.square().sum(dim=(-2, -1), keepdim=True, dtype=acc_dtype), gram_reduce)
    Y = (Y / (sq.sqrt() * safety + 1e-7)).to(X.dtype)
    Y = _quintic_steps(Y, schedule, gram_reduce)
    if transposed:
        Y = Y.mT
    return Y.reshape(X.shape)


# ----------------------------------------------------------------------------------------------
# Soft cap

def soft_cap_map(x, alpha: float):
    """The soft cap on one singular value: f(x) = x - 3a^2 x^5 + 3a^3 x^7 - a^4 x^9, the composite of
    x - a x^3 followed by y + a y^3 (works on floats, numpy arrays and tensors)."""
    return x - 3 * alpha**2 * x**5 + 3 * alpha**3 * x**7 - alpha**4 * x**9


def _soft_cap_g(b: float) -> float:
    """f(x) / x as a function of b = alpha x^2; strictly decreasing for b > 0."""
    return 1.0 - 3.0 * b * b + 3.0 * b**3 - b**4


_SOFT_CAP_B_MAX = 1.0 / 3.0  # f is monotone on [0, k] iff alpha k^2 <= 1/3 (f' vanishes exactly there)


@functools.lru_cache(maxsize=4096)
def soft_cap_alpha(w_max: float, max_update_norm: float, lr: float = 0.0, weight_decay: float = 0.0) -> float:
    """The coupling alpha for the soft cap, as a Python float (no tensors, no device sync; cached).

    With k = w_max |1 - lr*wd| + max_update_norm (the largest RMS->RMS norm a Muon step can reach from
    ||W||_* <= w_max), alpha is the smallest real root >= 0 of -k^9 a^4 + 3k^7 a^3 - 3k^5 a^2 + (k - w_max),
    i.e. f(k) = w_max. Writing b = alpha k^2, f(k)/k = 1 - 3b^2 + 3b^3 - b^4 is strictly decreasing in
    b > 0, so the root is unique and found by bisection to double precision. Returns 0.0 when k <= w_max.
    Raises ValueError when the root would break monotonicity of f on [0, k] (alpha k^2 > 1/3, i.e.
    k > 81/62 w_max): the update norm is too large for this cap.
    """
    for name, value in (("w_max", w_max), ("max_update_norm", max_update_norm), ("lr", lr),
                        ("weight_decay", weight_decay)):
        if not math.isfinite(value):
            raise ValueError(f"soft_cap_alpha: {name} must be finite, got {value}")
    if w_max <= 0:
        raise ValueError(f"soft_cap_alpha: w_max must be > 0, got {w_max}")
    if max_update_norm < 0 or lr < 0 or weight_decay < 0:
        raise ValueError(f"soft_cap_alpha: max_update_norm, lr and weight_decay must be >= 0, got "
                         f"{max_update_norm}, {lr}, {weight_decay}")
    k = w_max * abs(1.0 - lr * weight_decay) + max_update_norm
    if k <= w_max:
        return 0.0
    target = w_max / k
    if _soft_cap_g(_SOFT_CAP_B_MAX) > target:
        raise ValueError(
            f"soft_cap_alpha: no monotone soft cap maps k={k:.6g} to w_max={w_max:.6g} (needs k <= "
            f"{81 / 62:.4f} w_max); lower the max update norm (lr) or raise w_max")
    lo, hi = 0.0, _SOFT_CAP_B_MAX
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _soft_cap_g(mid) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-17:
            break
    return hi / (k * k)  # hi: f(k) <= w_max (the side of the root that never exceeds the cap)


def _soft_cap(W: Tensor, w_max: float, *, lr: float, weight_decay: float, max_update_norm: float,
              state: dict | None, shards: "LongSideShards | None") -> Tensor:
    alpha = soft_cap_alpha(float(w_max), float(max_update_norm), float(lr), float(weight_decay))
    if alpha == 0.0:
        return W  # k <= w_max: every singular value is already within the cap
    X = _as_batch(W).to(_compute_dtype(W))
    ops = kernels.ops_for(X)
    # f acts on M = c W: with G = X^T X (or X X^T), alpha G_M = (alpha c^2) G, so fold c^2 into alpha.
    a = alpha * _rms_scale(W, shards) ** 2
    tall = _is_tall(X)
    Xt = X if tall else X.mT                                     # (B, large, small)
    G = _gram(ops, Xt, _reduce_of(shards))
    G2 = ops.sym_mm(G, G)
    Q = (3 * a**3) * G - (a**4) * G2                             # p(G) = I + G^2 (-3a^2 I + 3a^3 G - a^4 G^2)
    Q.diagonal(dim1=-2, dim2=-1).sub_(3 * a * a)
    P = ops.sym_mm(G2, Q)                                        # G^2 Q: commuting symmetric factors
    out = (ops.mm_add(X, P, beta=1.0, R=X, out_dtype=W.dtype) if tall
           else ops.mm_add(P, X, beta=1.0, R=X, out_dtype=W.dtype))
    return out.reshape(W.shape)


# ----------------------------------------------------------------------------------------------
# Top of the spectrum from the Gram by repeated squaring: no QR, no eigh, no host sync, no state

SPECTRAL_UNDERSHOOT = 2e-3  # largest relative gap between the bound and sigma_max (flat spectrum)
_BOUND_MARGIN = 1e-5         # covers float32 rounding of the squarings (~1e-6 relative)


def _squarings(n: int, tol: float = SPECTRAL_UNDERSHOOT) -> int:
    """Squarings q so that the bound below exceeds sigma_max by at most (1 + tol): n^(1/2^(q+2)) <= 1 + tol."""
    return max(1, math.ceil(math.log2(math.log(max(n, 2)) / math.log1p(tol))) - 2)


def _top_of_gram(G: Tensor, squarings: int | None = None) -> tuple[Tensor, Tensor]:
    """Upper bound on lambda_max of each symmetric PSD G (B, n, n), and H ~ G^(2^q) / ||G^(2^q)||_F.

    lambda_max^p <= trace(G^p) = sum_i lambda_i^p for every p, so with p = 2^(q+1),
    lambda_max <= trace(G^p)^(1/p) = ||G^(2^q)||_F^(2/p) <= n^(1/p) lambda_max. The powers are formed by
    q squarings, each normalized by its Frobenius norm t_j (kept as logs: ln bound = sum_j ln t_j / 2^j).
    A certificate in exact arithmetic; float32 rounding moves it by ~1e-6 relative (_BOUND_MARGIN).
    squarings: q (default _squarings(n): within SPECTRAL_UNDERSHOOT); fewer give a looser bound, cheaper.
    """
    n = G.shape[-1]
    ops = kernels.ops_for(G)
    tiny = torch.finfo(G.dtype).tiny
    t = torch.linalg.matrix_norm(G).clamp_min(tiny)                      # ||G||_F >= lambda_max
    H = G / t[:, None, None]
    log_bound = t.log()
    for j in range(1, (_squarings(n) if squarings is None else squarings) + 1):
        H = ops.sym_mm(H, H)                                             # H H^T = H^2, float32-accurate
        t = torch.linalg.matrix_norm(H).clamp_min(tiny)
        H = H / t[:, None, None]
        log_bound = log_bound + t.log() / 2**j
    return log_bound.exp() * (1 + _BOUND_MARGIN), H


def _top_direction(H: Tensor) -> Tensor:
    """A unit vector (B, n) in the top eigenspace of H ~ sum_i w_i v_i v_i^T (w_i concentrated on the top):
    the column with the largest diagonal entry, which overlaps the top directions (H_jj >= trace / n)."""
    j = H.diagonal(dim1=-2, dim2=-1).argmax(dim=-1)                       # on device: no host sync
    v = torch.gather(H, 2, j[:, None, None].expand(-1, H.shape[1], 1)).squeeze(-1)
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(torch.finfo(H.dtype).tiny)


def _top_singular(X: Tensor, reduce=None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For each tall X (B, m, n), m >= n: (sigma, sigma_up, u, v) with sigma = ||X v|| <= sigma_max for the
    unit estimate v (B, n) of the top right singular vector, u = X v / sigma (B, m), and
    sigma_up >= sigma_max (certified, at most (1 + SPECTRAL_UNDERSHOOT) sigma_max)."""
    G = _gram(kernels.ops_for(X), X, reduce)
    lam_up, H = _top_of_gram(G)
    v = _top_direction(H)
    Xv = torch.bmm(X, v.unsqueeze(-1)).squeeze(-1)
    sigma = _sums_over_shards(Xv.square().sum(-1), reduce).sqrt()
    u = Xv / sigma.clamp_min(torch.finfo(X.dtype).tiny).unsqueeze(-1)
    return sigma, lam_up.sqrt(), u, v


def _rank_one_update(W: Tensor, X: Tensor, coef: Tensor, u: Tensor, v: Tensor, tall: bool) -> Tensor:
    """X + coef u v^T for the tall orientation X, returned in W's orientation, shape and dtype."""
    out = X + coef[:, None, None] * (u.unsqueeze(-1) * v.unsqueeze(-2))
    if not tall:
        out = out.mT
    return out.to(W.dtype).reshape(W.shape)


def _spectral_setup(W: Tensor, shards):
    X = _as_batch(W).to(_compute_dtype(W))
    tall = _is_tall(X)
    return _tall(X), tall, _rms_scale(W, shards)


def _spectral_normalize(W, w_max, *, lr, weight_decay, max_update_norm, state, shards):
    X, _, c = _spectral_setup(W, shards)
    _, sigma_up, _, _ = _top_singular(X, _reduce_of(shards))
    scale = 1.0 / torch.clamp(sigma_up * c / w_max, min=1.0)  # on device: no host sync
    return (_as_batch(W).to(X.dtype) * scale[:, None, None]).to(W.dtype).reshape(W.shape)


def _spectral_hammer(W, w_max, *, lr, weight_decay, max_update_norm, state, shards):
    X, tall, c = _spectral_setup(W, shards)
    sigma, _, u, v = _top_singular(X, _reduce_of(shards))
    return _rank_one_update(W, X, w_max / c - sigma, u, v, tall)


def _spectral_weight_decay(W, w_max, *, lr, weight_decay, max_update_norm, state, shards):
    if lr * weight_decay == 0.0:
        return W
    X, tall, _ = _spectral_setup(W, shards)
    sigma, _, u, v = _top_singular(X, _reduce_of(shards))
    return _rank_one_update(W, X, -(lr * weight_decay) * sigma, u, v, tall)


# ----------------------------------------------------------------------------------------------
# Caps by singular-value maps

def _none(W, w_max, *, lr, weight_decay, max_update_norm, state, shards):
    return W


def _weight_decay(W, w_max, *, lr, weight_decay, max_update_norm, state, shards):
    return W * (1.0 - lr * weight_decay)


def _svd_cap(W, w_max, *, lr, weight_decay, max_update_norm, state, shards):
    c = _rms_scale(W)
    X = _as_batch(W).to(_compute_dtype(W))
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    S = S.clamp(max=w_max / c)
    return ((U * S.unsqueeze(-2)) @ Vh).to(W.dtype).reshape(W.shape)


def _hard_cap(W, w_max, *, lr, weight_decay, max_update_norm, state, shards):
    """cap(X) = X max(G, I)^(-1/2) with G = X^T X (tall X, at w_max = 1): singular values s -> min(s, 1),
    the singular vectors kept. Only the Gram and the final product touch the long side; the rest is on
    the n x n short side:
        max(G, I) = 1/2 [(G + I) + (G - I) sign(G - I)]    (eigenvalues max(lambda, 1) >= 1: well conditioned)
        sign by Polar Express on G - I scaled by a certified bound on |lambda - 1| (a Frobenius scale would
        be ~sqrt(n) too large and leave values near the cap unresolved);
        M^(-1/2) by the Newton-Schulz quintic z <- z (15 - 10 x^2 + 3 x^4) / 8 on x = sqrt(mu) z, started at
        z = 1/sqrt(bound) so x in (0, 1], where it rises monotonically to 1 and never passes it.
    Error: near s = 1 at most |1 - s| times how far the sign is from converged there (~1e-3 in fp32)."""
    c = _rms_scale(W, shards)
    X0 = _as_batch(W).to(_compute_dtype(W))
    ops = kernels.ops_for(X0)
    tall = _is_tall(X0)
    X = _tall(X0) * (c / w_max)
    G = _gram(ops, X, _reduce_of(shards))
    eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    lam_up, _ = _top_of_gram(G, squarings=HARD_CAP_BOUND_SQUARINGS)   # >= lambda_max, <= ~1.5 lambda_max
    top = lam_up.clamp_min(1.0)[:, None, None]                       # >= every eigenvalue of max(G, I)
    D = G - eye
    span = (top - 1.0).clamp_min(1.0) * _PE_SAFETY                  # >= |lambda - 1| for lambda in [0, top]
    S = _quintic_steps(D / span, _msign_steps("polar_express", HARD_CAP_SIGN_STEPS))
    M = ops.sym_mm(D, S, alpha=0.5, beta=0.5, D=G + eye)             # max(G, I); D, S commute
    Z = eye / top.sqrt()
    a, b, cc = _ROOT_QUINTIC
    for _ in range(HARD_CAP_ROOT_STEPS):
        Y = ops.sym_mm(ops.mm_add(Z, M), Z)                          # Z M Z (Z, M commute)
        P = ops.sym_mm(Y, Y, alpha=cc, beta=b, D=Y)                  # b Y + c Y^2
        Z = ops.mm_add(Z, P, beta=a, R=Z)                            # Z (a I + b Y + c Y^2)
    out = ops.mm_add(X, Z, alpha=w_max / c)
    if not tall:
        out = out.mT
    return out.to(W.dtype).reshape(W.shape)


def _hard_cap_poly(W, w_max, *, lr, weight_decay, max_update_norm, state, shards):
    """The paper's four quintic steps X <- X (a I + b G + c G^2), G = X^T X, at w_max = 1."""
    c = _rms_scale(W, shards)
    X0 = _as_batch(W).to(_compute_dtype(W))
    ops = kernels.ops_for(X0)
    tall = _is_tall(X0)
    X = _tall(X0) * (c / w_max)
    for a, b, cc in HARD_CAP_POLY_COEFFS:
        G = _gram(ops, X, _reduce_of(shards))
        Bm = ops.sym_mm(G, G, alpha=cc, beta=b, D=G)     # b G + c G^2
        X = ops.mm_add(X, Bm, beta=a, R=X)               # X (a I + b G + c G^2)
    X = X * (w_max / c)
    if not tall:
        X = X.mT
    return X.to(W.dtype).reshape(W.shape)


def _stiefel(W, w_max, *, lr, weight_decay, max_update_norm, state, shards):
    """Every nonzero singular value of M to w_max: W <- (w_max / c) msign(W)."""
    X = _as_batch(W).to(_compute_dtype(W))
    O = msign(X, steps=STIEFEL_MSIGN_STEPS, gram_reduce=_reduce_of(shards))
    return (O * (w_max / _rms_scale(W, shards))).to(W.dtype).reshape(W.shape)


METHODS = {
    "none": _none,
    "weight_decay": _weight_decay,
    "spectral_weight_decay": _spectral_weight_decay,
    "spectral_normalize": _spectral_normalize,
    "spectral_hammer": _spectral_hammer,
    "soft_cap": _soft_cap,
    "hard_cap": _hard_cap,
    "hard_cap_poly": _hard_cap_poly,
    "svd_cap": _svd_cap,
    "stiefel": _stiefel,
}


@dataclasses.dataclass(frozen=True)
class MethodInfo:
    """What a method is, for the optimizer and the trainer (one record per name of METHODS).

    decays:    its job is the decay itself (it applies lr * weight_decay); the optimizer skips its own.
    coupled:   it caps only given the optimizer's max_update_norm (the soft cap's coupling), i.e. under
               Muon's bounded step; under AdamW it caps nothing.
    caps:      it bounds ||W||_* by w_max (approximately when not `exact`).
    exact:     the bound holds to float rounding for every input it is given (svd; the certified
               spectral bound; the soft cap's polynomial given its coupling), not only approximately.
    stateful:  it reads/writes apply's `state` between calls (none does today; kept for methods that will).
    shardable: it accepts `shards` (a slice of each matrix's long side, see LongSideShards).
    """
    decays: bool = False
    coupled: bool = False
    caps: bool = False
    exact: bool = False
    stateful: bool = False
    shardable: bool = True


PROPERTIES: dict[str, MethodInfo] = {
    "none": MethodInfo(),
    "weight_decay": MethodInfo(decays=True),
    "spectral_weight_decay": MethodInfo(decays=True),
    "spectral_normalize": MethodInfo(caps=True, exact=True),
    "spectral_hammer": MethodInfo(),
    "soft_cap": MethodInfo(coupled=True, caps=True, exact=True),
    "hard_cap": MethodInfo(caps=True),
    "hard_cap_poly": MethodInfo(caps=True),
    "svd_cap": MethodInfo(caps=True, exact=True, shardable=False),
    "stiefel": MethodInfo(caps=True),
}
assert PROPERTIES.keys() == METHODS.keys()


@dataclasses.dataclass(frozen=True)
class LongSideShards:
    """W holds one slice of the long side of each matrix (rows when d_out >= d_in, else columns), the
    slice keeping that orientation (still at least as long as the short side); other ranks hold the rest.
    length: the full long side. reduce(t): sums t over the slices (e.g. an all_reduce) and returns it.
    Every shardable method is a function of the short-side Gram, so with the Gram summed the slice of the
    result is computed exactly as in one piece (zero padding rows/columns contribute nothing)."""
    length: int
    reduce: Callable[[Tensor], Tensor]


def _reduce_of(shards: LongSideShards | None):
    return None if shards is None else shards.reduce


# ----------------------------------------------------------------------------------------------
# Validation and the public entry point

def _check_matrix(W, name: str) -> None:
    if not isinstance(W, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(W).__name__}")
    if W.ndim < 2:
        raise ValueError(f"{name} must have shape (..., d_out, d_in) with at least 2 dims, got shape "
                         f"{tuple(W.shape)}; use cap_row_rms for vectors/embedding rows")
    if W.shape[-1] == 0 or W.shape[-2] == 0:
        raise ValueError(f"{name} has an empty matrix dimension: shape {tuple(W.shape)}")
    if not (W.is_floating_point()):
        raise ValueError(f"{name} must be floating point, got {W.dtype}")


def _check_finite(W: Tensor, name: str) -> None:
    if not bool(torch.isfinite(W).all()):
        raise ValueError(f"{name} has non-finite entries (nan/inf); fix the update that produced them "
                         f"before constraining")


def _check_shards(W: Tensor, method: str, shards) -> None:
    if shards is None:
        return
    if not PROPERTIES[method].shardable:
        raise ValueError(f"constraint {method!r} needs whole matrices; pass shards=None")
    m, n = W.shape[-2:]
    if not isinstance(shards, LongSideShards) or shards.length < max(m, n):
        raise ValueError(f"shards must be a LongSideShards whose length (the full long side) is >= the "
                         f"slice's {max(m, n)}, got {shards!r}")


def apply(W: Tensor, method: str, w_max: float, *, lr: float = 0.0, weight_decay: float = 0.0,
          max_update_norm: float = 0.0, state: dict | None = None, check_finite: bool = True,
          shards: LongSideShards | None = None) -> Tensor:
    """Constrain every matrix of W (..., d_out, d_in) with `method` (a key of METHODS) at cap w_max
    (RMS->RMS norm). Returns a tensor of W's shape, dtype and device; W itself is never modified
    (it may be returned as is when the method changes nothing, e.g. "none", or "soft_cap" with
    alpha = 0), so the optimizer can `p.copy_(apply(p, ...))`. Batched over leading dims: one call
    for a whole stack of equal-shape matrices.

    lr, weight_decay: the step's learning rate and decoupled weight decay (weight_decay methods, and
    the soft cap coupling). max_update_norm: the RMS->RMS norm bound of the step (soft cap coupling).
    state: a per-parameter dict kept by the caller for methods with PROPERTIES[method].stateful.
    check_finite: validate entries (one host sync per call on GPU; pass False in hot loops).
    shards: W is a slice of each matrix's long side (see LongSideShards); None: whole matrices.
    """
    if method not in METHODS:
        raise ValueError(f"unknown constraint method {method!r}; choose one of {sorted(METHODS)}")
    _check_matrix(W, "W")
    if not (isinstance(w_max, numbers.Real) and math.isfinite(w_max) and w_max > 0):
        raise ValueError(f"w_max must be a finite number > 0, got {w_max!r}")
    for name, value in (("lr", lr), ("weight_decay", weight_decay), ("max_update_norm", max_update_norm)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    _check_shards(W, method, shards)
    if check_finite:
        _check_finite(W, "W")
    with torch.no_grad():
        return METHODS[method](W, float(w_max), lr=float(lr), weight_decay=float(weight_decay),
                               max_update_norm=float(max_update_norm), state=state, shards=shards)


def cap_row_rms(E: Tensor, max_rms: float) -> Tensor:
    """Scale each row of E (..., d) (e.g. an embedding table (vocab, d)) so its RMS is <= max_rms, in exact
    arithmetic on the values returned (the certificate's input radius): rows are scaled to a target a few
    float32 rounding errors of a length-d norm below max_rms, so rounding cannot leave one above it. Rows
    already within that target are unchanged. Returns a new tensor of E's shape and dtype."""
    if not isinstance(E, Tensor) or E.ndim < 1 or not E.is_floating_point():
        raise ValueError(f"E must be a floating-point tensor with rows along the last dim, got "
                         f"{getattr(E, 'shape', type(E).__name__)}")
    if not (isinstance(max_rms, (int, float)) and math.isfinite(max_rms) and max_rms > 0):
        raise ValueError(f"max_rms must be a finite number > 0, got {max_rms!r}")
    with torch.no_grad():
        rms = torch.linalg.vector_norm(E, dim=-1, keepdim=True, dtype=torch.float32) / math.sqrt(E.shape[-1])
        target = max_rms * (1 - 4 * math.sqrt(E.shape[-1]) * torch.finfo(torch.float32).eps)
        scale = torch.clamp(target / rms.clamp_min(torch.finfo(torch.float32).tiny), max=1.0)
        return (E * scale).to(E.dtype)
