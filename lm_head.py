"""The lm_head and the cross-entropy, a chunk of tokens at a time, with the gradients formed in the forward
pass: at GPT-2's vocabulary a micro-batch's float32 logits, softmax and gradient would take 3 x 48K x 50304 x
4 B = 28 GiB; one chunk takes about LOSS_CHUNK_BYTES. On CUDA the training matmuls may run in FP8 (e4m3 for
activations and weights, e5m2 for the logits' gradient) as the speedrun's lm_head does; validation, sampling and
the certificate always use head_logits in the autocast dtype."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOSS_CHUNK_BYTES = 1 << 30  # float32 logits of one chunk (about 5,300 tokens at GPT-2's padded vocab)
E4M3_MAX, E5M2_MAX = 448.0, 57344.0  # largest finite float8_e4m3fn and float8_e5m2
FP8_ALIGN = 16  # _scaled_mm wants every dimension a multiple of 16


def padded_vocab(vocab_size: int) -> int:
    """The lm_head's rows: the vocabulary rounded up to a multiple of 64 (aligned matmuls, FP8 included)."""
    return 64 * math.ceil(vocab_size / 64)


def head_logits(h: torch.Tensor, weight: torch.Tensor, scale: float, softcap: float) -> torch.Tensor:
    """h (..., d) -> logits (..., padded vocab) in float32 (float64 for a float64 h): scale * h W^T, or, with
    softcap > 0 (speedrun arch), softcap * tanh(h W^T / softcap). The matmul runs in the autocast dtype."""
    z = F.linear(h, weight.to(h.dtype))
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    return softcap * torch.tanh(z / softcap) if softcap > 0 else scale * z


def loss_chunk_tokens(n: int, padded_vocab_size: int, align: int = 1) -> int:
    """Tokens per chunk: n split into the fewest equal chunks (a multiple of `align` each, the last one
    shorter) whose float32 logits take at most about LOSS_CHUNK_BYTES."""
    chunks = max(1, math.ceil(n * padded_vocab_size * 4 / LOSS_CHUNK_BYTES))
    return align * math.ceil(math.ceil(n / chunks) / align)


def compute_dtype(h: torch.Tensor) -> torch.dtype:
    """The dtype the lm_head's matmuls run in: the autocast dtype when autocast is on, else h's."""
    if h.dtype in (torch.float32, torch.bfloat16, torch.float16) and torch.is_autocast_enabled(h.device.type):
        return torch.get_autocast_dtype(h.device.type)
    return h.dtype


def to_fp8(x: torch.Tensor, dtype: torch.dtype, fp8_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x / s as `dtype`, s) with s = max|x| / fp8_max (1 for x = 0): the per-tensor scale that puts the largest
    entry at the format's largest finite value, so nothing overflows and the range is used in full."""
    s = (x.abs().amax().float() / fp8_max).clamp_min(torch.finfo(torch.float32).tiny)
    return (x / s.to(x.dtype)).to(dtype), s


def fp8_mm(a8: torch.Tensor, sa: torch.Tensor, b8: torch.Tensor, sb: torch.Tensor, out_dtype) -> torch.Tensor:
    """(a8 sa) @ (b8 sb) for fp8 a8 (M, K) row-major and b8 (K, N) column-major."""
    return torch._scaled_mm(a8, b8, scale_a=sa, scale_b=sb, out_dtype=out_dtype)


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of head_logits(h, W)[:, :vocab_size] against targets, h (n, d), targets (n,) in
    [0, vocab_size), in chunks of `chunk` tokens. h and W are cast to the compute dtype once; each chunk forms
    its float32 logits over the padded vocabulary (padding masked to -inf), softmax p and d loss / d logits =
    f (p - onehot) / n (f the logit map's slope), in place, so no (n, vocab) tensor outlives a chunk. The
    one-hot is taken off in float32 before the cast (an index per row, no vocab-wide pass): p_t - 1 is small
    for a confident prediction, and rounding p_t first would swamp it. W's float32 gradient is accumulated in
    place. With fp8, the three matmuls run in FP8 (to_fp8 scales). Value and gradients are F.cross_entropy's
    on the full logits up to the rounding of the compute dtype."""

    @staticmethod
    def forward(ctx, h, weight, targets, vocab_size: int, scale: float, softcap: float, chunk: int,
                fp8: bool = False):
        n, cd, V = h.shape[0], compute_dtype(h), vocab_size
        hc, wc = h.to(cd), weight.to(cd)
        if fp8:
            h8, sh = to_fp8(hc, torch.float8_e4m3fn, E4M3_MAX)
            w8, sw = to_fp8(wc, torch.float8_e4m3fn, E4M3_MAX)
            w8_cols = w8.t().contiguous().t()  # (padded vocab, d) column-major: the right operand of g @ W
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros_like(weight, dtype=torch.promote_types(weight.dtype, torch.float32))
        loss_sum = torch.zeros((), dtype=torch.promote_types(h.dtype, torch.float32), device=h.device)
        for start in range(0, n, chunk):
            rows, t = slice(start, start + chunk), targets[start:start + chunk]
            z = (fp8_mm(h8[rows], sh, w8.t(), sw, cd) if fp8 else hc[rows] @ wc.t()).to(loss_sum.dtype)
            slope = scale / n  # d logit / d (h W^T), over n for the mean
            if softcap > 0:
                z = softcap * torch.tanh(z / softcap)
                slope = (1 - (z / softcap).square()) / n
            else:
                z.mul_(scale)
            z[:, V:] = -math.inf  # padding: never a prediction; exp(-inf) = 0 gives it no gradient
            lse = torch.logsumexp(z, dim=-1, keepdim=True)
            z_t = z.gather(1, t[:, None])
            loss_sum += (lse - z_t).sum()
            p = z.sub_(lse).exp_()
            p[torch.arange(len(t), device=t.device), t] -= 1  # minus the one-hot, in float32 at one entry per row
            g = p.mul_(slope).to(cd)  # d loss / d (h W^T) = f (p - onehot) / n
            if fp8:
                g8, sg = to_fp8(g, torch.float8_e5m2, E5M2_MAX)
                grad_h[rows] = fp8_mm(g8, sg, w8_cols, sw, cd).to(h.dtype)
                grad_w += fp8_mm(g8.t().contiguous(), sg, h8[rows].t().contiguous().t(), sh, grad_w.dtype)
            else:
                grad_h[rows] = (g @ wc).to(h.dtype)
                grad_w += g.t() @ hc[rows]
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return loss_sum / n

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_loss.to(grad_h.dtype), grad_w * grad_loss.to(grad_w.dtype),
                None, None, None, None, None, None)


def chunked_loss_sums(h, weight, targets, vocab_size: int, scale: float, softcap: float, chunk: int):
    """Without gradients: (summed cross-entropy, number of correct argmax predictions) of
    head_logits(h, W)[:, :vocab_size] against targets, h (n, d), a chunk of tokens at a time."""
    loss_sum = torch.zeros((), dtype=torch.promote_types(h.dtype, torch.float32), device=h.device)
    correct = torch.zeros((), dtype=torch.long, device=h.device)
    for start in range(0, h.shape[0], chunk):
        tc = targets[start:start + chunk]
        logits = head_logits(h[start:start + chunk], weight, scale, softcap)[:, :vocab_size]
        loss_sum = loss_sum + F.cross_entropy(logits, tc, reduction="sum")
        correct = correct + (logits.argmax(-1) == tc).sum()
    return loss_sum, correct
