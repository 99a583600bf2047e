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
import json
import math
import os
import platform
import subprocess
import sys
import time
import uuid
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
from data.shards import read_shard  # noqa: E402
from muon import Muon, default_orth_dtype  # noqa: E402

# -----------------------------------------------------------------------------
# Hyperparameters. Every field can be set on the command line as --field=value.


@dataclass
class Hyperparameters:
    preset: str = "shakespeare"
    # data (globs of .bin shards; vocab_size 0 = read it from meta.json beside the shards)
    train_files: str = "data/shakespeare/*train*.bin"
    val_files: str = "data/shakespeare/*val*.bin"
    vocab_size: int = 0
    bos_token: int = -1  # token that starts each document (50256 for FineWeb); -1: one long document
    sample: str = "random"  # "random" windows (seeded per step) or "sequential" through the shards
    val_tokens: int = 65536  # tokens of the val split used at each validation (whole sequences)
    # model
    arch: str = "lipschitz"  # "lipschitz" (norm-free, capped) or "speedrun" (RMSNorm, QK norm, softcap)
    n_layer: int = 3
    n_head: int = 4
    head_dim: int = 64
    d_model: int = 256
    mlp_ratio: int = 4
    attn_logit_scale: float = 8.0  # s in softmax(s q k^T / d_head)
    final_logit_scale: float = 8.0  # multiplies the logits (and the Lipschitz bound)
    # batch: each step sees batch_size sequences of seq_len tokens, micro_batch_size per rank at a time
    seq_len: int = 256
    batch_size: int = 64
    micro_batch_size: int = 64
    window_min: int = 0  # sliding-window attention grows from window_min to window_max tokens (0 = full)
    window_max: int = 0
    # optimization
    num_iterations: int = 2000
    cooldown_frac: float = 0.4  # lr decays linearly to 0.1x over the last cooldown_frac of steps
    muon_lr: float = 0.05
    lm_head_lr: float = 0.005
    embed_lr: float = 0.1
    muon_momentum_warmup_steps: int = 300
    weight_decay: float = 0.0
    optimizer: str = "muon"  # "muon" for matrices (Adam for embeddings), or "adamw" for everything
    adamw_lr: float = 0.003
    # Lipschitz constraints
    constraint: str = "soft_cap"  # see constraints.METHODS
    w_max: float = 1.0  # RMS->RMS cap of every hidden matrix
    lm_head_w_max: float = 1.0
    emb_w_max: float = 1.0  # RMS cap of each embedding row
    orthogonalizer: str = "fork"
    # evaluation, logging, checkpoints
    val_every: int = 100
    log_every: int = 10
    checkpoint_every: int = 0  # 0: only at the end
    checkpoint_dir: str = "checkpoints"
    resume: str = ""
    log_dir: str = "logs"
    run_id: str = ""
    seed: int = 0
    # execution
    dtype: str = "auto"  # autocast: "auto" (bf16 on CUDA and on CPUs with native bf16, else fp32), "bf16", "fp32"
    compile: str = "auto"  # torch.compile each block: "auto" (on CUDA), "yes", "no"
    warmup_steps: int = -1  # untimed kernel warm-up steps, state restored after; -1 = 10 on CUDA, 0 on CPU
    max_steps_this_run: int = 0  # stop (with a checkpoint) after this many steps; 0 = run to the end

    def __post_init__(self):
        choices = dict(arch=("lipschitz", "speedrun"), sample=("random", "sequential"), optimizer=("muon", "adamw"),
                       dtype=("auto", "bf16", "fp32"), compile=("auto", "yes", "no"))
        for key, ok in choices.items():
            if getattr(self, key) not in ok:
                raise ValueError(f"--{key}={getattr(self, key)!r}: use one of {', '.join(ok)}")
        for key in ("seq_len", "batch_size", "micro_batch_size", "val_every", "log_every", "val_tokens",
                    "num_iterations"):
            if getattr(self, key) <= 0:
                raise ValueError(f"--{key}={getattr(self, key)} must be > 0")
        if self.optimizer == "adamw" and self.constraint == "soft_cap":
            raise ValueError("--constraint=soft_cap is coupled to Muon's bounded update and caps nothing under "
                             "AdamW; use --constraint=spectral_normalize, hard_cap, svd_cap or none")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "Hyperparameters":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - fields
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)}; valid: {sorted(fields)}")
        return cls(**{**PRESETS[name], "preset": name, **overrides})

    @classmethod
    def from_args(cls, argv: list[str]) -> "Hyperparameters":
        """Parse `--field=value` arguments (with `--preset=name` applied first)."""
        if any(a in ("-h", "--help") for a in argv):
            print(__doc__.strip() + "\n\nHyperparameters (--field=value; presets: " + ", ".join(PRESETS) + "):")
            for f in dataclasses.fields(cls):
                print(f"  --{f.name}={f.default!r}")
            raise SystemExit(0)
        kv = {}
        for arg in argv:
            if not (arg.startswith("--") and "=" in arg):
                raise ValueError(f"bad argument {arg!r}: use --field=value, e.g. --w_max=2")
            key, value = arg[2:].split("=", 1)
            kv[key.replace("-", "_")] = value
        preset = kv.pop("preset", "shakespeare")
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        overrides = {}
        for key, value in kv.items():
            if key not in types:
                raise ValueError(f"unknown hyperparameter --{key}; valid: {sorted(types)}")
            overrides[key] = _parse_value(value, types[key], key)
        return cls.from_preset(preset, **overrides)


def _parse_value(value: str, typ: str, key: str):
    try:
        if typ == "int":
            return int(value)
        if typ == "float":
            return float(value)
    except ValueError:
        raise ValueError(f"--{key}={value!r} is not a valid {typ}") from None
    return value


PRESETS = {
    # GPT-2 small on FineWeb10B, 8xH100, ~0.7B tokens (paper Table 1 scale)
    "speedrun": dict(
        train_files="data/fineweb10B/fineweb_train_*.bin", val_files="data/fineweb10B/fineweb_val_*.bin",
        vocab_size=50257, bos_token=50256, sample="sequential", val_tokens=10485760,
        n_layer=12, n_head=6, head_dim=128, d_model=768, attn_logit_scale=24.0, final_logit_scale=1.0,
        seq_len=48 * 1024, batch_size=8, micro_batch_size=1, window_min=128, window_max=1792,
        num_iterations=1770, val_every=125, log_every=1, w_max=8.0, lm_head_w_max=8.0,
    ),
    # the paper's Shakespeare model: d 256, 3 blocks, 4 heads, seq 256, batch 64, 2000 steps
    "shakespeare": dict(),
    # a tiny run for tests and a first try (well under a minute on a laptop CPU)
    "smoke": dict(
        n_layer=2, n_head=2, head_dim=32, d_model=64, seq_len=64, batch_size=16, micro_batch_size=16,
        num_iterations=60, val_every=20, log_every=10, val_tokens=8192, muon_momentum_warmup_steps=20,
    ),
}

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
    """RoPE on the last dim of (B, T, H, D); a rotation per token, so it preserves every norm."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        freqs = base ** (-torch.arange(0, head_dim // 2, dtype=torch.float32) / (head_dim // 2))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, x):
        t = torch.arange(x.shape[1], device=x.device, dtype=torch.float32)
        theta = torch.outer(t, self.freqs)[None, :, None, :]
        cos, sin = theta.cos().to(x.dtype), theta.sin().to(x.dtype)
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
    return torch.compile(create_block_mask, dynamic=False), torch.compile(flex_attention, dynamic=False)


class AttentionMask:
    """One attention pattern for a batch, in the form the attention backend wants."""

    def __init__(self, idx: torch.Tensor, bos_token: int, window: int, flex: bool | None = None):
        B, T = idx.shape
        docs = (idx == bos_token).cumsum(dim=1) if bos_token >= 0 else None
        self.causal_only = docs is None and (window <= 0 or window >= T)
        self.flex = use_flex_attention(idx.device) if flex is None else flex
        window_t = torch.tensor(window if 0 < window < T else T, device=idx.device)
        mask_mod = attention_mask_mod(docs, window_t)
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
        self.rotary = Rotary(hp.head_dim)
        # lipschitz: s/d_head (the provable 1/d form times s); speedrun: the usual 1/sqrt(d_head)
        self.scale = hp.attn_logit_scale / hp.head_dim if hp.arch == "lipschitz" else hp.head_dim ** -0.5

    def forward(self, x, mask: AttentionMask):
        B, T, _ = x.shape
        q, k, v = (lin(x).view(B, T, self.n_head, self.head_dim) for lin in (self.q, self.k, self.v))
        if self.arch == "speedrun":
            q, k = rms_norm(q), rms_norm(k)  # QK norm
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


class GPT(nn.Module):
    """Token ids (B, T) -> logits (B, T, padded vocab). arch "lipschitz": norm-free, every matrix capped,
    logits a certified-Lipschitz function of the embedding output (see lipschitz.py)."""

    def __init__(self, hp: Hyperparameters):
        super().__init__()
        self.hp, self.arch = hp, hp.arch
        self.vocab_size = hp.vocab_size
        self.embed = nn.Embedding(padded_vocab(hp.vocab_size), hp.d_model)
        self.blocks = nn.ModuleList(Block(hp) for _ in range(hp.n_layer))
        self.lm_head = CastedLinear(hp.d_model, padded_vocab(hp.vocab_size))
        self.final_logit_scale = hp.final_logit_scale
        self.softcap = 30.0  # speedrun arch only
        for name, p in self.named_parameters():
            if p.ndim == 2 and name != "embed.weight":
                semi_orthogonal_(p.data)
        for block in self.blocks:  # zero-init out projections and lm_head
            nn.init.zeros_(block.attn.o.weight)
            nn.init.zeros_(block.mlp.proj.weight)
        nn.init.zeros_(self.lm_head.weight)
        with torch.no_grad():
            self.embed.weight.copy_(constraints.cap_row_rms(self.embed.weight, hp.emb_w_max))

    def logits_from_embeddings(self, x, mask: AttentionMask | None = None, stats: list | None = None):
        """Embedding output x (B, T, d) -> logits (B, T, V_pad), in float32. The function lipschitz.py
        certifies (in the ||.||_inf-RMS norm over tokens). `stats`, if given, receives per layer
        (max |entry|, max token RMS) of the residual stream."""
        if mask is None:
            mask = AttentionMask(torch.zeros(x.shape[:2], dtype=torch.long, device=x.device), -1, 0)
        if self.arch == "speedrun":
            x = rms_norm(x)
        for block in self.blocks:
            x = block(x, mask)
            if stats is not None:
                xf = x.detach().float()
                stats.append((xf.abs().amax().item(), xf.square().mean(-1).sqrt().amax().item()))
        if self.arch == "speedrun":
            x = rms_norm(x)
        logits = self.lm_head(x)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32, or fp64 in a fp64 model
        if self.arch == "speedrun":
            return self.softcap * torch.tanh(logits / self.softcap)
        return self.final_logit_scale * logits

    def forward(self, idx, window: int = 0, stats: list | None = None):
        mask = AttentionMask(idx, self.hp.bos_token, window)
        return self.logits_from_embeddings(self.embed(idx), mask, stats)


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


def micro_batches(stream: TokenStream, hp: Hyperparameters, step: int, rank: int, world: int, device):
    """Yield (inputs, targets) of shape (micro batch, seq_len) for this rank's share of a step."""
    starts = batch_starts(hp, step, stream.total)
    per_rank, micro = hp.batch_size // world, micro_batch_size(hp, world)
    mine = starts[rank * per_rank:(rank + 1) * per_rank]
    for i in range(0, per_rank, micro):
        rows = [stream.window(int(s), hp.seq_len + 1) for s in mine[i:i + micro]]
        buf = torch.from_numpy(np.stack(rows).astype(np.int64)).to(device, non_blocking=True)
        yield buf[:, :-1], buf[:, 1:]


def read_vocab_size(hp: Hyperparameters) -> int:
    """vocab_size from meta.json beside the training shards, when not given."""
    if hp.vocab_size > 0:
        return hp.vocab_size
    files = sorted(glob.glob(os.path.join(ROOT, hp.train_files)))
    if not files:
        raise FileNotFoundError(f"no training shards match {hp.train_files!r}. {data_hint(hp.train_files)}")
    meta = os.path.join(os.path.dirname(files[0]), "meta.json")
    if not os.path.exists(meta):
        raise FileNotFoundError(f"{meta} is missing: pass --vocab_size= or rebuild the shards")
    with open(meta) as f:
        return int(json.load(f)["vocab_size"])


def window_size(hp: Hyperparameters, step: int) -> int:
    """Sliding window that grows linearly over training in blocks of 128 tokens (0 = full attention)."""
    if hp.window_max <= 0:
        return 0
    frac = step / max(1, hp.num_iterations)
    w = hp.window_min + frac * (hp.window_max - hp.window_min)
    return int(128 * max(1, round(w / 128)))


# -----------------------------------------------------------------------------
# Optimizers and schedules


def make_optimizers(model: GPT, hp: Hyperparameters) -> list[torch.optim.Optimizer]:
    """Muon for hidden matrices and the lm_head, Adam for the embedding (or AdamW for all)."""
    hidden = [p for n, p in model.named_parameters() if param_kind(n) in ("qkv", "o", "fc", "proj")]
    if hp.optimizer == "adamw":
        return [torch.optim.AdamW(model.parameters(), lr=hp.adamw_lr, betas=(0.9, 0.95),
                                  weight_decay=hp.weight_decay)]
    if hp.optimizer != "muon":
        raise ValueError(f"unknown --optimizer={hp.optimizer!r}; use muon or adamw")
    muon = Muon([
        dict(params=hidden, lr=hp.muon_lr, w_max=hp.w_max),
        dict(params=[model.lm_head.weight], lr=hp.lm_head_lr, w_max=hp.lm_head_w_max),
    ], lr=hp.muon_lr, momentum=0.95, nesterov=True, weight_decay=hp.weight_decay,
        constraint=hp.constraint, orthogonalizer=hp.orthogonalizer)
    adam = torch.optim.Adam([model.embed.weight], lr=hp.embed_lr, betas=(0.8, 0.95), eps=1e-10)
    return [muon, adam]


def lr_multiplier(hp: Hyperparameters, step: int) -> float:
    """1 until the cooldown, then linear to 0.1 at the last step."""
    frac = step / hp.num_iterations
    if frac < 1 - hp.cooldown_frac:
        return 1.0
    w = (1 - frac) / hp.cooldown_frac
    return w * 1.0 + (1 - w) * 0.1


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
def constrain_non_muon(model: GPT, hp: Hyperparameters):
    """Caps that are not Muon's job: embedding rows always (lipschitz arch); matrices under AdamW."""
    if hp.arch != "lipschitz":
        return
    model.embed.weight.copy_(constraints.cap_row_rms(model.embed.weight, hp.emb_w_max))
    if hp.optimizer == "adamw" and hp.constraint not in ("none", "weight_decay"):
        for n, p in model.named_parameters():
            if p.ndim == 2 and n != "embed.weight":
                cap = hp.lm_head_w_max if n.startswith("lm_head") else hp.w_max
                p.copy_(constraints.apply(p, hp.constraint, cap))


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
        dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=device if cuda else None)
    return rank, world, device


def all_reduce_grads(model: nn.Module, world: int):
    if world == 1:
        return
    works = [dist.all_reduce(p.grad, async_op=True) for p in model.parameters() if p.grad is not None]
    for w in works:
        w.wait()
    for p in model.parameters():
        if p.grad is not None:
            p.grad.div_(world)


def all_reduce_sum(values: list[float], world: int, device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(t)
    return t.tolist()


# -----------------------------------------------------------------------------
# Evaluation and the numbers every validation reports


@torch.no_grad()
def evaluate(model: GPT, val: TokenStream, hp: Hyperparameters, rank, world, device, amp, window):
    """-> (val loss, val acc, per-layer (max |entry|, max token RMS) of the residual stream) over the first
    hp.val_tokens tokens of the val split: the same sequences for any world size."""
    n_seq = max(1, hp.val_tokens // hp.seq_len)
    if n_seq * hp.seq_len + 1 > val.total:
        raise ValueError(f"--val_tokens={hp.val_tokens} exceeds the {val.total} tokens of the val split; lower it")
    mine = range(rank * n_seq // world, (rank + 1) * n_seq // world)  # shares may differ by one
    loss_sum = correct = count = 0.0
    stats = torch.zeros(hp.n_layer, 2, device=device, dtype=torch.float64)
    for i in range(0, len(mine), hp.micro_batch_size):
        rows = [val.window(s * hp.seq_len, hp.seq_len + 1) for s in mine[i:i + hp.micro_batch_size]]
        buf = torch.from_numpy(np.stack(rows).astype(np.int64)).to(device)
        x, y = buf[:, :-1], buf[:, 1:]
        layer_stats: list = []
        with amp:
            logits = model(x, window, stats=layer_stats)[..., :hp.vocab_size]
        stats = torch.maximum(stats, torch.tensor(layer_stats, device=device, dtype=torch.float64))
        loss_sum += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
        count += y.numel()
    loss_sum, correct, count = all_reduce_sum([loss_sum, correct, count], world, device)
    if world > 1:
        dist.all_reduce(stats, op=dist.ReduceOp.MAX)
    return loss_sum / count, correct / count, stats.tolist()


@torch.no_grad()
def weight_norms(model: GPT) -> dict[str, float]:
    """Max RMS->RMS norm per weight family, and the max embedding row RMS."""
    out: dict[str, float] = {}
    for n, p in model.named_parameters():
        kind = param_kind(n)
        if kind == "emb":
            v = p.float().square().mean(-1).sqrt().max().item()
            kind = "emb_row_rms"
        else:
            v = constraints.rms_norm_op(p.detach().float()).item()
        out[kind] = max(out.get(kind, 0.0), v)
    return out


# -----------------------------------------------------------------------------
# Logging: source of every project module, versions, hardware, then speedrun-format lines

SEPARATOR = "=" * 100


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


class Logger:
    """Writes logs/<run_id>.txt (rank 0 only) and echoes run lines to the console."""

    def __init__(self, hp: Hyperparameters, rank: int, world: int, device, resumed: bool):
        self.path = None
        if rank != 0:
            return
        os.makedirs(hp.log_dir, exist_ok=True)
        self.path = os.path.join(hp.log_dir, f"{hp.run_id}.txt")
        with open(self.path, "a" if resumed else "w") as f:
            if not resumed:
                for src in project_sources():
                    with open(src) as code:
                        f.write(f"# {os.path.relpath(src, ROOT)}\n{code.read()}\n{SEPARATOR}\n")
                f.write(hardware_summary(device) + f"\n{SEPARATOR}\n")
            config = dict(dataclasses.asdict(hp), world_size=world, tokens_per_step=hp.batch_size * hp.seq_len)
            f.write("config: " + json.dumps(config, sort_keys=True) + "\n")

    def __call__(self, line: str, console: bool = True):
        if self.path is None:
            return
        if console:
            print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


def log_validation(log: Logger, model: GPT, hp: Hyperparameters, step: int, val_loss, val_acc, stats,
                   train_ms: float, timed_steps: int):
    head = f"step:{step}/{hp.num_iterations}"
    log(f"{head} val_loss:{val_loss:.4f} val_acc:{val_acc:.4f} train_time:{train_ms:.0f}ms "
        f"step_avg:{train_ms / max(1, timed_steps):.2f}ms")
    report = lipschitz.bound_report(model)
    log(f"{head} lipschitz_bound_log10:{report['log10_bound']:.4f} lipschitz_bound:{report['bound']:.6g} "
        f"lipschitz_bound_tight_log10:{report['log10_bound_tight']:.4f}")
    norms = weight_norms(model)
    log(f"{head} max_weight_norm " + " ".join(f"{k}:{v:.4f}" for k, v in norms.items()))
    if stats:
        log(f"{head} act_max_entry:{max(s[0] for s in stats):.4f} act_max_rms:{max(s[1] for s in stats):.4f}")
        log(f"{head} act_per_layer " + " ".join(f"L{i}_entry:{e:.3f} L{i}_rms:{r:.3f}"
                                                for i, (e, r) in enumerate(stats)), console=False)


# -----------------------------------------------------------------------------
# Checkpoints: written to a temp file then renamed, loaded with weights_only=True


def save_checkpoint(path: str, model, optimizers, hp: Hyperparameters, step: int, train_ms: float):
    """Rank 0's view: model, optimizer states, step (which fixes the loader position) and RNG."""
    state = dict(step=step, train_ms=train_ms, hp=dataclasses.asdict(hp), model=model.state_dict(),
                 optimizers=[opt.state_dict() for opt in optimizers], rng=torch.get_rng_state())
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# Fields a resumed run may change; any other difference from the checkpoint would silently train another run.
RESUME_MAY_CHANGE = {"resume", "max_steps_this_run", "log_dir", "checkpoint_dir", "checkpoint_every", "log_every",
                     "val_every", "compile", "warmup_steps", "micro_batch_size"}


def read_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume={path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise ValueError(f"--resume={path}: not a readable checkpoint ({type(e).__name__}: {e})") from None


def check_resumable(saved: dict, hp: Hyperparameters, path: str):
    diff = {k: (saved.get(k), v) for k, v in dataclasses.asdict(hp).items()
            if k not in RESUME_MAY_CHANGE and saved.get(k) != v}
    if diff:
        raise ValueError(f"--resume={path}: hyperparameters differ from the checkpoint (saved, given): {diff}; "
                         f"pass the checkpoint's values or start a new run")


def load_checkpoint(state: dict, model, optimizers) -> tuple[int, float]:
    model.load_state_dict(state["model"])
    if len(state["optimizers"]) != len(optimizers):
        raise ValueError(f"checkpoint has {len(state['optimizers'])} optimizers, this run {len(optimizers)}")
    for opt, s in zip(optimizers, state["optimizers"]):
        opt.load_state_dict(s)
    torch.set_rng_state(state["rng"])
    return state["step"], state["train_ms"]


def weights_finite(model: nn.Module) -> bool:
    return bool(torch.stack([p.isfinite().all() for p in model.parameters()]).all())


# -----------------------------------------------------------------------------
# Training


def autocast_for(hp: Hyperparameters, device):
    native_bf16 = default_orth_dtype(device) == torch.bfloat16  # CUDA, or a CPU with bf16 matmul units
    dtype = hp.dtype if hp.dtype != "auto" else ("bf16" if native_bf16 else "fp32")
    if dtype not in ("bf16", "fp32"):
        raise ValueError(f"--dtype={hp.dtype!r}: use auto, bf16 or fp32")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")


def train_step(model, optimizers, train, hp, step, rank, world, device, amp) -> torch.Tensor:
    """One optimizer step over this rank's share of the global batch; returns the mean train loss."""
    window = window_size(hp, step)
    n_micro = hp.batch_size // (world * micro_batch_size(hp, world))
    total = torch.zeros((), device=device)
    for x, y in micro_batches(train, hp, step, rank, world, device):
        with amp:
            logits = model(x, window)[..., :hp.vocab_size]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)) / n_micro
        loss.backward()
        total += loss.detach()
    all_reduce_grads(model, world)
    set_schedules(optimizers, hp, step)
    for opt in optimizers:
        opt.step()
    constrain_non_muon(model, hp)
    model.zero_grad(set_to_none=True)
    return total


def main(argv: list[str] | None = None) -> dict:
    hp = Hyperparameters.from_args(sys.argv[1:] if argv is None else argv)
    rank, world, device = setup_distributed()
    micro_batch_size(hp, world)  # validates the batch geometry before any work
    hp.vocab_size = read_vocab_size(hp)
    saved = read_checkpoint(hp.resume) if hp.resume else None
    if saved is not None:
        hp.run_id = hp.run_id or saved["hp"]["run_id"]  # continue the same log and checkpoint
        check_resumable(saved["hp"], hp, hp.resume)
    if not hp.run_id:
        hp.run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        if world > 1:  # every rank must agree on the run id
            ids = [None] * world
            dist.all_gather_object(ids, hp.run_id)
            hp.run_id = ids[0]
    train = TokenStream(hp.train_files, hp.vocab_size, "training")
    val = TokenStream(hp.val_files, hp.vocab_size, "validation")
    amp = autocast_for(hp, device)

    model = make_model(hp).to(device)
    optimizers = make_optimizers(model, hp)
    if hp.compile == "yes" or (hp.compile == "auto" and device.type == "cuda"):
        for block in model.blocks:  # masks are built eagerly; FlexAttention is fused inside each block
            block.compile(dynamic=False)

    warmup = hp.warmup_steps if hp.warmup_steps >= 0 else (10 if device.type == "cuda" else 0)
    if warmup and not saved:  # compile kernels untimed, then restore the initial state
        initial = copy.deepcopy(dict(model=model.state_dict(), opts=[o.state_dict() for o in optimizers]))
        for s in range(warmup):
            train_step(model, optimizers, train, hp, s, rank, world, device, amp)
        model.load_state_dict(initial["model"])
        for o, s in zip(optimizers, initial["opts"]):
            o.load_state_dict(s)

    start_step, train_ms = 0, 0.0
    if saved:
        start_step, train_ms = load_checkpoint(saved, model, optimizers)
        if start_step > hp.num_iterations:
            raise ValueError(f"--resume={hp.resume} is at step {start_step}, past --num_iterations={hp.num_iterations}")
    log = Logger(hp, rank, world, device, resumed=bool(saved))
    ckpt_path = os.path.join(hp.checkpoint_dir, f"{hp.run_id}.pt")
    end_step = hp.num_iterations if not hp.max_steps_this_run else min(
        hp.num_iterations, start_step + hp.max_steps_this_run)

    result: dict = {"run_id": hp.run_id, "log": log.path, "checkpoint": ckpt_path}
    timed_steps, step = start_step, start_step  # train_ms is cumulative over resumes, and so is the count
    while True:
        last = step >= end_step
        if (step % hp.val_every == 0 or step == hp.num_iterations) and not (saved and step == start_step):
            val_loss, val_acc, stats = evaluate(model, val, hp, rank, world, device, amp, window_size(hp, step))
            if rank == 0:
                log_validation(log, model, hp, step, val_loss, val_acc, stats, train_ms, timed_steps)
            result.update(val_loss=val_loss, val_acc=val_acc)
        if step > start_step and (last or (hp.checkpoint_every and step % hp.checkpoint_every == 0)):
            if not weights_finite(model):  # identical weights on every rank, so every rank stops here
                raise FloatingPointError(f"weights became non-finite by step {step}; stopping without "
                                         f"overwriting the last good checkpoint {ckpt_path}")
            if rank == 0:
                save_checkpoint(ckpt_path, model, optimizers, hp, step, train_ms)
        if last:
            break
        t0 = time.perf_counter()
        loss = train_step(model, optimizers, train, hp, step, rank, world, device, amp)
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_ms += 1000 * (time.perf_counter() - t0)
        timed_steps += 1
        step += 1
        loss_value = all_reduce_sum([loss.item()], world, device)[0] / world
        if not math.isfinite(loss_value):
            log(f"step:{step}/{hp.num_iterations} train_loss:{loss_value}")
            kept = f"the last good checkpoint is {ckpt_path}" if os.path.exists(ckpt_path) else "no checkpoint was saved"
            raise FloatingPointError(f"training loss became {loss_value} at step {step}; stopping ({kept}). "
                                     f"Try a smaller learning rate or a tighter --w_max")
        if step % hp.log_every == 0 or step == end_step:
            log(f"step:{step}/{hp.num_iterations} train_loss:{loss_value:.4f} train_time:{train_ms:.0f}ms "
                f"step_avg:{train_ms / timed_steps:.2f}ms")
    if device.type == "cuda":
        log(f"peak memory allocated: {torch.cuda.max_memory_allocated() // 2**20} MiB")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {e}", file=sys.stderr)
        if dist.is_initialized():
            dist.destroy_process_group()
        sys.exit(2)
