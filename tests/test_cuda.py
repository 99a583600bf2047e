"""What only a GPU can show, as tests that run on every device there is: each test takes the `device` fixture,
so it runs on the CPU in CI (the same code path as far as the CPU has it, at sizes the CPU can afford) and on
CUDA where there is one. bench/gpu_check.sh runs this file alone, after its timed runs: the compiled
FlexAttention backward, bf16 under CUDA autocast, the Triton kernels compiled for real and the measured dispatch,
the Lipschitz report on CUDA weights, a whole train_gpt run through its validations. Data: synthetic shards from
bench/step_gpu.py's maker (the GPU machine has no data packages). More of these paths, on the CPU only:
tests/test_gpu_paths.py."""
import importlib.util
import math
import os

import pytest
import torch

import constraints as C
import kernels
import lipschitz
import train_gpt as tg
from test_gpu_paths import BOS, LONG_T, small_hp, token_ids, trained_looking

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_ONLY = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(params=[pytest.param("cpu"), pytest.param("cuda", marks=CUDA_ONLY)])
def device(request):
    return torch.device(request.param)


def synthetic_shards(out_dir, vocab: int, train_tokens: int, val_tokens: int):
    """bench/step_gpu.py's write_synthetic_shards (what gpu_check.sh's shards stage runs), loaded from its path:
    bench/ on sys.path would let bench/constraints.py shadow constraints.py in later tests."""
    spec = importlib.util.spec_from_file_location("step_gpu", os.path.join(ROOT, "bench", "step_gpu.py"))
    step_gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(step_gpu)
    return step_gpu.write_synthetic_shards(str(out_dir), vocab, train_tokens, val_tokens)


@pytest.mark.parametrize("arch", ["lipschitz", "speedrun"])
def test_compiled_step_matches_eager_sdpa(arch, device):
    """Loss and gradients of the compiled loss against eager SDPA with a dense mask (a 2-block window on a 3-block
    sequence, documents), both under bf16 autocast: 2% on the loss, 10% of the largest entry per gradient (two
    bf16 paths with different reduction orders). CUDA: the trainer's compiled loss (inductor) with FlexAttention block masks, whose
    compiled backward only a GPU has. CPU: FlexAttention has no CPU backward, so the compiled side keeps SDPA,
    and it is compiled by dynamo and AOT autograd without inductor's code generation (a minute per graph on a
    2-core CPU): the graph capture and the backward it derives."""
    torch._dynamo.reset()
    model = trained_looking(small_hp(arch, seq_len=LONG_T)).to(device)
    idx = token_ids(length=LONG_T).to(device)
    x, y = idx[:, :-1], idx[:, 1:]
    cuda = device.type == "cuda"
    compiled = (tg.model_fns(model, compiled=True).loss if cuda
                else torch.compile(model.loss, backend="aot_eager", dynamic=False))
    results = []
    for loss_fn, flex in ((model.loss, False), (compiled, cuda)):
        model.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_fn(x, y, tg.AttentionMask(x, BOS, 256, flex=flex))
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, rtol=2e-2, atol=0)
    for g, w in zip(got_grads, want_grads):
        assert (g - w).abs().max() <= 0.1 * w.abs().max() + 1e-6


def test_bound_report_on_the_device_equals_cpu(device):
    """Grams on the device in float64, eigh on the host: the same numbers as an all-CPU report."""
    model = trained_looking(small_hp())
    want = lipschitz.bound_report(model)
    got = lipschitz.bound_report(model.to(device))
    for key in ("log10_bound", "log10_bound_tight", "log10_bound_sharp"):
        assert got[key] == pytest.approx(want[key], rel=1e-9)
    assert tg.weight_norms(model)["lm_head"] == pytest.approx(want["lm_head_norm"], rel=1e-9)


# Muon's stacks at GPT-2 small (48 attention matrices, the lm_head's long-side slice on 8 ranks, the MLP's), and
# the same kinds of shape at sizes the Triton interpreter runs in seconds on a CPU
KERNEL_SHAPES = {"attention": {"cuda": (4, 768, 768), "cpu": (4, 64, 64)},
                 "lm_head slice": {"cuda": (1, 6288, 768), "cpu": (1, 200, 48)},
                 "mlp": {"cuda": (2, 3072, 768), "cpu": (2, 192, 48)}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", list(KERNEL_SHAPES))
def test_triton_kernels_agree_with_torch_and_the_dispatch_measures_in_warmup(kind, dtype, device, monkeypatch):
    """Both kernels against torch within AGREEMENT_RTOL; under measuring_dispatch() the measured dispatch times
    both and finds them agreeing. On CPU the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set by
    conftest where there is no CUDA)."""
    if device.type == "cpu" and not kernels.INTERPRETING:
        pytest.skip("Triton runs on CPU tensors only under TRITON_INTERPRET=1 (conftest sets it without CUDA)")
    monkeypatch.setattr(kernels, "DISPATCH_CHOICES", {})  # this test's measurements stay in this test
    monkeypatch.setattr(kernels, "DISPATCH_MISMATCHES", {})
    shape = KERNEL_SHAPES[kind][device.type]
    g = torch.Generator(device=device).manual_seed(0)
    X = torch.randn(shape, generator=g, device=device).to(dtype)
    P = torch.randn(shape[0], shape[2], shape[2], generator=g, device=device).to(dtype)
    rtol = kernels.AGREEMENT_RTOL[dtype]
    gram = kernels.triton_sym_mm(X.mT, X.mT), kernels.torch_sym_mm(X.mT, X.mT)
    assert kernels.relative_difference(*gram) <= rtol
    fused = kernels.triton_mm_add(X, P, beta=0.5, R=X), kernels.torch_mm_add(X, P, beta=0.5, R=X)
    assert kernels.relative_difference(*fused) <= rtol
    with kernels.measuring_dispatch():
        kernels._MeasuredOps.sym_mm(X.mT, X.mT)
        kernels._MeasuredOps.mm_add(X, P, beta=0.5, R=X)
    assert len(kernels.DISPATCH_CHOICES) == 2 and not kernels.DISPATCH_MISMATCHES


def test_soft_cap_holds_in_bf16(device):
    """The soft cap's guarantee where Muon leaves it: matrices at the cap plus a Muon step (RMS->RMS norm
    k = w_max + max_update_norm, Muon's bound at lr 0.05), stored in bf16, come back within 1% of w_max. The
    constraint computes in float32 on the device; the 1% covers bf16's rounding of the input and the output."""
    w_max, lr = 1.0, 0.05
    eta = lr * C.FORK_MAX_SINGULAR_VALUE * 1.05  # Muon's max_update_norm (fork, safety 1.05)
    count, n = (12, 768) if device.type == "cuda" else (4, 96)
    g = torch.Generator(device=device).manual_seed(0)
    W = torch.randn(count, n, n, generator=g, device=device)
    W = (W * ((w_max + eta) / C.rms_norm_op(W))[:, None, None]).bfloat16()
    assert lipschitz.rms_op_norms(W).max().item() == pytest.approx(w_max + eta, rel=1e-2)  # the premise holds
    out = C.apply(W, "soft_cap", w_max, lr=lr, max_update_norm=eta)
    assert out.dtype == torch.bfloat16 and out.device.type == device.type
    assert lipschitz.rms_op_norms(out).max().item() <= w_max * (1 + 1e-2)


def test_smoke_run_through_validation(device, tmp_path, monkeypatch):
    """train_gpt end to end (warm-up measuring the dispatch, compiled with flex masks on CUDA) through the step-0
    and final validations, where the certified bound is computed from the device's weights. Uniformly random
    tokens: the loss starts at ln(256) = 5.55 (zero-initialised lm_head) and cannot fall far below it."""
    if device.type == "cpu":  # main() trains on CUDA wherever there is one
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    train, val = synthetic_shards(tmp_path / "shards", 256, 50_000, 10_000)
    out = tg.main(["--preset=smoke", f"--train_files={train}", f"--val_files={val}", "--num_iterations=6",
                   "--val_every=3", "--warmup_steps=2", f"--log_dir={tmp_path}", f"--checkpoint_dir={tmp_path}"])
    assert out["step"] == 6 and out["val_loss"] < 6 and math.isfinite(out["log10_bound"]) and out["log10_bound"] < 10
    assert out["dtype"] == "bf16" if device.type == "cuda" else out["dtype"] in ("bf16", "fp32")
    text = open(out["log"]).read()
    assert "step:0/6 val_loss:" in text and "step:6/6 val_loss:" in text
    if device.type == "cuda":
        assert "kernel dispatch:" in text and "peak memory allocated" in text
