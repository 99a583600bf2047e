"""masks.py: block-granular sliding windows inside documents, against a token-by-token oracle written from the
definition, and FlexAttention (the CUDA path, run eagerly here) against SDPA with the dense mask."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import masks


def oracle(docs: list[int], T: int, window_blocks: int, block: int) -> torch.Tensor:
    """(T, T) bool from the definition: a query block sees its nearest window_blocks - 1 full key blocks (every
    token pair causal and in one document) and as many of its partial ones (some pair) as the window leaves
    room for, at least one; inside them, the causal keys of the query's document."""
    nb = -(-T // block)
    doc = lambda p: docs[min(p, T - 1)]  # noqa: E731  (the last block is padded with its last document)
    span = lambda b: (doc(b * block), doc(b * block + block - 1))  # noqa: E731
    out = torch.zeros(T, T, dtype=torch.bool)
    for qb in range(nb):
        (ql, qh) = span(qb)
        full = [kb for kb in range(qb - 1, -1, -1) if ql == qh == span(kb)[0] == span(kb)[1]]
        part = [kb for kb in range(qb, -1, -1) if kb not in full and span(kb)[0] <= qh and span(kb)[1] >= ql]
        chosen = full[:window_blocks - 1] + part[:max(window_blocks - len(full), 1)]
        for q in range(qb * block, min(T, qb * block + block)):
            for kb in chosen:
                for k in range(kb * block, min(T, kb * block + block)):
                    out[q, k] = k <= q and docs[k] == docs[q]
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(T=st.integers(1, 40), window=st.integers(0, 48), bos=st.sampled_from([-1, 0]),
       seed=st.integers(0, 2 ** 16))
def test_dense_mask_is_the_definition(monkeypatch_block, T, window, bos, seed):
    """Any length (whole blocks or not), window (0 = none) and document layout: the dense mask SDPA gets is
    the oracle's, and every query sees itself (so every softmax row is over a non-empty set)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 3, (2, T), generator=g)
    m = masks.AttentionMask(idx, bos, window, flex=False)
    for kind, n in m.blocks.items():
        for b in range(2):
            docs = (idx[b] == bos).cumsum(0).tolist() if bos >= 0 else [0] * T
            want = oracle(docs, T, n, masks.BLOCK)
            got = m.masks[kind][b, 0] if m.masks[kind] is not None else torch.ones(T, T, dtype=torch.bool).tril()
            assert torch.equal(got, want), (kind, b)
            assert got.diagonal().all()


@pytest.fixture
def monkeypatch_block(monkeypatch):
    """Blocks of 4 tokens, so that short sequences span many blocks."""
    monkeypatch.setattr(masks, "BLOCK", 4)


def test_short_layers_see_half_the_blocks_and_no_window_is_causal_attention(monkeypatch_block):
    idx = torch.ones(1, 32, dtype=torch.long)
    m = masks.AttentionMask(idx, -1, 16, flex=False)  # 4 blocks long, 2 short
    assert m.blocks == {"L": 4, "S": 2}
    keys_seen = m.masks["L"][0, 0].sum(-1)
    assert keys_seen[-1] == 16 and m.masks["S"][0, 0].sum(-1)[-1] == 8  # 3 (or 1) full blocks + the diagonal
    whole = masks.AttentionMask(idx, -1, 0, flex=False, kinds="L")
    assert whole.masks == {"L": None}  # SDPA's is_causal


@pytest.mark.parametrize("bos,window,T", [(-1, 0, 32), (-1, 8, 32), (0, 0, 30), (0, 12, 32), (0, 8, 19)])
def test_flex_attention_matches_sdpa(monkeypatch_block, bos, window, T):
    """FlexAttention on the block lists (the CUDA path, eager on the CPU) computes SDPA on the dense mask."""
    torch.manual_seed(0)
    B, H, D = 2, 2, 16
    idx = torch.randint(0, 4, (B, T))  # token 0 starts documents when bos == 0
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    sdpa = masks.AttentionMask(idx, bos, window, flex=False)
    flex = masks.AttentionMask(idx, bos, window, flex=True)
    for kind in "LS":
        torch.testing.assert_close(flex.attend(q, k, v, 0.3, kind), sdpa.attend(q, k, v, 0.3, kind),
                                   atol=1e-5, rtol=1e-5)


def test_windows_count_whole_blocks_of_128():
    assert masks.BLOCK == 128
    assert masks.window_blocks(0, 1024) == 8 and masks.window_blocks(1792, 48 * 1024) == 14
    assert masks.window_blocks(200, 1024) == 1 and masks.window_blocks(5000, 1024) == 8
