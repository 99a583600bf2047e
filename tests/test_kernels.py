"""kernels.py: the Triton kernels (under TRITON_INTERPRET=1, on CPU tensors) against the torch products, and the
measured per-shape dispatch (its choice logic with a fake timer: no wall clock in tests). On CUDA the same kernels
compile for real in tests/test_cuda.py."""
import pytest
import torch

import kernels as K

triton_only = pytest.mark.skipif(not (K.HAVE_TRITON and K.INTERPRETING),
                                 reason="needs triton with TRITON_INTERPRET=1 (set in conftest)")


@triton_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,n", [(64, 48), (32, 96), (100, 70)])
def test_triton_sym_mm_matches_torch(dtype, m, n):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(2, m, n, generator=gen).to(dtype)
    Xs = X.mT if m >= n else X   # the smaller-side Gram via strides, no copy
    got = K.triton_sym_mm(Xs, Xs, out_dtype=torch.float32)
    want = K.torch_sym_mm(Xs.float(), Xs.float())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert torch.equal(got, got.mT)  # mirrored blocks are exact copies
    D = torch.randn(2, got.shape[-1], got.shape[-1], generator=gen)
    D = D + D.mT
    got = K.triton_sym_mm(want, want, alpha=-0.3, beta=2.0, D=D)
    torch.testing.assert_close(got, K.torch_sym_mm(want, want, alpha=-0.3, beta=2.0, D=D),
                               rtol=1e-5, atol=1e-3)


@triton_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,k,n", [(64, 48, 48), (32, 32, 96), (70, 33, 50)])
def test_triton_mm_add_matches_torch(dtype, m, k, n):
    gen = torch.Generator().manual_seed(1)
    A = torch.randn(2, m, k, generator=gen).to(dtype)
    B = torch.randn(2, k, n, generator=gen)                 # float32 polynomial times bf16 weights
    R = torch.randn(2, m, n, generator=gen).to(dtype)
    got = K.triton_mm_add(A, B, alpha=0.7, beta=1.5, R=R, out_dtype=torch.float32)
    want = K.torch_mm_add(A.float(), B, alpha=0.7, beta=1.5, R=R.float())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    got = K.triton_mm_add(A, B.to(dtype), out_dtype=dtype)
    want = K.torch_mm_add(A.float(), B.to(dtype).float()).to(dtype)
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


# ------------------------------------------------------------------------------------------------
# the per-shape dispatch: measured once per key on CUDA, never on CPU

def test_cpu_tensors_never_take_the_measured_dispatch():
    assert K.ops_for(torch.zeros(2, 3, 3)) is K._TorchOps


@triton_only
def test_measured_dispatch_measures_only_when_asked_once_per_key_and_skips_failing_or_wrong_kernels(monkeypatch):
    """_measured's choice logic on CPU tensors (the Triton side runs under the interpreter), with the
    timer replaced by fixed numbers: no wall clock in tests."""
    monkeypatch.setattr(K, "DISPATCH_CHOICES", {})
    monkeypatch.setattr(K, "DISPATCH_MISMATCHES", {})
    timed = []

    def fake_ms(fn, reps=10, cuda=True):
        timed.append(fn)
        fn()
        return 1.0 if len(timed) % 2 else 2.0   # the first timed (Triton) is the faster
    monkeypatch.setattr(K, "_median_ms", fake_ms)
    X = torch.randn(2, 40, 24, generator=torch.Generator().manual_seed(0))
    want = K.torch_sym_mm(X.mT, X.mT)
    got = K._MeasuredOps.sym_mm(X.mT, X.mT, out_dtype=torch.float32)   # not measuring: torch, no timing
    assert not timed and not K.DISPATCH_CHOICES
    with K.measuring_dispatch():
        for _ in range(3):
            got = K._MeasuredOps.sym_mm(X.mT, X.mT, out_dtype=torch.float32)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert len(timed) == 2 and list(K.DISPATCH_CHOICES.values()) == ["triton"]   # measured once, cached
    K._MeasuredOps.sym_mm(X.mT, X.mT, out_dtype=torch.float32)   # after the warm-up: the cached choice
    assert len(timed) == 2
    with K.measuring_dispatch():
        K._MeasuredOps.sym_mm(X, X)                        # another shape: another key, measured again
    assert len(timed) == 4 and len(K.DISPATCH_CHOICES) == 2

    def broken(*args, **kwargs):
        raise RuntimeError("kernel does not build")
    monkeypatch.setattr(K._TritonOps, "mm_add", staticmethod(broken))
    P = torch.randn(2, 24, 24, generator=torch.Generator().manual_seed(1))
    with K.measuring_dispatch():
        out = K._MeasuredOps.mm_add(X, P, beta=0.5, R=X)
    torch.testing.assert_close(out, K.torch_mm_add(X, P, beta=0.5, R=X))
    assert [v for k, v in K.DISPATCH_CHOICES.items() if k[0] == "mm_add"] == ["torch"]

    # a kernel that is faster but wrong (here 1% off in float32) is never chosen, and is reported
    monkeypatch.setattr(K._TritonOps, "mm_add", staticmethod(lambda *a, **k: 1.01 * K.torch_mm_add(*a, **k)))
    n_timed = len(timed)
    with K.measuring_dispatch():
        K._MeasuredOps.mm_add(X, P, alpha=2.0)
    assert len(timed) == n_timed                                # not even timed
    (gap,) = K.DISPATCH_MISMATCHES.values()
    assert 0.009 < gap < 0.011
    assert [v for k, v in K.DISPATCH_CHOICES.items() if k[0] == "mm_add"] == ["torch", "torch"]
    assert "1 disagreed with torch" in K.dispatch_summary()


def test_dispatch_choices_merge_in_rank_order():
    """Every rank computes the same table; rank 0's measurement wins where ranks disagree."""
    per_rank = [{"a": "triton", "b": "torch"}, {"a": "torch", "c": "triton"}, {"c": "torch", "d": "torch"}]
    assert K.merge_dispatch_choices(per_rank) == {"a": "triton", "b": "torch", "c": "triton", "d": "torch"}
    assert K.merge_dispatch_choices([{}, {"a": "torch"}]) == {"a": "torch"}


def test_imports_run_one_way_constraints_use_kernels_and_kernels_use_no_project_module():
    """kernels is the low level: it imports no project module, so constraints can import it without a circle."""
    import ast
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    project = {f[:-3] for f in os.listdir(root) if f.endswith(".py")} | {"data", "tools", "bench"}

    def imported(path):
        tree = ast.parse(open(os.path.join(root, path)).read())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        return names | {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported("kernels.py") & project
    assert "kernels" in imported("constraints.py")
