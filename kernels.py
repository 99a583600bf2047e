"""Triton kernels for the constraints' matrix products, and the measured per-shape dispatch between them and
torch (cuBLAS). Low level: it knows nothing of constraints; constraints.py calls `ops_for(X)` for its products.

Two products, on batches of matrices (batch, rows, cols) with any strides:
    sym_mm(A, B, alpha, beta, D) = alpha * A @ B^T + beta * D   for a result known to be symmetric
    mm_add(A, B, alpha, beta, R) = alpha * A @ B   + beta * R   (the fused epilogue)
each in three forms: the torch reference (`torch_sym_mm`, `torch_mm_add`: every device, the CPU path), the Triton
kernels (`triton_sym_mm` computes one triangle of blocks and mirrors it, so its result is exactly symmetric;
`triton_mm_add` fuses the residual, scale and cast into the product's epilogue), and the measured dispatch.

`ops_for(X)` picks the form: on CUDA with triton, per product key (op, shapes, strides, dtypes, epilogue) the
faster of Triton and cuBLAS, measured (agreement within AGREEMENT_RTOL, then speed) only inside
`measuring_dispatch()` (train_gpt's untimed warm-up) and cached in DISPATCH_CHOICES; a key never measured runs on
torch, with no timing and no host sync, so a timed step never measures. `share_dispatch_choices()` makes every
rank adopt one table (rank 0's choice wins); `dispatch_summary()` is the log line. On CPU: torch ops, or the
Triton kernels under TRITON_INTERPRET=1 when a test sets TRITON_ON_CPU.

Mutable module state: DISPATCH_CHOICES, DISPATCH_MISMATCHES (keys whose Triton result disagreed with torch's,
never chosen), TRITON_ON_CPU (tests only).
"""
from __future__ import annotations

import contextlib
import math
import os
import time

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
    HAVE_TRITON = True
except ImportError:  # pragma: no cover - triton ships with torch on Linux
    HAVE_TRITON = False

__all__ = [
    "HAVE_TRITON", "INTERPRETING", "TRITON_ON_CPU", "torch_sym_mm", "torch_mm_add", "triton_sym_mm", "triton_mm_add",
    "ops_for", "AGREEMENT_RTOL", "relative_difference", "DISPATCH_CHOICES", "DISPATCH_MISMATCHES",
    "measuring_dispatch", "merge_dispatch_choices", "share_dispatch_choices", "dispatch_summary",
]

# Products: torch reference and Triton kernels, behind one dispatch point.
#   sym_mm(A, B, alpha, beta, D) = alpha * A @ B^T + beta * D   for a result known to be symmetric
#   mm_add(A, B, alpha, beta, R) = alpha * A @ B   + beta * R   (the fused epilogue)
# All operands are (batch, rows, cols) with any strides.

def torch_sym_mm(A: Tensor, B: Tensor, alpha: float = 1.0, beta: float = 0.0, D: Tensor | None = None,
                 out_dtype: torch.dtype | None = None) -> Tensor:
    out_dtype = out_dtype or A.dtype
    A, B = A.to(out_dtype), B.to(out_dtype)
    if D is None:
        C = torch.bmm(A, B.mT)
        return C if alpha == 1.0 else C.mul_(alpha)
    return torch.baddbmm(D.to(out_dtype), A, B.mT, beta=beta, alpha=alpha)


def torch_mm_add(A: Tensor, B: Tensor, alpha: float = 1.0, beta: float = 0.0, R: Tensor | None = None,
                 out_dtype: torch.dtype | None = None) -> Tensor:
    out_dtype = out_dtype or A.dtype
    A, B = A.to(out_dtype), B.to(out_dtype)
    if R is None:
        C = torch.bmm(A, B)
        return C if alpha == 1.0 else C.mul_(alpha)
    return torch.baddbmm(R.to(out_dtype), A, B, beta=beta, alpha=alpha)


INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"

if HAVE_TRITON:
    @triton.jit
    def _tile_product(A, B, rm, rn, M, N, K, s_am, s_ak, s_bk, s_bn,
                      UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """The (BLOCK_M, BLOCK_N) tile A[rm, :] @ B[:, rn], accumulated in float32 (A, B: one matrix's base)."""
        rk = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            a = tl.load(A + rm[:, None] * s_am + kk[None, :] * s_ak,
                        mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
            b = tl.load(B + kk[:, None] * s_bk + rn[None, :] * s_bn,
                        mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
            if UPCAST:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc += tl.dot(a, b, input_precision=PRECISION)
        return acc

    @triton.jit
    def _sym_mm_kernel(A, B, D, C, R, K,
                       s_ab, s_ar, s_ak, s_bb, s_br, s_bk, s_db, s_dr, s_dc, s_cb, s_cr, s_cc,
                       alpha, beta,
                       HAS_D: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                       BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
        # One (BLOCK x BLOCK) block of the lower triangle per program; the mirror block is stored
        # from the same registers, so only ~half of the products are computed. A diagonal block is
        # symmetrized in registers, so the whole result is exactly symmetric.
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        bat = tl.program_id(2)
        if pid_n <= pid_m:
            rm = pid_m * BLOCK + tl.arange(0, BLOCK)
            rn = pid_n * BLOCK + tl.arange(0, BLOCK)
            acc = _tile_product(A + bat * s_ab, B + bat * s_bb, rm, rn, R, R, K, s_ar, s_ak, s_bk, s_br,
                                UPCAST, PRECISION, BLOCK, BLOCK, BLOCK_K)
            acc = acc * alpha
            inside = (rm[:, None] < R) & (rn[None, :] < R)
            if HAS_D:
                d = tl.load(D + bat * s_db + rm[:, None] * s_dr + rn[None, :] * s_dc, mask=inside, other=0.0)
                acc += beta * d.to(tl.float32)
            if pid_n == pid_m:  # x + y == y + x exactly, and halving is exact
                acc = (acc + tl.trans(acc)) * 0.5
            out = acc.to(C.dtype.element_ty)
            tl.store(C + bat * s_cb + rm[:, None] * s_cr + rn[None, :] * s_cc, out, mask=inside)
            if pid_n < pid_m:  # mirror: C[rn, rm] = out^T
                tl.store(C + bat * s_cb + rn[None, :] * s_cr + rm[:, None] * s_cc, out, mask=inside)

    @triton.jit
    def _mm_add_kernel(A, B, Rt, C, M, N, K,
                       s_ab, s_am, s_ak, s_bb, s_bk, s_bn, s_rb, s_rm, s_rn, s_cb, s_cm, s_cn,
                       alpha, beta,
                       HAS_R: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        bat = tl.program_id(2)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = _tile_product(A + bat * s_ab, B + bat * s_bb, rm, rn, M, N, K, s_am, s_ak, s_bk, s_bn,
                            UPCAST, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
        acc = acc * alpha
        inside = (rm[:, None] < M) & (rn[None, :] < N)
        if HAS_R:  # fused epilogue: residual, scale and cast in the same pass as the product
            r = tl.load(Rt + bat * s_rb + rm[:, None] * s_rm + rn[None, :] * s_rn, mask=inside, other=0.0)
            acc += beta * r.to(tl.float32)
        tl.store(C + bat * s_cb + rm[:, None] * s_cm + rn[None, :] * s_cn, acc.to(C.dtype.element_ty), mask=inside)


def _check_batched(*tensors: Tensor) -> None:
    for t in tensors:
        if t is not None and t.ndim != 3:
            raise ValueError(f"kernel operands must be (batch, rows, cols), got shape {tuple(t.shape)}")


def _upcast(A: Tensor, B: Tensor) -> bool:
    # The interpreter mishandles bf16 arithmetic, and tl.dot needs equal operand dtypes.
    return INTERPRETING or A.dtype != B.dtype


def _precision(A: Tensor, B: Tensor) -> str:
    """tl.dot's input precision: float32 operands keep ~float32 accuracy on tensor cores (three TF32
    products, "tf32x3"; plain TF32 would round inputs to 11 bits); bf16 tiles are exact inputs as they are."""
    return "tf32x3" if torch.float32 in (A.dtype, B.dtype) else "tf32"


def triton_sym_mm(A: Tensor, B: Tensor, alpha: float = 1.0, beta: float = 0.0, D: Tensor | None = None,
                  out_dtype: torch.dtype | None = None, block: int = 64, block_k: int = 32) -> Tensor:
    """alpha * A @ B^T + beta * D for A, B (batch, r, K) whose product is symmetric (e.g. A = B, or
    A, B commuting symmetric matrices; D symmetric). Computes only the blocks on and below the
    diagonal; the result is exactly symmetric (mirrored blocks, symmetrized diagonal blocks)."""
    _check_batched(A, B, D)
    nb, r, K = A.shape
    if B.shape != A.shape:
        raise ValueError(f"sym_mm needs equal shapes, got {tuple(A.shape)} and {tuple(B.shape)}")
    C = torch.empty(nb, r, r, device=A.device, dtype=out_dtype or A.dtype)
    Dt = D if D is not None else C
    t = triton.cdiv(r, block)
    _sym_mm_kernel[(t, t, nb)](
        A, B, Dt, C, r, K, *A.stride(), *B.stride(), *Dt.stride(), *C.stride(), float(alpha), float(beta),
        HAS_D=D is not None, UPCAST=_upcast(A, B), PRECISION=_precision(A, B), BLOCK=block, BLOCK_K=block_k)
    return C


def triton_mm_add(A: Tensor, B: Tensor, alpha: float = 1.0, beta: float = 0.0, R: Tensor | None = None,
                  out_dtype: torch.dtype | None = None, block_m: int = 64, block_n: int = 64,
                  block_k: int = 32) -> Tensor:
    """alpha * A @ B + beta * R for A (batch, M, K), B (batch, K, N), R (batch, M, N)."""
    _check_batched(A, B, R)
    nb, M, K = A.shape
    N = B.shape[-1]
    C = torch.empty(nb, M, N, device=A.device, dtype=out_dtype or A.dtype)
    Rt = R if R is not None else C
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n), nb)
    _mm_add_kernel[grid](
        A, B, Rt, C, M, N, K, *A.stride(), *B.stride(), *Rt.stride(), *C.stride(), float(alpha), float(beta),
        HAS_R=R is not None, UPCAST=_upcast(A, B), PRECISION=_precision(A, B), BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_K=block_k)
    return C


class _TorchOps:
    sym_mm = staticmethod(torch_sym_mm)
    mm_add = staticmethod(torch_mm_add)


class _TritonOps:
    sym_mm = staticmethod(triton_sym_mm)
    mm_add = staticmethod(triton_mm_add)


def _median_ms(fn, reps: int = 10, cuda: bool = True) -> float:
    """Median time of fn() in ms over `reps` runs after one warm-up (synchronizes: measuring only): CUDA events
    on CUDA, the wall clock elsewhere (CPU tensors reach here only through the Triton interpreter, in tests)."""
    # tests/test_kernels.py fakes this timer; the real one runs in tests/test_cuda.py and bench/gpu_check.sh
    fn()
    times = []
    for _ in range(reps):
        if not cuda:
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


# (op, shapes, strides, dtypes, epilogue, device type) -> "triton" or "torch". Keys are measured only inside
# measuring_dispatch() (train_gpt's untimed warm-up); outside it an unseen key runs on torch (cuBLAS), with no
# timing and no host sync, so a timed step never measures. DISPATCH_MISMATCHES: keys whose Triton result
# disagreed with torch's (never chosen), with the relative difference found.
DISPATCH_CHOICES: dict = {}
DISPATCH_MISMATCHES: dict = {}
_MEASURING = [False]

# Largest relative difference max|triton - torch| / max|torch| that counts as agreement, by output dtype: a few
# units of the output's rounding (bf16 keeps 8 bits; float32 products of K terms differ by ~sqrt(K) ulps).
AGREEMENT_RTOL = {torch.bfloat16: 3e-2, torch.float16: 4e-3, torch.float32: 1e-4, torch.float64: 1e-10}


@contextlib.contextmanager
def measuring_dispatch():
    """Within this block, the first call of each CUDA product key runs both Triton and torch, checks that
    they agree (AGREEMENT_RTOL) and times both (host syncs: use it in a warm-up, not a timed step)."""
    before, _MEASURING[0] = _MEASURING[0], True
    try:
        yield
    finally:
        _MEASURING[0] = before


def relative_difference(got: Tensor, want: Tensor) -> float:
    """max |got - want| / max |want| (inf if either has a non-finite entry)."""
    diff = (got.float() - want.float()).abs().amax()
    scale = want.float().abs().amax().clamp_min(torch.finfo(torch.float32).tiny)
    value = float(diff / scale)
    return value if math.isfinite(value) else math.inf


def _measure_choice(key, triton_call, torch_call) -> str:
    """"triton" when the Triton kernel builds, agrees with torch for this key and is faster; else "torch"."""
    want = torch_call()
    try:
        gap = relative_difference(triton_call(), want)
    except Exception:  # noqa: BLE001 - a kernel that does not build for this shape/dtype loses
        return "torch"
    if gap > AGREEMENT_RTOL.get(want.dtype, 1e-4):
        DISPATCH_MISMATCHES[key] = gap
        return "torch"
    cuda = want.is_cuda
    return "triton" if _median_ms(triton_call, cuda=cuda) < _median_ms(torch_call, cuda=cuda) else "torch"


def _measured(op: str, A: Tensor, B: Tensor, extra: Tensor | None, kwargs: dict) -> Tensor:
    """Runs `op` on the choice recorded for this key (torch when none was measured; see measuring_dispatch)."""
    key = (op, tuple(A.shape), A.stride(), A.dtype, tuple(B.shape), B.stride(), B.dtype,
           extra is not None, kwargs.get("out_dtype"), A.device.type)
    triton_fn, torch_fn = (getattr(_TritonOps, op), getattr(_TorchOps, op))
    args = (A, B, kwargs.get("alpha", 1.0), kwargs.get("beta", 0.0), extra)
    out_dtype = kwargs.get("out_dtype")
    choice = DISPATCH_CHOICES.get(key)
    if choice is None and _MEASURING[0]:
        choice = DISPATCH_CHOICES[key] = _measure_choice(key, lambda: triton_fn(*args, out_dtype=out_dtype),
                                                         lambda: torch_fn(*args, out_dtype=out_dtype))
    fn = triton_fn if choice == "triton" else torch_fn
    return fn(*args, out_dtype=out_dtype)


def merge_dispatch_choices(per_rank: list[dict]) -> dict:
    """One table for all ranks from each rank's measured choices: rank 0's choice wins for every key it
    measured, then rank 1's, and so on (deterministic, so every rank computes the same table)."""
    merged: dict = {}
    for choices in reversed(per_rank):
        merged.update(choices)
    return merged


def share_dispatch_choices() -> None:
    """After the warm-up under torch.distributed: every rank adopts merge_dispatch_choices of all ranks'
    tables, so ranks never run different kernels on the same shapes. No-op in a single process."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, dict(DISPATCH_CHOICES))
    merged = merge_dispatch_choices(gathered)
    DISPATCH_CHOICES.clear()
    DISPATCH_CHOICES.update(merged)


def dispatch_summary() -> str:
    """One line for the log: how many product keys chose each backend, and any Triton/torch disagreement."""
    counts = {c: sum(v == c for v in DISPATCH_CHOICES.values()) for c in ("triton", "torch")}
    worst = max(DISPATCH_MISMATCHES.values(), default=0.0)
    return (f"kernel dispatch: {counts['triton']} product shapes on triton, {counts['torch']} on torch"
            + (f"; {len(DISPATCH_MISMATCHES)} disagreed with torch (worst relative difference {worst:.2e}), "
               f"kept on torch" if DISPATCH_MISMATCHES else ""))


class _MeasuredOps:
    """CUDA: per shape, the faster of the Triton kernel and cuBLAS (see _measured)."""

    @staticmethod
    def sym_mm(A, B, alpha=1.0, beta=0.0, D=None, out_dtype=None):
        return _measured("sym_mm", A, B, D, dict(alpha=alpha, beta=beta, out_dtype=out_dtype))

    @staticmethod
    def mm_add(A, B, alpha=1.0, beta=0.0, R=None, out_dtype=None):
        return _measured("mm_add", A, B, R, dict(alpha=alpha, beta=beta, out_dtype=out_dtype))


TRITON_ON_CPU = False  # tests set this under TRITON_INTERPRET=1 to run the kernels on CPU tensors


def ops_for(X: Tensor):
    """The one device dispatch: on CUDA with triton, the measured faster of Triton and cuBLAS per shape;
    on CPU, torch ops (the Triton kernels only when a test forces them under the interpreter)."""
    if HAVE_TRITON and X.is_cuda:
        return _MeasuredOps
    if HAVE_TRITON and TRITON_ON_CPU and INTERPRETING:
        return _TritonOps
    return _TorchOps

