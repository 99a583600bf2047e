"""Certified Lipschitz upper bound of the norm-free GPT, from its weight norms, and an adversarial check.

The certified function is f = model.logits_from_embeddings: embedding output x (B, T, d) -> logits
(B, T, V_pad), with the ||.||_inf-RMS norm (max over tokens of the per-token RMS) on both sides, over
the input set {x : ||x||_inf-RMS <= r_0}, r_0 = input_radius(model) (every embedding output lies in it).
Weights are walked by attribute (model.blocks[i].attn.q/k/v/o, .mlp.fc/proj, model.lm_head), so this
module does not import train_gpt.

The bound (paper Appendix C, made sound for this exact architecture). Norms are RMS->RMS operator
norms computed exactly (float64 eigenvalues, not caps or power-iteration estimates):
n(W) = sqrt(d_in/d_out) sigma_max(W); per head h, n_h(W) is that norm of head h's rows of W_Q, W_K or
W_V (a (d_head, d) block), so n_h(W) <= sqrt(n_head) n(W).

  Activation bound (assumption ||x||_inf-RMS <= r; each step holds for every token):
    attention residual  r <- (1-a) r + a (n(W_O)/3) sqrt(mean_h n_h(W_V)^2) r
    MLP residual        r <- (1-a) r + a n(W_proj) n(W_fc) r / 1.1289          (|gelu(z)| <= |z|)
  Attention sublayer, per head, with s = attn.scale * head_dim (softmax(s q k^T / d_head + mask)):
    "tight" (per-term derivative, the preprint's form; the softmax covariance bound below):
        L_h = n_h(W_V) (1 + 2 s n_h(W_Q) n_h(W_K) r^2)
    "paper" (Theorem C.1: Lipschitz <= max(1, |v| max(|q'|, |k'|)) w.r.t. |dq'| + |dk'| + |dv|,
             with s absorbed as q' = sqrt(s) q, k' = sqrt(s) k):
        L_h = max(1, sqrt(s) n_h(W_V) max(n_h(W_Q), n_h(W_K)) r^2) (sqrt(s) n_h(W_Q) + sqrt(s) n_h(W_K) + n_h(W_V))
    heads combined: L_attn = (n(W_O)/3) sqrt(mean_h L_h^2)           ("tight" <= "paper" always)
  MLP sublayer: L_mlp = n(W_proj) n(W_fc) * (max |gelu'| / 1.1289)     (max |gelu'| = 1.1289041...)
  Residuals: L <- L ((1-a) + a L_sublayer), through all 2N sublayers; then L *= n(lm_head) |final scale|.
  Composition is sound because the input set of each sublayer is the convex ball of radius r, so the
  mean value theorem applies along segments inside it.

Derivation of the attention step (one head, one query i, keys j in the mask's allowed set J_i, which
is never empty; RoPE rotates q_i and k_j per token, preserving their norms and those of dq, dk; c = s/D):
  y_i = sum_j p_j v_j,  p = softmax_j(c <q_i, k_j>).  dy_i = sum_j p_j dv_j + Cov_p(dl, v), with
  dl_j = c(<dq_i, k_j> + <q_i, dk_j>), and |Cov_p(dl, v)| <= max_j |dl_j| max_j |v_j| (Cauchy-Schwarz
  with Var_p(dl) <= max dl^2, E_p|v - E_p v|^2 <= max |v|^2). Maxima over all tokens bound those over
  J_i, so this holds for every mask (causal, documents, sliding window). In per-head RMS
  (c <a, b> = s RMS(a) RMS(b) for D-vectors) this is
  RMS(dy_i) <= max RMS(dv) + s max RMS(v) (max RMS(dq) max RMS(k) + max RMS(q) max RMS(dk)).

Where the paper's stated form (arXiv 2507.13338, Appendix C) is unsound for this architecture, and what is used:
  1. Heads. Its q, k, v norms are RMS over all heads together, but each head's softmax sees its own
     d_head slice, whose RMS can be sqrt(n_head) times larger. Different heads may attend to
     different tokens, so y_i can gather a full-size slice from a different token in every head:
     the value path and the activation bound grow by up to sqrt(n_head), and q.k/d_head by up to
     n_head. Hence per-head norms n_h, combined as sqrt(mean_h (.)^2). (tests: a 2-head construction
     exceeds the paper's activation bound.)
  2. GELU. The MLP's Lipschitz constant is n(W_proj) n(W_fc) max|gelu'| / 1.1289, not the stated
     n(W_proj) n(W_fc) / 1.1289 (that divides by 1.1289 twice); and max|gelu'| = 1.1289041 > 1.1289,
     so gelu(z)/1.1289 is 1.0000037-Lipschitz, not 1- (tests: a model attains this MLP bound).
The paper's literal recursion is still reported ("log10_bound_paper_literal") to compare with its
published numbers; it is not a certificate.

The "sharp" variant (bound_sharp; certified_bound's default) keeps this derivation and drops worst cases
that cannot happen together (each step is derived beside its code below; every one is <= the "tight" form):
  - the query token is one token for all heads: its q and dq share the budget n(W_Q) across heads (only
    keys and values may come from a different token per head), a fractional knapsack;
  - the value path through M = W_O blockdiag(W_V,h) when that is smaller than n(W_O) n_h(W_V);
  - the MLP as its linear part W_proj W_fc / 2 plus gelu' - 1/2 in [-0.629, 0.629], with the residual
    mixing (1-a) I inside the norm of the linear part;
  - reader bounds: RMS(W x) and RMS(W dx) for the attention's readers W_Q, W_K, W_V, followed through the
    earlier sublayers' output maps (n(W M), n(W W_proj), ...), instead of n(W) r and n(W) delta.
Everything is done in natural-log space, so astronomically large bounds do not overflow; a float
bound above ~1e308 is reported as math.inf with its finite log10.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

GELU_DIVISOR = 1.1289  # train_gpt.GELU_DIVISOR: the MLP computes gelu(h) / GELU_DIVISOR (tests check equality)
ATTN_OUT_DIVISOR = 3.0  # train_gpt.ATTN_OUT_DIVISOR: attention output divided by this before W_O
# exact max of gelu'(x) = Phi(x) + x phi(x), attained at x = sqrt(2)
GELU_MAX_SLOPE = 0.5 * (1 + math.erf(1.0)) + math.sqrt(2) * math.exp(-1.0) / math.sqrt(2 * math.pi)
MLP_ACT_LIPSCHITZ = GELU_MAX_SLOPE / GELU_DIVISOR  # 1.0000037: Lipschitz constant of gelu(.)/1.1289
# gelu'(z) lies in [1 - GELU_MAX_SLOPE, GELU_MAX_SLOPE] (gelu'(-z) = 1 - gelu'(z)): 1/2 +- this half-range
GELU_SLOPE_HALF_RANGE = GELU_MAX_SLOPE - 0.5
VARIANTS = ("paper", "tight", "sharp")
THEOREMS = {
    "paper": "attention: paper Theorem C.1 (max(1,|v|max(|q|,|k|)) w.r.t. |dq|+|dk|+|dv|), per head, s absorbed "
             "as sqrt(s) into W_Q and W_K, heads combined in RMS",
    "tight": "attention: per-term derivative bound |dv| + |v|(|dq||k| + |q||dk|) (the preprint's form), "
             "per head, heads combined in RMS",
    "sharp": "attention: per-term bound, the query token's q and dq shared across heads, value path through "
             "min(n(W_O) n_h(W_V), n(W_O blockdiag W_V)), q/k/v bounds through earlier layers' output maps; "
             "MLP: W_proj W_fc / 2 + (gelu' - 1/2 in [-0.629, 0.629]) with the residual mixing",
    "paper_literal": "the paper's Appendix C recursion verbatim (arXiv 2507.13338; whole-matrix norms, MLP / 1.1289): "
                     "NOT a certificate for multi-head attention",
}
_LOG10 = math.log(10.0)


# ----------------------------------------------------------------------------------------------
# Norms and log-space helpers


def top_eigenvalues(G: torch.Tensor) -> torch.Tensor:
    """Largest eigenvalue of each symmetric matrix in G (..., n, n), float64, on the CPU. Device difference:
    the products that form G run where the weights live (a GPU does the float64 Gram of the lm_head in
    milliseconds); eigh itself runs on the host, where it is fast and needs no device syncs."""
    return torch.linalg.eigvalsh(G.to("cpu", torch.float64))[..., -1]


@torch.no_grad()
def rms_op_norms(W: torch.Tensor) -> torch.Tensor:
    """RMS->RMS operator norm sqrt(d_in/d_out) sigma_max of each matrix in W (..., d_out, d_in), float64, on
    the CPU.

    Exact to float64 rounding: the top eigenvalue of the Gram matrix on the smaller side (sigma_max to
    ~1e-15 relative; ~3x faster than an SVD for the (50304, 768) lm_head). Not a power-iteration estimate,
    which can undershoot; and not constraints.rms_norm_op, whose float32 result can undercut by ~6e-8."""
    W = W.detach().to(torch.float64)
    G = W.mT @ W if W.shape[-2] >= W.shape[-1] else W @ W.mT
    return top_eigenvalues(G).clamp_min(0).sqrt() * math.sqrt(W.shape[-1] / W.shape[-2])


def head_rms_op_norms(W: torch.Tensor, n_head: int) -> list[float]:
    """Per-head RMS->RMS norms of W (n_head * head_dim, d): the norm of each (head_dim, d) row block."""
    if W.shape[0] % n_head:
        raise ValueError(f"weight of shape {tuple(W.shape)} does not split into n_head={n_head} row blocks")
    return rms_op_norms(W.reshape(n_head, W.shape[0] // n_head, W.shape[1])).tolist()


def mixed_mlp_norm(W_fc: torch.Tensor, W_proj: torch.Tensor, alpha: float) -> float:
    """n((1-a) I + a W_proj W_fc / (2 * 1.1289)): the linear part of the MLP residual block (d, d)."""
    P = W_proj.detach().to(torch.float64) @ W_fc.detach().to(torch.float64)
    eye = torch.eye(P.shape[0], dtype=torch.float64, device=P.device)
    return rms_op_norms((1 - alpha) * eye + (alpha / (2 * GELU_DIVISOR)) * P).item()


def _log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


def _logsumexp(xs) -> float:
    xs = list(xs)
    m = max(xs)
    if m == -math.inf or m == math.inf:
        return m
    return m + math.log(sum(math.exp(x - m) for x in xs))


def _log_residual(a: float, log_inner: float) -> float:
    """log((1-a) + a exp(log_inner)): the factor of a convex residual x <- (1-a) x + a g(x)."""
    return _logsumexp([math.log(1 - a), math.log(a) + log_inner])


def _log_rms_mean(logs: list[float]) -> float:
    """log sqrt(mean_h exp(2 logs_h)): heads combined in RMS."""
    return 0.5 * (_logsumexp([2 * x for x in logs]) - math.log(len(logs)))


def _float(log_x: float) -> float:
    """exp(log_x) as a float, math.inf when it would overflow."""
    return math.exp(log_x) if log_x < 709.0 else math.inf


# ----------------------------------------------------------------------------------------------
# Per-sublayer bounds (natural logs). Pure functions of norms, the activation bound r and s.


def log_attention_head_lipschitz(log_nq: float, log_nk: float, log_nv: float, log_s: float, log_r: float,
                                 variant: str) -> float:
    """log of one head's Lipschitz constant (RMS over d_head <- inf-RMS over d), input norm <= r."""
    if variant == "tight":  # n_v (1 + 2 s n_q n_k r^2)
        return log_nv + _logsumexp([0.0, math.log(2) + log_s + log_nq + log_nk + 2 * log_r])
    if variant == "paper":  # max(1, sqrt(s) n_v max(n_q, n_k) r^2) (sqrt(s) n_q + sqrt(s) n_k + n_v)
        half_s = 0.5 * log_s
        big = max(0.0, half_s + log_nv + max(log_nq, log_nk) + 2 * log_r)
        return big + _logsumexp([half_s + log_nq, half_s + log_nk, log_nv])
    raise ValueError(f"unknown variant {variant!r}; use one of {VARIANTS}")


def log_attention_lipschitz(nq: list[float], nk: list[float], nv: list[float], no: float, s: float,
                            log_r: float, variant: str) -> float:
    """log Lipschitz constant of x -> W_O (attention(x) / 3) on the ball of radius r (per-head norms)."""
    heads = [log_attention_head_lipschitz(_log(a), _log(b), _log(c), _log(s), log_r, variant)
             for a, b, c in zip(nq, nk, nv)]
    return _log(no) - math.log(ATTN_OUT_DIVISOR) + _log_rms_mean(heads)


def log_attention_gain(nv: list[float], no: float) -> float:
    """log of the activation growth bound RMS(W_O attention(x)/3) <= gain * r (convex mix per head)."""
    return _log(no) - math.log(ATTN_OUT_DIVISOR) + _log_rms_mean([_log(x) for x in nv])


def log_mlp_lipschitz(n_fc: float, n_proj: float) -> float:
    return _log(n_fc) + _log(n_proj) + math.log(MLP_ACT_LIPSCHITZ)


def log_mlp_gain(n_fc: float, n_proj: float) -> float:
    return _log(n_fc) + _log(n_proj) - math.log(GELU_DIVISOR)


# "sharp": the same derivation with two facts the per-head form throws away.
#  (a) The query token is ONE token for all heads: mean_h RMS(q_h,i)^2 = RMS(W_Q x_i)^2 <= n(W_Q)^2 r^2 and
#      likewise for dq; only keys and values may come from a different token in every head.
#  (b) The value path of head h reaches the output through W_O's column block: the head's output change is
#      W_O,h W_V,h u_h with u_h = sum_j p_j dx_j + Cov_p(dl, x) (RMS(u_h) <= delta (1 + s n_h(W_K) r^2
#      (alpha_h + beta_h)), alpha_h = RMS(q_h,i)/r, beta_h = RMS(dq_h,i)/delta), and
#      RMS(sum_h W_O,h W_V,h u_h) <= sqrt(mean_h omega_h^2 RMS(u_h)^2) for omega_h = n(W_O) n_h(W_V), or for
#      omega_h = n(M) with M = W_O blockdiag(W_V,1..W_V,H) (d, H d); the smaller one is used.
#  With S = {0 <= g_h <= n_h(W_Q), mean_h g_h^2 <= n(W_Q)^2}, alpha, beta in S, and by Minkowski
#    L_attn <= (1/3) [sqrt(mean_h omega_h^2) + 2 s r^2 sqrt(max_{g in S} mean_h (omega_h n_h(W_K) g_h)^2)],
#  the inner max a fractional knapsack in g_h^2 (exact, greedy). The per-head form (no sharing) is also a
#  bound; the minimum of all of them is taken, so "sharp" <= "tight" always.


def log_shared_query_max(log_w: list[float], log_caps: list[float], log_whole: float) -> float:
    """log sqrt(max mean_h exp(log_w_h) g_h^2) over 0 <= g_h <= exp(log_caps_h), mean_h g_h^2 <= exp(2 log_whole).

    The query token's per-head norms share one budget: sum_h RMS(W_Q,h x)^2 = H RMS(W_Q x)^2. A linear
    program in g_h^2 (a fractional knapsack): filling the largest weights first is optimal."""
    H = len(log_w)
    ref = max(log_caps + [log_whole])
    if ref == -math.inf:
        return -math.inf
    budget = H * math.exp(2 * (log_whole - ref))  # squares relative to exp(2 ref): no overflow
    terms = []
    for h in sorted(range(H), key=lambda i: -log_w[i]):
        g2 = min(math.exp(2 * (log_caps[h] - ref)), budget)
        if g2 <= 0 or log_w[h] == -math.inf:
            break
        terms.append(log_w[h] + math.log(g2) + 2 * ref)
        budget -= g2
    return 0.5 * (_logsumexp(terms) - math.log(H)) if terms else -math.inf


def default_radii(n: dict, log_r: float) -> dict:
    """Activation radii of the readers of a block (logs): RMS(W x) <= n(W) r for every input of RMS <= r."""
    return dict(q=_log(n["q"]) + log_r, **{f"{k}_heads": [_log(x) + log_r for x in n[f"{k}_heads"]] for k in "qkv"})


def log_attention_sharp(n: dict, log_r: float, radii: dict | None = None, pert: dict | None = None) -> float:
    """log Lipschitz bound of x -> W_O (attention(x) / 3) on the ball of radius r: the smallest of the
    per-head ("tight") form and the query-shared form, each with either value-path weight (see above).

    radii (logs, default default_radii): bounds on RMS(W_Q x) ("q") and per head RMS(W_Q,h x), RMS(W_K,h x),
    RMS(W_V,h x) over this block's possible inputs x, each <= its norm times r (reader_bounds tightens them).
    pert (logs, same keys and "delta"): bounds on the same for an input perturbation dx instead of x, with
    delta >= ||dx||_inf-RMS; default n(W) and delta = 1. The result bounds RMS(d out) (absolute, in the
    units of pert); with the default pert that is the Lipschitz constant."""
    return min(_attention_forms(n, first, value, radii or default_radii(n, log_r), pert or default_pert(n))
               for first, value in _value_path_weights(n, log_r, radii or default_radii(n, log_r),
                                                       pert or default_pert(n))) - math.log(ATTN_OUT_DIVISOR)


def log_attention_mixer_pert(n: dict, log_r: float, radii: dict, pert: dict) -> float:
    """log bound on sqrt(mean_h RMS(u_h)^2), u_h = sum_j p_j dx_j + Cov_p(dl_h, x): the attention's output
    change is W_O (stacked W_V,h u_h) / 3 = M u / 3 (see (b) above)."""
    H = n["n_head"]
    return _attention_forms(n, [pert["delta"]] * H, [log_r] * H, radii, pert)


def default_pert(n: dict) -> dict:
    return dict(default_radii(n, 0.0), delta=0.0)


def _attention_forms(n: dict, first: list[float], value: list[float], rad: dict, pert: dict) -> float:
    """log sqrt(mean_h RMS(out_h)^2) bound, out_h = first_h (first-order) + value_h s (RMS(dq_h) rho_K,h +
    RMS(q_h) rho'_K,h): the smaller of the per-head form and the query-shared form (Minkowski)."""
    log_s = _log(n["s"])
    per_head = [_logsumexp([f, v + log_s + _logsumexp([dq + rk, rq + dk])])
                for f, v, dq, rk, rq, dk in zip(first, value, pert["q_heads"], rad["k_heads"], rad["q_heads"],
                                                pert["k_heads"])]
    dq_part = log_shared_query_max([2 * (v + rk) for v, rk in zip(value, rad["k_heads"])], pert["q_heads"], pert["q"])
    q_part = log_shared_query_max([2 * (v + dk) for v, dk in zip(value, pert["k_heads"])], rad["q_heads"], rad["q"])
    return min(_log_rms_mean(per_head), _logsumexp([_log_rms_mean(first), log_s + dq_part, log_s + q_part]))


def _value_path_weights(n: dict, log_r: float, radii: dict, pert: dict) -> list[tuple[list[float], list[float]]]:
    """Per head (log first-order weight, log value weight) for the two value paths of (b) above:
    (n(W_O) dv-bound_h, n(W_O) rho_V,h) and (n(M) delta, n(M) r)."""
    H = n["n_head"]
    return [([_log(n["o"]) + dv for dv in pert["v_heads"]], [_log(n["o"]) + rv for rv in radii["v_heads"]]),
            ([_log(n["ov"]) + pert["delta"]] * H, [_log(n["ov"]) + log_r] * H)]


# Reader bounds. Each attention step needs bounds on RMS(W x) for its readers W (W_Q, and W_Q,h, W_K,h, W_V,h
# per head) over the block's possible inputs x, where "sharp" so far used n(W) r; and likewise on RMS(W dx)
# for the perturbation dx of the block's input caused by a network input perturbation of inf-RMS <= 1,
# where it used n(W) delta. The residual stream is x_0 plus the sublayer outputs mixed in one at a time,
# x <- (1-a) x + a out, and each output (and its change) is a linear map of a bounded vector:
#   attention: out = M z / 3, RMS(z) <= r_in (z = each head's average of tokens, stacked); d out = M u / 3
#              with sqrt(mean_h RMS(u_h)^2) <= U (log_attention_mixer_pert);
#   MLP: out = (P x / 2 + W_proj e) / 1.1289, RMS(e) <= n(W_fc) r_in / 2; d out = (P dx / 2 + W_proj g) / 1.1289,
#        RMS(g) <= 0.629 n(W_fc) delta_in.
# So RMS(W x) <= min((1-a) RMS(W x_before) + a RMS(W out), n(W) r_after), RMS(W out) <= n(W M) r_in / 3, resp.
# (n(W P) / 2 + n(W W_proj) n(W_fc) / 2) r_in / 1.1289, and the same for dx. These are smaller than n(W) r
# where W reads only part of what earlier sublayers write.


# Sublayers reader_bounds follows back (before them, n(W) times the stream bound): the cost is
# O(layers * READER_DEPTH) products of (3 d, d) by (d, d) matrices, not O(layers^2).
READER_DEPTH = 4


@dataclass
class _Sublayer:
    """What reader_bounds needs from one earlier sublayer: its residual weight a, the matrices X its output
    goes through (attention: (M,); MLP: (P = W_proj W_fc, W_proj)) as (X X^T, columns of X), log n(W_fc), and
    the logs of the bounds on the vector X acts on and on the stream after it, for activations and
    perturbations."""
    a: float
    mats: tuple
    log_fc: float
    log_r_in: float
    log_r_after: float
    log_pert_in: float
    log_pert_after: float


def _gram(X: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(X X^T, number of columns of X): all reader_bounds needs of an output map X (d, m)."""
    return X @ X.mT, X.shape[1]


def _reader_matrices(block: nn.Module) -> torch.Tensor:
    """(3 H D, d): W_Q, W_K, W_V stacked (float64); rows of head h of each are its row blocks."""
    return torch.cat([getattr(block.attn, k).weight.detach().to(torch.float64) for k in "qkv"])


def reader_bounds(block: nn.Module, history: list, log_r0: float) -> tuple[dict, dict]:
    """(radii, pert) for log_attention_sharp: log bounds on RMS(W x) and RMS(W dx) for W = W_Q and every
    head's W_Q,h, W_K,h, W_V,h, over this block's inputs x (network inputs of RMS <= r_0) and input
    perturbations dx (network input perturbations of inf-RMS <= 1); history: the earlier sublayers."""
    H = block.attn.n_head
    R = _reader_matrices(block)
    inner = R.shape[0] // 3
    heads = R.reshape(3 * H, inner // H, -1)

    def norms(gram):  # log RMS->RMS norms of W_Q X and of every head block of W_Q X, W_K X, W_V X, from
        G, m = gram   # the Gram matrix G = X X^T (d, d) of X (d, m): sigma(W X)^2 = lambda_max(W G W^T)
        RG = R @ G
        whole = top_eigenvalues(RG[:inner] @ R[:inner].mT).clamp_min(0).sqrt().item()
        per = top_eigenvalues(RG.reshape(heads.shape) @ heads.mT).clamp_min(0).sqrt()
        return [_log(whole * math.sqrt(m / inner))] + [_log(x * math.sqrt(m / heads.shape[1])) for x in per.tolist()]

    own = norms((torch.eye(R.shape[1], dtype=torch.float64, device=R.device), R.shape[1]))
    recent = history[-READER_DEPTH:]
    # before the window: the stream bounds r and delta (network input: r_0 and 1)
    start = history[-READER_DEPTH - 1] if len(history) > READER_DEPTH else None
    act = [x + (start.log_r_after if start else log_r0) for x in own]
    pert = [x + (start.log_pert_after if start else 0.0) for x in own]
    for sub in recent:
        if len(sub.mats) == 1:  # attention
            through = norms(sub.mats[0])
            act_out = [x - math.log(ATTN_OUT_DIVISOR) + sub.log_r_in for x in through]
            pert_out = [x - math.log(ATTN_OUT_DIVISOR) + sub.log_pert_in for x in through]
        else:  # MLP
            via_p, via_proj = norms(sub.mats[0]), norms(sub.mats[1])
            act_out = [_logsumexp([p - math.log(2), w + sub.log_fc - math.log(2)]) - math.log(GELU_DIVISOR)
                       + sub.log_r_in for p, w in zip(via_p, via_proj)]
            pert_out = [_logsumexp([p - math.log(2), w + sub.log_fc + math.log(GELU_SLOPE_HALF_RANGE)])
                        - math.log(GELU_DIVISOR) + sub.log_pert_in for p, w in zip(via_p, via_proj)]
        mix = [math.log(1 - sub.a), math.log(sub.a)]
        act = [min(_logsumexp([mix[0] + x, mix[1] + o]), w + sub.log_r_after) for x, o, w in zip(act, act_out, own)]
        pert = [min(_logsumexp([mix[0] + x, mix[1] + o]), w + sub.log_pert_after)
                for x, o, w in zip(pert, pert_out, own)]

    def named(v):
        return dict(q=v[0], q_heads=v[1:1 + H], k_heads=v[1 + H:1 + 2 * H], v_heads=v[1 + 2 * H:])
    return named(act), named(pert)


def _ov_matrix(attn: nn.Module) -> torch.Tensor:
    """M = W_O blockdiag(W_V,1, ..., W_V,H) (d, H d), float64."""
    W_O, W_V, H = attn.o.weight.detach().to(torch.float64), attn.v.weight.detach().to(torch.float64), attn.n_head
    d_out, inner = W_O.shape
    D = inner // H
    return torch.einsum("ohk,hkd->ohd", W_O.reshape(d_out, H, D), W_V.reshape(H, D, -1)).reshape(d_out, -1)


def log_attention_gain_sharp(n: dict) -> float:
    """log of the activation growth bound RMS(W_O attention(x)/3) <= gain * r: each head averages tokens
    (RMS <= r), then the value path (b) above with the smaller omega."""
    paths = _value_path_weights(n, 0.0, default_radii(n, 0.0), default_pert(n))
    return min(_log_rms_mean(first) for first, _ in paths) - math.log(ATTN_OUT_DIVISOR)


# MLP, "sharp": gelu(z) = z/2 + |z| |Phi(z) - 1/2| with the second part in [0, |z|/2], and
# gelu'(z) = 1/2 + g(z) with |g| <= 0.629 (gelu'(-z) = 1 - gelu'(z)). So with P = W_proj W_fc / (2 * 1.1289)
# the residual block x -> (1-a) x + a mlp(x) is the linear map (1-a) I + a P plus a remainder:
#   Lipschitz <= n((1-a) I + a P) + a 0.629 n(W_proj) n(W_fc) / 1.1289
#   growth    <= n((1-a) I + a P) + a 0.5 n(W_proj) n(W_fc) / 1.1289
# The residual mixing enters before the worst case: (1-a) I and P need not align. Also bounded with
# n((1-a) I + a P) <= (1-a) + a n(P) (the form without mixing), and the smaller is used.


def _log_mlp_residual_sharp(n: dict, log_rest_coef: float, log_plain: float) -> float:
    a = n["alpha"]
    log_rest = math.log(a) + log_rest_coef + _log(n["proj"]) + _log(n["fc"]) - math.log(GELU_DIVISOR)
    mixed = _logsumexp([_log(n["mix_proj_fc"]), log_rest])
    unmixed = _logsumexp([_log_residual(a, _log(n["proj_fc"]) - math.log(2 * GELU_DIVISOR)), log_rest])
    return min(mixed, unmixed, _log_residual(a, log_plain))


def log_mlp_residual_lipschitz_sharp(n: dict) -> float:
    """log Lipschitz bound of the MLP residual block x -> (1-a) x + a mlp(x) (see above)."""
    return _log_mlp_residual_sharp(n, math.log(GELU_SLOPE_HALF_RANGE), log_mlp_lipschitz(n["fc"], n["proj"]))


def log_mlp_residual_gain_sharp(n: dict) -> float:
    """log of the growth bound RMS((1-a) x + a mlp(x)) <= gain * RMS(x) (see above)."""
    return _log_mlp_residual_sharp(n, math.log(0.5), log_mlp_gain(n["fc"], n["proj"]))


def _paper_literal_log_attention(nq: float, nk: float, nv: float, no: float, s: float, log_r: float) -> float:
    """The paper's Appendix C attention step verbatim (whole-matrix norms, s absorbed as sqrt(s) in W_Q, W_K)."""
    return (_log(no) - math.log(ATTN_OUT_DIVISOR)
            + log_attention_head_lipschitz(_log(nq), _log(nk), _log(nv), _log(s), log_r, "paper"))


# ----------------------------------------------------------------------------------------------
# The report


def _arch_problem(model: nn.Module) -> str | None:
    arch = getattr(model, "arch", "lipschitz")
    if arch != "lipschitz":
        return (f"arch={arch!r}: RMSNorm/QK-norm rescale by 1/RMS(x), which is unbounded near x = 0, so no "
                f"global Lipschitz bound exists; use arch='lipschitz'")
    for name in ("embed", "blocks", "lm_head"):
        if not hasattr(model, name):
            return f"model has no .{name}: not a train_gpt.GPT-like model"
    return None


def _nonfinite_weight(model: nn.Module) -> str | None:
    for name, p in model.named_parameters():
        if not name.startswith("embed") and not bool(torch.isfinite(p).all()):
            return f"weight {name} has non-finite entries (training diverged): no finite bound"
    return None


def _hp(model, name: str, default):
    hp = getattr(model, "hp", None)
    return getattr(hp, name, default) if hp is not None else default


@torch.no_grad()
def layer_norms(block: nn.Module) -> dict:
    """All norms of one Block that the bound uses (python floats / lists of per-head floats)."""
    attn, mlp = block.attn, block.mlp
    H = attn.n_head
    out = {name: rms_op_norms(getattr(attn, name).weight).item() for name in ("q", "k", "v", "o")}
    out.update({f"{name}_heads": head_rms_op_norms(getattr(attn, name).weight, H) for name in ("q", "k", "v")})
    out.update(fc=rms_op_norms(mlp.fc.weight).item(), proj=rms_op_norms(mlp.proj.weight).item())
    out.update(ov=rms_op_norms(_ov_matrix(attn)).item(),
               proj_fc=rms_op_norms(mlp.proj.weight.double() @ mlp.fc.weight.double()).item(),
               mix_proj_fc=mixed_mlp_norm(mlp.fc.weight, mlp.proj.weight, float(block.alpha)))
    out.update(alpha=float(block.alpha), s=float(attn.scale) * attn.head_dim, n_head=H)
    return out


@torch.no_grad()
def input_radius(model: nn.Module) -> float:
    """r_0: the largest RMS of an embedding output: hp.emb_w_max, or the largest row RMS of the table (in
    float64) where the float32 rounding of the row cap left a row a few ulps above it (1.0000001 seen)."""
    r = float(_hp(model, "emb_w_max", 1.0))
    embed = getattr(model, "embed", None)
    if isinstance(embed, nn.Embedding):
        r = max(r, embed.weight.detach().double().square().mean(-1).sqrt().max().item())
    return r


def bound_report(model: nn.Module, radius: float | None = None) -> dict:
    """Certified Lipschitz bound of model.logits_from_embeddings with its per-layer breakdown.

    radius: r_0, the input norm assumption ||x||_inf-RMS <= r_0 (default input_radius(model)).
    Returns a dict with
      bound, log10_bound               "paper" variant (Theorem C.1 per head): certified
      bound_tight, log10_bound_tight   "tight" variant (per-term attention bound): certified, <= bound
      bound_sharp, log10_bound_sharp   "sharp" variant (query shared across heads, OV and MLP products,
                                       its own activation bound): certified, <= bound_tight
      bound_paper_literal, log10_bound_paper_literal   the paper's Appendix C recursion verbatim: NOT certified
      radius, lm_head_norm, final_logit_scale, theorems, reason (None, or why the bound is inf)
      layers: per layer a dict of norms (q, k, v, o, fc, proj, q_heads, ..., ov, proj_fc), log10_r_in / _mid
        / _out (activation bound before the block, after attention, after the MLP; "paper"/"tight"), the
        same with suffix _sharp, log10_attn_<variant>, log10_mlp, log10_mlp_block_sharp (the whole MLP
        residual block x -> (1-a) x + a mlp(x), "sharp"), log10_cum_<variant>
        (bound of the map embedding -> this block's output).
    Floats that would overflow are math.inf; every log10_* is finite for finite, nonzero weights."""
    reason = _arch_problem(model) or _nonfinite_weight(model)
    if reason is not None:
        out = {k: math.inf for b in ("bound", "bound_tight", "bound_sharp", "bound_paper_literal")
               for k in (b, f"log10_{b}")}
        return dict(out, layers=[], reason=reason, theorems=THEOREMS)
    r0 = input_radius(model) if radius is None else float(radius)
    if not (math.isfinite(r0) and r0 > 0):
        raise ValueError(f"radius (the input norm bound r_0) must be finite and > 0, got {radius!r}")
    log_r = log_r_lit = log_r_sharp = math.log(r0)
    log_L = {v: 0.0 for v in VARIANTS}
    log_L_lit = 0.0
    layers, history = [], []
    for block in model.blocks:
        n = layer_norms(block)
        a, s = n["alpha"], n["s"]
        row = dict(norms=n, log10_r_in=log_r / _LOG10, log10_r_in_sharp=log_r_sharp / _LOG10)
        attn = {v: log_attention_lipschitz(n["q_heads"], n["k_heads"], n["v_heads"], n["o"], s, log_r, v)
                for v in ("paper", "tight")}
        radii, pert = reader_bounds(block, history, math.log(r0))
        pert["delta"] = log_L["sharp"]  # this block's input perturbation bound (network input: inf-RMS 1)
        row["log10_reader_radii"] = {k: [x / _LOG10 for x in v] for k, v in radii.items() if k != "q"}
        # sharp: absolute bound on the attention output's change, as a Lipschitz constant relative to delta
        attn["sharp"] = log_attention_sharp(n, log_r_sharp, radii, pert) - log_L["sharp"]
        log_mixer_pert = log_attention_mixer_pert(n, log_r_sharp, radii, pert)
        lm = log_mlp_lipschitz(n["fc"], n["proj"])
        mlp_block = dict(paper=_log_residual(a, lm), tight=_log_residual(a, lm),
                         sharp=log_mlp_residual_lipschitz_sharp(n))
        log_L_in = log_L["sharp"]
        for v in VARIANTS:
            row[f"log10_attn_{v}"] = attn[v] / _LOG10
            log_L[v] += _log_residual(a, attn[v]) + mlp_block[v]
            row[f"log10_cum_{v}"] = log_L[v] / _LOG10
        log_L_mid = log_L_in + _log_residual(a, attn["sharp"])
        row["log10_mlp"] = lm / _LOG10
        row["log10_mlp_block_sharp"] = mlp_block["sharp"] / _LOG10
        log_L_lit += _log_residual(a, _paper_literal_log_attention(n["q"], n["k"], n["v"], n["o"], s, log_r_lit))
        log_L_lit += _log_residual(a, _log(n["fc"]) + _log(n["proj"]) - math.log(GELU_DIVISOR))
        log_r += _log_residual(a, log_attention_gain(n["v_heads"], n["o"]))
        log_r_att_in = log_r_sharp
        log_r_sharp += _log_residual(a, log_attention_gain_sharp(n))
        history.append(_Sublayer(a, (_gram(_ov_matrix(block.attn)),), 0.0, log_r_att_in, log_r_sharp,
                                 log_mixer_pert, log_L_mid))
        log_r_lit += _log_residual(a, _log(n["o"]) + _log(n["v"]) - math.log(ATTN_OUT_DIVISOR))
        row["log10_r_mid"], row["log10_r_mid_sharp"] = log_r / _LOG10, log_r_sharp / _LOG10
        log_r += _log_residual(a, log_mlp_gain(n["fc"], n["proj"]))
        log_r_mlp_in = log_r_sharp
        log_r_sharp += log_mlp_residual_gain_sharp(n)
        W_fc, W_proj = (w.detach().to(torch.float64) for w in (block.mlp.fc.weight, block.mlp.proj.weight))
        history.append(_Sublayer(a, (_gram(W_proj @ W_fc), _gram(W_proj)), _log(n["fc"]), log_r_mlp_in,
                                 log_r_sharp, log_L_mid, log_L["sharp"]))
        log_r_lit += _log_residual(a, log_mlp_gain(n["fc"], n["proj"]))
        row["log10_r_out"], row["log10_r_out_sharp"] = log_r / _LOG10, log_r_sharp / _LOG10
        row["log10_r_out_paper_literal"] = log_r_lit / _LOG10
        layers.append(row)
    n_lm = rms_op_norms(model.lm_head.weight).item()
    fls = abs(float(getattr(model, "final_logit_scale", 1.0)))
    log_head = _log(n_lm) + _log(fls)
    out = dict(radius=r0, lm_head_norm=n_lm, final_logit_scale=fls, layers=layers, reason=None, theorems=THEOREMS)
    for key, lg in (("bound", log_L["paper"]), ("bound_tight", log_L["tight"]), ("bound_sharp", log_L["sharp"]),
                    ("bound_paper_literal", log_L_lit)):
        out[key] = _float(lg + log_head)
        out[f"log10_{key}"] = (lg + log_head) / _LOG10
    return out


_BOUND_KEY = dict(paper="bound", tight="bound_tight", sharp="bound_sharp")


def certified_bound(model: nn.Module, variant: str = "sharp", radius: float | None = None) -> float:
    """Certified upper bound on ||f(x1) - f(x2)|| / ||x1 - x2|| (inf-RMS norms, ||x||_inf-RMS <= radius),
    f = model.logits_from_embeddings. variant "sharp" (the smallest), "tight" (per-term, per head) or
    "paper" (Theorem C.1 per head); sharp <= tight <= paper.
    math.inf if it overflows a float (see bound_report for its log10) or the arch has no bound."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; use one of {VARIANTS}")
    return bound_report(model, radius)[_BOUND_KEY[variant]]


def activation_bounds(model: nn.Module, radius: float | None = None, variant: str = "sharp") -> list[float]:
    """Certified bound on the residual stream's inf-RMS after each block (inputs of norm <= radius);
    variant "sharp" (OV and MLP products) or "tight" (= "paper": per-head value norms, |gelu(z)| <= |z|)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; use one of {VARIANTS}")
    key = "log10_r_out_sharp" if variant == "sharp" else "log10_r_out"
    return [_float(row[key] * _LOG10) for row in bound_report(model, radius)["layers"]]


# ----------------------------------------------------------------------------------------------
# Empirical check: adversarial search for the largest ||f(x1) - f(x2)|| / ||x1 - x2||


def inf_rms(x: torch.Tensor) -> torch.Tensor:
    """||x||_inf-RMS of each sequence: x (B, T, d) -> (B,), max over tokens of the RMS over d."""
    return x.square().mean(-1).sqrt().amax(-1)


def project_to_ball(x: torch.Tensor, radius: float) -> torch.Tensor:
    """Nearest point with every token's RMS <= radius (x (..., d)): scale down tokens outside."""
    rms = x.square().mean(-1, keepdim=True).sqrt()
    return x * torch.clamp(radius / rms.clamp_min(1e-300), max=1.0)


def float64_copy(model: nn.Module) -> nn.Module:
    """A float64 eval-mode copy of the model (the caller's model is left untouched)."""
    return copy.deepcopy(model).double().eval()


def logits64(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """model.logits_from_embeddings(x): float64 logits for a float64 model and input (float32 would drown a
    search over small perturbations in rounding)."""
    return model.logits_from_embeddings(x)


def _check_pair(x1: torch.Tensor, x2: torch.Tensor, d: int) -> None:
    if x1.shape != x2.shape or x1.ndim != 3 or x1.shape[-1] != d:
        raise ValueError(f"x1, x2 must both have shape (B, T, d_model={d}), got {tuple(x1.shape)} and "
                         f"{tuple(x2.shape)}")


@torch.no_grad()
def empirical_ratio(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor) -> float:
    """||f(x1) - f(x2)|| / ||x1 - x2|| in inf-RMS over all B*T tokens, f computed in float64 on a copy.
    x1, x2: (B, T, d) embedding outputs (not modified)."""
    d = model.embed.weight.shape[1]
    _check_pair(x1, x2, d)
    den = inf_rms((x1 - x2).double().reshape(1, -1, d)).item()
    if den == 0:
        raise ValueError("x1 and x2 are equal: the ratio is undefined; pass two different inputs")
    m = float64_copy(model)
    num = inf_rms((logits64(m, x1.double()) - logits64(m, x2.double())).reshape(1, -1, m.lm_head.weight.shape[0]))
    return num.item() / den


@dataclass
class SearchResult:
    """Worst pair found: ratio, the pair (1, T, d) float64, the restart kind, and the best ratio per restart."""
    ratio: float
    x1: torch.Tensor
    x2: torch.Tensor
    kind: str
    per_restart: list = field(default_factory=list)


# restart kinds: (name, perturbation size as a fraction of the radius; None = two independent points)
SEARCH_KINDS = (("local", 1e-5), ("large", None), ("medium", 0.1), ("local", 1e-3), ("large", None))


def worst_pair(model: nn.Module, *, seq_len: int = 16, batch: int = 4, restarts: int = 5, steps: int = 200,
               lr: float = 0.05, radius: float | None = None, seed: int = 0, progress=None) -> SearchResult:
    """Gradient-ascent search for the largest ratio ||f(x1)-f(x2)|| / ||x1-x2|| with both inputs in the
    ball ||x||_inf-RMS <= radius (default hp.emb_w_max), the set the certified bound is about.

    Each restart optimizes `batch` independent sequences (each sequence is its own pair; the ratio is
    per sequence) with Adam on log ratio, cycling through SEARCH_KINDS: tiny perturbations (the local
    Jacobian norm), medium ones, and two independent points. Inputs start on the sphere's surface
    (largest activations) or inside it; the ball constraint is kept by projection. float64 throughout.
    progress: None, or called after every step as progress(restart, step, best ratio so far), restart and
    step counted from 1 (a long search can report how far it is)."""
    if steps < 1 or restarts < 1 or batch < 1 or seq_len < 1:
        raise ValueError(f"seq_len, batch, restarts and steps must be >= 1, got {seq_len}, {batch}, {restarts}, "
                         f"{steps}")
    problem = _arch_problem(model)
    if problem is not None:
        raise ValueError(f"cannot search a model without a certified bound: {problem}")
    R = input_radius(model) if radius is None else float(radius)
    m = float64_copy(model).requires_grad_(False)
    d = m.embed.weight.shape[1]
    gen = torch.Generator().manual_seed(seed)
    best = SearchResult(0.0, None, None, "")

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    for restart in range(restarts):
        kind, eps = SEARCH_KINDS[restart % len(SEARCH_KINDS)]
        # start each token at RMS R * u, u in [0.5, 1.5] (projection puts ~half on the surface)
        scale = R * (0.5 + torch.rand(batch, seq_len, 1, generator=gen, dtype=torch.float64))
        z1 = (randn(batch, seq_len, d) * scale).requires_grad_()
        z2 = (randn(batch, seq_len, d) * (scale if eps is None else 1.0)).requires_grad_()
        opt = torch.optim.Adam([z1, z2], lr=lr * (R if eps is None else 1.0))
        # cosine decay to 0: big moves first to find a good basin, then converge inside it
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
        run_best = 0.0
        for step in range(steps):
            if eps is None:
                x1, x2 = project_to_ball(z1, R), project_to_ball(z2, R)
            else:  # x2 = x1 + a perturbation with every token's RMS exactly eps R; both stay in the ball.
                # (||J dx|| is convex in dx, so its max over the product of token balls is at a point
                # with every token on its sphere: no loss, and every token's direction gets a gradient.)
                x1 = project_to_ball(z1, R * (1 - eps))
                x2 = x1 + eps * R * z2 / z2.square().mean(-1, keepdim=True).sqrt()
            ratios = inf_rms(logits64(m, x2) - logits64(m, x1)) / inf_rms(x2 - x1)
            i = int(ratios.argmax())
            if ratios[i].item() > run_best:
                run_best = ratios[i].item()
                if run_best > best.ratio:
                    best = SearchResult(run_best, x1[i:i + 1].detach().clone(), x2[i:i + 1].detach().clone(),
                                        kind, best.per_restart)
            opt.zero_grad(set_to_none=True)
            (-ratios.clamp_min(1e-300).log().sum()).backward()
            opt.step()
            sched.step()
            if progress is not None:
                progress(restart + 1, step + 1, best.ratio)
        best.per_restart.append((kind, run_best))
    return best


def worst_ratio(model: nn.Module, **search) -> float:
    """Largest ratio found by worst_pair(model, **search) (a lower bound on the true Lipschitz constant)."""
    return worst_pair(model, **search).ratio
