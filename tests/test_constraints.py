"""constraints.py against SVD / float64 oracles; the methods on the Triton kernels (interpreter) against the
torch path."""
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import constraints as C
import kernels

ALL_METHODS = sorted(C.METHODS)


def rms_scale(m, n):
    return math.sqrt(n / m)


def random_orthonormal(rows, cols, gen, batch=()):
    Q, _ = torch.linalg.qr(torch.randn(*batch, rows, cols, generator=gen, dtype=torch.float64))
    return Q


def make_weight(m, n, s, seed=0, batch=(), dtype=torch.float64):
    """W (batch..., m, n) whose RMS->RMS singular values are s (length min(m, n), float64),
    returned with its factors U, V (float64) so that W = U diag(s) V^T / c."""
    gen = torch.Generator().manual_seed(seed)
    r = min(m, n)
    U = random_orthonormal(m, r, gen, batch)
    V = random_orthonormal(n, r, gen, batch)
    s = torch.as_tensor(s, dtype=torch.float64)
    W = (U * s.unsqueeze(-2)) @ V.mT / rms_scale(m, n)
    return W.to(dtype), U, V


def rms_singular_values(W):
    """RMS->RMS singular values, descending, float64."""
    m, n = W.shape[-2:]
    return torch.linalg.svdvals(W.double()) * rms_scale(m, n)


def spread(r, top, low=0.0, seed=0):
    """r singular values spread over [low, top] (top included), descending, float64."""
    gen = torch.Generator().manual_seed(seed)
    s = low + (top - low) * torch.rand(r, generator=gen, dtype=torch.float64)
    s[0] = top
    return torch.sort(s, descending=True).values


SHAPES = [(64, 48), (48, 64), (40, 40), (96, 32), (32, 96)]


# ------------------------------------------------------------------------------------------------
# rms_norm_op

@pytest.mark.parametrize("shape", [(12, 7), (7, 12), (3, 2, 9, 9)])
def test_rms_norm_op_matches_float64_svd(shape):
    W = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    got = C.rms_norm_op(W)
    want = rms_singular_values(W)[..., 0]
    assert got.dtype == torch.float32 and got.shape == W.shape[:-2]
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)


# ------------------------------------------------------------------------------------------------
# exact caps: svd_cap and hard_cap give min(s, w_max)

CAP_CASES = [(m, n, (), 0.0) for (m, n) in SHAPES] + [
    (48, 32, (2, 3), 0.0),        # batched over two leading dims
    (48, 40, (2,), 0.5),          # rank-deficient: half the singular values exactly zero
]


@pytest.mark.parametrize("method", ["svd_cap", "hard_cap"])
@pytest.mark.parametrize("m,n,batch,zero_frac", CAP_CASES)
@pytest.mark.parametrize("w_max", [1.0, 0.5])
def test_exact_caps_fp32(method, m, n, batch, zero_frac, w_max):
    r = min(m, n)
    s = spread(r, 3 * w_max, low=0.01 * w_max)
    s[r - int(zero_frac * r):] = 0.0
    W64, _, _ = make_weight(m, n, s, seed=m * n, batch=batch)
    W = W64.float()
    before = W.clone()
    out = C.apply(W, method, w_max)
    assert out.shape == W.shape and out.dtype == W.dtype
    assert torch.equal(W, before), "input must not be modified"
    got = rms_singular_values(out)
    want = rms_singular_values(W).clamp(max=w_max)
    # 1e-2 relative per singular value (hard_cap's contract in fp32); exact zeros compared absolutely
    err = (got - want).abs() / want.clamp(min=1e-2 * w_max)
    assert err.max() <= 1e-2, f"{method}: max relative error {err.max():.3g}"
    assert got.max() <= w_max * (1 + 1e-3)


@pytest.mark.parametrize("method", ["svd_cap", "hard_cap"])
@pytest.mark.parametrize("m,n", [(64, 48), (32, 96)])
def test_exact_caps_bf16(method, m, n):
    w_max = 1.0
    W = make_weight(m, n, spread(min(m, n), 3.0, 0.01), seed=3)[0].bfloat16()
    out = C.apply(W, method, w_max)
    assert out.dtype == torch.bfloat16 and out.shape == W.shape
    got = rms_singular_values(out)
    want = rms_singular_values(W).clamp(max=w_max)
    # bf16 output rounding: ~2^-8 of the largest entries, so compare against the cap's scale
    assert (got - want).abs().max() <= 2e-2 * w_max
    assert got.max() <= w_max * (1 + 1e-2)


def test_exact_caps_preserve_singular_vectors():
    W = make_weight(40, 24, spread(24, 3.0, 0.1), seed=5)[0].float()
    ref = C.apply(W, "svd_cap", 1.0)
    out = C.apply(W, "hard_cap", 1.0)
    assert torch.linalg.matrix_norm((out - ref).double(), ord=2) <= 1e-2 * rms_scale(40, 24) ** -1


def test_hard_cap_poly_is_the_papers_approximation():
    # Four fixed quintics: max ~1.011 near 1.19 w_max, within a few percent of min(s, w_max) on [0, 3].
    for w_max in (1.0, 2.0):
        W = make_weight(64, 48, spread(48, 3 * w_max, 0.0), seed=7)[0].float()
        got = rms_singular_values(C.apply(W, "hard_cap_poly", w_max))
        want = rms_singular_values(W).clamp(max=w_max)
        assert got.max() <= 1.012 * w_max
        assert (got - want).abs().max() <= 0.06 * w_max


# ------------------------------------------------------------------------------------------------
# spectral normalize (warm-started power iteration)

def test_spectral_normalize_never_exceeds_cap_over_adversarial_updates():
    """The bound is a certificate (trace of a power of the Gram), so no sequence of updates beats it:
    push a weak direction up to become the new top, push the top further, or add full-rank noise."""
    gen = torch.Generator().manual_seed(11)
    m, n, w_max = 64, 48, 1.0
    c = rms_scale(m, n)
    W = make_weight(m, n, spread(n, 3.0, 0.0, seed=2), seed=2)[0].float()
    worst = 0.0
    for step in range(60):
        W = C.apply(W, "spectral_normalize", w_max)
        ratio = rms_singular_values(W)[0].item() / w_max
        worst = max(worst, ratio)
        # 1e-5: the certificate's float32 margin; W * scale itself rounds at ~1e-7
        assert ratio <= 1 + 1e-5, f"step {step}: {ratio}"
        U, S, Vh = torch.linalg.svd(W.double())
        if step % 3 == 0:
            k = int(torch.randint(n // 2, n, (1,), generator=gen))
            W = W + (1.5 * w_max / c) * (U[:, k:k + 1] @ Vh[k:k + 1]).float()
        elif step % 3 == 1:
            W = W + (0.3 * w_max / c) * (U[:, :1] @ Vh[:1]).float()
        else:
            W = W + 0.05 * torch.randn(m, n, generator=gen)
    assert worst >= 1 - 1e-2, "the normalization should land close to the cap, not far under it"


@pytest.mark.parametrize("n", [8, 48, 200])
def test_spectral_normalize_bound_is_nearly_attained_on_a_flat_spectrum(n):
    """All singular values equal is where trace(G^p)^(1/p) overestimates most (by n^(1/p)): the result
    must still land within SPECTRAL_UNDERSHOOT of the cap, and never above it."""
    W = make_weight(2 * n, n, torch.full((n,), 3.0, dtype=torch.float64), seed=n)[0].float()
    top = rms_singular_values(C.apply(W, "spectral_normalize", 1.0))[0].item()
    assert 1 / (1 + C.SPECTRAL_UNDERSHOOT) <= top <= 1 + 1e-5
    assert top <= 1 - C.SPECTRAL_UNDERSHOOT / 20  # the slack is real here (not a vacuous tolerance)


@pytest.mark.parametrize("shape", [(96, 96), (192, 48), (48, 192), (2, 64, 64)])
def test_spectral_normalize_holds_under_muon_like_high_rank_steps(shape):
    """Steps W <- W - lr sqrt(d_out/d_in) msign(momentum) move every singular direction at once and pile
    the spectrum up in a tight cluster under the cap, whose top member keeps changing (block power
    iteration trailed it by up to ~2% here); the trace bound does not track vectors, so it cannot trail."""
    gen = torch.Generator().manual_seed(sum(shape))
    m, n = shape[-2:]
    w_max = 1.0
    W = torch.randn(shape, generator=gen) * 0.01
    buf = torch.zeros(shape)
    worst, landed = 0.0, []
    for step in range(50):
        lr = 0.5 if step % 10 < 5 else 0.1  # bursts of very large steps (update norm ~0.57 w_max)
        buf.lerp_(torch.randn(shape, generator=gen), 0.05)
        W = W - lr * math.sqrt(m / n) * C.msign(buf, coeffs="fork")
        W = C.apply(W, "spectral_normalize", w_max)
        ratio = rms_singular_values(W)[..., 0] / w_max
        worst = max(worst, ratio.max().item())
        landed.append(ratio.min().item())
    assert worst <= 1 + 1e-5, f"largest norm/cap {worst:.6f}"  # certified bound + float32 margin
    assert min(landed[10:]) >= 1 - 1e-2, "the normalization should land close to the cap, not far under it"


def test_spectral_normalize_batched_and_cold():
    W = make_weight(32, 48, spread(32, 3.0, 0.0), seed=9, batch=(3,))[0].float()
    W[1] *= 0.1  # one matrix already within the cap: untouched
    out = C.apply(W, "spectral_normalize", 1.0)
    norms = C.rms_norm_op(out)
    assert (norms <= 1 + 1e-5).all() and norms[0] >= 0.99 and norms[2] >= 0.99
    torch.testing.assert_close(out[1], W[1])


def test_spectral_hammer_and_weight_decay_act_on_the_top_singular_value():
    s = torch.tensor([3.0, 1.5, 1.0, 0.5, 0.25, 0.1], dtype=torch.float64)  # clear gap at the top
    W = make_weight(24, 6, s, seed=4)[0].float()
    got = rms_singular_values(C.apply(W, "spectral_hammer", 2.0))
    torch.testing.assert_close(got, torch.tensor([2.0, 1.5, 1.0, 0.5, 0.25, 0.1], dtype=torch.float64),
                               rtol=1e-4, atol=1e-5)
    got = rms_singular_values(C.apply(W, "spectral_weight_decay", 1.0, lr=0.1, weight_decay=1.0))
    torch.testing.assert_close(got, torch.tensor([2.7, 1.5, 1.0, 0.5, 0.25, 0.1], dtype=torch.float64),
                               rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# soft cap and its coupling

def quartic_root_oracle(w_max, eta, lr=0.0, wd=0.0):
    k = w_max * (1 - lr * wd) + eta
    roots = np.roots([-k**9, 3 * k**7, -3 * k**5, 0.0, k - w_max])
    real = sorted(r.real for r in roots if abs(r.imag) < 1e-9 and r.real >= -1e-15)
    return real[0], k


@given(w_max=st.floats(0.05, 20.0), frac=st.floats(1e-4, 0.3), lr=st.floats(0, 0.1), wd=st.floats(0, 1.0))
@settings(max_examples=200, deadline=None)
def test_soft_cap_alpha_is_the_smallest_nonnegative_root(w_max, frac, lr, wd):
    eta = frac * w_max
    k = w_max * (1 - lr * wd) + eta
    alpha = C.soft_cap_alpha(w_max, eta, lr, wd)
    assert isinstance(alpha, float)
    if k <= w_max:
        assert alpha == 0.0
        return
    want, k = quartic_root_oracle(w_max, eta, lr, wd)
    assert alpha == pytest.approx(want, rel=1e-7)
    assert C.soft_cap_map(k, alpha) == pytest.approx(w_max, rel=1e-12)
    assert C.soft_cap_map(k, alpha) <= w_max * (1 + 1e-15)
    assert alpha * k * k <= 1 / 3
    # monotone on [0, k]: f increasing, so every x <= k lands at <= w_max
    xs = np.linspace(0, k, 2001)
    assert np.all(np.diff(C.soft_cap_map(xs, alpha)) >= -1e-12 * w_max)


def test_soft_cap_alpha_edge_cases_and_cache():
    assert C.soft_cap_alpha(1.0, 0.0) == 0.0              # k = w_max: no cap needed
    assert C.soft_cap_alpha(1.0, 0.01, 0.1, 0.5) == 0.0   # decay outweighs the update
    with pytest.raises(ValueError, match="max update norm"):
        C.soft_cap_alpha(1.0, 0.5)                        # k = 1.5 > 81/62: no monotone root
    with pytest.raises(ValueError, match="w_max"):
        C.soft_cap_alpha(0.0, 0.1)
    C.soft_cap_alpha.cache_clear()
    for _ in range(5):
        C.soft_cap_alpha(1.0, 0.06, 0.05, 0.0)
    info = C.soft_cap_alpha.cache_info()
    assert info.misses == 1 and info.hits == 4


def top_aligned_update(W, eta):
    """An update of RMS->RMS norm eta along W's top singular pair (pushes the norm up by eta)."""
    m, n = W.shape
    U, S, Vh = torch.linalg.svd(W.double())
    return (eta / rms_scale(m, n)) * (U[:, :1] @ Vh[:1])


def orthogonal_update(W, eta, gen):
    """A Muon-like full-rank update of norm eta: eta times a random semi-orthogonal matrix."""
    m, n = W.shape
    Q = random_orthonormal(max(m, n), min(m, n), gen)
    Q = Q if m >= n else Q.mT
    return (eta / rms_scale(m, n)) * Q


@pytest.mark.parametrize("m,n,dtype,lr,wd", [
    (48, 32, torch.float32, 0.0, 0.0),
    (32, 48, torch.float32, 0.05, 0.5),
    (40, 40, torch.bfloat16, 0.0, 0.0),
])
def test_soft_cap_holds_over_1000_adversarial_steps(m, n, dtype, lr, wd):
    w_max, eta = 1.0, 0.05 * C.FORK_MAX_SINGULAR_VALUE * 1.05
    tol = 1e-3 if dtype == torch.float32 else 1e-2
    gen = torch.Generator().manual_seed(0)
    W = make_weight(m, n, spread(min(m, n), w_max, 0.0), seed=1, dtype=dtype)[0]
    worst = 0.0
    for step in range(1000):
        upd = top_aligned_update(W, eta) if step % 4 else orthogonal_update(W, eta, gen)
        W = ((1 - lr * wd) * W.double() + upd).to(dtype)
        W = C.apply(W, "soft_cap", w_max, lr=lr, weight_decay=wd, max_update_norm=eta)
        if step % 10 == 0 or step > 990:
            norm = C.rms_norm_op(W).item()
            worst = max(worst, norm)
            assert norm <= w_max * (1 + tol), f"step {step}: {norm}"
    assert worst >= 0.95 * w_max  # the adversary did push the norm up to the cap


def test_soft_cap_leaves_small_singular_values_alone():
    w_max, eta = 1.0, 0.06
    k = w_max + eta
    s = torch.cat([torch.tensor([k, 0.9, 0.5]), torch.linspace(0.01, w_max / 4, 29)]).double()
    W = make_weight(64, 32, torch.sort(s, descending=True).values, seed=8)[0].float()
    got = rms_singular_values(C.apply(W, "soft_cap", w_max, max_update_norm=eta))
    want = torch.sort(s, descending=True).values
    small = want < w_max / 4
    assert ((got[small] - want[small]).abs() / want[small]).max() <= 0.01
    assert got[0] == pytest.approx(w_max, rel=1e-5)


# ------------------------------------------------------------------------------------------------
# property tests: singular-value maps against an SVD oracle (float64 inputs compute in float64)

@st.composite
def weight_case(draw):
    m = draw(st.integers(2, 20))
    n = draw(st.integers(2, 20))
    r = min(m, n)
    w_max = draw(st.floats(0.25, 4.0))
    s = draw(st.lists(st.floats(0.05, 3.0), min_size=r, max_size=r))
    s = torch.sort(torch.tensor(s, dtype=torch.float64) * w_max, descending=True).values
    seed = draw(st.integers(0, 2**16))
    return m, n, w_max, s, seed


def expected_map(method, s, w_max):
    if method == "svd_cap" or method == "hard_cap":
        return s.clamp(max=w_max)
    if method == "stiefel":
        return torch.full_like(s, w_max)
    if method == "weight_decay":
        return s * (1 - 0.1 * 0.5)
    raise AssertionError(method)


@given(case=weight_case(), method=st.sampled_from(["svd_cap", "hard_cap", "stiefel", "weight_decay"]))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_singular_value_maps_match_svd_oracle(case, method):
    m, n, w_max, s, seed = case
    W, U, V = make_weight(m, n, s, seed=seed)
    out = C.apply(W, method, w_max, lr=0.1, weight_decay=0.5)
    want = (U * expected_map(method, s, w_max).unsqueeze(-2)) @ V.mT / rms_scale(m, n)
    tol = {"svd_cap": 1e-10, "weight_decay": 1e-12, "hard_cap": 1e-2, "stiefel": 1e-2}[method]
    err = torch.linalg.matrix_norm(out - want, ord=2) * rms_scale(m, n)
    assert err <= tol * w_max


@given(case=weight_case(), frac=st.floats(0.0, 0.25))
@settings(max_examples=60, deadline=None)
def test_soft_cap_map_matches_svd_oracle(case, frac):
    m, n, w_max, s, seed = case
    eta = frac * w_max
    k = w_max + eta
    s = s * (k / (3.0 * w_max))       # the coupling's precondition: every singular value <= k
    W, U, V = make_weight(m, n, s, seed=seed)
    out = C.apply(W, "soft_cap", w_max, max_update_norm=eta)
    alpha = C.soft_cap_alpha(w_max, eta)
    want = (U * C.soft_cap_map(s, alpha).unsqueeze(-2)) @ V.mT / rms_scale(m, n)
    err = torch.linalg.matrix_norm(out - want, ord=2) * rms_scale(m, n)
    assert err <= 1e-10 * w_max
    assert rms_singular_values(out)[0] <= w_max * (1 + 1e-10)


@given(case=weight_case())
@settings(max_examples=40, deadline=None)
def test_spectral_normalize_matches_svd_oracle(case):
    m, n, w_max, s, seed = case
    W, _, _ = make_weight(m, n, s, seed=seed)
    out = C.apply(W, "spectral_normalize", w_max)
    scale = torch.linalg.matrix_norm(out, ord=1) / torch.linalg.matrix_norm(W, ord=1)
    torch.testing.assert_close(out, W * scale, rtol=1e-9, atol=1e-12)   # a pure rescaling
    top = rms_singular_values(out)[0]
    assert top <= w_max * (1 + 1e-5)
    if s[0] <= w_max * 0.99:
        assert scale == pytest.approx(1.0, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# msign

@pytest.mark.parametrize("m,n", [(48, 32), (32, 48), (2 * 16, 16)])
def test_msign_polar_express_matches_polar_factor(m, n):
    W = make_weight(m, n, spread(min(m, n), 3.0, 0.05), seed=6)[0]
    U, _, Vh = torch.linalg.svd(W, full_matrices=False)
    got = C.msign(W.float(), steps=10).double()
    assert torch.linalg.matrix_norm(got - U @ Vh, ord=2) <= 1e-2
    got16 = C.msign(W.bfloat16())
    assert got16.dtype == torch.bfloat16
    sv = torch.linalg.svdvals(got16.double())
    assert sv.min() >= 0.85 and sv.max() <= 1.1


def test_msign_fork_respects_its_bound_and_batches():
    W = make_weight(32, 64, spread(32, 3.0, 0.05), seed=12, batch=(2,))[0]
    for dtype in (torch.float32, torch.bfloat16):
        out = C.msign(W.to(dtype), coeffs="fork")
        assert out.shape == W.shape and out.dtype == dtype
        sv = torch.linalg.svdvals(out.double())
        assert sv.max() <= C.FORK_MAX_SINGULAR_VALUE * 1.01 and sv.min() >= 0.5
    with pytest.raises(ValueError, match="coeffs"):
        C.msign(W, coeffs="nope")


# ------------------------------------------------------------------------------------------------
# every method: shape, dtype, batch preserved

@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_method_preserves_shape_dtype_device(method, dtype):
    W = (0.3 * torch.randn(2, 3, 24, 16, generator=torch.Generator().manual_seed(0))).to(dtype)
    before = W.clone()
    out = C.apply(W, method, 1.0, lr=0.05, weight_decay=0.1, max_update_norm=0.06, state={})
    assert out.shape == W.shape and out.dtype == W.dtype and out.device == W.device
    assert torch.isfinite(out).all()
    assert torch.equal(W, before)


# ------------------------------------------------------------------------------------------------
# cap_row_rms

def test_cap_row_rms():
    E = torch.randn(50, 16, generator=torch.Generator().manual_seed(0))
    E[::2] *= 5
    out = C.cap_row_rms(E, 1.0)
    rms = out.pow(2).mean(-1).sqrt()
    before = E.pow(2).mean(-1).sqrt()
    assert (rms <= 1 + 1e-6).all()
    over = before > 1
    torch.testing.assert_close(rms[over], torch.ones(int(over.sum())))
    torch.testing.assert_close(out[~over], E[~over])
    with pytest.raises(ValueError, match="max_rms"):
        C.cap_row_rms(E, 0.0)


@settings(max_examples=30, deadline=None)
@given(d=st.integers(1, 1024), cap=st.floats(0.01, 10.0), seed=st.integers(0, 2 ** 16))
def test_capped_rows_are_within_the_cap_in_exact_arithmetic(d, cap, seed):
    """Float32 rounding never leaves a capped row above the cap (in float64, the certificate's radius):
    rows at the cap, just above and far above it."""
    g = torch.Generator().manual_seed(seed)
    E = torch.randn(64, d, generator=g)
    E = E / E.pow(2).mean(-1, keepdim=True).sqrt() * cap * (1 + torch.linspace(-1e-6, 3.0, 64)[:, None])
    rms = C.cap_row_rms(E, cap).double().pow(2).mean(-1).sqrt()
    assert (rms <= cap).all() and (rms >= cap * (1 - 1e-4))[1:].all()


# ------------------------------------------------------------------------------------------------
# bad input: clear ValueError, input untouched

BAD_W = {
    "1-D": lambda: torch.randn(8),
    "nan": lambda: torch.randn(6, 4).index_put_((torch.tensor([2]), torch.tensor([1])), torch.tensor(float("nan"))),
    "inf": lambda: torch.randn(6, 4).index_put_((torch.tensor([0]), torch.tensor([3])), torch.tensor(float("inf"))),
}


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("bad", sorted(BAD_W))
def test_bad_weights_raise_and_stay_untouched(method, bad):
    W = BAD_W[bad]()
    before = W.clone()
    with pytest.raises(ValueError, match="W "):
        C.apply(W, method, 1.0, max_update_norm=0.06, state={})
    assert torch.equal(W.nan_to_num(), before.nan_to_num()) and torch.equal(W.isnan(), before.isnan())


@pytest.mark.parametrize("w_max", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_w_max_raises(w_max):
    W = torch.randn(6, 4)
    before = W.clone()
    with pytest.raises(ValueError, match="w_max"):
        C.apply(W, "soft_cap", w_max, max_update_norm=0.06)
    assert torch.equal(W, before)


def test_unknown_method_and_bad_hyperparameters_raise():
    W = torch.randn(6, 4)
    before = W.clone()
    with pytest.raises(ValueError, match="unknown constraint method 'spectral_cap'.*soft_cap"):
        C.apply(W, "spectral_cap", 1.0)
    with pytest.raises(ValueError, match="lr"):
        C.apply(W, "weight_decay", 1.0, lr=-0.1)
    with pytest.raises(ValueError, match="max update norm"):
        C.apply(W, "soft_cap", 1.0, max_update_norm=1.0)
    with pytest.raises(ValueError, match="X must have shape"):
        C.msign(torch.randn(5))
    with pytest.raises(ValueError, match="W must have shape"):
        C.rms_norm_op(torch.randn(5))
    assert torch.equal(W, before)


# ------------------------------------------------------------------------------------------------
# The methods on the Triton kernels (TRITON_INTERPRET=1, CPU tensors) against the torch path
# (the kernels themselves: tests/test_kernels.py)

triton_only = pytest.mark.skipif(not (kernels.HAVE_TRITON and kernels.INTERPRETING),
                                 reason="needs triton with TRITON_INTERPRET=1 (set in conftest)")


@triton_only
@pytest.mark.parametrize("method", ["soft_cap", "hard_cap", "hard_cap_poly", "spectral_normalize"])
@pytest.mark.parametrize("m,n,dtype", [(64, 48, torch.float32), (32, 96, torch.float32), (64, 48, torch.bfloat16)])
def test_methods_on_triton_path_match_torch_path(monkeypatch, method, m, n, dtype):
    W = make_weight(m, n, spread(min(m, n), 1.06, 0.0), seed=2, batch=(2,))[0].to(dtype)
    kw = dict(max_update_norm=0.06)
    want = C.apply(W, method, 1.0, **kw)
    monkeypatch.setattr(kernels, "TRITON_ON_CPU", True)
    assert kernels.ops_for(W) is kernels._TritonOps
    got = C.apply(W, method, 1.0, **kw)
    assert got.dtype == dtype and got.shape == W.shape
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)


@triton_only
def test_msign_on_triton_path_matches_torch_path(monkeypatch):
    X = torch.randn(2, 48, 64, generator=torch.Generator().manual_seed(3))
    for coeffs in ("fork", "polar_express"):
        want = C.msign(X, coeffs=coeffs)
        monkeypatch.setattr(kernels, "TRITON_ON_CPU", True)
        got = C.msign(X, coeffs=coeffs)
        monkeypatch.setattr(kernels, "TRITON_ON_CPU", False)
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------------------------------
# long-side slices (LongSideShards): every shardable method, sliced over "ranks" played by threads

def run_on_slices(W, method, pieces, **kwargs):
    """apply() on `pieces` slices of W's long side at once, one thread each, with a reduce that sums the
    threads' tensors (what an all_reduce does across ranks); the slices' results, concatenated."""
    import threading
    dim = -2 if W.shape[-2] >= W.shape[-1] else -1
    slices = torch.tensor_split(W, pieces, dim=dim)
    barrier, box = threading.Barrier(pieces), {}

    def reduce_for(i):
        def reduce(t):
            box[i] = t
            barrier.wait()
            total = sum(box[j] for j in range(pieces))
            barrier.wait()  # everyone has read the slots before the next reduce overwrites them
            return total
        return reduce

    out, errors = [None] * pieces, []

    def work(i):
        try:
            shards = C.LongSideShards(length=W.shape[dim], reduce=reduce_for(i))
            out[i] = C.apply(slices[i], method, 1.0, shards=shards, **kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(e)
            barrier.abort()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(pieces)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return torch.cat(out, dim=dim)


SHARDABLE = sorted(m for m, info in C.PROPERTIES.items() if info.shardable)


@pytest.mark.parametrize("method", SHARDABLE)
@pytest.mark.parametrize("shape", [(96, 16), (16, 96), (2, 80, 24)])
def test_methods_on_long_side_slices_match_the_whole_matrix(method, shape):
    """The slices' results are the slices of the whole result: every shardable method is X p(X^T X), and
    the Gram is the sum of the slices' Grams. Tolerance: float32 sums taken in a different order."""
    W = make_weight(shape[-2], shape[-1], spread(min(shape[-2:]), 1.05, 0.01), seed=3,
                    batch=shape[:-2])[0].float()
    kw = dict(lr=0.05, weight_decay=0.1, max_update_norm=0.06)
    want = C.apply(W, method, 1.0, **kw)
    got = run_on_slices(W, method, 3, **kw)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_shards_are_refused_for_whole_matrix_methods_and_bad_lengths():
    W = torch.randn(32, 8)
    with pytest.raises(ValueError, match="svd_cap.*whole matrices"):
        C.apply(W, "svd_cap", 1.0, shards=C.LongSideShards(length=64, reduce=lambda t: t))
    with pytest.raises(ValueError, match="length"):
        C.apply(W, "soft_cap", 1.0, max_update_norm=0.06, shards=C.LongSideShards(length=16, reduce=lambda t: t))


def test_properties_describe_every_method_once():
    assert C.PROPERTIES.keys() == C.METHODS.keys()
    assert {m for m, i in C.PROPERTIES.items() if i.decays} == {"weight_decay", "spectral_weight_decay"}
    assert {m for m, i in C.PROPERTIES.items() if i.coupled} == {"soft_cap"}
    assert all(i.exact <= i.caps for i in C.PROPERTIES.values())  # exact only says how a cap holds
    with pytest.raises(AttributeError):
        C.PROPERTIES["soft_cap"].coupled = False  # frozen: one record, not a copy to edit
