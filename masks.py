"""Attention masks: causal, inside each document, within a sliding window counted in blocks of BLOCK tokens, as
the speedrun builds them. A query block sees its own block and the nearest key blocks, up to `window` blocks
in all; inside those, a query sees the keys that are causal and in its document. Built at block level, without
gradients: FlexAttention block masks on CUDA, the same pattern as a dense boolean mask for SDPA elsewhere.

Every query sees itself, so every row of the softmax is over a non-empty set; lipschitz.py's certificate holds
for any such mask, so windows and documents leave the certified bound unchanged."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask

BLOCK = 128  # tokens per block of the mask (FlexAttention's tile)


def use_flex_attention(device: torch.device) -> bool:
    """Device difference: FlexAttention block masks on CUDA; SDPA with a dense mask elsewhere."""
    return device.type == "cuda"


@functools.cache
def flex_attention_fn(compiled: bool):
    """flex_attention, compiled on CUDA: eager flex_attention materialises the full score matrix (tens of GB at
    T = 48K). The CPU tests run it eagerly on short sequences."""
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False) if compiled else flex_attention


def document_ids(idx: torch.Tensor, bos_token: int) -> torch.Tensor | None:
    """(B, T) index of each token's document (a bos token starts one), or None when there are no documents."""
    return (idx == bos_token).cumsum(dim=1) if bos_token >= 0 else None


def ordered_blocks(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dense (B, Qb, Kb) bool -> (count (B, 1, Qb), indices (B, 1, Qb, Kb)) int32: the True key blocks of each
    query block, nearest (highest index) first."""
    count = dense.sum(dim=-1, dtype=torch.int32)
    indices = dense.to(torch.int8).argsort(dim=-1, stable=True).flip(-1).to(torch.int32)
    return count[:, None], indices[:, None]


def block_lists(docs: torch.Tensor | None, B: int, T: int, device) -> tuple:
    """The key blocks each query block may see, before any window: (partial count, partial indices, full count,
    full indices), as ordered_blocks gives them. A full block is causal and in the query block's document for
    every pair of tokens; a partial one for some (the diagonal block, blocks that straddle a document start)."""
    nb = -(-T // BLOCK)
    blk = torch.arange(nb, device=device)
    if docs is None:
        low = high = torch.zeros(B, nb, dtype=torch.long, device=device)
    else:  # the last block padded with its last document
        blocks = torch.cat((docs, docs[:, -1:].expand(B, nb * BLOCK - T)), dim=1).view(B, nb, BLOCK)
        low, high = blocks[..., 0], blocks[..., -1]
    causal_any, causal_all = blk[:, None] >= blk[None, :], blk[:, None] > blk[None, :]
    doc_any = (low[:, :, None] <= high[:, None, :]) & (high[:, :, None] >= low[:, None, :])
    doc_all = (low[:, :, None] == high[:, None, :]) & (high[:, :, None] == low[:, None, :])
    any_, all_ = causal_any & doc_any, causal_all & doc_all
    return (*ordered_blocks(any_ & ~all_), *ordered_blocks(all_))


def windowed(lists: tuple, window_blocks: int) -> tuple:
    """The block lists cut to a window: the nearest window_blocks - 1 full blocks, and as many partial blocks
    (nearest first, so the diagonal block always) as the window has room for, at least one."""
    part_n, part_i, full_n, full_i = lists
    part_n = torch.clamp_max(part_n, torch.clamp_min(window_blocks - full_n, 1))
    return part_n, part_i, torch.clamp_max(full_n, window_blocks - 1), full_i


def chosen_blocks(lists: tuple) -> torch.Tensor:
    """(B, Qb, Kb) bool: the key blocks the (windowed) block lists give each query block."""
    part_n, part_i, full_n, full_i = (x[:, 0] for x in lists)
    rank = torch.arange(part_i.shape[-1], device=part_i.device)
    chosen = torch.zeros(part_i.shape, dtype=torch.bool, device=part_i.device)
    for n, i in ((part_n, part_i), (full_n, full_i)):
        chosen |= torch.zeros_like(chosen).scatter_(-1, i.long(), rank < n[..., None])
    return chosen


def pattern_mod(docs: torch.Tensor | None, chosen: torch.Tensor):
    """mask_mod(b, h, q, kv) -> bool: causal, in the same document, and in a key block chosen for q's block.
    The block lists already skip unchosen blocks on CUDA; the lookup makes every backend (eager FlexAttention
    applies mask_mod to every pair, SDPA gets its dense form) compute the same pattern."""
    block = BLOCK

    def mask_mod(b, h, q_idx, kv_idx):
        keep = (q_idx >= kv_idx) & chosen[b, q_idx // block, kv_idx // block]
        if docs is not None:
            keep = keep & (docs[b, q_idx] == docs[b, kv_idx])
        return keep

    return mask_mod


def dense_mask(docs: torch.Tensor | None, chosen: torch.Tensor, T: int) -> torch.Tensor:
    """(B, 1, T, T) bool for SDPA: what pattern_mod(docs, chosen) says of every pair, built from whole blocks
    (one byte per pair; evaluating the mask_mod on a broadcast grid would index with int64 per pair)."""
    keep = chosen.repeat_interleave(BLOCK, 1).repeat_interleave(BLOCK, 2)[:, :T, :T]
    keep &= torch.ones(T, T, dtype=torch.bool, device=chosen.device).tril()
    if docs is not None:
        keep &= docs[:, :, None] == docs[:, None, :]
    return keep[:, None]


def window_blocks(window: int, T: int) -> int:
    """Blocks a long window spans (0 or >= T: the whole sequence)."""
    nb = -(-T // BLOCK)
    return nb if window <= 0 or window >= T else max(1, min(nb, window // BLOCK))


class AttentionMask:
    """The attention pattern of one batch idx (B, T) for every kind of layer: "L" (long) sees `window` tokens,
    rounded down to whole blocks, "S" (short) half as many blocks. window 0 (or >= T) is full causal attention
    for every kind. `kinds`:
    the kinds of layer the model has (each kind's mask is built once, here, outside any compiled graph)."""

    def __init__(self, idx: torch.Tensor, bos_token: int, window: int, flex: bool | None = None, kinds: str = "LS"):
        B, T = idx.shape
        self.flex = use_flex_attention(idx.device) if flex is None else flex
        self.attention = flex_attention_fn(idx.is_cuda) if self.flex else None
        docs = document_ids(idx, bos_token)
        long = window_blocks(window, T)
        short = max(1, long // 2) if 0 < window < T else long  # with no window, every kind sees everything
        self.blocks = {kind: long if kind == "L" else short for kind in sorted(set(kinds))}
        self.masks: dict = {}
        with torch.no_grad():
            lists = block_lists(docs, B, T, idx.device)
            for kind, n in self.blocks.items():
                if not self.flex and docs is None and n >= -(-T // BLOCK):
                    self.masks[kind] = None  # plain causal attention: SDPA's is_causal
                    continue
                kept = windowed(lists, n)
                chosen = chosen_blocks(kept)
                self.masks[kind] = (BlockMask.from_kv_blocks(*kept, BLOCK_SIZE=BLOCK, mask_mod=pattern_mod(docs, chosen),
                                                             seq_lengths=(T, T)) if self.flex
                                    else dense_mask(docs, chosen, T))

    def attend(self, q, k, v, scale: float, kind: str = "L"):
        """q, k, v: (B, H, T, D) -> (B, H, T, D), attention over the pattern of layers of `kind`."""
        mask = self.masks[kind]
        if self.flex:
            return self.attention(q, k, v, block_mask=mask, scale=scale)
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
