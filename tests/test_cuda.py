"""What only a GPU can show, for the first minutes of a lent GPU (bench/gpu_check.sh runs `pytest -m cuda`
before its timed runs): the compiled FlexAttention backward, bf16 on CUDA autocast, Triton compiled for real,
the Lipschitz report on CUDA weights, a whole train_gpt run through its step-0 validation. Skipped without
CUDA; everything else about these paths runs on the CPU in tests/test_gpu_paths.py."""
import pytest
import torch

import constraints as C
import lipschitz
import train_gpt as tg
from test_gpu_paths import BOS, small_hp, token_ids, trained_looking

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")


@pytest.mark.parametrize("arch", ["lipschitz", "speedrun"])
def test_compiled_flex_step_matches_eager_sdpa(arch):
    """Loss and gradients of the compiled loss with flex block masks (windows, documents) against eager SDPA
    with a dense mask, both under bf16 autocast: 2% on the loss, 10% of the largest entry per gradient
    (two bf16 paths with different reduction orders)."""
    model = trained_looking(small_hp(arch)).to(CUDA)
    idx = token_ids().to(CUDA)
    x, y = idx[:, :-1], idx[:, 1:]
    results = []
    for fns, flex in ((tg.model_fns(model, compile=False), False), (tg.model_fns(model, compile=True), True)):
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fns.loss(x, y, tg.AttentionMask(x, BOS, 40, flex=flex))
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, rtol=2e-2, atol=0)
    for g, w in zip(got_grads, want_grads):
        assert (g - w).abs().max() <= 0.1 * w.abs().max() + 1e-6


def test_bound_report_on_cuda_equals_cpu():
    """Grams on the device in float64, eigh on the host: the same numbers as an all-CPU report."""
    model = trained_looking(small_hp())
    want = lipschitz.bound_report(model)
    got = lipschitz.bound_report(model.to(CUDA))
    for key in ("log10_bound", "log10_bound_tight", "log10_bound_sharp"):
        assert got[key] == pytest.approx(want[key], rel=1e-9)
    assert tg.weight_norms(model)["lm_head"] == pytest.approx(want["lm_head_norm"], rel=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4, 768, 768), (1, 6288, 768), (2, 3072, 768)])
def test_triton_kernels_agree_with_torch_and_the_dispatch_measures_in_warmup(shape, dtype):
    g = torch.Generator(device=CUDA).manual_seed(0)
    X = torch.randn(shape, generator=g, device=CUDA).to(dtype)
    P = torch.randn(shape[0], shape[2], shape[2], generator=g, device=CUDA).to(dtype)
    rtol = C.AGREEMENT_RTOL[dtype]
    assert C.relative_difference(C.triton_sym_mm(X.mT, X.mT), C.torch_sym_mm(X.mT, X.mT)) <= rtol
    assert C.relative_difference(C.triton_mm_add(X, P, beta=0.5, R=X), C.torch_mm_add(X, P, beta=0.5, R=X)) <= rtol
    with C.measuring_dispatch():
        C._MeasuredOps.sym_mm(X.mT, X.mT)
    assert not C.DISPATCH_MISMATCHES


def test_soft_cap_holds_on_cuda_in_bf16():
    g = torch.Generator(device=CUDA).manual_seed(0)
    W = (3 * torch.randn(12, 768, 768, generator=g, device=CUDA)).bfloat16()
    out = C.apply(W, "soft_cap", 1.0, lr=0.05, max_update_norm=1.0)
    assert lipschitz.rms_op_norms(out).max().item() <= 1.0 + 1e-2


def test_smoke_run_on_cuda_through_validation(tmp_path):
    """train_gpt end to end on CUDA (compiled, flex masks, warm-up measuring the dispatch), through the
    step-0 and final validations, where the certified bound is computed from CUDA weights."""
    from data import shakespeare
    shards = tmp_path / "shards"
    shakespeare.build(input_path=None, out_dir=str(shards))
    out = tg.main(["--preset=smoke", f"--train_files={shards}/*train*.bin", f"--val_files={shards}/*val*.bin",
                   "--num_iterations=6", "--val_every=3", "--warmup_steps=2", f"--log_dir={tmp_path}",
                   f"--checkpoint_dir={tmp_path}"])
    assert out["step"] == 6 and out["dtype"] == "bf16" and out["val_loss"] < 6
    assert 0 < out["log10_bound"] < 10
    text = open(out["log"]).read()
    assert "kernel dispatch:" in text and "peak memory allocated" in text
