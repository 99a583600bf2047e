"""A change's effect on the GPU step before a GPU sees it: a roofline of one training step of ours and of the
speedrun record #21 (the anchor, ../shared/anchors/speedrun_1gpu.py) on one H100, part by part.

    python bench/step_cost.py                          # the GPU preset: ours (train_gpt defaults) vs the anchor
    python bench/step_cost.py --window_pattern=L       # any train_gpt flag changes ours
    python bench/step_cost.py --config n_layer=2 --config seq_len=256 ...   # a Config field, on both sides

Each part is counted in FLOPs (matmuls: 2 m n k each) and bytes (what its kernels read and write in HBM), and
turned into milliseconds with the rates of one table (RATES): a GEMM takes max(FLOPs / rate, bytes / copy rate,
the floor of one launch), attention FLOPs / (bf16 rate x its efficiency), every other kernel bytes / copy rate,
and the parts add up (one stream, kernels one after another). The parts:
  attention          q k^T and p v over the key blocks each query block computes (FlexAttention's 128-token
                     blocks: a window of w blocks costs w key blocks, the diagonal one included; the long window's
                     mean over the schedule; S blocks half of it), forward + backward = 3.5 x forward (the
                     backward recomputes q k^T and forms dv, dp, dq, dk: 5 products for the forward's 2)
  block matmuls      q, k, v, o, fc, proj: forward + backward = 3 x forward (dX and dW)
  lm_head + loss     the lm_head's three products (FP8 when lm_head_fp8: 2x the rate, 1-byte operands) and the
                     logits-sized kernels of the loss (LOGIT_BYTES)
  Muon + constraint  Newton-Schulz in bf16 per stack (ours) or per matrix (the anchor), the constraint's float32
                     products (the soft cap: Gram, G^2, G^2 Q, X P + X), Muon's per-parameter kernels
  elementwise        the blocks' pointwise kernels (norms, rotary, activations, residuals; backward = 2x the
                     forward's traffic), embeddings, weight casts and gradient accumulation, Adam
Documents are not modelled (synthetic shards have almost none; on FineWeb they cut attention for both alike).
The last line is `ours/anchor: R`, the ratio of the modelled step times. Calibration: the anchor's modelled time
against its measured 765 ms/step on one H100 (bench/results/2026-11-22-h100-baseline/README.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# One H100 SXM (80 GB HBM3). Every rate of the model, and where it comes from:
RATES = dict(
    # dense bf16 GEMM, FLOP/s: about 80% of the 989 TFLOP/s spec, what cuBLAS reaches on the blocks' shapes (the
    # 2026-11-22 profile of ours: its nvjet GEMM kernels did the step's 2.9e14 block and lm_head FLOPs in ~395 ms,
    # 740 TFLOP/s, bench/results/2026-11-22-h100-baseline/profile_lip.txt)
    bf16=790e12,
    # FP8 GEMM (torch._scaled_mm, e4m3/e5m2): twice the bf16 rate, as the spec's 1979 / 989
    fp8=1580e12,
    # float32 products of the constraints (torch keeps TF32 off: cuBLAS runs true FP32, 67 TFLOP/s spec; the
    # Triton kernels use 3 TF32 products): the Triton symmetric Gram of the 50304 x 768 lm_head computed its
    # 29.7 GFLOP in 0.58 ms, 51 TFLOP/s (../shared/gpu-logs/2026-11-22-h100/constraints_cuda.txt)
    fp32=51e12,
    # HBM, B/s: a device-to-device copy reaches ~90% of the 3.35 TB/s spec
    copy=3.0e12,
    # FlexAttention's rate / the bf16 GEMM rate, fitted to the growth of ours' step time with its window at commit
    # d932973 (steps 0-30 of B.out: +185 ms/step for +1300 tokens of window, 12 layers; 0.490), see
    # fit_attention_efficiency() and its test
    attention_efficiency=0.49,
    # seconds, the least one GEMM launch takes: a 768 x 768 x 768 bf16 product (1.1 us of FLOPs) took 8.8 us
    # (constraints_cuda.txt, gram_bf16_cublas): too few output tiles to fill the 132 SMs
    gemm_floor=8.8e-6,
)

BLOCK = 128  # tokens per block of the attention masks (FlexAttention's tile; the anchor's BLOCK_SIZE)
ATTENTION_BWD = 2.5  # FlexAttention's backward / forward FLOPs: 5 products for 2
POINTWISE_BWD = 2.0  # a pointwise kernel's backward reads the saved input and the output's gradient and writes
# the input's (3 passes for the forward's 2), and each branch point of the residual stream adds two gradients
WEIGHT_BYTES_PER_MICRO = 24  # per matrix parameter and micro-batch: the fp32 -> bf16 cast of the forward (6 B),
# the bf16 gradient cast to fp32 (6 B) and added into .grad (12 B)
# per (token, vocab) element of the loss, bytes moved by its kernels besides the lm_head GEMMs' own operands
LOGIT_BYTES = {
    # the anchor (one compiled graph): softcap + cross-entropy read the bf16 logits twice (max, sum of exp) 4;
    # the backward reads them again and writes the bf16 gradient 4; the gradient's e5m2 cast 3 and its transpose
    # for dW 2
    "anchor": 13,
    # ours, FP8 (lm_head.py's chunks, compiled): the float32 logsumexp reads the bf16 logits twice 4; p / n in bf16
    # 4; the padded gradient's amax 2 and e5m2 cast 3; its transpose for dW 2
    "fp8": 15,
    # ours, bf16: the logsumexp 4 and p / n 4; the GEMMs read the bf16 gradient as it is
    "bf16": 8,
}
GRAD_W_BYTES_PER_CHUNK = 12  # ours: each chunk adds its dW (V x d, float32) into the float32 sum: read 2x, write 1x
MUON_BYTES_PER_PARAM = {
    # ours (muon.py): momentum lerp 12, stacks of grads, buffers and weights 24, Nesterov lerp 12, bf16 cast 6,
    # msign's normalisation 6, decay 8, the update's cast and add 18, the copy back into the params 8
    "stacked": 94,
    # the anchor: momentum lerp 12, Nesterov lerp 12, bf16 cast 6, normalisation 6, the update's add 10
    "per matrix": 46,
}
ADAM_BYTES_PER_ELEMENT = 7  # fused Adam: read p, g, m, v, write p, m, v, per byte of the parameter's dtype


@dataclasses.dataclass(frozen=True)
class Cost:
    """FLOPs (matmuls), bytes (HBM traffic) and milliseconds of one part of a step (or of a sum of them)."""
    flops: float = 0.0
    bytes: float = 0.0
    ms: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flops + other.flops, self.bytes + other.bytes, self.ms + other.ms)

    def times(self, k: float) -> "Cost":
        return Cost(self.flops * k, self.bytes * k, self.ms * k)


def total(costs) -> Cost:
    return sum(costs, Cost())


def gemm(m: int, n: int, k: int, batch: int = 1, in_bytes: float = 2, out_bytes: float = 2, rate: str = "bf16",
         computed: float = 1.0) -> Cost:
    """One (batched) product (batch, m, k) @ (batch, k, n): 2 m n k FLOPs each, its operands read and its result
    written once; time max(FLOPs / rate, bytes / copy rate, one launch's floor). computed: the share of the
    FLOPs a kernel computes (1/2 for a symmetric product of which the Triton kernel forms one triangle)."""
    flops = 2.0 * m * n * k * batch * computed
    nbytes = batch * ((m * k + k * n) * in_bytes + m * n * out_bytes)
    return Cost(flops, nbytes, 1000 * max(flops / RATES[rate], nbytes / RATES["copy"], RATES["gemm_floor"]))


def traffic(nbytes: float) -> Cost:
    """Memory-bound kernels moving nbytes."""
    return Cost(0.0, nbytes, 1000 * nbytes / RATES["copy"])


# -----------------------------------------------------------------------------
# What is modelled: one Config per script


@dataclasses.dataclass(frozen=True)
class Config:
    """One training step of one script on one GPU. Widths: inner = n_head x head_dim, hidden = mlp_ratio x d_model."""
    name: str
    arch: str               # "lipschitz" / "speedrun" (ours' two archs) or "anchor" (the record's model)
    n_layer: int
    d_model: int
    n_head: int
    head_dim: int
    mlp_ratio: int
    vocab: int              # lm_head rows (the padded vocabulary)
    seq_len: int            # tokens per sequence
    micro_batch: int        # sequences per forward pass
    micro_batches: int      # forward passes per optimizer step (gradient accumulation on one GPU)
    steps: int              # the schedule's length (the window grows over it)
    window_min: int         # long window at the first step, tokens (0: full causal attention)
    window_max: int         # long window at the last step, tokens
    pattern: str            # per block, cycled: L the long window, S half of it (in blocks, at least one)
    attn_skip: tuple = ()   # blocks without attention
    lm_head_fp8: bool = False
    ns_steps: int = 5       # Newton-Schulz steps of Muon's orthogonalization
    muon_lm_head: bool = True   # the lm_head is a Muon matrix (ours); else Adam's (the anchor)
    muon_stacked: bool = True   # one batched call per list of equal-shape matrices (ours); else per matrix
    constraint: str = "none"    # applied by Muon after each update (ours: constraints.METHODS)
    value_embeds: int = 0       # the anchor's value-embedding tables
    embed_bytes: int = 4        # bytes per entry of the embedding tables (the anchor keeps them in bf16)

    @property
    def inner(self) -> int:
        return self.n_head * self.head_dim

    @property
    def hidden(self) -> int:
        return self.mlp_ratio * self.d_model

    @property
    def tokens(self) -> int:
        """Tokens per optimizer step."""
        return self.seq_len * self.micro_batch * self.micro_batches

    def attention_layers(self) -> list[int]:
        return [i for i in range(self.n_layer) if i not in self.attn_skip]


def ours_config(hp) -> Config:
    """Ours from a train_gpt.Hyperparameters, on one GPU doing every rank's share."""
    import train_gpt as tg
    from constraints import FORK_NS_COEFFS, POLAR_EXPRESS_COEFFS
    if hp.optimizer != "muon":
        raise ValueError(f"--optimizer={hp.optimizer}: step_cost models Muon (the GPU preset's optimizer)")
    if hp.constraint not in CONSTRAINT_PRODUCTS:
        raise ValueError(f"--constraint={hp.constraint}: step_cost models {', '.join(CONSTRAINT_PRODUCTS)}")
    ns = {"fork": len(FORK_NS_COEFFS), "polar_express": len(POLAR_EXPRESS_COEFFS)}[hp.orthogonalizer]
    return Config(
        name="ours", arch=hp.arch, n_layer=hp.n_layer, d_model=hp.d_model, n_head=hp.n_head, head_dim=hp.head_dim,
        mlp_ratio=hp.mlp_ratio, vocab=tg.padded_vocab(hp.vocab_size), seq_len=hp.seq_len,
        micro_batch=hp.micro_batch_size, micro_batches=hp.batch_size // hp.micro_batch_size,
        steps=hp.num_iterations, window_min=hp.window_min, window_max=hp.window_max, pattern=hp.window_pattern,
        attn_skip=tuple(sorted(tg.skipped_attention_layers(hp))), lm_head_fp8=bool(hp.lm_head_fp8), ns_steps=ns,
        constraint=hp.constraint)


def anchor_config() -> Config:
    """The speedrun record #21 as ../shared/anchors/speedrun_1gpu.py runs it on one GPU: GPT(vocab 50257 padded
    to a multiple of 128, 12 layers, 6 heads of 128, d 768), 8 micro-batches of one 48K-token sequence, 1770
    steps with the window growing from 1 to 14 blocks, masks long/short in the pattern of its block_masks list,
    no attention in block 7, three value-embedding tables (bf16 embeddings), U-net skips, FP8 lm_head under
    Adam, Muon with 5 Newton-Schulz steps on each hidden matrix, no constraint."""
    return Config(
        name="anchor", arch="anchor", n_layer=12, d_model=768, n_head=6, head_dim=128, mlp_ratio=4,
        vocab=128 * math.ceil(50257 / 128), seq_len=48 * 1024, micro_batch=1, micro_batches=8, steps=1770,
        window_min=BLOCK, window_max=1792, pattern="LSSSLSSLSSSL", attn_skip=(7,), lm_head_fp8=True, ns_steps=5,
        muon_lm_head=False, muon_stacked=False, constraint="none", value_embeds=3, embed_bytes=2)


# -----------------------------------------------------------------------------
# Attention


def long_window(c: Config, step: int) -> int:
    """The long window (tokens) at `step`: ours through train_gpt.window_size (its one definition), the anchor's
    get_window_size_blocks: next_multiple_of_n(1728 x, n=128) blocks of tokens, x = step / steps (1728 = its
    1792 less half a block, so the last step reaches 1792)."""
    if c.arch == "anchor":
        x = step / c.steps
        return max(BLOCK, BLOCK * math.ceil((c.window_max - BLOCK // 2) * x / BLOCK))
    import train_gpt as tg
    return tg.window_size(types.SimpleNamespace(window_min=c.window_min, window_max=c.window_max,
                                                num_iterations=c.steps), step)


def key_blocks(seq_len: int, window_blocks: int | None) -> int:
    """Key blocks computed over the query blocks of one sequence: query block i computes min(i + 1, w) of them
    (the diagonal block and the w - 1 before it; w = None: causal, all i + 1)."""
    nq = -(-seq_len // BLOCK)
    w = nq if window_blocks is None else max(1, min(window_blocks, nq))
    return w * (w + 1) // 2 + (nq - w) * w


def layer_window_blocks(c: Config, layer: int, window: int) -> int | None:
    """Blocks of the window of `layer` when the long window is `window` tokens (None: full causal)."""
    if window <= 0 or window >= c.seq_len:
        return None
    long_blocks = window // BLOCK
    return long_blocks if c.pattern[layer % len(c.pattern)] == "L" else max(1, long_blocks // 2)


def mean_key_blocks(c: Config, layer: int) -> float:
    """key_blocks of `layer` per sequence, averaged over the steps of the schedule."""
    counts = {}
    for step in range(c.steps):
        w = long_window(c, step)
        counts[w] = counts.get(w, 0) + 1
    return sum(n * key_blocks(c.seq_len, layer_window_blocks(c, layer, w)) for w, n in counts.items()) / c.steps


def attention(c: Config) -> Cost:
    """q k^T and p v on every (query block, key block) pair computed, forward + backward; bytes: q, k, v and the
    output read or written once forward, and q, k, v, o, do read and dq, dk, dv written backward (bf16)."""
    sequences = c.micro_batch * c.micro_batches
    pairs = sequences * sum(mean_key_blocks(c, i) for i in c.attention_layers())
    flops = pairs * 4 * BLOCK * BLOCK * c.inner * (1 + ATTENTION_BWD)
    nbytes = sequences * len(c.attention_layers()) * c.seq_len * c.inner * 2 * (4 + 8)
    rate = RATES["bf16"] * RATES["attention_efficiency"]
    return Cost(flops, nbytes, 1000 * max(flops / rate, nbytes / RATES["copy"]))


# -----------------------------------------------------------------------------
# Matmuls of the blocks and of the lm_head


def linear(tokens: int, d_in: int, d_out: int, in_bytes: float = 2, rate: str = "bf16") -> Cost:
    """A linear layer over `tokens` rows, forward (X W^T) and backward (dX = dY W, dW = dY^T X): 3 GEMMs."""
    return (gemm(tokens, d_out, d_in, in_bytes=in_bytes, rate=rate) + gemm(tokens, d_in, d_out, in_bytes=in_bytes, rate=rate)
            + gemm(d_out, d_in, tokens, in_bytes=in_bytes, rate=rate))


def block_matmuls(c: Config) -> Cost:
    """q, k, v (one d -> 3 inner product), o, fc, proj of every block, forward and backward, per micro-batch."""
    T = c.seq_len * c.micro_batch
    per_micro = Cost()
    for i in range(c.n_layer):
        if i not in c.attn_skip:
            per_micro += linear(T, c.d_model, 3 * c.inner) + linear(T, c.inner, c.d_model)
        per_micro += linear(T, c.d_model, c.hidden) + linear(T, c.hidden, c.d_model)
    return per_micro.times(c.micro_batches)


def loss_chunks(c: Config) -> int:
    """Chunks of ours' loss per micro-batch (lm_head.loss_chunk_tokens: float32 logits of ~1 GiB each)."""
    from lm_head import loss_chunk_tokens
    T = c.seq_len * c.micro_batch
    return -(-T // loss_chunk_tokens(T, c.vocab))


def lm_head_and_loss(c: Config) -> Cost:
    """The lm_head's forward and backward products (FP8: 1-byte operands at the FP8 rate) and the loss's kernels
    over the (token, vocab) logits (LOGIT_BYTES); ours adds each chunk's dW into a float32 sum."""
    T = c.seq_len * c.micro_batch
    fp8 = c.lm_head_fp8
    rate, in_bytes = ("fp8", 1) if fp8 else ("bf16", 2)
    products = (gemm(T, c.vocab, c.d_model, in_bytes=in_bytes, rate=rate)            # logits
                + gemm(T, c.d_model, c.vocab, in_bytes=in_bytes, rate=rate)          # dh
                + gemm(c.vocab, c.d_model, T, in_bytes=in_bytes, out_bytes=4, rate=rate))  # dW, float32
    kind = "anchor" if c.arch == "anchor" else ("fp8" if fp8 else "bf16")
    logits = traffic(LOGIT_BYTES[kind] * T * c.vocab)
    grad_w = Cost() if c.arch == "anchor" else traffic(GRAD_W_BYTES_PER_CHUNK * loss_chunks(c) * c.vocab * c.d_model)
    return (products + logits + grad_w).times(c.micro_batches)


# -----------------------------------------------------------------------------
# Muon and the constraint


def muon_lists(c: Config) -> list[tuple[int, int, int]]:
    """(count, rows, cols) of each batch of matrices Muon orthogonalizes in one call: ours stacks each list of
    equal-shape matrices; the anchor calls once per param (its qkv_w is one (3, inner, d) param: a batch of 3)."""
    attn = len(c.attention_layers())
    if not c.muon_stacked:
        lists = [(3, c.inner, c.d_model)] * attn + [(1, c.d_model, c.inner)] * attn
        lists += [(1, c.hidden, c.d_model)] * c.n_layer + [(1, c.d_model, c.hidden)] * c.n_layer
    elif c.inner == c.d_model:  # q, k, v, o share one shape: one stack
        lists = [(4 * attn, c.inner, c.d_model)]
        lists += [(c.n_layer, c.hidden, c.d_model), (c.n_layer, c.d_model, c.hidden)]
    else:
        lists = [(3 * attn, c.inner, c.d_model), (attn, c.d_model, c.inner)]
        lists += [(c.n_layer, c.hidden, c.d_model), (c.n_layer, c.d_model, c.hidden)]
    if c.muon_lm_head:
        lists.append((1, c.vocab, c.d_model))
    return [x for x in lists if x[0] > 0]


def newton_schulz(count: int, m: int, n: int, steps: int) -> Cost:
    """msign of `count` matrices m x n in bf16 (one batched call): per step A = Y Y^T, b A + c A^2, a Y + B Y on the
    short side r = min(m, n), long side K."""
    r, K = min(m, n), max(m, n)
    step = gemm(r, r, K, count) + gemm(r, r, r, count) + gemm(r, K, r, count)
    return step.times(steps)


def soft_cap_products(count: int, m: int, n: int) -> Cost:
    """constraints._soft_cap on a stack, float32: the Gram G = X^T X, G^2, P = G^2 Q (symmetric: one triangle
    of blocks computed), and X P + X."""
    r, K = min(m, n), max(m, n)
    half = dict(in_bytes=4, out_bytes=4, rate="fp32", computed=0.5)
    return (gemm(r, r, K, count, **half) + gemm(r, r, r, count, **half) + gemm(r, r, r, count, **half)
            + gemm(K, r, r, count, in_bytes=4, out_bytes=4, rate="fp32"))


CONSTRAINT_PRODUCTS = {  # the constraints step_cost models: products of one stack (count, m, n)
    "none": lambda count, m, n: Cost(),
    "weight_decay": lambda count, m, n: traffic(8 * count * m * n),  # W <- (1 - lr wd) W in float32
    "soft_cap": soft_cap_products,
}


def muon_and_constraint(c: Config) -> Cost:
    """Muon's orthogonalization and the constraint on every list (one call per list when stacked, else one per
    matrix), and its per-parameter kernels."""
    per_param = MUON_BYTES_PER_PARAM["stacked" if c.muon_stacked else "per matrix"]
    return total(newton_schulz(count, m, n, c.ns_steps) + CONSTRAINT_PRODUCTS[c.constraint](count, m, n)
                 + traffic(per_param * count * m * n) for count, m, n in muon_lists(c))


# -----------------------------------------------------------------------------
# Elementwise


def block_pointwise_bytes(c: Config, layer: int) -> int:
    """Forward bytes per token of one block's pointwise kernels (GEMMs and attention bound each fused group).
    anchor (bf16 stream): x = l0 x + l1 x0 and its norm (read x, x0; write x, norm x) 8d, + the U-net skip's read
    2d in the second half; QK norm, rotary and v's mix with a value embedding 12 inner (+ 2d where a table
    feeds it); residual add and norm 8d; relu^2 4 hidden; residual add 6d.
    lipschitz (float32 stream: the embedding is float32 and each convex residual mixes it with a bf16 branch):
    rotary of q, k 8 inner; attention output / 3 4 inner; convex residual writing the stream and its bf16 copy
    (read 4d + 2d, write 4d + 2d) 12d; gelu / 1.1289 4 hidden; convex residual 12d.
    speedrun (ours' A/B arch, float32 stream): norm 6d (read 4d, write 2d), QK norm and rotary 8 inner, residual
    add and norm 12d, relu^2 4 hidden, residual add 10d."""
    d, inner, hidden = c.d_model, c.inner, c.hidden
    attn = layer not in c.attn_skip
    if c.arch == "anchor":
        ve = c.value_embeds and (layer < c.value_embeds or layer >= c.n_layer - c.value_embeds)
        skip = 2 * d if layer >= c.n_layer // 2 else 0
        return 8 * d + skip + (12 * inner + (2 * d if ve else 0) + 8 * d if attn else 0) + 4 * hidden + 6 * d
    if c.arch == "lipschitz":
        return (8 * inner + 4 * inner + 12 * d if attn else 0) + 4 * hidden + 12 * d
    return (6 * d + 8 * inner + 12 * d if attn else 6 * d) + 4 * hidden + 10 * d


def elementwise(c: Config) -> Cost:
    """The blocks' pointwise kernels forward and backward, the embedding tables (lookup; backward: zero-filled
    gradient, scatter-add, accumulation), every matrix's casts and gradient accumulation per micro-batch, and
    Adam (ours: the embedding, plus its row cap in the lipschitz arch; the anchor: embeddings and lm_head)."""
    T = c.seq_len * c.micro_batch
    blocks = sum(block_pointwise_bytes(c, i) for i in range(c.n_layer)) * T * (1 + POINTWISE_BWD)
    tables, e, table = 1 + c.value_embeds, c.embed_bytes, c.vocab * c.d_model
    embeddings = tables * (2 * T * c.d_model * e + table * e + 3 * T * c.d_model * e + 3 * table * e)
    matrices = sum(k * m * n for k, m, n in muon_lists(c)) + (0 if c.muon_lm_head else table)
    per_micro = traffic(blocks + embeddings + WEIGHT_BYTES_PER_MICRO * matrices)
    adam = ADAM_BYTES_PER_ELEMENT * tables * table * e + (0 if c.muon_lm_head else ADAM_BYTES_PER_ELEMENT * 4 * table)
    row_cap = 12 * table if c.arch == "lipschitz" else 0
    return per_micro.times(c.micro_batches) + traffic(adam + row_cap)


PARTS = {
    "attention": attention,
    "block matmuls": block_matmuls,
    "lm_head + loss": lm_head_and_loss,
    "Muon + constraint": muon_and_constraint,
    "elementwise": elementwise,
}


def step_cost(c: Config) -> dict[str, Cost]:
    return {name: part(c) for name, part in PARTS.items()}


# -----------------------------------------------------------------------------
# Calibration of the attention efficiency


# ours at commit d932973, one H100 (bench/results/2026-11-22-h100-baseline/B.out): cumulative train_time (ms) at
# steps 0, 5, ..., 30 of a 30-step run; 12 layers, all long windows, token-exact (a window of w tokens computed
# w / 128 + 1 key blocks per query block), growing 128 -> 1792 over the 30 steps
D932973_TRAIN_MS = (0, 6914, 14071, 21375, 28830, 36503, 44342)


def fit_attention_efficiency() -> float:
    """RATES["attention_efficiency"] from d932973's run: the least-squares slope of its per-step time against
    its attention FLOPs per step over the six 5-step intervals, as a share of the bf16 rate. Only attention
    changes with the window, so the slope is attention's marginal cost."""
    c = dataclasses.replace(anchor_config(), name="d932973", arch="lipschitz", pattern="L", attn_skip=(),
                            steps=30, window_min=BLOCK, window_max=1792)
    flops_per_step = []
    for start in range(0, 30, 5):
        pairs = [key_blocks(c.seq_len, long_window(c, s) // BLOCK + 1) for s in range(start, start + 5)]
        flops_per_step.append(c.micro_batches * c.n_layer * sum(pairs) / 5 * 4 * BLOCK * BLOCK * c.inner
                              * (1 + ATTENTION_BWD))
    ms = [(b - a) / 5 for a, b in zip(D932973_TRAIN_MS, D932973_TRAIN_MS[1:])]
    fx, fy = sum(flops_per_step) / 6, sum(ms) / 6
    slope = (sum((x - fx) * (y - fy) for x, y in zip(flops_per_step, ms))
             / sum((x - fx) ** 2 for x in flops_per_step))  # ms per FLOP
    return 1000 / slope / RATES["bf16"]


# -----------------------------------------------------------------------------
# The table


ANCHOR_MEASURED_MS = 765.0  # the anchor on one H100, 30 steps of 8 x 48K tokens (../shared/anchors/README.md)


def apply_overrides(c: Config, overrides: list[str]) -> Config:
    """Config with `field=value` overrides (ints, 0/1 for flags, comma lists for attn_skip)."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    changes = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in fields or key == "name":
            raise ValueError(f"--config {item!r}: use FIELD=VALUE with FIELD one of "
                             f"{', '.join(k for k in fields if k != 'name')}")
        current = getattr(c, key)
        if isinstance(current, bool):
            changes[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(current, int):
            changes[key] = int(value)
        elif isinstance(current, tuple):
            changes[key] = tuple(int(x) for x in value.split(",") if x.strip())
        else:
            changes[key] = value
    return dataclasses.replace(c, **changes)


def describe(c: Config) -> str:
    windows = [long_window(c, s) for s in range(c.steps)]
    return (f"{c.name}: {c.arch}, {c.n_layer} layers, d {c.d_model}, {c.n_head} heads x {c.head_dim}, mlp x{c.mlp_ratio}, "
            f"vocab {c.vocab}, {c.micro_batches} x {c.micro_batch} x {c.seq_len} tokens, window {windows[0]} -> "
            f"{windows[-1]} (mean {sum(windows) / len(windows):.0f}, pattern {c.pattern}), no attention in "
            f"{','.join(map(str, c.attn_skip)) or 'no block'}, lm_head {'fp8' if c.lm_head_fp8 else 'bf16'} "
            f"({'Muon' if c.muon_lm_head else 'Adam'}), Muon {c.ns_steps} steps "
            f"{'stacked' if c.muon_stacked else 'per matrix'}, constraint {c.constraint}")


def report(ours: Config, anchor: Config) -> tuple[str, float]:
    """The table, and R = ours / anchor in modelled ms."""
    a, b = step_cost(ours), step_cost(anchor)
    ta, tb = total(a.values()), total(b.values())
    r = ta.ms / tb.ms
    lines = [f"rates (one H100): bf16 {RATES['bf16'] / 1e12:.0f} TFLOP/s, fp8 {RATES['fp8'] / 1e12:.0f}, fp32 "
             f"{RATES['fp32'] / 1e12:.0f}, copy {RATES['copy'] / 1e12:.1f} TB/s, attention at "
             f"{RATES['attention_efficiency']:.2f} of bf16, GEMM floor {RATES['gemm_floor'] * 1e6:.1f} us",
             describe(ours), describe(anchor), "",
             f"{'part':<18} {'ours GFLOP':>11} {'ours GB':>8} {'ours ms':>8} {'anchor GFLOP':>13} {'anchor GB':>10} "
             f"{'anchor ms':>10} {'ours/anchor':>12}"]
    for name in PARTS:
        x, y = a[name], b[name]
        ratio = f"{x.ms / y.ms:12.2f}" if y.ms else f"{'-':>12}"
        lines.append(f"{name:<18} {x.flops / 1e9:11.0f} {x.bytes / 1e9:8.1f} {x.ms:8.1f} {y.flops / 1e9:13.0f} "
                     f"{y.bytes / 1e9:10.1f} {y.ms:10.1f} {ratio}")
    lines.append(f"{'total':<18} {ta.flops / 1e9:11.0f} {ta.bytes / 1e9:8.1f} {ta.ms:8.1f} {tb.flops / 1e9:13.0f} "
                 f"{tb.bytes / 1e9:10.1f} {tb.ms:10.1f} {r:12.2f}")
    if anchor == anchor_config():
        lines.append(f"calibration: the anchor modelled at {tb.ms:.0f} ms/step, measured {ANCHOR_MEASURED_MS:.0f} ms "
                     f"on one H100 (modelled / measured {tb.ms / ANCHOR_MEASURED_MS:.2f})")
    more = sorted(((a[n].ms - b[n].ms, n) for n in PARTS if a[n].ms > b[n].ms), reverse=True)
    lines.append("ours costs more in: " + (", ".join(f"{n} (+{d:.1f} ms)" for d, n in more) or "no part"))
    lines.append(f"ours/anchor: {r:.3f}")
    return "\n".join(lines), r


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", action="append", default=[], metavar="FIELD=VALUE",
                    help="a Config field for both ours and the anchor (repeat it), e.g. n_layer=2")
    args, flags = ap.parse_known_args(argv)
    import train_gpt as tg
    try:
        ours = apply_overrides(ours_config(tg.Hyperparameters.from_args(flags)), args.config)
        anchor = apply_overrides(anchor_config(), args.config)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text, _ = report(ours, anchor)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
