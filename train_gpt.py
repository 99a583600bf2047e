"""The Lipschitz speedrun: GPT-2-small on FineWeb (8xH100) or a small Shakespeare model (CPU), with every
weight matrix spectrally capped after every Muon step, so the network has a certified Lipschitz bound
throughout training. Read top to bottom: hyperparameters, model, data, optimizers, evaluation, step, loop.
Run management (checkpoints, signals, logging, checks) lives in run_control.py; flag parsing in flags.py.

    torchrun --standalone --nproc_per_node=8 train_gpt.py --preset=speedrun
    python train_gpt.py --preset=shakespeare --w_max=2 --seed=1
"""
from __future__ import annotations

import copy
import itertools
import math
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Callable

import numpy as np

# CUDA: let the allocator grow segments instead of fragmenting (as the speedrun does); read when CUDA starts
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import constraints  # noqa: E402
import flags  # noqa: E402
import kernels  # noqa: E402
import lipschitz  # noqa: E402
import run_control as rc  # noqa: E402
from data.shakespeare import decoder, encoder  # noqa: E402
from data.stream import TokenStream, read_vocab_size, tokenizer_record  # noqa: E402
from lipschitz import ATTN_OUT_DIVISOR, GELU_DIVISOR  # noqa: E402
from costs import forward_backward_flops, step_memory_bytes  # noqa: E402
from lm_head import ChunkedLinearCrossEntropy, chunked_loss_sums, head_logits, loss_chunk_tokens, padded_vocab  # noqa: E402
from masks import AttentionMask, use_flex_attention  # noqa: E402
from muon import ORTH_MAX_SINGULAR_VALUE, Muon, default_orth_dtype  # noqa: E402


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
    max_step_seconds: float = 3600.0  # refuse, before step 0, a run whose one step is estimated to take longer (0 = off)
    stop_grace_seconds: float = 60.0  # after a stop signal, end without a checkpoint if a micro-batch runs this long

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "Hyperparameters":
        return flags.from_preset(cls, PRESETS, name, **overrides)

    @classmethod
    def from_args(cls, argv: list[str]) -> "Hyperparameters":
        """Parse `--field=value` arguments (with `--preset=name` applied first)."""
        return flags.parse_args(cls, PRESETS, argv, lambda: flags.usage(cls, __doc__, PRESETS, CHOICES))


PRESETS = {
    # the defaults above: GPT-2 small on FineWeb10B, 8xH100, ~0.7B tokens (paper Table 1 scale)
    "speedrun": dict(),
    # the paper's Shakespeare model on the CPU: d 256, 3 blocks, 4 heads, seq 256, batch 64, 2000 steps
    "shakespeare": dict(
        train_files="data/shakespeare/*train*.bin", val_files="data/shakespeare/*val*.bin", vocab_size=0,
        bos_token=-1, sample="random", val_tokens=65536,
        n_layer=3, n_head=4, head_dim=64, d_model=256, attn_logit_scale=8.0, final_logit_scale=8.0,
        seq_len=256, batch_size=64, micro_batch_size=64, window_min=0, window_max=0, window_pattern="L", lm_head_fp8=0,
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
    """Every check that needs no data or device, so a bad combination fails before step 0, naming the flag.
    main() calls it once every value is known (vocab_size may come from meta.json)."""
    flags.check_ranges(
        hp, CHOICES,
        positive=("n_layer", "n_head", "head_dim", "d_model", "mlp_ratio", "seq_len", "batch_size",
                  "micro_batch_size", "num_iterations", "val_every", "log_every", "val_tokens", "w_max",
                  "lm_head_w_max", "emb_w_max", "attn_logit_scale", "final_logit_scale", "stop_grace_seconds"),
        non_negative=("vocab_size", "window_min", "window_max", "muon_lr", "lm_head_lr", "embed_lr", "adamw_lr",
                      "weight_decay", "muon_momentum_warmup_steps", "checkpoint_every", "checkpoint_minutes",
                      "max_steps_this_run", "max_step_seconds"),
        switches=("zero_init_out", "memory_check", "val_at_start", "lm_head_fp8"),
        unit_interval=("cooldown_frac", "lr_final_frac"))
    if hp.window_max and hp.window_min > hp.window_max:
        raise ValueError(f"--window_min={hp.window_min} exceeds --window_max={hp.window_max}")
    if not hp.window_pattern or set(hp.window_pattern) - {"L", "S"}:
        raise ValueError(f"--window_pattern={hp.window_pattern!r}: use the letters L (long) and S (short)")
    skipped = skipped_attention_layers(hp)
    if any(not 0 <= i < hp.n_layer for i in skipped):
        raise ValueError(f"--attn_skip_layers={hp.attn_skip_layers}: blocks are numbered 0..{hp.n_layer - 1}")
    if skipped and hp.arch != "speedrun":
        raise ValueError(f"--attn_skip_layers={hp.attn_skip_layers}: only with --arch=speedrun (the certificate "
                         f"of the lipschitz arch assumes attention in every block)")
    if hp.val_tokens < hp.seq_len:
        raise ValueError(f"--val_tokens={hp.val_tokens} is less than one sequence of --seq_len={hp.seq_len}: "
                         f"raise --val_tokens or lower --seq_len")
    if hp.vocab_size >= 2 ** 16:
        raise ValueError(f"--vocab_size={hp.vocab_size}: shards hold uint16 tokens, so it must be < 65536")
    if hp.vocab_size and hp.bos_token >= hp.vocab_size:
        raise ValueError(f"--bos_token={hp.bos_token} is not a token of a vocab of {hp.vocab_size}; use -1 for none")
    if hp.optimizer == "adamw" and constraints.PROPERTIES[hp.constraint].coupled:
        raise ValueError(f"--constraint={hp.constraint} is coupled to Muon's bounded update and caps nothing "
                         f"under AdamW; use --constraint=spectral_normalize, hard_cap, svd_cap or none")


def skipped_attention_layers(hp: Hyperparameters) -> set[int]:
    try:
        return {int(x) for x in hp.attn_skip_layers.split(",") if x.strip()}
    except ValueError:
        raise ValueError(f"--attn_skip_layers={hp.attn_skip_layers!r}: give block numbers like 7 or 3,7") from None


# -----------------------------------------------------------------------------
# Model. Weights are stored (d_out, d_in); norms are RMS->RMS: ||W||_* = sqrt(d_in/d_out) sigma_max(W).


class CastedLinear(nn.Linear):
    """Bias-free linear layer whose fp32 weight is cast to the activation dtype (bf16 under autocast)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__(d_in, d_out, bias=False)

    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype))


def semi_orthogonal_(w: torch.Tensor, norm: float = 1.0) -> torch.Tensor:
    """Init W (d_out, d_in) semi-orthogonal, scaled to RMS->RMS norm exactly `norm`."""
    with torch.no_grad():
        return nn.init.orthogonal_(w).mul_(norm * math.sqrt(w.shape[0] / w.shape[1]))


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


def batch_mask(idx: torch.Tensor, hp: Hyperparameters, window: int) -> AttentionMask:
    """The attention pattern of a batch of token ids (B, T) for every kind of block the model has."""
    return AttentionMask(idx, hp.bos_token, window, kinds=hp.window_pattern)


def rms_norm(x):
    return F.rms_norm(x, (x.size(-1),))


class Attention(nn.Module):
    def __init__(self, hp: Hyperparameters, layer: int):
        super().__init__()
        self.n_head, self.head_dim, self.arch = hp.n_head, hp.head_dim, hp.arch
        self.kind = hp.window_pattern[layer % len(hp.window_pattern)]  # "L" or "S": which window it sees
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
        y = mask.attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), self.scale, self.kind)
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
    def __init__(self, hp: Hyperparameters, layer: int):
        super().__init__()
        self.arch = hp.arch
        self.attn, self.mlp = Attention(hp, layer), MLP(hp)
        self.skip_attn = layer in skipped_attention_layers(hp)  # the speedrun's attention-free block (arch speedrun)
        self.alpha = 1.0 / (2 * hp.n_layer)  # convex residual weight

    def forward(self, x, mask: AttentionMask):
        if self.arch == "lipschitz":  # convex residuals (1-a) x + a block(x)
            x = (1 - self.alpha) * x + self.alpha * self.attn(x, mask)
            return (1 - self.alpha) * x + self.alpha * self.mlp(x)
        if not self.skip_attn:
            x = x + self.attn(rms_norm(x), mask)
        return x + self.mlp(rms_norm(x))


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
        self.blocks = nn.ModuleList(Block(hp, i) for i in range(hp.n_layer))
        self.lm_head = CastedLinear(hp.d_model, padded_vocab(hp.vocab_size))
        self.final_logit_scale = hp.final_logit_scale
        self.softcap = 30.0  # speedrun arch only
        zeroed = {"lm_head.weight"} | {f"blocks.{i}.{m}" for i in range(hp.n_layer) for m in ("attn.o.weight",
                                                                                           "mlp.proj.weight")}
        for name, p in self.named_parameters():
            if p.ndim == 2 and name != "embed.weight":  # out projections and lm_head start at zero by default
                cap = hp.lm_head_w_max if name == "lm_head.weight" else hp.w_max  # start inside a cap below 1:
                norm = min(1.0, cap) if hp.constraint != "none" else 1.0  # the soft cap assumes ||W|| <= w_max
                nn.init.zeros_(p) if hp.zero_init_out and name in zeroed else semi_orthogonal_(p.data, norm)
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
            mask = AttentionMask(torch.zeros(x.shape[:2], dtype=torch.long, device=x.device), -1, 0,
                                 kinds=self.hp.window_pattern)
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
        mask = batch_mask(idx, self.hp, window)
        if targets is None:
            return self.logits_from_embeddings(self.embed(idx), mask)
        return self.loss(idx, targets, mask)

    def loss(self, idx, targets, mask: AttentionMask):
        """The training loss: mean cross-entropy of (B, T) targets over the vocab_size real tokens, the lm_head
        and loss taken a chunk of tokens at a time (ChunkedLinearCrossEntropy)."""
        h = self.hidden_from_embeddings(self.embed(idx), mask).flatten(0, 1)
        w = self.lm_head.weight
        if not torch.is_grad_enabled():
            chunk = loss_chunk_tokens(h.shape[0], w.shape[0])
            return chunked_loss_sums(h, w, targets.flatten(), self.hp.vocab_size, *self.logit_map, chunk)[0] / h.shape[0]
        fp8 = bool(self.hp.lm_head_fp8) and h.is_cuda and h.shape[0] % 16 == 0 and h.shape[1] % 16 == 0
        chunk = loss_chunk_tokens(h.shape[0], w.shape[0], align=16 if fp8 else 1)
        return ChunkedLinearCrossEntropy.apply(h, w, targets.flatten(), self.hp.vocab_size, *self.logit_map, chunk, fp8)

    def eval_sums(self, idx, targets, mask: AttentionMask):
        """-> (summed loss, correct predictions, (n_layer, 2) activation maxima), all tensors (no host sync)."""
        stats: list = []
        h = self.hidden_from_embeddings(self.embed(idx), mask, stats).flatten(0, 1)
        loss_sum, correct = chunked_loss_sums(h, self.lm_head.weight, targets.flatten(), self.hp.vocab_size,
                                              *self.logit_map, loss_chunk_tokens(*h.shape[:1], self.lm_head.weight.shape[0]))
        return loss_sum, correct, torch.stack(stats)


@dataclass
class ModelFns:
    """The model's two entry points the trainer calls, (idx, targets, mask) -> ..., eager or compiled."""
    loss: Callable
    eval_sums: Callable


def model_fns(model: GPT, compiled: bool) -> ModelFns:
    """With compile, each entry point becomes one torch.compile graph from token ids to the loss (embedding,
    blocks, lm_head, logit scale, cross-entropy): no float32 tokens x vocab tensor is built eagerly.
    Attention masks are built outside the graph (by a compiled create_block_mask on CUDA). The compiled
    functions live with the trainer, not the model, so copies of the model (lipschitz.py) stay plain."""
    if not compiled:
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


def next_token_logits(model: GPT, idx: torch.Tensor, window: int) -> torch.Tensor:
    """idx (B, T) int64, T <= hp.seq_len -> float32 logits (B, vocab_size) of the token after each row, with
    SDPA attention (flex=False): a FlexAttention block mask would recompile for every new length T."""
    mask = AttentionMask(idx, model.hp.bos_token, window, flex=False, kinds=model.hp.window_pattern)
    return model.logits_from_embeddings(model.embed(idx), mask)[:, -1, :model.hp.vocab_size].float()


def keep_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """logits (B, V) with all but the k largest of each row set to -inf; ties go to the lower token id (a
    stable sort), as argmax breaks them, so top_k=1 picks the greedy token."""
    order = torch.sort(logits, dim=-1, descending=True, stable=True).indices
    return logits.scatter(-1, order[:, k:], float("-inf"))


def pick_next_token(logits: torch.Tensor, temperature: float, top_k: int, generator) -> torch.Tensor:
    """logits (B, V) -> (B, 1) token ids: the argmax for temperature 0, else a draw from softmax(logits /
    temperature) over the top_k most likely tokens (all for top_k 0 or >= V)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    if 0 < top_k < logits.size(-1):
        logits = keep_top_k(logits, top_k)
    # subtract the max before dividing: a tiny temperature sends the others to -inf, never the max to +inf
    scaled = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    return torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=generator)


@torch.no_grad()
def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float, top_k: int,
             generator: torch.Generator | None, *, window: int | None = None) -> torch.Tensor:
    """idx (B, T) int64 on the model's device -> (B, T + max_new_tokens): idx followed by tokens drawn one at a
    time (pick_next_token), each conditioned on the last hp.seq_len tokens. `generator` (on idx's device; None
    = torch's global one) is the only randomness. `window`: default the finished run's. No KV cache."""
    hp = model.hp
    window = window_size(hp, hp.num_iterations) if window is None else window
    for _ in range(max_new_tokens):
        logits = next_token_logits(model, idx[:, -hp.seq_len:], window)
        idx = torch.cat((idx, pick_next_token(logits, temperature, top_k, generator)), dim=1)
    return idx


# -----------------------------------------------------------------------------
# Data: shards concatenated into one token stream (data/stream.py); the batch of step s is a pure function of s.


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
    return max((d for d in range(1, min(hp.micro_batch_size, per_rank) + 1) if per_rank % d == 0), default=1)


def token_batch(stream: TokenStream, starts, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each (len(starts), seq_len) int64 on device: the windows of seq_len + 1 tokens at
    `starts`, shifted by one. On CUDA the host buffer is pinned so the copy overlaps compute."""
    rows = np.stack([stream.window(int(s), seq_len + 1) for s in starts]).astype(np.int64)
    buf = torch.from_numpy(rows)
    if device.type == "cuda":
        buf = buf.pin_memory()
    buf = buf.to(device, non_blocking=True)
    return buf[:, :-1], buf[:, 1:]


def micro_batches(stream: TokenStream, hp: Hyperparameters, step: int, ctx: "Context"):
    """Yield (inputs, targets) of shape (micro batch, seq_len) for this rank's share of a step."""
    starts = batch_starts(hp, step, stream.total)
    per_rank = hp.batch_size // ctx.world
    mine = starts[ctx.rank * per_rank:(ctx.rank + 1) * per_rank]
    for i in range(0, per_rank, ctx.micro):
        yield token_batch(stream, mine[i:i + ctx.micro], hp.seq_len, ctx.device)


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
# Distributed: gradients averaged over ranks (torchrun sets RANK/WORLD_SIZE; NCCL on CUDA, gloo on CPU)


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


# -----------------------------------------------------------------------------
# Evaluation and the numbers every validation reports


def val_sequence_count(hp: Hyperparameters, val: TokenStream) -> int:
    """Whole sequences scored per validation; checked at start-up so a bad --val_tokens fails before step 0."""
    n_seq = max(1, hp.val_tokens // hp.seq_len)
    if n_seq * hp.seq_len + 1 > val.total:
        raise ValueError(f"--val_tokens={hp.val_tokens} exceeds the {val.total} tokens of the val split; lower it")
    return n_seq


@torch.no_grad()
def evaluate(model: GPT, val: TokenStream, hp: Hyperparameters, ctx: "Context", window: int, eval_sums=None):
    """-> (val loss, val acc, per-layer (max |entry|, max token RMS) of the residual stream) over the first
    hp.val_tokens tokens of the val split: the same sequences for any world size. One host sync, at the end."""
    eval_sums = eval_sums or model.eval_sums
    n_seq = val_sequence_count(hp, val)
    mine = range(ctx.rank * n_seq // ctx.world, (ctx.rank + 1) * n_seq // ctx.world)  # shares may differ by one
    sums = torch.zeros(2, device=ctx.device, dtype=torch.float64)  # loss sum, correct
    count = 0
    stats = torch.zeros(hp.n_layer, 2, device=ctx.device, dtype=torch.float32)
    for i in range(0, len(mine), ctx.micro):
        x, y = token_batch(val, [s * hp.seq_len for s in mine[i:i + ctx.micro]], hp.seq_len, ctx.device)
        with ctx.amp:
            loss_sum, correct, layer_stats = eval_sums(x, y, batch_mask(x, hp, window))
        sums += torch.stack((loss_sum.double(), correct.double()))
        count += y.numel()
        stats = torch.maximum(stats, layer_stats.float())
    if ctx.world > 1:
        dist.all_reduce(stats, op=dist.ReduceOp.MAX)
    loss_sum, correct, count = rc.all_reduce_sum(sums.tolist() + [count], ctx.world, ctx.device)
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
# Training: the device context, the checks before step 0, the step and the loop


@dataclass
class Context:
    """Where this process trains: rank, world size, device, autocast and its dtype, sequences per forward pass."""
    rank: int
    world: int
    device: torch.device
    amp: torch.autocast
    dtype: str
    micro: int

    @classmethod
    def local(cls, hp: "Hyperparameters", device: torch.device, amp=None) -> "Context":
        """A single process on `device` under `amp` (default: autocast_for's choice)."""
        auto, dtype = autocast_for(hp, device)
        if amp is not None:
            dtype = "bf16" if getattr(amp, "_enabled", False) and amp.fast_dtype == torch.bfloat16 else "fp32"
        return cls(0, 1, device, auto if amp is None else amp, dtype, micro_batch_size(hp, 1))


def autocast_for(hp: Hyperparameters, device) -> tuple[torch.autocast, str]:
    """(autocast context, the dtype it uses: "bf16" or "fp32"). auto: bf16 where it is native (CUDA, CPUs with
    AVX512-BF16/AMX), fp32 elsewhere (emulated bf16 is ~30x slower)."""
    native_bf16 = default_orth_dtype(device) == torch.bfloat16
    dtype = hp.dtype if hp.dtype != "auto" else ("bf16" if native_bf16 else "fp32")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"), dtype


def make_context(hp: Hyperparameters) -> Context:
    rank, world, device = rc.setup_distributed()
    amp, dtype = autocast_for(hp, device)
    return Context(rank, world, device, amp, dtype, micro_batch_size(hp, world))


def probe_step_seconds(model: GPT, hp: Hyperparameters, ctx: Context, train: TokenStream) -> float | None:
    """Seconds one training step will take here: a micro-batch forward and backward (at most 8 sequences of at
    most 256 tokens, unless the step is a few whole micro-batches), timed after an untimed one-sequence call,
    scaled by the FLOPs of the step. None on CUDA, where the warm-up steps measure the step itself."""
    if ctx.device.type == "cuda":
        return None
    T = min(hp.seq_len, 256)
    few = T == hp.seq_len and hp.batch_size <= 8 * ctx.world * ctx.micro
    n = ctx.micro if few else min(ctx.micro, 8)
    for rows in (1, n):
        x, y = token_batch(train, [i * T for i in range(rows)], T, ctx.device)
        t0 = time.perf_counter()
        with ctx.amp:
            model.loss(x, y, batch_mask(x, hp, window_size(hp, 0))).backward()
    seconds = rc.all_reduce_max([time.perf_counter() - t0], ctx.device)[0] if ctx.world > 1 else time.perf_counter() - t0
    model.zero_grad(set_to_none=True)  # (every rank takes the slowest rank's time, so all decide alike)
    return seconds / forward_backward_flops(hp, n, T) * forward_backward_flops(hp, hp.batch_size // ctx.world, hp.seq_len)


def check_step(hp: Hyperparameters, ctx: Context) -> None:
    """Refuse, before anything is built, a run whose step cannot fit in memory (one line naming the flags)."""
    free = rc.free_memory_bytes(ctx.device)
    if ctx.world > 1:  # every rank takes the same branch: the least free memory of any rank decides
        free = -rc.all_reduce_max([-(math.inf if free is None else float(free))], ctx.device)[0]
        free = None if math.isinf(free) else free
    if hp.memory_check:
        rc.check_fits(step_memory_bytes(hp, ctx.micro, ctx.dtype, use_flex_attention(ctx.device)), free, ctx.device,
                      f"--micro_batch_size={ctx.micro} or --seq_len={hp.seq_len} (or --d_model/--n_layer)")


def train_step(model, optimizers, train, hp, step, ctx: Context, loss_fn=None, stop=lambda: False):
    """One optimizer step over this rank's share of the global batch; returns the mean train loss (on device),
    or None when stop() turns true between micro-batches (single process): the partial gradient is dropped and
    the weights stay those of the last completed step. loss_fn(idx, targets, mask) defaults to model.loss."""
    loss_fn = loss_fn or model.loss
    window = window_size(hp, step)
    n_micro = hp.batch_size // (ctx.world * ctx.micro)
    total = None
    for x, y in micro_batches(train, hp, step, ctx):
        if ctx.world == 1 and stop():
            model.zero_grad(set_to_none=True)
            return None
        with ctx.amp:
            loss = loss_fn(x, y, batch_mask(x, hp, window)) / n_micro
        loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    all_reduce_grads(model, ctx.world)
    set_schedules(optimizers, hp, step)
    for opt in optimizers:
        opt.step()
    constrain_non_muon(model, hp, optimizers)
    model.zero_grad(set_to_none=True)
    return total


def warm_up(model, optimizers, train, hp, ctx: Context, fns: ModelFns, compiled: bool, why: str, say):
    """Untimed steps that compile the graphs and measure the kernel dispatch, then restore the initial state.
    -> (fns, compiled, why): an "auto" CPU compile that fails falls back to eager and says why."""
    warmup = hp.warmup_steps if hp.warmup_steps >= 0 else (10 if ctx.device.type == "cuda" else int(compiled))
    if not warmup:
        return fns, compiled, why
    say(f"warm-up: {warmup} untimed step{'s' if warmup > 1 else ''}"
        + (" (torch.compile: the first takes a minute or more)" if compiled else ""), flush=True)
    initial = copy.deepcopy(dict(model=model.state_dict(), opts=[o.state_dict() for o in optimizers]))
    limit = 1 if ctx.device.type != "cuda" else math.inf  # micro-batches: a CPU compiles on one; CUDA times Muon
    with kernels.measuring_dispatch():
        for s in range(warmup):
            calls = itertools.count()  # train_step asks before each micro-batch whether to stop
            try:
                train_step(model, optimizers, train, hp, s, ctx, fns.loss, stop=lambda: next(calls) >= limit)
            except torch._dynamo.exc.BackendCompilerFailed as e:
                if not (compiled and hp.compile == "auto" and ctx.device.type == "cpu"):
                    raise
                # a CPU toolchain inductor cannot use: train eagerly, as --compile=no would
                compiled, why = False, f"auto: compiling failed ({' '.join(str(e).split())[:160]}), eager instead"
                fns = model_fns(model, compiled=False)
    kernels.share_dispatch_choices()  # every rank runs the kernels rank 0 chose
    model.load_state_dict(initial["model"])
    for o, s in zip(optimizers, initial["opts"]):
        o.load_state_dict(s)
    return fns, compiled, why


def model_from_checkpoint(path: str, flag: str = "") -> tuple[GPT, dict]:
    """(model in eval mode on the CPU, checkpoint dict) for a file save_checkpoint wrote; one-line
    FileNotFoundError/ValueError naming the file otherwise."""
    state = rc.read_checkpoint(path, flag)
    model = make_model(rc.hp_from_checkpoint(Hyperparameters, state["hp"], path))
    problem = rc.state_dict_mismatch(model.state_dict(), state["model"])
    if problem:
        raise ValueError(f"{path}: its weights do not fit the model its hyperparameters describe ({problem})")
    model.load_state_dict(state["model"])
    return model.eval(), state


def end_of_run_sample(model: GPT, tokenizer: dict, hp: Hyperparameters, device, ckpt_path: str) -> str:
    """A short sample of the trained model for the console (not the log), or one line saying why there is none."""
    try:  # a finished run never fails here: whatever goes wrong is one line
        start = [hp.bos_token] if hp.bos_token >= 0 else encoder(tokenizer)("\n")
        n, gen = 200 if tokenizer.get("tokenizer") != "gpt2" else 60, torch.Generator(device).manual_seed(hp.seed)
        tokens = generate(model, torch.tensor([start], device=device), n, 0.8, 0, gen)[0, len(start):]
        text = decoder(tokenizer)(tokens.tolist())
    except Exception as e:  # noqa: BLE001
        return f"no sample: {' '.join(str(e).split()) or type(e).__name__}"
    return f"sample (python tools/sample.py {ckpt_path} for more):\n{text}"


def start(hp: Hyperparameters, ctx: Context, say) -> dict | None:
    """Before anything is built: data, vocabulary, checks, the checkpoint to resume (None for a new run)."""
    for flag in ("log_dir", "checkpoint_dir"):
        rc.ensure_writable_dir(getattr(hp, flag), flag)
    hp.vocab_size = read_vocab_size(hp.train_files, hp.vocab_size)
    validate(hp)
    saved = rc.read_checkpoint(hp.resume, "--resume") if hp.resume else None
    if saved is not None:
        hp.run_id = hp.run_id or saved["hp"]["run_id"]  # continue the same log and checkpoint
        rc.check_resumable(saved["hp"], hp, hp.resume)
    if not hp.run_id:
        hp.run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        if ctx.world > 1:  # every rank must agree on the run id
            ids = [None] * ctx.world
            dist.all_gather_object(ids, hp.run_id)
            hp.run_id = ids[0]
    check_step(hp, ctx)
    return saved


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    hp = Hyperparameters.from_args(argv)
    ctx = make_context(hp)
    say = print if ctx.rank == 0 else (lambda *a, **k: None)
    saved = start(hp, ctx, say)
    ckpt_path = os.path.join(hp.checkpoint_dir, f"{hp.run_id}.pt")
    if saved and saved["step"] >= hp.num_iterations:
        return rc.already_complete(saved, hp, say)
    with rc.StopSignals(ctx.rank == 0, ctx.world, hp.stop_grace_seconds, lambda: ckpt_path) as stop:
        train, val = TokenStream(hp.train_files, hp.vocab_size, "training"), TokenStream(hp.val_files, hp.vocab_size, "validation")
        val_sequence_count(hp, val)
        model = make_model(hp).to(ctx.device)
        step_seconds = probe_step_seconds(model, hp, ctx, train)
        if step_seconds is not None:
            say(rc.step_time_report(step_seconds, step_seconds * ctx.micro * ctx.world / hp.batch_size, hp,
                                    f"--batch_size={hp.batch_size} or --seq_len={hp.seq_len}"))
        optimizers = make_optimizers(model, hp)
        compiled, why = rc.compile_choice(hp, ctx.device)
        fns, compiled, why = warm_up(model, optimizers, train, hp, ctx, model_fns(model, compiled), compiled, why, say)
        stop.arm()  # from here a stop has a step to checkpoint
        start_step, train_ms = rc.load_checkpoint(saved, model, optimizers) if saved else (0, 0.0)
        log = rc.Logger(hp, ctx.rank, ctx.world, ctx.device, resumed=bool(saved), dtype=ctx.dtype, main_file=__file__)
        if flags.preset_overrides(hp, PRESETS):
            log(f"preset {hp.preset}: " + " ".join(f"{k}={v}" for k, v in flags.preset_overrides(hp, PRESETS).items())
                + "  (the defaults at the top of train_gpt.py are the GPU run)")
        if saved:
            log(f"resumed run {hp.run_id} from step {start_step}/{hp.num_iterations} ({hp.resume})")
        log(f"torch.compile: {'yes' if compiled else 'no'} ({why})")
        if ctx.device.type == "cuda":
            log(kernels.dispatch_summary())
        end_step = min(hp.num_iterations, start_step + hp.max_steps_this_run) if hp.max_steps_this_run else hp.num_iterations
        tokenizer = tokenizer_record(hp.train_files, hp.vocab_size)
        summary: dict = dict(saved.get("summary", {})) if saved else {}
        progress = rc.Progress(hp, ctx.world, ctx.device, log, say, lambda v: rc.all_reduce_sum(v, ctx.world, ctx.device),
                               start_step, end_step, train_ms, resumed=bool(saved))
        step = start_step
        while True:
            last = step >= end_step or progress.stopping
            if progress.validation_due(step):
                t_val = time.perf_counter()
                val_loss, val_acc, stats = evaluate(model, val, hp, ctx, window_size(hp, step), fns.eval_sums)
                summary = dict(step=step, val_loss=val_loss, val_acc=val_acc)
                if ctx.rank == 0:
                    report = lipschitz.bound_report(model)
                    rc.log_validation(log, hp, step, val_loss, val_acc, stats, progress, report, weight_norms(model))
                    summary["log10_bound"] = report["log10_bound_sharp"]  # the tightest certified bound
                progress.validated(step, time.perf_counter() - t_val)
            if progress.checkpoint_due(step, last):
                stop.reached_checkpoint()
                if not rc.weights_finite(model):  # identical weights on every rank, so every rank stops here
                    raise FloatingPointError(f"weights became non-finite by step {step}; stopping without "
                                             f"overwriting the last good checkpoint {ckpt_path}")
                if ctx.rank == 0:
                    rc.save_checkpoint(ckpt_path, model, optimizers, hp, step, progress.train_ms, summary, tokenizer)
                progress.checkpointed()
            if last:
                break
            progress.step_begins()
            loss = train_step(model, optimizers, train, hp, step, ctx, fns.loss, stop=lambda: bool(stop.received))
            if loss is None:  # stopped between micro-batches: this step never happened
                progress.abandon(step, ckpt_path)
                continue
            step += 1
            progress.step_ends(step, loss, bool(stop.received), ctx.rank, ckpt_path)
    if ctx.device.type == "cuda":
        log(f"peak memory allocated: {torch.cuda.max_memory_allocated() // 2**20} MiB")
    result = rc.report_end(hp, ctx.world, log, say, summary, step, (stop.received or signal.SIGTERM)
                           if progress.stopping else 0, argv, ckpt_path, ctx.dtype,
                           lambda: end_of_run_sample(model, tokenizer, hp, ctx.device, ckpt_path))
    if ctx.world > 1:
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
    except KeyboardInterrupt:  # during start-up, before the stop handlers are in place
        print("aborted before training started: nothing was saved", file=sys.stderr)
        sys.exit(130)
    if outcome.get("stopped"):
        sys.exit(128 + signal.Signals[outcome["stopped"]].value)
