"""What one training step costs, from the hyperparameters alone (read by field name): its peak memory by part
and its matmul FLOPs. The trainer checks both before step 0 (memory against what is free, time against
--max_step_seconds at a measured rate)."""
from __future__ import annotations

from lm_head import loss_chunk_tokens, padded_vocab


def attention_layers(hp) -> int:
    """Blocks that attend (all but --attn_skip_layers)."""
    return hp.n_layer - len([x for x in hp.attn_skip_layers.split(",") if x.strip()])


def step_memory_bytes(hp, micro: int, dtype: str, flex: bool) -> dict[str, int]:
    """Estimated peak memory of one training step on one rank with `micro` sequences per forward pass, by part,
    in bytes (within ~1.5x of what was measured; see tests/test_train_gpt.py):
      state        weights, gradients and optimizer state, float32 (4 copies of every parameter);
      activations  what autograd keeps for one micro-batch: per token and layer ~8 d_model + 6 inner + 3 hidden
                   values in the autocast dtype (residual copies; q, k, v, rotated, attention out; fc, gelu);
      logits       float32 logits, their softmax and gradient for one chunk of the loss (3 x chunk tokens x
                   padded vocab), and the lm_head's float32 gradient that the chunks add into;
      attention    without FlexAttention (`flex`), windows or documents need a dense (micro, 1, T, T) mask per
                   kind of block: ~4 bytes per entry (3.4 measured, torch 2.13's fused kernel; it never forms
                   the scores). FlexAttention and causal-only attention keep no T x T tensor."""
    T, d = hp.seq_len, hp.d_model
    inner, hidden, V = hp.n_head * hp.head_dim, hp.mlp_ratio * hp.d_model, padded_vocab(max(hp.vocab_size, 1))
    n_params = 2 * V * d + hp.n_layer * (4 * inner * d + 2 * hidden * d)
    tokens = micro * T
    act_bytes = 2 if dtype == "bf16" else 4
    causal_only = hp.bos_token < 0 and (hp.window_max <= 0 or min(hp.window_min, hp.window_max) >= T)
    dense_masks = 0 if flex or causal_only else len(set(hp.window_pattern))
    return dict(state=4 * 4 * n_params,
                activations=tokens * hp.n_layer * (8 * d + 6 * inner + 3 * hidden) * act_bytes,
                logits=3 * loss_chunk_tokens(tokens, V) * V * 4 + V * d * 4,
                attention=4 * micro * T * T * dense_masks)


def forward_backward_flops(hp, n_seq: int, seq_len: int) -> float:
    """Matmul FLOPs of the forward and backward passes (3x the forward's 2 m n k) over n_seq sequences: the
    blocks' and the lm_head's matrices per token, and attention's q k^T and a v over the keys each query
    sees (half the sequence when causal, about the window when one is set)."""
    inner, hidden, V = hp.n_head * hp.head_dim, hp.mlp_ratio * hp.d_model, padded_vocab(max(hp.vocab_size, 1))
    per_token = hp.n_layer * (4 * inner * hp.d_model + 2 * hidden * hp.d_model) + V * hp.d_model
    w = hp.window_max if 0 < hp.window_max < seq_len else seq_len
    keys = w - w * w / (2 * seq_len) + 0.5  # mean over positions of min(t + 1, w)
    return 3 * 2 * n_seq * seq_len * (per_token + attention_layers(hp) * 2 * keys * inner)
