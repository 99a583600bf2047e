"""The Lipschitz speedrun: GPT-2-small on FineWeb (8xH100) or a small Shakespeare model (CPU), with every
weight matrix spectrally capped after every Muon step, so the network has a certified Lipschitz bound
throughout training. Read top to bottom: hyperparameters, model, data, optimizers, logging, training loop.

    torchrun --standalone --nproc_per_node=8 train_gpt.py --preset=speedrun
    python train_gpt.py --preset=shakespeare --w_max=2 --seed=1
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import glob
import inspect
import json
import math
import os
import pickle
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.abspath(__file__))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import constraints  # noqa: E402
import lipschitz  # noqa: E402
from data.files import atomic_write  # noqa: E402
from data.shakespeare import GPT2_VOCAB  # noqa: E402
from data.shards import read_shard  # noqa: E402
from muon import ORTH_MAX_SINGULAR_VALUE, Muon, default_orth_dtype  # noqa: E402
from run_control import SEPARATOR  # noqa: E402

# -----------------------------------------------------------------------------
# Hyperparameters. The defaults below are the GPU run (GPT-2 small on FineWeb10B, 8xH100) that `bash run.sh`
# launches on a GPU node: edit them here. `--preset=shakespeare` (the CPU run) and `--preset=smoke` change the
# fields listed in PRESETS and say so at start-up. Any field can be set on the command line as --field=value.


@dataclass
class Hyperparameters:
    preset: str = "speedrun"  # "speedrun" (these defaults), or a CPU preset of PRESETS below
    # data
    train_files: str = "data/fineweb10B/fineweb_train_*.bin"  # glob of .bin training shards
    val_files: str = "data/fineweb10B/fineweb_val_*.bin"  # glob of .bin validation shards
    vocab_size: int = 50257  # tokens in use (the model pads to a multiple of 64); 0 = read meta.json beside the shards
    bos_token: int = 50256  # token that starts each document (attention stays inside it); -1 = one long document
    sample: str = "sequential"  # "sequential" passes through the shards; "random" windows, seeded per step
    val_tokens: int = 10485760  # tokens of the val split scored at each validation (whole sequences)
    # model
    arch: str = "lipschitz"  # "lipschitz" (norm-free, capped) or "speedrun" (RMSNorm, QK norm, softcap)
    n_layer: int = 12  # transformer blocks
    n_head: int = 6  # attention heads per block
    head_dim: int = 128  # width of each head
    d_model: int = 768  # width of the residual stream
    mlp_ratio: int = 4  # MLP hidden width / d_model
    attn_logit_scale: float = 24.0  # s in softmax(s q k^T / d_head) (lipschitz arch)
    final_logit_scale: float = 1.0  # multiplies the logits (and the Lipschitz bound)
    # batch: each step sees batch_size sequences of seq_len tokens, micro_batch_size per rank per forward
    seq_len: int = 48 * 1024  # tokens per sequence
    batch_size: int = 8  # sequences per optimizer step, over all ranks
    micro_batch_size: int = 1  # sequences per forward pass per rank (gradient accumulation makes up the rest)
    window_min: int = 128  # sliding attention window at step 0, in tokens (0 = full causal attention)
    window_max: int = 1792  # sliding attention window at the last step (grows linearly in steps of 128)
    window_pattern: str = "LSSSLSSLSSSL"  # per block: L attends over the window, S over half of it (cycled)
    attn_skip_layers: str = ""  # comma-separated blocks with no attention (the speedrun anchor skips "7")
    # optimization
    num_iterations: int = 1770  # optimizer steps
    cooldown_frac: float = 0.4  # the lr decays linearly to lr_final_frac x over this last fraction of the steps
    lr_final_frac: float = 0.1  # lr multiplier at the last step (the paper's "linear": --cooldown_frac=1 --lr_final_frac=0)
    muon_lr: float = 0.05  # Muon lr of the hidden matrices
    lm_head_lr: float = 0.005  # Muon lr of the lm_head
    embed_lr: float = 0.1  # Adam lr of the embedding
    muon_momentum_warmup_steps: int = 300  # Muon momentum rises 0.85 -> 0.95 over these steps
    weight_decay: float = 0.0  # decoupled weight decay of the matrices (the decay-type constraints use it)
    optimizer: str = "muon"  # "muon" for matrices (Adam for the embedding), or "adamw" for everything
    adamw_lr: float = 0.003  # lr of every param under --optimizer=adamw
    zero_init_out: int = 1  # 1: attention/MLP out projections and lm_head start at zero; 0: semi-orthogonal
    # Lipschitz constraints
    constraint: str = "soft_cap"  # method applied to every matrix after each step (constraints.METHODS)
    w_max: float = 8.0  # RMS->RMS norm cap of every hidden matrix
    lm_head_w_max: float = 8.0  # RMS->RMS norm cap of the lm_head
    emb_w_max: float = 1.0  # RMS cap of each embedding row
    lm_head_fp8: int = 1  # 1: the training forward's lm_head matmul in FP8 on CUDA (validation stays exact)
    orthogonalizer: str = "fork"  # Muon's polar factor: "fork" (5 Newton-Schulz steps) or "polar_express"
    # evaluation, logging, checkpoints
    val_every: int = 125  # validate (loss, accuracy, bound, norms, activations) every this many steps
    val_at_start: int = 1  # 1: validate at step 0 too; 0: first validation at step val_every (timing runs)
    log_every: int = 1  # log the train loss every this many steps
    checkpoint_every: int = 0  # also checkpoint every this many steps (0 = off)
    checkpoint_minutes: float = 10.0  # also checkpoint when this many minutes passed since the last (0 = off)
    checkpoint_dir: str = "checkpoints"  # checkpoints go to <checkpoint_dir>/<run_id>.pt
    resume: str = ""  # a checkpoint to continue (with the same flags)
    log_dir: str = "logs"  # logs go to <log_dir>/<run_id>.txt
    run_id: str = ""  # name of the log and checkpoint ("" = date-time + random suffix)
    seed: int = 0  # seeds the init (and the batches under sample=random)
    # execution
    dtype: str = "auto"  # autocast: "auto" (bf16 on CUDA and on CPUs with native bf16, else fp32), "bf16", "fp32"
    compile: str = "auto"  # torch.compile the model with its loss: "auto" (CUDA; CPU runs of >= 500 steps with a C++ compiler), "yes", "no"
    warmup_steps: int = -1  # untimed kernel warm-up steps, state restored after; -1 = 10 on CUDA, 1 compiling on a CPU, else 0
    max_steps_this_run: int = 0  # stop (with a checkpoint) after this many steps; 0 = run to the end
    memory_check: int = 1  # 1: refuse, before step 0, a run whose estimated step memory exceeds the free memory

    def __post_init__(self):
        validate(self)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "Hyperparameters":
        if name not in PRESETS:
            raise ValueError(f"--preset={name}: unknown; choose one of {', '.join(PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - fields
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)}; valid: {sorted(fields)}")
        return cls(**{**PRESETS[name], "preset": name, **overrides})

    @classmethod
    def from_args(cls, argv: list[str]) -> "Hyperparameters":
        """Parse `--field=value` arguments (with `--preset=name` applied first)."""
        if any(a in ("-h", "--help") for a in argv):
            print(usage())
            raise SystemExit(0)
        kv = {}
        for arg in argv:
            if not (arg.startswith("--") and "=" in arg):
                raise ValueError(f"bad argument {arg!r}: use --field=value, e.g. --w_max=2 (see --help)")
            key, value = arg[2:].split("=", 1)
            kv[key.replace("-", "_")] = value
        preset = kv.pop("preset", "speedrun")
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        overrides = {}
        for key, value in kv.items():
            if key not in types:
                raise ValueError(f"unknown hyperparameter --{key}; see --help for the list")
            overrides[key] = _parse_value(value, types[key], key)
        return cls.from_preset(preset, **overrides)


PRESETS = {
    # the defaults above: GPT-2 small on FineWeb10B, 8xH100, ~0.7B tokens (paper Table 1 scale)
    "speedrun": dict(),
    # the paper's Shakespeare model on the CPU: d 256, 3 blocks, 4 heads, seq 256, batch 64, 2000 steps
    "shakespeare": dict(
        train_files="data/shakespeare/*train*.bin", val_files="data/shakespeare/*val*.bin", vocab_size=0,
        bos_token=-1, sample="random", val_tokens=65536,
        n_layer=3, n_head=4, head_dim=64, d_model=256, attn_logit_scale=8.0, final_logit_scale=8.0,
        seq_len=256, batch_size=64, micro_batch_size=64, window_min=0, window_max=0,
        num_iterations=2000, val_every=100, log_every=10, w_max=1.0, lm_head_w_max=1.0,
    ),
}
# a tiny run for tests and a first try (seconds on a laptop CPU)
PRESETS["smoke"] = dict(
    PRESETS["shakespeare"], n_layer=2, n_head=2, head_dim=32, d_model=64, seq_len=64, batch_size=16,
    micro_batch_size=16, num_iterations=60, val_every=20, log_every=10, val_tokens=8192,
    muon_momentum_warmup_steps=20,
)

# Fields with a fixed set of values (--help lists them; validate() enforces them).
CHOICES = dict(preset=tuple(PRESETS), sample=("sequential", "random"), arch=("lipschitz", "speedrun"),
               optimizer=("muon", "adamw"), constraint=tuple(constraints.METHODS),
               orthogonalizer=tuple(ORTH_MAX_SINGULAR_VALUE), dtype=("auto", "bf16", "fp32"),
               compile=("auto", "yes", "no"))


def validate(hp: Hyperparameters) -> None:
    """Every check that needs no data or device, so a bad combination fails before step 0, naming the flag."""
    for key, ok in CHOICES.items():
        if getattr(hp, key) not in ok:
            raise ValueError(f"--{key}={getattr(hp, key)}: use one of {', '.join(ok)}")
    positive = ("n_layer", "n_head", "head_dim", "d_model", "mlp_ratio", "seq_len", "batch_size", "micro_batch_size",
                "num_iterations", "val_every", "log_every", "val_tokens", "w_max", "lm_head_w_max", "emb_w_max",
                "attn_logit_scale", "final_logit_scale")
    non_negative = ("vocab_size", "window_min", "window_max", "muon_lr", "lm_head_lr", "embed_lr", "adamw_lr",
                    "weight_decay", "muon_momentum_warmup_steps", "checkpoint_every", "checkpoint_minutes",
                    "max_steps_this_run")
    for key in positive:
        if not getattr(hp, key) > 0:
            raise ValueError(f"--{key}={getattr(hp, key)} must be > 0")
    for key in non_negative:
        if not getattr(hp, key) >= 0:
            raise ValueError(f"--{key}={getattr(hp, key)} must be >= 0")
    for key, ok, need in [("cooldown_frac", 0 <= hp.cooldown_frac <= 1, "in [0, 1]"),
                          ("lr_final_frac", 0 <= hp.lr_final_frac <= 1, "in [0, 1]"),
                          ("zero_init_out", hp.zero_init_out in (0, 1), "0 or 1"),
                          ("memory_check", hp.memory_check in (0, 1), "0 or 1"),
                          ("val_at_start", hp.val_at_start in (0, 1), "0 or 1")]:
        if not ok:
            raise ValueError(f"--{key}={getattr(hp, key)} must be {need}")
    if hp.window_max and hp.window_min > hp.window_max:
        raise ValueError(f"--window_min={hp.window_min} exceeds --window_max={hp.window_max}")
    if hp.vocab_size >= 2 ** 16:
        raise ValueError(f"--vocab_size={hp.vocab_size}: shards hold uint16 tokens, so it must be < 65536")
    if hp.vocab_size and hp.bos_token >= hp.vocab_size:
        raise ValueError(f"--bos_token={hp.bos_token} is not a token of a vocab of {hp.vocab_size}; use -1 for none")
    if hp.optimizer == "adamw" and constraints.PROPERTIES[hp.constraint].coupled:
        raise ValueError(f"--constraint={hp.constraint} is coupled to Muon's bounded update and caps nothing "
                         f"under AdamW; use --constraint=spectral_normalize, hard_cap, svd_cap or none")


def usage() -> str:
    """--help: one line per field (its default, then the comment beside it above, then its choices)."""
    lines = [__doc__.strip(), "", f"Hyperparameters (--field=value; defaults are the GPU run; presets: "
             f"{', '.join(PRESETS)}):"]
    comments = field_comments()
    for f in dataclasses.fields(Hyperparameters):
        choices = f"  [{' | '.join(CHOICES[f.name])}]" if f.name in CHOICES else ""
        lines.append(f"  --{f.name}={f.default!r}  {comments.get(f.name, '')}{choices}")
    return "\n".join(lines)


def field_comments() -> dict[str, str]:
    """The comment beside each field in the Hyperparameters source (the one description, kept in one place)."""
    src = inspect.getsource(Hyperparameters)
    return dict(re.findall(r"^\s+(\w+): \w+ = .*?#\s*(.*)$", src, re.M))


def preset_overrides(hp: Hyperparameters) -> dict:
    """Fields the preset sets (and the command line left alone) that depart from the defaults at the top."""
    defaults = Hyperparameters.__dataclass_fields__
    return {k: v for k, v in PRESETS[hp.preset].items() if v != defaults[k].default and getattr(hp, k) == v}


def _parse_value(value: str, typ: str, key: str):
    try:
        if typ == "int":
            return int(value)
        if typ == "float":
            return float(value)
    except ValueError:
        raise ValueError(f"--{key}={value!r} is not a valid {typ}") from None
    return value


# -----------------------------------------------------------------------------
# Model. Weights are stored (d_out, d_in); norms are RMS->RMS: ||W||_* = sqrt(d_in/d_out) sigma_max(W).

GELU_DIVISOR = 1.1289  # ~max slope of GELU (1.1289041): gelu/1.1289 is 1.0000037-Lipschitz and |.| <= |x|
ATTN_OUT_DIVISOR = 3.0  # attention output divided by 3 before W_O (paper's Lipschitz attention)


class CastedLinear(nn.Linear):
    """Bias-free linear layer whose fp32 weight is cast to the activation dtype (bf16 under autocast)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__(d_in, d_out, bias=False)

    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype))


def semi_orthogonal_(w: torch.Tensor) -> torch.Tensor:
    """Init W (d_out, d_in) semi-orthogonal, scaled to RMS->RMS norm exactly 1."""
    nn.init.orthogonal_(w)
    with torch.no_grad():
        w.mul_(math.sqrt(w.shape[0] / w.shape[1]))
    return w


class Rotary(nn.Module):
    """RoPE on the last dim of (B, T, H, D); a rotation per token, so it preserves every norm. The cos/sin
    tables are computed once for max_len tokens (not saved in checkpoints) and sliced per call."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0):
        super().__init__()
        self.freqs = base ** (-torch.arange(0, head_dim // 2, dtype=torch.float64) / (head_dim // 2))
        cos, sin = self.tables(max_len)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def tables(self, T: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, T, 1, head_dim/2) cos and sin of the rotation angles of tokens 0..T-1, float32."""
        theta = torch.outer(torch.arange(T, dtype=torch.float64), self.freqs)[None, :, None, :]
        return theta.cos().float().to(device), theta.sin().float().to(device)

    def forward(self, x):
        T = x.shape[1]
        cos, sin = (self.cos[:, :T], self.sin[:, :T]) if T <= self.cos.shape[1] else self.tables(T, x.device)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


def attention_mask_mod(docs: torch.Tensor | None, window: torch.Tensor):
    """mask_mod(b, h, q, kv) -> bool: causal, same document, fewer than `window` tokens back.

    `window` is a 0-d tensor (a Python int in the closure would be a compile-time constant: one recompile
    per value of the window schedule). Written in broadcasting tensor ops so the same function builds
    FlexAttention block masks (CUDA) and dense SDPA masks (CPU). The window is token-exact; the speedrun
    counted it in 128-token blocks, which window_size() reproduces by rounding to multiples of 128."""

    def mask_mod(b, h, q_idx, kv_idx):
        keep = (q_idx >= kv_idx) & (q_idx - kv_idx < window)
        if docs is not None:
            keep = keep & (docs[b, q_idx] == docs[b, kv_idx])
        return keep

    return mask_mod


def dense_mask(mask_mod, B: int, T: int, device) -> torch.Tensor:
    """(B, 1, T, T) boolean mask from a mask_mod, for SDPA."""
    b = torch.arange(B, device=device)[:, None, None, None]
    q = torch.arange(T, device=device)[None, None, :, None]
    kv = torch.arange(T, device=device)[None, None, None, :]
    return mask_mod(b, 0, q, kv)


def use_flex_attention(device: torch.device) -> bool:
    """Device difference: FlexAttention block masks on CUDA; SDPA with a dense mask elsewhere."""
    return device.type == "cuda"


@functools.cache
def flex_ops(compiled: bool):
    """(create_block_mask, flex_attention), compiled on CUDA: eager create_block_mask materialises the dense
    (B, 1, T, T) mask and eager flex_attention the full score matrix (tens of GB at T = 48K)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    if not compiled:
        return create_block_mask, flex_attention
    # CUDA only (the CPU tests compile flex inside the whole loss graph, forward only); the compiled backward:
    # tests/test_cuda.py::test_compiled_flex_step_matches_eager_sdpa, run by bench/gpu_check.sh
    return torch.compile(create_block_mask, dynamic=False), torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=None)
def window_tensor(window: int, device: torch.device) -> torch.Tensor:
    """0-d int64 tensor holding `window` on `device`, made once per value: a fresh torch.tensor on CUDA is a
    blocking host-to-device copy, which every micro-batch would otherwise pay."""
    return torch.tensor(window, device=device)


class AttentionMask:
    """One attention pattern for a batch, in the form the attention backend wants."""

    def __init__(self, idx: torch.Tensor, bos_token: int, window: int, flex: bool | None = None):
        B, T = idx.shape
        docs = (idx == bos_token).cumsum(dim=1) if bos_token >= 0 else None
        self.causal_only = docs is None and (window <= 0 or window >= T)
        self.flex = use_flex_attention(idx.device) if flex is None else flex
        mask_mod = attention_mask_mod(docs, window_tensor(window if 0 < window < T else T, idx.device))
        self.ops = flex_ops(idx.is_cuda) if self.flex else None
        if self.flex:
            self.block_mask = self.ops[0](mask_mod, B, None, T, T, device=idx.device)
        elif not self.causal_only:
            self.dense = dense_mask(mask_mod, B, T, idx.device)

    def attend(self, q, k, v, scale: float):
        """q, k, v: (B, H, T, D) -> (B, H, T, D)."""
        if self.flex:
            return self.ops[1](q, k, v, block_mask=self.block_mask, scale=scale)
        if self.causal_only:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.dense, scale=scale)


def rms_norm(x):
    return F.rms_norm(x, (x.size(-1),))


class Attention(nn.Module):
    def __init__(self, hp: Hyperparameters):
        super().__init__()
        self.n_head, self.head_dim, self.arch = hp.n_head, hp.head_dim, hp.arch
        inner = hp.n_head * hp.head_dim
        self.q, self.k, self.v = CastedLinear(hp.d_model, inner), CastedLinear(hp.d_model, inner), CastedLinear(hp.d_model, inner)
        self.o = CastedLinear(inner, hp.d_model)
        self.rotary = Rotary(hp.head_dim, hp.seq_len)
        # lipschitz: s/d_head (the provable 1/d form times s); speedrun: the usual 1/sqrt(d_head)
        self.scale = hp.attn_logit_scale / hp.head_dim if hp.arch == "lipschitz" else hp.head_dim ** -0.5

    def forward(self, x, mask: AttentionMask):
        B, T, _ = x.shape
        q, k, v = (lin(x).view(B, T, self.n_head, self.head_dim) for lin in (self.q, self.k, self.v))
        if self.arch == "speedrun":  # QK norm; CUDA autocast (torch >= 2.12) runs rms_norm in fp32, and
            q, k = rms_norm(q).type_as(v), rms_norm(k).type_as(v)  # flex_attention needs q, k, v of one dtype
        q, k = self.rotary(q), self.rotary(k)
        y = mask.attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), self.scale)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        if self.arch == "lipschitz":
            y = y / ATTN_OUT_DIVISOR
        return self.o(y)


class MLP(nn.Module):
    def __init__(self, hp: Hyperparameters):
        super().__init__()
        self.arch = hp.arch
        self.fc = CastedLinear(hp.d_model, hp.mlp_ratio * hp.d_model)
        self.proj = CastedLinear(hp.mlp_ratio * hp.d_model, hp.d_model)

    def forward(self, x):
        h = self.fc(x)
        h = F.gelu(h) / GELU_DIVISOR if self.arch == "lipschitz" else F.relu(h).square()
        return self.proj(h)


class Block(nn.Module):
    def __init__(self, hp: Hyperparameters):
        super().__init__()
        self.arch = hp.arch
        self.attn, self.mlp = Attention(hp), MLP(hp)
        self.alpha = 1.0 / (2 * hp.n_layer)  # convex residual weight

    def forward(self, x, mask: AttentionMask):
        if self.arch == "lipschitz":  # convex residuals (1-a) x + a block(x)
            x = (1 - self.alpha) * x + self.alpha * self.attn(x, mask)
            return (1 - self.alpha) * x + self.alpha * self.mlp(x)
        x = x + self.attn(rms_norm(x), mask)
        return x + self.mlp(rms_norm(x))


def padded_vocab(vocab_size: int) -> int:
    return 64 * math.ceil(vocab_size / 64)


# The lm_head and cross-entropy, a chunk of tokens at a time: at GPT-2's vocabulary a micro-batch's float32
# logits, softmax and gradient would take 3 x 48K x 50304 x 4 B = 28 GiB; one chunk takes about 3 GiB.
LOSS_CHUNK_BYTES = 1 << 30  # float32 logits of one chunk (5,336 tokens at GPT-2's padded vocab)


def loss_chunk_tokens(padded_vocab_size: int) -> int:
    """Tokens per chunk of the loss, so that one chunk's float32 logits take about LOSS_CHUNK_BYTES."""
    return max(1, LOSS_CHUNK_BYTES // (4 * padded_vocab_size))


def head_logits(h: torch.Tensor, weight: torch.Tensor, scale: float, softcap: float) -> torch.Tensor:
    """h (..., d) -> logits (..., padded vocab) in float32 (float64 for a float64 h): scale * h W^T, or, with
    softcap > 0 (speedrun arch), softcap * tanh(h W^T / softcap). W is cast to h's dtype (bf16 under autocast)."""
    z = F.linear(h, weight.to(h.dtype))
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    return softcap * torch.tanh(z / softcap) if softcap > 0 else scale * z


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of head_logits(h, W)[:, :vocab_size] against targets, h (n, d), targets (n,) in
    [0, vocab_size). It walks over chunks of `chunk` tokens and forms the gradients for h and W in the forward
    pass (softmax minus one-hot, through the logit map), so no (n, vocab) tensor outlives its chunk; backward
    only scales them. Value and gradients are F.cross_entropy's on the full logits, up to float rounding (the
    matmuls run in h's dtype, as autograd's would)."""

    @staticmethod
    def forward(ctx, h, weight, targets, vocab_size: int, scale: float, softcap: float, chunk: int):
        n = h.shape[0]
        w = weight.to(h.dtype)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros_like(weight)
        loss_sum = torch.zeros((), dtype=torch.promote_types(h.dtype, torch.float32), device=h.device)
        for start in range(0, n, chunk):
            hc, tc = h[start:start + chunk], targets[start:start + chunk, None]
            logits = head_logits(hc, w, scale, softcap)[:, :vocab_size]
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            loss_sum = loss_sum + (lse - logits.gather(1, tc)).sum()
            g = torch.exp(logits - lse).scatter_add_(1, tc, torch.full_like(tc, -1, dtype=logits.dtype))
            g = g * ((1 - (logits / softcap).square()) if softcap > 0 else scale) / n  # d loss / d (h W^T)
            g = g.to(h.dtype)
            grad_h[start:start + chunk] = g @ w[:vocab_size]
            grad_w[:vocab_size] += (g.t() @ hc).to(grad_w.dtype)
        ctx.save_for_backward(grad_h, grad_w)
        return loss_sum / n

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss.to(grad_h.dtype), grad_w * grad_loss.to(grad_w.dtype), None, None, None, None, None


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


class GPT(nn.Module):
    """Token ids (B, T) -> logits (B, T, padded vocab) or, given targets, the loss. arch "lipschitz":
    norm-free, every matrix capped, logits a certified-Lipschitz function of the embedding output
    (see lipschitz.py)."""

    def __init__(self, hp: Hyperparameters):
        super().__init__()
        if hp.vocab_size <= 0:
            raise ValueError(f"vocab_size={hp.vocab_size}: set it (main() reads it from meta.json beside the "
                             f"shards) before building the model")
        self.hp, self.arch = hp, hp.arch
        self.embed = nn.Embedding(padded_vocab(hp.vocab_size), hp.d_model)
        self.blocks = nn.ModuleList(Block(hp) for _ in range(hp.n_layer))
        self.lm_head = CastedLinear(hp.d_model, padded_vocab(hp.vocab_size))
        self.final_logit_scale = hp.final_logit_scale
        self.softcap = 30.0  # speedrun arch only
        for name, p in self.named_parameters():
            if p.ndim == 2 and name != "embed.weight":
                semi_orthogonal_(p.data)
        if hp.zero_init_out:
            for block in self.blocks:  # zero-init out projections and lm_head
                nn.init.zeros_(block.attn.o.weight)
                nn.init.zeros_(block.mlp.proj.weight)
            nn.init.zeros_(self.lm_head.weight)
        with torch.no_grad():
            self.embed.weight.copy_(constraints.cap_row_rms(self.embed.weight, hp.emb_w_max))

    def logits_from_embeddings(self, x, mask: AttentionMask | None = None, stats: list | None = None):
        """Embedding output x (B, T, d) -> logits (B, T, V_pad), in float32 (float64 in a float64 model). The
        function lipschitz.py certifies (in the ||.||_inf-RMS norm over tokens). `stats`, if given, receives
        per layer a (2,) tensor: (max |entry|, max token RMS) of the residual stream."""
        return head_logits(self.hidden_from_embeddings(x, mask, stats), self.lm_head.weight, *self.logit_map)

    @property
    def logit_map(self) -> tuple[float, float]:
        """(scale, softcap) of head_logits: final_logit_scale for the lipschitz arch, the tanh cap for speedrun."""
        return (1.0, self.softcap) if self.arch == "speedrun" else (self.final_logit_scale, 0.0)

    def hidden_from_embeddings(self, x, mask: AttentionMask | None = None, stats: list | None = None):
        """Embedding output x (B, T, d) -> what the lm_head reads (B, T, d): the blocks' output (normed in the
        speedrun arch). `stats` as in logits_from_embeddings."""
        if mask is None:
            mask = AttentionMask(torch.zeros(x.shape[:2], dtype=torch.long, device=x.device), -1, 0)
        if self.arch == "speedrun":
            x = rms_norm(x)
        for block in self.blocks:
            x = block(x, mask)
            if stats is not None:
                xf = x.detach().float()
                stats.append(torch.stack((xf.abs().amax(), xf.square().mean(-1).sqrt().amax())))
        if self.arch == "speedrun":
            x = rms_norm(x)
        return x

    def forward(self, idx, targets=None, window: int = 0):
        """idx (B, T) -> logits (B, T, V_pad); with targets (B, T): the mean cross-entropy over the
        vocab_size real tokens."""
        mask = AttentionMask(idx, self.hp.bos_token, window)
        if targets is None:
            return self.logits_from_embeddings(self.embed(idx), mask)
        return self.loss(idx, targets, mask)

    def loss(self, idx, targets, mask: AttentionMask):
        """The training loss: mean cross-entropy of (B, T) targets over the vocab_size real tokens, the lm_head
        and loss taken a chunk of tokens at a time (ChunkedLinearCrossEntropy)."""
        h = self.hidden_from_embeddings(self.embed(idx), mask).flatten(0, 1)
        args = (self.hp.vocab_size, *self.logit_map, loss_chunk_tokens(self.lm_head.weight.shape[0]))
        if not torch.is_grad_enabled():
            return chunked_loss_sums(h, self.lm_head.weight, targets.flatten(), *args)[0] / h.shape[0]
        return ChunkedLinearCrossEntropy.apply(h, self.lm_head.weight, targets.flatten(), *args)

    def eval_sums(self, idx, targets, mask: AttentionMask):
        """-> (summed loss, correct predictions, (n_layer, 2) activation maxima), all tensors (no host sync)."""
        stats: list = []
        h = self.hidden_from_embeddings(self.embed(idx), mask, stats).flatten(0, 1)
        loss_sum, correct = chunked_loss_sums(h, self.lm_head.weight, targets.flatten(), self.hp.vocab_size,
                                              *self.logit_map, loss_chunk_tokens(self.lm_head.weight.shape[0]))
        return loss_sum, correct, torch.stack(stats)



@dataclass
class ModelFns:
    """The model's two entry points the trainer calls, (idx, targets, mask) -> ..., eager or compiled."""
    loss: callable
    eval_sums: callable


def model_fns(model: GPT, compile: bool) -> ModelFns:
    """With compile, each entry point becomes one torch.compile graph from token ids to the loss (embedding,
    blocks, lm_head, logit scale, cross-entropy): no float32 tokens x vocab tensor is built eagerly.
    Attention masks are built outside the graph (by a compiled create_block_mask on CUDA). The compiled
    functions live with the trainer, not the model, so copies of the model (lipschitz.py) stay plain."""
    if not compile:
        return ModelFns(model.loss, model.eval_sums)
    return ModelFns(torch.compile(model.loss, dynamic=False), torch.compile(model.eval_sums, dynamic=False))


def make_model(hp: Hyperparameters) -> GPT:
    torch.manual_seed(hp.seed)
    return GPT(hp)


def param_kind(name: str) -> str:
    """Weight family used in logs and caps: qkv, o, fc, proj, lm_head, emb."""
    if name.startswith("embed"):
        return "emb"
    if name.startswith("lm_head"):
        return "lm_head"
    leaf = name.split(".")[-2]
    return "qkv" if leaf in ("q", "k", "v") else leaf


# -----------------------------------------------------------------------------
# Data: shards concatenated into one token stream; the batch of step s is a pure function of s.


class TokenStream:
    """The shards matching a glob, as one memory-mapped stream of tokens."""

    def __init__(self, pattern: str, vocab_size: int, what: str):
        files = sorted(glob.glob(os.path.join(ROOT, pattern) if not os.path.isabs(pattern) else pattern))
        if not files:
            raise FileNotFoundError(f"no {what} shards match {pattern!r}. {data_hint(pattern)}")
        self.shards = [read_shard(f, vocab_size) for f in files]
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])
        self.total = int(self.starts[-1])

    def window(self, start: int, n: int) -> np.ndarray:
        """Tokens [start, start+n) of the stream (wrapping around at the end)."""
        out, start = [], start % self.total
        while n > 0:
            i = int(np.searchsorted(self.starts, start, side="right") - 1)
            off = start - int(self.starts[i])
            chunk = self.shards[i][off:off + n]
            out.append(chunk)
            n -= len(chunk)
            start = (start + len(chunk)) % self.total
        return np.concatenate(out) if len(out) > 1 else out[0]


def data_hint(pattern: str) -> str:
    if "fineweb" in pattern:
        return "Download them with: python data/cached_fineweb10B.py 8"
    return "Build them with: python data/shakespeare.py  (or pass --train_files=/--val_files= globs)"


def batch_starts(hp: Hyperparameters, step: int, total: int) -> np.ndarray:
    """Start offsets of the batch_size sequences of a step (global, independent of world size)."""
    if hp.sample == "sequential":
        return (step * hp.batch_size + np.arange(hp.batch_size)) * hp.seq_len
    rng = np.random.default_rng([hp.seed, step])
    return rng.integers(0, total - hp.seq_len - 1, size=hp.batch_size)


def micro_batch_size(hp: Hyperparameters, world: int) -> int:
    """Sequences per forward pass: the largest divisor of this rank's share <= hp.micro_batch_size, so any
    world size that divides batch_size trains on the same global batch (by gradient accumulation)."""
    if hp.batch_size % world:
        raise ValueError(f"batch_size={hp.batch_size} is not divisible by the world size {world}; "
                         f"choose --batch_size= as a multiple of the number of processes")
    per_rank = hp.batch_size // world
    return max(d for d in range(1, min(hp.micro_batch_size, per_rank) + 1) if per_rank % d == 0)


def token_batch(stream: TokenStream, starts, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each (len(starts), seq_len) int64 on device: the windows of seq_len + 1 tokens at
    `starts`, shifted by one. On CUDA the host buffer is pinned so the copy overlaps compute."""
    rows = np.stack([stream.window(int(s), seq_len + 1) for s in starts]).astype(np.int64)
    buf = torch.from_numpy(rows)
    if device.type == "cuda":
        buf = buf.pin_memory()  # GPU check: every CUDA run of bench/gpu_check.sh
    buf = buf.to(device, non_blocking=True)
    return buf[:, :-1], buf[:, 1:]


def micro_batches(stream: TokenStream, hp: Hyperparameters, step: int, rank: int, world: int, device):
    """Yield (inputs, targets) of shape (micro batch, seq_len) for this rank's share of a step."""
    starts = batch_starts(hp, step, stream.total)
    per_rank, micro = hp.batch_size // world, micro_batch_size(hp, world)
    mine = starts[rank * per_rank:(rank + 1) * per_rank]
    for i in range(0, per_rank, micro):
        yield token_batch(stream, mine[i:i + micro], hp.seq_len, device)


def shards_meta(hp: Hyperparameters) -> dict:
    """meta.json beside the training shards ({} when there is none, as for FineWeb)."""
    files = sorted(glob.glob(os.path.join(ROOT, hp.train_files)))
    if not files:
        raise FileNotFoundError(f"no training shards match {hp.train_files!r}. {data_hint(hp.train_files)}")
    meta = os.path.join(os.path.dirname(files[0]), "meta.json")
    if not os.path.exists(meta):
        return {}
    with open(meta) as f:
        return json.load(f)


def read_vocab_size(hp: Hyperparameters) -> int:
    """vocab_size from meta.json beside the training shards, when not given."""
    if hp.vocab_size > 0:
        return hp.vocab_size
    meta = shards_meta(hp)
    if "vocab_size" not in meta:
        raise FileNotFoundError(f"no meta.json with a vocab_size beside {hp.train_files!r}: pass --vocab_size= "
                                f"or rebuild the shards")
    return int(meta["vocab_size"])


def tokenizer_record(hp: Hyperparameters) -> dict:
    """How the run's tokens decode, kept in every checkpoint so tools/sample.py needs no data folder:
    {"tokenizer": "byte" | "char" | "gpt2", "vocab_size": V, "chars": [...] (char only)}, or {} if unknown.
    Shards without meta.json and a vocab of 50257 are GPT-2 (FineWeb)."""
    meta = shards_meta(hp)
    if meta.get("tokenizer"):
        return {k: meta[k] for k in ("tokenizer", "vocab_size", "chars") if k in meta}
    return {"tokenizer": "gpt2", "vocab_size": GPT2_VOCAB} if hp.vocab_size == GPT2_VOCAB else {}


def window_size(hp: Hyperparameters, step: int) -> int:
    """Sliding window that grows linearly over training in blocks of 128 tokens (0 = full attention)."""
    if hp.window_max <= 0:
        return 0
    frac = step / max(1, hp.num_iterations)
    w = hp.window_min + frac * (hp.window_max - hp.window_min)
    return int(128 * max(1, round(w / 128)))


# -----------------------------------------------------------------------------
# Optimizers and schedules


def matrices(model: GPT) -> list[tuple[str, nn.Parameter]]:
    """The weight matrices every constraint acts on: hidden matrices and the lm_head (not the embedding)."""
    return [(n, p) for n, p in model.named_parameters() if param_kind(n) != "emb"]


def make_optimizers(model: GPT, hp: Hyperparameters) -> list[torch.optim.Optimizer]:
    """Muon for hidden matrices and the lm_head, Adam for the embedding (or AdamW for all; when the constraint
    is itself a decay, it applies the matrices' weight decay instead of AdamW)."""
    if hp.optimizer == "adamw":
        mats = [p for _, p in matrices(model)]
        matrix_wd = 0.0 if constraints.PROPERTIES[hp.constraint].decays else hp.weight_decay
        return [torch.optim.AdamW([dict(params=mats, weight_decay=matrix_wd),
                                   dict(params=[model.embed.weight], weight_decay=hp.weight_decay)],
                                  lr=hp.adamw_lr, betas=(0.9, 0.95))]
    hidden = [p for n, p in matrices(model) if param_kind(n) != "lm_head"]  # one group: Muon stacks equal shapes
    try:  # Muon checks the soft cap's coupling (lr vs cap) here, before step 0
        muon = Muon([dict(params=hidden, lr=hp.muon_lr, w_max=hp.w_max),
                     dict(params=[model.lm_head.weight], lr=hp.lm_head_lr, w_max=hp.lm_head_w_max)],
                    lr=hp.muon_lr, momentum=0.95, nesterov=True, weight_decay=hp.weight_decay,
                    constraint=hp.constraint, orthogonalizer=hp.orthogonalizer)
    except ValueError as e:
        raise ValueError(f"--muon_lr={hp.muon_lr}/--w_max={hp.w_max}, --lm_head_lr={hp.lm_head_lr}/"
                         f"--lm_head_w_max={hp.lm_head_w_max}: {e}") from None
    emb = torch.optim.Adam([model.embed.weight], lr=hp.embed_lr, betas=(0.8, 0.95), eps=1e-10)
    return [muon, emb]


def lr_multiplier(hp: Hyperparameters, step: int) -> float:
    """1 until the cooldown, then linear to lr_final_frac at the last step."""
    frac = step / hp.num_iterations
    if frac < 1 - hp.cooldown_frac:
        return 1.0
    w = (1 - frac) / hp.cooldown_frac
    return w * 1.0 + (1 - w) * hp.lr_final_frac


def set_schedules(optimizers, hp: Hyperparameters, step: int):
    m = lr_multiplier(hp, step)
    for opt in optimizers:
        for g in opt.param_groups:
            g.setdefault("initial_lr", g["lr"])
            g["lr"] = g["initial_lr"] * m
        if isinstance(opt, Muon):
            frac = min(step / max(1, hp.muon_momentum_warmup_steps), 1)
            for g in opt.param_groups:
                g["momentum"] = (1 - frac) * 0.85 + frac * 0.95


@torch.no_grad()
def constrain_non_muon(model: GPT, hp: Hyperparameters, optimizers: list[torch.optim.Optimizer]):
    """Caps that are not Muon's job: embedding rows always (lipschitz arch); every matrix under AdamW, with the
    step's lr and weight decay, and the method's warm-start state kept in AdamW's state (so it is
    checkpointed and resumes exactly)."""
    if hp.arch != "lipschitz":
        return
    model.embed.weight.copy_(constraints.cap_row_rms(model.embed.weight, hp.emb_w_max))
    if hp.optimizer != "adamw" or hp.constraint == "none":
        return
    (adamw,) = optimizers
    lr = adamw.param_groups[0]["lr"]  # the matrices' group, after the schedule
    for n, p in matrices(model):
        cap = hp.lm_head_w_max if param_kind(n) == "lm_head" else hp.w_max
        state = adamw.state[p].setdefault("constraint", {})  # after AdamW's step, so its own state exists
        p.copy_(constraints.apply(p, hp.constraint, cap, lr=lr, weight_decay=hp.weight_decay, state=state,
                                  check_finite=False))


# -----------------------------------------------------------------------------
# Distributed helpers (torchrun sets RANK/WORLD_SIZE; NCCL on CUDA, gloo on CPU)


def setup_distributed():
    """-> (rank, world_size, device). A plain `python train_gpt.py` is world size 1, no process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        # NCCL needs several GPUs: no GPU check covers it yet (one GPU is lent); gloo runs in tests/test_train_gpt.py
        dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=device if cuda else None)
    return rank, world, device


def all_reduce_grads(model: nn.Module, world: int):
    """Average the gradients over ranks (NCCL averages in the reduction; gloo has no AVG: sum, then divide)."""
    if world == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    avg = dist.get_backend() == "nccl"
    works = [dist.all_reduce(g, op=dist.ReduceOp.AVG if avg else dist.ReduceOp.SUM, async_op=True) for g in grads]
    for w in works:
        w.wait()
    if not avg:
        torch._foreach_div_(grads, world)


def all_reduce_max(values: list[float], device) -> list[float]:
    """Elementwise maxima of host numbers over the ranks of an initialised process group."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def all_reduce_sum(values: list[float], world: int, device) -> list[float]:
    """Sums of host numbers over ranks (no device round trip in a single process)."""
    if world == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# -----------------------------------------------------------------------------
# Evaluation and the numbers every validation reports


def val_sequence_count(hp: Hyperparameters, val: TokenStream) -> int:
    """Whole sequences scored per validation; checked at start-up so a bad --val_tokens fails before step 0."""
    n_seq = max(1, hp.val_tokens // hp.seq_len)
    if n_seq * hp.seq_len + 1 > val.total:
        raise ValueError(f"--val_tokens={hp.val_tokens} exceeds the {val.total} tokens of the val split; lower it")
    return n_seq


@torch.no_grad()
def evaluate(model: GPT, val: TokenStream, hp: Hyperparameters, rank, world, device, amp, window, eval_sums=None):
    """-> (val loss, val acc, per-layer (max |entry|, max token RMS) of the residual stream) over the first
    hp.val_tokens tokens of the val split: the same sequences for any world size. One host sync, at the end."""
    eval_sums = eval_sums or model.eval_sums
    n_seq = val_sequence_count(hp, val)
    mine = range(rank * n_seq // world, (rank + 1) * n_seq // world)  # shares may differ by one
    sums = torch.zeros(2, device=device, dtype=torch.float64)  # loss sum, correct
    count = 0
    stats = torch.zeros(hp.n_layer, 2, device=device, dtype=torch.float32)
    for i in range(0, len(mine), hp.micro_batch_size):
        x, y = token_batch(val, [s * hp.seq_len for s in mine[i:i + hp.micro_batch_size]], hp.seq_len, device)
        with amp:
            loss_sum, correct, layer_stats = eval_sums(x, y, AttentionMask(x, hp.bos_token, window))
        sums += torch.stack((loss_sum.double(), correct.double()))
        count += y.numel()
        stats = torch.maximum(stats, layer_stats.float())
    if world > 1:
        dist.all_reduce(stats, op=dist.ReduceOp.MAX)
    loss_sum, correct, count = all_reduce_sum(sums.tolist() + [count], world, device)
    return loss_sum / count, correct / count, stats.tolist()


@torch.no_grad()
def weight_norms(model: GPT) -> dict[str, float]:
    """Max RMS->RMS norm per weight family (exact: lipschitz.rms_op_norms of each family's stack, one host
    transfer per family), and the max embedding row RMS."""
    out = {"emb_row_rms": model.embed.weight.float().square().mean(-1).sqrt().max().item()}
    families: dict[str, list[torch.Tensor]] = {}
    for n, p in matrices(model):
        families.setdefault(param_kind(n), []).append(p.detach())
    for kind, ws in families.items():  # a family's matrices share one shape
        out[kind] = lipschitz.rms_op_norms(torch.stack(ws)).max().item()
    return out


# -----------------------------------------------------------------------------
# Logging: source of every project module, versions, hardware, then speedrun-format lines



def project_sources() -> list[str]:
    """Paths of this script and every project module it imported."""
    paths = [os.path.abspath(__file__)]
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if not (isinstance(f, str) and os.path.isabs(f) and f.endswith(".py") and os.path.isfile(f)):
            continue
        rel = os.path.relpath(f, ROOT)
        if rel.startswith("..") or rel.split(os.sep)[0] == "tests" or "site-packages" in rel.split(os.sep):
            continue
        if f not in paths:
            paths.append(f)
    return paths


def hardware_summary(device) -> str:
    lines = [f"python {platform.python_version()}  torch {torch.__version__}  numpy {np.__version__}",
             f"platform {platform.platform()}  cpus {os.cpu_count()}  threads {torch.get_num_threads()}"]
    if device.type == "cuda":
        try:
            lines.append(subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=10).stdout)
        except (OSError, subprocess.SubprocessError):
            lines.append(f"cuda {torch.version.cuda}  {torch.cuda.get_device_name(device)}")
    return "\n".join(lines)


def ensure_writable_dir(path: str, flag: str) -> None:
    """Create `path` if needed and prove a file can be written there, so a bad --log_dir/--checkpoint_dir
    fails at start-up, not after the run."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ValueError(f"--{flag}={path}: cannot write there ({e.strerror or e}); "
                         f"pass a writable directory") from None


class Logger:
    """Writes logs/<run_id>.txt (rank 0 only) and echoes run lines to the console."""

    def __init__(self, hp: Hyperparameters, rank: int, world: int, device, resumed: bool, dtype: str):
        self.path = None
        if rank != 0:
            return
        self.path = os.path.join(hp.log_dir, f"{hp.run_id}.txt")
        with open(self.path, "a" if resumed else "w") as f:
            if not resumed:
                for src in project_sources():
                    with open(src) as code:
                        f.write(f"# {os.path.relpath(src, ROOT)}\n{code.read()}\n{SEPARATOR}\n")
                f.write(hardware_summary(device) + f"\n{SEPARATOR}\n")
            config = dict(dataclasses.asdict(hp), world_size=world, tokens_per_step=hp.batch_size * hp.seq_len,
                          dtype_used=dtype)
            f.write("config: " + json.dumps(config, sort_keys=True) + "\n")

    def __call__(self, line: str, console: bool = True, console_suffix: str = ""):
        if self.path is None:
            return
        if console:
            print(line + console_suffix, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


def log_validation(log: Logger, model: GPT, hp: Hyperparameters, step: int, val_loss, val_acc, stats,
                   train_ms: float, timed_steps: int) -> dict:
    """Logs a validation's lines; returns lipschitz.bound_report(model)."""
    head = f"step:{step}/{hp.num_iterations}"
    log(f"{head} val_loss:{val_loss:.4f} val_acc:{val_acc:.4f} train_time:{train_ms:.0f}ms "
        f"step_avg:{train_ms / max(1, timed_steps):.2f}ms")
    report = lipschitz.bound_report(model)
    log(f"{head} lipschitz_bound_log10:{report['log10_bound']:.4f} lipschitz_bound:{report['bound']:.6g} "
        f"lipschitz_bound_tight_log10:{report['log10_bound_tight']:.4f} "
        f"lipschitz_bound_sharp_log10:{report['log10_bound_sharp']:.4f} "
        f"lipschitz_bound_paper_literal_log10:{report['log10_bound_paper_literal']:.4f}")
    norms = weight_norms(model)
    log(f"{head} max_weight_norm " + " ".join(f"{k}:{v:.4f}" for k, v in norms.items()))
    if stats:
        log(f"{head} act_max_entry:{max(s[0] for s in stats):.4f} act_max_rms:{max(s[1] for s in stats):.4f}")
        log(f"{head} act_per_layer " + " ".join(f"L{i}_entry:{e:.3f} L{i}_rms:{r:.3f}"
                                                for i, (e, r) in enumerate(stats)), console=False)
    return report


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def time_estimate(hp: Hyperparameters, seconds_per_step: float, step: int, end_step: int) -> str:
    """The console's early answer to "how long will this take", from the first timed steps."""
    n_val = sum(1 for s in range(step + 1, end_step + 1) if s % hp.val_every == 0 or s == hp.num_iterations)
    return (f"time estimate: {end_step - step} more steps at {seconds_per_step:.2f} s/step (first {ESTIMATE_AFTER} "
            f"steps) take about {format_duration(seconds_per_step * (end_step - step))}, plus {n_val} validations")


def launch_command(argv: list[str], world: int) -> str:
    """The command line that ran this process, for 'continue with' hints (without any --resume)."""
    args = " ".join(a for a in argv if not a.startswith("--resume="))
    if world > 1:
        return f"torchrun --standalone --nproc_per_node={world} train_gpt.py {args}".rstrip()
    return f"python train_gpt.py {args}".rstrip()


# -----------------------------------------------------------------------------
# Checkpoints: written atomically (temp file, then rename), loaded with weights_only=True

CHECKPOINT_KEYS = ("step", "train_ms", "hp", "model", "optimizers", "rng")


def save_checkpoint(path: str, model, optimizers, hp: Hyperparameters, step: int, train_ms: float,
                    summary: dict | None = None, tokenizer: dict | None = None):
    """Rank 0's view: model, optimizer states, step (which fixes the loader position), RNG, the last
    validation's numbers (`summary`) so a finished run can report them without a model, and how its tokens
    decode (`tokenizer`, see tokenizer_record) so samples need no data folder."""
    state = dict(step=step, train_ms=train_ms, hp=dataclasses.asdict(hp), model=model.state_dict(),
                 optimizers=[opt.state_dict() for opt in optimizers], rng=torch.get_rng_state(),
                 summary=dict(summary or {}), tokenizer=dict(tokenizer or {}))
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def read_checkpoint(path: str, flag: str = "") -> dict:
    """The project's one checkpoint reader: the dict save_checkpoint wrote. Anything else (missing, truncated,
    foreign) raises FileNotFoundError/ValueError with one line naming the file (as `flag=path`) and the problem."""
    name = f"{flag}={path}" if flag else path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: no such checkpoint file")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a truncated one has no directory
        raise ValueError(f"{name}: not a readable checkpoint (truncated, or not a file torch.save wrote)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{name}: not a checkpoint of train_gpt.py (it holds Python objects beyond tensors and "
                         f"plain data; it was not loaded)") from None
    except Exception:  # torch raises RuntimeError, EOFError, zipfile and OS errors for truncated or foreign files
        raise ValueError(f"{name}: not a readable checkpoint (truncated, or not a file torch.save wrote)") from None
    missing = [k for k in CHECKPOINT_KEYS if not (isinstance(state, dict) and k in state)]
    if missing:
        raise ValueError(f"{name}: not a checkpoint of train_gpt.py (it lacks {', '.join(missing)})")
    return state


# Fields older checkpoints may carry that this script no longer has, with the value that meant "off".
# The gap study's blocks_mass, residual_lr_decay and embed_grad_norm_max changed nothing and left; the logs of
# records/2026-11-22-shakespeare-h100/gap-screen hold the source that ran them.
RETIRED_FIELDS = {"blocks_mass": 0.0, "residual_lr_decay": 1.0, "embed_grad_norm_max": 0.0}


def hp_from_checkpoint(saved: dict, path: str) -> Hyperparameters:
    """The Hyperparameters of a checkpoint's `hp` dict; retired fields at their "off" value are dropped."""
    saved = dict(saved)
    for key, off in RETIRED_FIELDS.items():
        if key in saved and saved.pop(key) != off:
            raise ValueError(f"{path}: trained with --{key}, which this train_gpt.py no longer has (the log of "
                             f"that run holds the source that trained it)")
    try:
        return Hyperparameters(**saved)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: its hyperparameters do not fit this train_gpt.py ({' '.join(str(e).split())})"
                         ) from None


def model_from_checkpoint(path: str, flag: str = "") -> tuple[GPT, dict]:
    """(model in eval mode on the CPU, checkpoint dict) for a file save_checkpoint wrote; one-line
    FileNotFoundError/ValueError naming the file otherwise."""
    state = read_checkpoint(path, flag)
    model = make_model(hp_from_checkpoint(state["hp"], path))
    problem = state_dict_mismatch(model.state_dict(), state["model"])
    if problem:
        raise ValueError(f"{path}: its weights do not fit the model its hyperparameters describe ({problem})")
    model.load_state_dict(state["model"])
    return model.eval(), state


def state_dict_mismatch(want: dict, got: dict) -> str:
    """'' when `got` has exactly the keys and shapes of `want`, else a short description of the difference."""
    if not isinstance(got, dict):
        return f"the weights are a {type(got).__name__}, not a dict of tensors"
    parts = []
    for label, names in (("missing", [k for k in want if k not in got]),
                         ("unexpected", [k for k in got if k not in want]),
                         ("wrong shape", [f"{k} {tuple(getattr(got[k], 'shape', ()))} != {tuple(want[k].shape)}"
                                          for k in want if k in got
                                          and tuple(getattr(got[k], "shape", ())) != tuple(want[k].shape)])):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            parts.append(f"{label}: {', '.join(names[:3])}{more}")
    return "; ".join(parts)


# Fields a resumed run may change; any other difference from the checkpoint would silently train another run.
RESUME_MAY_CHANGE = {"resume", "max_steps_this_run", "memory_check", "log_dir", "checkpoint_dir", "checkpoint_every",
                     "checkpoint_minutes", "log_every", "val_every", "compile", "warmup_steps", "micro_batch_size",
                     "val_at_start"}


def check_resumable(saved: dict, hp: Hyperparameters, path: str):
    diff = {k: (saved.get(k), v) for k, v in dataclasses.asdict(hp).items()
            if k not in RESUME_MAY_CHANGE and saved.get(k) != v}
    if diff:
        raise ValueError(f"--resume={path}: hyperparameters differ from the checkpoint (saved, given): {diff}; "
                         f"pass the checkpoint's values or start a new run")


def load_checkpoint(state: dict, model, optimizers) -> tuple[int, float]:
    model.load_state_dict(state["model"])
    for opt, s in zip(optimizers, state["optimizers"], strict=True):
        opt.load_state_dict(s)
    torch.set_rng_state(state["rng"])
    return state["step"], state["train_ms"]


def weights_finite(model: nn.Module) -> bool:
    return bool(torch.stack([p.isfinite().all() for p in model.parameters()]).all())


# -----------------------------------------------------------------------------
# Training


def autocast_for(hp: Hyperparameters, device) -> tuple[torch.autocast, str]:
    """(autocast context, the dtype it uses: "bf16" or "fp32"). auto: bf16 where it is native (CUDA, CPUs with
    AVX512-BF16/AMX), fp32 elsewhere (emulated bf16 is ~30x slower)."""
    native_bf16 = default_orth_dtype(device) == torch.bfloat16
    dtype = hp.dtype if hp.dtype != "auto" else ("bf16" if native_bf16 else "fp32")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"), dtype


COMPILE_MIN_CPU_STEPS = 500  # compile="auto" on a CPU: ~1 minute of compiling buys ~15% per step (fp32, 2 cores)


def compile_choice(hp: Hyperparameters, device: torch.device) -> tuple[bool, str]:
    """(whether to torch.compile the loss and eval graphs, why, for the log). "auto" compiles on CUDA, and on a
    CPU when the run is long enough to repay the compile and inductor's C++ compiler ($CXX or g++) is there."""
    if hp.compile != "auto":
        return hp.compile == "yes", f"--compile={hp.compile}"
    if device.type == "cuda":
        return True, "auto: CUDA"
    if hp.num_iterations < COMPILE_MIN_CPU_STEPS:
        return False, f"auto: a CPU run of under {COMPILE_MIN_CPU_STEPS} steps"
    cxx = os.environ.get("CXX") or "g++"
    if shutil.which(cxx) is None:
        return False, f"auto: no C++ compiler ({cxx}) for inductor on this CPU; install g++ for ~15% faster steps"
    return True, f"auto: a CPU run of {hp.num_iterations} steps, {cxx} found"


def step_memory_bytes(hp: Hyperparameters, world: int, device: torch.device, dtype: str) -> dict[str, int]:
    """Estimated peak memory of one training step on one rank, by part, in bytes (an estimate, within ~1.5x of
    what was measured; see tests/test_train_gpt.py):
      state        weights, gradients and optimizer state, float32 (4 copies of every parameter);
      activations  what autograd keeps for one micro-batch: per token and layer ~8 d_model + 6 inner + 3 hidden
                   values in the autocast dtype (residual copies; q, k, v, rotated, attention out; fc, gelu);
      logits       float32 logits, their softmax and gradient for one chunk of the loss (3 x chunk tokens x
                   padded vocab), and the lm_head's float32 gradient that the chunks add into;
      attention    on the CPU's SDPA path with windows or documents, the dense (micro batch, 1, T, T) mask:
                   ~4 bytes per entry (3.4 measured, torch 2.13's fused kernel; it never forms the scores).
                   FlexAttention (CUDA) and causal-only attention keep no T x T tensor."""
    micro, T, d = micro_batch_size(hp, world), hp.seq_len, hp.d_model
    inner, hidden, V = hp.n_head * hp.head_dim, hp.mlp_ratio * hp.d_model, padded_vocab(max(hp.vocab_size, 1))
    n_params = 2 * V * d + hp.n_layer * (4 * inner * d + 2 * hidden * d)
    tokens = micro * T
    act_bytes = 2 if dtype == "bf16" else 4
    causal_only = hp.bos_token < 0 and (hp.window_max <= 0 or hp.window_max >= T)
    dense_mask = not use_flex_attention(device) and not causal_only
    return dict(state=4 * 4 * n_params,
                activations=tokens * hp.n_layer * (8 * d + 6 * inner + 3 * hidden) * act_bytes,
                logits=3 * min(tokens, loss_chunk_tokens(V)) * V * 4 + V * d * 4,
                attention=4 * micro * T * T if dense_mask else 0)


def free_memory_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can use now: free CUDA memory, or the OS's MemAvailable (None if unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]  # GPU check: tests/test_cuda.py::test_smoke_run_on_cuda...
    try:
        with open("/proc/meminfo") as f:
            kib = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f)}
        return 1024 * kib["MemAvailable"]
    except (OSError, KeyError, ValueError):
        return None


def check_step_fits(hp: Hyperparameters, world: int, device: torch.device, dtype: str) -> None:
    """Refuse, before anything is built, a run whose step cannot fit: one line with the estimate, the free
    memory, the largest parts, and the flags that shrink them."""
    free = free_memory_bytes(device)
    if world > 1:  # every rank takes the same branch: the least free memory of any rank decides
        free = -all_reduce_max([-(math.inf if free is None else float(free))], device)[0]
        free = None if math.isinf(free) else free
    parts = step_memory_bytes(hp, world, device, dtype)
    need = sum(parts.values())
    if not hp.memory_check or free is None or need <= free:
        return
    gib = lambda b: f"{b / 2**30:.1f} GiB"  # noqa: E731
    biggest = ", ".join(f"{k} {gib(v)}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]) if v)
    raise ValueError(f"a training step needs about {gib(need)} on {device.type} ({biggest}) but {gib(free)} is "
                     f"free: lower --micro_batch_size={micro_batch_size(hp, world)} or --seq_len={hp.seq_len} "
                     f"(or --d_model/--n_layer); --memory_check=0 skips this estimate")


def train_step(model, optimizers, train, hp, step, rank, world, device, amp, loss_fn=None) -> torch.Tensor:
    """One optimizer step over this rank's share of the global batch; returns the mean train loss (on device).
    loss_fn(idx, targets, mask) -> loss defaults to the eager model.loss (model_fns gives the compiled one)."""
    loss_fn = loss_fn or model.loss
    window = window_size(hp, step)
    n_micro = hp.batch_size // (world * micro_batch_size(hp, world))
    total = None
    for x, y in micro_batches(train, hp, step, rank, world, device):
        with amp:
            loss = loss_fn(x, y, AttentionMask(x, hp.bos_token, window)) / n_micro
        loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    all_reduce_grads(model, world)
    set_schedules(optimizers, hp, step)
    for opt in optimizers:
        opt.step()
    constrain_non_muon(model, hp, optimizers)
    model.zero_grad(set_to_none=True)
    return total


ESTIMATE_AFTER = 3  # timed steps before the console says how long the whole run will take


def host_sync_due(hp: Hyperparameters, step: int, end_step: int, world: int, host_event: bool,
                  start_step: int = 0) -> bool:
    """Whether the trainer waits for the device after `step`: at log, validation and checkpoint steps, the
    last step and the step of the time estimate, and (single process) when a stop signal or a timed
    checkpoint is pending. Between them the host queues steps without waiting. With several ranks, signals
    and timed checkpoints wait for the next log step, where one reduction makes every rank agree."""
    return (step % hp.log_every == 0 or step % hp.val_every == 0 or step >= end_step
            or step == start_step + ESTIMATE_AFTER
            or step == hp.num_iterations or bool(hp.checkpoint_every and step % hp.checkpoint_every == 0)
            or (world == 1 and host_event))


class StopSignals:
    """SIGINT/SIGTERM ask the loop to stop after the current step, checkpoint and exit cleanly (`received`
    holds the signal number). The first signal also restores the system's default handlers, so a second
    SIGINT or SIGTERM ends the process at once, even inside a long native op (which a Python handler would
    only see when the op returns). Under torchrun (world > 1) only SIGINT's: a worker may get SIGTERM twice for
    one stop (from the cluster and again from the agent), and the second must not cost the checkpoint."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool, world: int = 1):
        self.received, self.announce, self.previous = 0, announce, {}
        self.at_once = self.SIGNALS if world == 1 else (signal.SIGINT,)

    def __enter__(self):
        try:
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread: leave the handlers alone
            self.previous = {}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        self.received = signum
        for s in self.at_once:
            signal.signal(s, signal.SIG_DFL)
        if self.announce:
            print(f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
                  f"(Ctrl-C again to abort at once, without one)", file=sys.stderr, flush=True)


def end_of_run_sample(model: GPT, tokenizer: dict, hp: Hyperparameters, device, ckpt_path: str) -> str:
    """A short sample of the trained model for the console (not the log), or one line saying why there is none."""
    try:  # a finished run never fails here: whatever goes wrong is one line
        from tools import sample  # lazily: tools/sample.py imports this script
        (text,) = sample.sample_text(model, tokenizer, max_new_tokens=200 if tokenizer.get("tokenizer") != "gpt2"
                                     else 60, seed=hp.seed, device=device)
    except Exception as e:  # noqa: BLE001
        return f"no sample: {' '.join(str(e).split()) or type(e).__name__}"
    return f"sample (python tools/sample.py {ckpt_path} for more):\n{text}"


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    hp = Hyperparameters.from_args(argv)
    rank, world, device = setup_distributed()
    say = print if rank == 0 else (lambda *a, **k: None)
    micro_batch_size(hp, world)  # validates the batch geometry before any work
    for flag in ("log_dir", "checkpoint_dir"):
        ensure_writable_dir(getattr(hp, flag), flag)
    hp.vocab_size = read_vocab_size(hp)
    tokenizer = tokenizer_record(hp)
    saved = read_checkpoint(hp.resume, "--resume") if hp.resume else None
    if saved is not None:
        hp.run_id = hp.run_id or saved["hp"]["run_id"]  # continue the same log and checkpoint
        check_resumable(saved["hp"], hp, hp.resume)
        if saved["step"] >= hp.num_iterations:
            done = saved.get("summary", {})
            say(f"--resume={hp.resume}: run {hp.run_id} is already complete (step {saved['step']}/"
                f"{hp.num_iterations}" + (f", val_loss {done['val_loss']:.4f}" if "val_loss" in done else "")
                + "); nothing to train")
            return dict(run_id=hp.run_id, checkpoint=hp.resume, log=None, complete=True, **done)
    if not hp.run_id:
        hp.run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        if world > 1:  # every rank must agree on the run id
            ids = [None] * world
            dist.all_gather_object(ids, hp.run_id)
            hp.run_id = ids[0]
    train = TokenStream(hp.train_files, hp.vocab_size, "training")
    val = TokenStream(hp.val_files, hp.vocab_size, "validation")
    val_sequence_count(hp, val)
    amp, dtype_used = autocast_for(hp, device)
    check_step_fits(hp, world, device, dtype_used)

    model = make_model(hp).to(device)
    optimizers = make_optimizers(model, hp)
    compiled, compile_why = compile_choice(hp, device)
    fns = model_fns(model, compile=compiled)

    warmup = hp.warmup_steps if hp.warmup_steps >= 0 else (10 if device.type == "cuda" else int(compiled))
    if warmup:  # compile kernels and measure the kernel dispatch untimed, then restore the initial state
        say(f"warm-up: {warmup} untimed step{'s' if warmup > 1 else ''}"
            + (" (torch.compile: the first takes a minute or more)" if compiled else ""), flush=True)
        initial = copy.deepcopy(dict(model=model.state_dict(), opts=[o.state_dict() for o in optimizers]))
        with constraints.measuring_dispatch():
            for s in range(warmup):
                try:
                    train_step(model, optimizers, train, hp, s, rank, world, device, amp, fns.loss)
                except torch._dynamo.exc.BackendCompilerFailed as e:
                    if not (compiled and hp.compile == "auto" and device.type == "cpu"):
                        raise
                    # a CPU toolchain inductor cannot use: train eagerly, as --compile=no would
                    compiled, compile_why = False, f"auto: compiling failed ({' '.join(str(e).split())[:160]}), eager instead"
                    fns = model_fns(model, compile=False)
        constraints.share_dispatch_choices()  # every rank runs the kernels rank 0 chose
        model.load_state_dict(initial["model"])
        for o, s in zip(optimizers, initial["opts"]):
            o.load_state_dict(s)
        del initial

    start_step, train_ms = 0, 0.0
    if saved:
        start_step, train_ms = load_checkpoint(saved, model, optimizers)
    log = Logger(hp, rank, world, device, resumed=bool(saved), dtype=dtype_used)
    overrides = preset_overrides(hp)
    if overrides:
        log(f"preset {hp.preset}: " + " ".join(f"{k}={v}" for k, v in overrides.items())
            + "  (the defaults at the top of train_gpt.py are the GPU run)")
    if saved:
        log(f"resumed run {hp.run_id} from step {start_step}/{hp.num_iterations} ({hp.resume})")
    log(f"torch.compile: {'yes' if compiled else 'no'} ({compile_why})")
    if device.type == "cuda":
        log(constraints.dispatch_summary())
    ckpt_path = os.path.join(hp.checkpoint_dir, f"{hp.run_id}.pt")
    end_step = hp.num_iterations if not hp.max_steps_this_run else min(
        hp.num_iterations, start_step + hp.max_steps_this_run)

    result: dict = {"run_id": hp.run_id, "log": log.path, "checkpoint": ckpt_path, "dtype": dtype_used}
    summary: dict = dict(saved.get("summary", {})) if saved else {}
    timed_steps, step = start_step, start_step  # train_ms is cumulative over resumes, and so is the count
    wall0 = last_ckpt = time.monotonic()
    train_ms_at_start = train_ms
    pending: list[torch.Tensor] = []  # train losses (on device) of the steps since the last host sync
    with StopSignals(announce=rank == 0, world=world) as stop:
        want_ckpt, synced, stopping = False, True, False  # want_ckpt and stopping: agreed by all ranks
        while True:
            last = step >= end_step or stopping
            if ((step % hp.val_every == 0 or step == hp.num_iterations) and not (saved and step == start_step)
                    and (step > 0 or hp.val_at_start)):
                val_loss, val_acc, stats = evaluate(model, val, hp, rank, world, device, amp, window_size(hp, step),
                                                    fns.eval_sums)
                summary = dict(step=step, val_loss=val_loss, val_acc=val_acc)
                if rank == 0:
                    report = log_validation(log, model, hp, step, val_loss, val_acc, stats, train_ms, timed_steps)
                    summary["log10_bound"] = report["log10_bound_sharp"]  # the tightest certified bound
            if step > start_step and (last or want_ckpt or (hp.checkpoint_every and step % hp.checkpoint_every == 0)):
                if not weights_finite(model):  # identical weights on every rank, so every rank stops here
                    raise FloatingPointError(f"weights became non-finite by step {step}; stopping without "
                                             f"overwriting the last good checkpoint {ckpt_path}")
                if rank == 0:
                    save_checkpoint(ckpt_path, model, optimizers, hp, step, train_ms, summary, tokenizer)
                last_ckpt, want_ckpt = time.monotonic(), False
            if last:
                break
            if synced:  # the clock restarts after validation and checkpoints, which are not training time
                t0 = time.perf_counter()
            pending.append(train_step(model, optimizers, train, hp, step, rank, world, device, amp, fns.loss))
            timed_steps += 1
            step += 1
            due = rank == 0 and hp.checkpoint_minutes > 0 and time.monotonic() - last_ckpt > 60 * hp.checkpoint_minutes
            synced = host_sync_due(hp, step, end_step, world, bool(stop.received) or due, start_step)
            if not synced:  # the host runs ahead of the device until the next log, validation or checkpoint
                continue
            if device.type == "cuda":
                torch.cuda.synchronize()
            train_ms += 1000 * (time.perf_counter() - t0)
            # one reduction makes every rank agree on the losses since the last sync (a NaN on any rank reaches
            # all), a stop signal and a timed checkpoint
            *loss_sums, stops, dues = all_reduce_sum(torch.stack(pending).float().tolist()
                                                     + [float(stop.received), float(due)], world, device)
            pending.clear()
            losses = [x / world for x in loss_sums]
            loss_value, want_ckpt, stopping = losses[-1], dues > 0, stops > 0
            if stopping and not stop.received:
                stop.received = signal.SIGTERM  # another rank was signalled
            bad = [i for i, x in enumerate(losses) if not math.isfinite(x)]
            if bad:
                first_bad = step - len(losses) + 1 + bad[0]
                log(f"step:{first_bad}/{hp.num_iterations} train_loss:{losses[bad[0]]}")
                kept = f"the last good checkpoint is {ckpt_path}" if os.path.exists(ckpt_path) else "no checkpoint was saved"
                raise FloatingPointError(f"training loss became {losses[bad[0]]} at step {first_bad}; stopping "
                                         f"({kept}). Try a smaller learning rate or a tighter --w_max")
            if step == start_step + ESTIMATE_AFTER and step < end_step:
                say(time_estimate(hp, (train_ms - train_ms_at_start) / 1000 / ESTIMATE_AFTER, step, end_step))
            if step % hp.log_every == 0 or step == end_step:
                eta = (time.monotonic() - wall0) / (step - start_step) * (end_step - step)
                log(f"step:{step}/{hp.num_iterations} train_loss:{loss_value:.4f} train_time:{train_ms:.0f}ms "
                    f"step_avg:{train_ms / timed_steps:.2f}ms", console_suffix=f" eta:{format_duration(eta)}"
                    if step < end_step else "")
    if device.type == "cuda":
        log(f"peak memory allocated: {torch.cuda.max_memory_allocated() // 2**20} MiB")
    result.update(summary, step=step)
    resume_hint = f"{launch_command(argv, world)} --resume={ckpt_path}"
    if stopping:
        result["stopped"] = signal.Signals(stop.received).name
        log(f"stopped by {result['stopped']} at step {step}/{hp.num_iterations}; checkpoint {ckpt_path}")
        say(f"continue with: {resume_hint}")
    elif step < hp.num_iterations:
        log(f"stopped at step {step}/{hp.num_iterations} (--max_steps_this_run={hp.max_steps_this_run}); "
            f"checkpoint {ckpt_path}")
        say(f"continue with: {resume_hint}")
    else:
        bound = f", certified Lipschitz bound 10^{summary['log10_bound']:.2f}" if "log10_bound" in summary else ""
        say(f"run {hp.run_id} complete: step {step}/{hp.num_iterations}, val_loss {summary.get('val_loss', 0):.4f}, "
            f"val_acc {summary.get('val_acc', 0):.4f}{bound}\n  log: {log.path}\n  checkpoint: {ckpt_path}")
        if rank == 0:
            say(end_of_run_sample(model, tokenizer, hp, device, ckpt_path))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    try:
        outcome = main()
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {e}", file=sys.stderr)
        if dist.is_initialized():
            dist.destroy_process_group()
        sys.exit(2)
    except KeyboardInterrupt:
        print("aborted: no checkpoint saved for the current step", file=sys.stderr)
        sys.exit(130)
    if outcome.get("stopped"):
        sys.exit(128 + signal.Signals[outcome["stopped"]].value)
