"""The GPU code paths of train_gpt.py, run on the CPU (CI has no GPU): the compiled whole-graph loss and eval
with FlexAttention block masks, bf16 autocast, tensors made without a device, the QK-norm dtype rule of CUDA
autocast, checkpoint and resume of a compiled run. What only a GPU can show (speed, the compiled flex
backward, Triton compiled for real, NCCL) is checked by tests/test_cuda.py, which bench/gpu_check.sh runs."""
import contextlib
import dataclasses
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lipschitz
import run_control as rc
import train_gpt as tg
from data.shards import write_shard

VOCAB, T, BOS = 64, 64, 0
LONG_T = 3 * 128  # three blocks of the attention masks: windows of 128 and 256 tokens (1 and 2 blocks) differ


def small_hp(arch: str = "lipschitz", **kw) -> tg.Hyperparameters:
    fields = dict(vocab_size=VOCAB, seq_len=T, bos_token=BOS, arch=arch)
    if arch == "speedrun":
        fields["constraint"] = "none"
    return tg.Hyperparameters.from_preset("smoke", **{**fields, **kw})


def trained_looking(hp: tg.Hyperparameters) -> tg.GPT:
    """A model whose zero-initialised out projections and lm_head are not zero, so every path matters."""
    model = tg.make_model(hp)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


def token_ids(batch: int = 3, seed: int = 0, length: int = T) -> torch.Tensor:
    """(batch, length + 1) ids with a document start (BOS) every ~20 tokens."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(1, VOCAB, (batch, length + 1), generator=g)
    idx[torch.rand(idx.shape, generator=g) < 0.05] = BOS
    return idx


@pytest.mark.parametrize("arch", ["lipschitz", "speedrun"])
def test_compiled_flex_loss_and_eval_match_sdpa_and_eager_without_recompiling_per_window(arch):
    """CUDA's path (the whole-graph compiled loss and eval with FlexAttention block masks: sliding window and
    documents) against CPU's (eager SDPA with a dense mask), at two window sizes (whole blocks of 128 tokens, on
    a sequence of three); the second window value must not recompile (the masks are data, not constants).
    Forward only: FlexAttention has no CPU backward (the compiled flex backward is tests/test_cuda.py's).
    float32; 2e-5 relative covers inductor's reordered reductions and flex's blockwise softmax."""
    torch._dynamo.reset()
    model = trained_looking(small_hp(arch, seq_len=LONG_T))
    eager, compiled = tg.model_fns(model, compiled=False), tg.model_fns(model, compiled=True)
    idx = token_ids(length=LONG_T)
    x, y = idx[:, :-1], idx[:, 1:]
    with torch.no_grad():
        for i, window in enumerate((128, 256)):
            sdpa, flex = (tg.AttentionMask(x, BOS, window, flex=f) for f in (False, True))
            want_loss, want_eval = eager.loss(x, y, sdpa), eager.eval_sums(x, y, sdpa)
            no_recompile = torch._dynamo.config.patch(error_on_recompile=True) if i else contextlib.nullcontext()
            with no_recompile:
                got_loss, got_eval = compiled.loss(x, y, flex), compiled.eval_sums(x, y, flex)
            torch.testing.assert_close(eager.loss(x, y, flex), want_loss, rtol=2e-5, atol=1e-6)
            torch.testing.assert_close(got_loss, want_loss, rtol=2e-5, atol=1e-6)
            torch.testing.assert_close(got_eval[0], want_eval[0], rtol=2e-5, atol=1e-4)
            assert got_eval[1].item() == want_eval[1].item()
            torch.testing.assert_close(got_eval[2], want_eval[2], rtol=2e-5, atol=1e-6)
        # the two windows give different losses: the mask reached the graph as data
        assert abs(eager.loss(x, y, tg.AttentionMask(x, BOS, 128)) - eager.loss(x, y, tg.AttentionMask(x, BOS, 256))) > 1e-4


def test_bf16_autocast_compiled_loss_and_grads_track_float32():
    """The bf16 autocast of CUDA (and of CPUs with native bf16) through the compiled loss: loss within 2%
    and gradients within 5% (relative to their largest entry) of the float32 eager ones; bf16 keeps 8 bits,
    ~0.4% per rounding, over a few layers of products."""
    hp = small_hp()
    model = trained_looking(hp)
    idx = token_ids()
    x, y = idx[:, :-1], idx[:, 1:]
    mask = tg.AttentionMask(x, BOS, 40)
    results = []
    for fns, amp in ((tg.model_fns(model, compiled=False), contextlib.nullcontext()),
                     (tg.model_fns(model, compiled=True), torch.autocast("cpu", dtype=torch.bfloat16))):
        model.zero_grad()
        with amp:
            loss = fns.loss(x, y, mask)
        assert loss.dtype == torch.float32  # the logits are promoted before the cross-entropy
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, rtol=2e-2, atol=0)
    for g, w in zip(got_grads, want_grads):
        assert (g - w).abs().max() <= 0.05 * w.abs().max() + 1e-7


def test_qk_norm_is_cast_to_the_value_dtype(monkeypatch):
    """CUDA autocast (torch >= 2.12) runs rms_norm in float32 while v stays bf16, and flex_attention refuses
    mixed dtypes; CPU autocast has no such rule, so mimic it and check what attention receives."""
    monkeypatch.setattr(tg, "rms_norm", lambda x: F.rms_norm(x.float(), (x.size(-1),)))
    seen = []
    attend = tg.AttentionMask.attend

    def spy(self, q, k, v, *rest):
        seen.append({q.dtype, k.dtype, v.dtype})
        return attend(self, q, k, v, *rest)
    monkeypatch.setattr(tg.AttentionMask, "attend", spy)
    model = tg.make_model(small_hp("speedrun"))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(token_ids()[:, :-1])
    assert seen and all(dtypes == {torch.bfloat16} for dtypes in seen)


def write_token_shards(out_dir) -> tuple[str, str]:
    """Random ids below VOCAB with a document start (BOS) every ~20 tokens: a train and a val shard. -> globs."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 20000), ("val", 5000)):
        tokens = rng.integers(1, VOCAB, size=n, dtype=np.uint16)
        tokens[rng.random(n) < 0.05] = BOS
        write_shard(str(out_dir / f"synth_{split}_000000.bin"), tokens)
    return str(out_dir / "*train*.bin"), str(out_dir / "*val*.bin")


@pytest.fixture
def streams(tmp_path):
    train, val = write_token_shards(tmp_path)
    return tg.TokenStream(train, VOCAB, "training"), tg.TokenStream(val, VOCAB, "validation")


@pytest.mark.parametrize("optimizer,constraint", [("muon", "soft_cap"), ("muon", "spectral_normalize"),
                                                  ("adamw", "hard_cap")])
def test_no_tensor_is_made_without_a_device(streams, optimizer, constraint):
    """A tensor created without a device lands on the CPU, which on CUDA meets the model's tensors and fails
    (as lipschitz.mixed_mlp_norm's torch.eye did, at the first validation). Here the model is on the CPU and
    tensors made without a device go to the meta device, so any such tensor fails the same way: a training
    step, an evaluation, the validation report (bound, weight norms) and a FlexAttention mask."""
    train, val = streams
    hp = small_hp(optimizer=optimizer, constraint=constraint, val_tokens=2 * T, micro_batch_size=4, window_min=16,
                  window_max=40)
    cpu = torch.device("cpu")
    model = tg.make_model(hp)
    optimizers = tg.make_optimizers(model, hp)
    amp, _ = tg.autocast_for(dataclasses.replace(hp, dtype="fp32"), cpu)
    with torch.device("meta"):
        for step in range(2):
            loss = tg.train_step(model, optimizers, train, hp, step, tg.Context.local(hp, cpu, amp))
        val_loss, val_acc, stats = tg.evaluate(model, val, hp, tg.Context.local(hp, cpu, amp), 40)
        report = lipschitz.bound_report(model)
        norms = tg.weight_norms(model)
        x = token_ids()[:, :-1]
        tg.AttentionMask(x, BOS, 40, flex=True)
    assert loss.device == cpu and np.isfinite(val_loss) and len(stats) == hp.n_layer
    assert np.isfinite(report["log10_bound_sharp"]) and norms["qkv"] > 0


@pytest.mark.slow
def test_compiled_run_resumes_exactly(tmp_path, one_thread):
    """--compile=yes (the CUDA default) through main(): 6 steps in one go equal 3 steps, a checkpoint, and 3
    more after --resume, to float32 rounding (the same process; the resumed run compiles anew). One thread:
    inductor's CPU embedding backward adds rows in a thread-dependent order, which Adam then amplifies."""
    (tmp_path / "shards").mkdir()
    train, val = write_token_shards(tmp_path / "shards")
    args = ["--preset=smoke", f"--train_files={train}", f"--val_files={val}", f"--vocab_size={VOCAB}",
            "--compile=yes", "--num_iterations=6", "--val_every=3", "--log_every=1", "--val_tokens=2048"]
    whole = tg.main(args + [f"--log_dir={tmp_path}/a", f"--checkpoint_dir={tmp_path}/a", "--run_id=whole"])
    first = tg.main(args + [f"--log_dir={tmp_path}/b", f"--checkpoint_dir={tmp_path}/b", "--run_id=split",
                            "--max_steps_this_run=3"])
    assert first["step"] == 3
    second = tg.main(args + [f"--log_dir={tmp_path}/b", f"--checkpoint_dir={tmp_path}/b",
                             f"--resume={first['checkpoint']}"])
    assert second["step"] == 6 and whole["step"] == 6
    a, b = (rc.read_checkpoint(r["checkpoint"])["model"] for r in (whole, second))
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-6, atol=1e-7, msg=name)
    assert abs(second["val_loss"] - whole["val_loss"]) < 1e-5
    assert not os.path.exists(str(tmp_path / "b" / "split.pt.tmp"))
