"""bench/step_cost.py: its FLOP counts pinned to hand counts (2 m n k per product) at a small config, the
window schedules and key blocks, the calibration (the anchor within 25% of its measured 765 ms, the attention
efficiency reproduced from the run it was fitted to), and its command line."""
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "step_cost.py")
# loaded from its path: bench/ on sys.path would let bench/constraints.py shadow constraints.py in later tests
_spec = importlib.util.spec_from_file_location("step_cost", SCRIPT)
sc = importlib.util.module_from_spec(_spec)
sys.modules["step_cost"] = sc  # dataclasses look their module up there
_spec.loader.exec_module(sc)

# 2 blocks of 32 x 2 heads, d 64, hidden 256, vocab 128, 2 micro-batches of one 256-token sequence (2 mask
# blocks), a 128-token window (1 block) at every step, no attention in block 1
SMALL = ["n_layer=2", "d_model=64", "n_head=2", "head_dim=32", "mlp_ratio=4", "vocab=128", "seq_len=256",
         "micro_batch=1", "micro_batches=2", "steps=4", "window_min=128", "window_max=128", "pattern=L",
         "attn_skip=1"]
T, D, INNER, HIDDEN, V, MICRO = 256, 64, 64, 256, 128, 2


@pytest.fixture(scope="module")
def small():
    import train_gpt as tg
    ours = sc.apply_overrides(sc.ours_config(tg.Hyperparameters()), SMALL)
    return ours, sc.apply_overrides(sc.anchor_config(), SMALL)


def test_block_matmul_flops_by_hand(small):
    ours, anchor = small
    fwd_block0 = 2 * T * D * 3 * INNER + 2 * T * INNER * D + 2 * (2 * T * D * HIDDEN)  # qkv, o, fc, proj
    fwd_block1 = 2 * (2 * T * D * HIDDEN)                                                # no attention
    want = MICRO * 3 * (fwd_block0 + fwd_block1)                                         # dX, dW: 3x forward
    assert want == 251_658_240
    assert sc.block_matmuls(ours).flops == want == sc.block_matmuls(anchor).flops


def test_attention_flops_by_hand(small):
    ours, anchor = small
    # one layer with attention; a 1-block window: query block 0 computes key block 0, query block 1 key block 1
    pairs = MICRO * 1 * (1 + 1)
    want = pairs * (2 * 128 * 128 * INNER + 2 * 128 * 128 * INNER) * (1 + 2.5)  # q k^T and p v; backward 2.5x
    assert want == 58_720_256
    assert sc.attention(ours).flops == want == sc.attention(anchor).flops
    causal = sc.apply_overrides(ours, ["window_min=0", "window_max=0"])  # full causal: blocks 0; 0, 1
    assert sc.attention(causal).flops == want * 3 / 2


def test_lm_head_flops_by_hand(small):
    ours, anchor = small
    want = MICRO * 3 * 2 * T * D * V  # logits, dh, dW
    assert sc.lm_head_and_loss(ours).flops == want == sc.lm_head_and_loss(anchor).flops == 25_165_824


def test_muon_and_soft_cap_flops_by_hand(small):
    ours, anchor = small

    def ns(m, n, steps=5):  # A = Y Y^T, B = b A + c A^2, B Y on the short side r, long side K
        r, k = min(m, n), max(m, n)
        return steps * (2 * r * r * k + 2 * r ** 3 + 2 * r * k * r)

    def soft_cap(m, n):  # Gram, G^2, G^2 Q at half (one triangle of blocks), X P full
        r, k = min(m, n), max(m, n)
        return (2 * r * r * k + 2 * r ** 3 + 2 * r ** 3) / 2 + 2 * k * r * r
    shapes = [(64, 64)] * 4 + [(256, 64)] * 2 + [(64, 256)] * 2  # q, k, v, o of block 0; fc, proj of both
    hidden_ns = sum(ns(m, n) for m, n in shapes)
    assert sc.muon_and_constraint(anchor).flops == hidden_ns == 125_829_120          # no lm_head, no constraint
    assert ours.constraint == "soft_cap" and ours.muon_lm_head
    want = hidden_ns + ns(V, D) + sum(soft_cap(m, n) for m, n in shapes + [(V, D)])
    assert sc.muon_and_constraint(ours).flops == want == 160_956_416
    assert sc.muon_lists(anchor) == [(3, 64, 64), (1, 64, 64), (1, 256, 64), (1, 256, 64), (1, 64, 256),
                                     (1, 64, 256)]  # one call per param, qkv_w a batch of 3
    assert sc.muon_lists(ours) == [(4, 64, 64), (2, 256, 64), (2, 64, 256), (1, 128, 64)]  # one per shape


def test_key_blocks_and_the_window_schedules():
    assert sc.key_blocks(5 * 128, 2) == 1 + 2 * 4        # query block 0 has only itself
    assert sc.key_blocks(5 * 128, None) == 15 and sc.key_blocks(5 * 128, 9) == 15
    anchor = sc.anchor_config()
    assert sc.long_window(anchor, 0) == 128 and sc.long_window(anchor, anchor.steps - 1) == 1792
    import train_gpt as tg
    ours = sc.ours_config(tg.Hyperparameters())
    assert [sc.long_window(ours, s) for s in (0, ours.steps - 1)] == [128, 1792]
    # S blocks see half the long window's blocks, at least one; window 0 is full causal for both kinds
    assert [sc.layer_window_blocks(ours, i, 1792) for i in range(4)] == [14, 7, 7, 7]
    assert sc.layer_window_blocks(ours, 1, 128) == 1 and sc.layer_window_blocks(ours, 1, 0) is None


def test_the_anchor_is_modelled_within_a_quarter_of_its_measured_time():
    parts = sc.step_cost(sc.anchor_config())
    ms = sc.total(parts.values()).ms
    assert abs(ms / sc.ANCHOR_MEASURED_MS - 1) <= 0.25, ms


def test_the_attention_efficiency_is_the_one_fitted_to_the_measured_run():
    assert sc.fit_attention_efficiency() == pytest.approx(sc.RATES["attention_efficiency"], abs=0.01)


def test_the_command_line_prints_every_part_and_ends_with_the_ratio():
    done = subprocess.run([sys.executable, SCRIPT, *(f"--config={c}" for c in SMALL), "--constraint=none"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    for part in sc.PARTS:
        assert any(line.startswith(part) for line in lines), part
    assert lines[-1].startswith("ours/anchor: ") and float(lines[-1].split()[-1]) > 0
    assert "constraint none" in done.stdout and "calibration" not in done.stdout  # not the GPU preset
    bad = subprocess.run([sys.executable, SCRIPT, "--config=bogus=1"], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert bad.returncode == 2 and "bogus" in bad.stderr
