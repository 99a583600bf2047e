"""The hyperparameters added to test hypotheses about the gap to the paper's Shakespeare loss that stayed
(lr_final_frac, zero_init_out): each does what its help line says; those that changed nothing are retired."""
import math

import pytest
import torch

import run_control as rc
import train_gpt as tg

SMALL = dict(n_layer=2, n_head=2, head_dim=16, d_model=32, vocab_size=64, seq_len=16, batch_size=2,
             micro_batch_size=2)


def hp(**kw):
    return tg.Hyperparameters.from_preset("smoke", **{**SMALL, **kw})


def test_defaults_keep_one_hidden_group_adam_embedding_and_zero_init():
    h = hp()
    model = tg.make_model(h)
    muon, emb = tg.make_optimizers(model, h)
    assert [len(g["params"]) for g in muon.param_groups] == [6 * h.n_layer, 1]
    assert [g["lr"] for g in muon.param_groups] == [h.muon_lr, h.lm_head_lr]
    assert isinstance(emb, torch.optim.Adam) and emb.param_groups[0]["lr"] == h.embed_lr
    for block in model.blocks:
        assert not block.attn.o.weight.any() and not block.mlp.proj.weight.any()
    assert not model.lm_head.weight.any()


def test_lr_final_frac_sets_the_end_of_the_schedule():
    assert tg.lr_multiplier(hp(num_iterations=100), 100) == pytest.approx(0.1)  # default, as before
    paper = hp(num_iterations=100, cooldown_frac=1.0, lr_final_frac=0.0)  # the paper's "linear"
    for step in (0, 25, 50, 100):
        assert tg.lr_multiplier(paper, step) == pytest.approx((100 - step) / 100)


def test_zero_init_out_off_gives_semi_orthogonal_out_projections():
    model = tg.make_model(hp(zero_init_out=0))
    for w in [b.attn.o.weight for b in model.blocks] + [b.mlp.proj.weight for b in model.blocks] + [model.lm_head.weight]:
        s = torch.linalg.svdvals(w.detach().double())
        rms_norm = math.sqrt(w.shape[1] / w.shape[0]) * s.max().item()
        assert rms_norm == pytest.approx(1.0, rel=1e-5)  # init norm 1 in RMS->RMS, as the other matrices


def test_retired_flags_are_gone_and_old_checkpoints_still_load(tmp_path):
    """blocks_mass, residual_lr_decay and embed_grad_norm_max left train_gpt.py; a checkpoint that carries
    them at their "off" values loads, one trained with them on is refused in one line."""
    for flag in ("--blocks_mass=5", "--residual_lr_decay=0.5", "--embed_grad_norm_max=10"):
        with pytest.raises(ValueError, match="unknown hyperparameter " + flag.split("=")[0]):
            tg.Hyperparameters.from_args([flag])
    h = hp()
    model = tg.make_model(h)
    path = str(tmp_path / "old.pt")
    rc.save_checkpoint(path, model, [], h, 0, 0.0)
    state = torch.load(path, weights_only=True)
    state["hp"].update(blocks_mass=0.0, residual_lr_decay=1.0, embed_grad_norm_max=0.0)
    torch.save(state, path)
    loaded, _ = tg.model_from_checkpoint(path)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    state["hp"]["residual_lr_decay"] = 0.5
    torch.save(state, path)
    with pytest.raises(ValueError, match="trained with --residual_lr_decay"):
        tg.model_from_checkpoint(path)


def test_flags_train_end_to_end(tmp_path):
    """One short CPU run with every flag on reaches a finite, lower loss."""
    import glob
    import os
    from data.shards import write_shard
    import numpy as np
    rng = np.random.default_rng(0)
    text = np.tile(rng.integers(0, 64, size=97), 400).astype(np.uint16)  # a periodic, learnable stream
    write_shard(os.path.join(tmp_path, "x_train_000000.bin"), text)
    write_shard(os.path.join(tmp_path, "x_val_000000.bin"), text[:4000])
    args = [f"--{k}={v}" for k, v in SMALL.items()] + [
        "--preset=smoke", f"--train_files={tmp_path}/*train*.bin", f"--val_files={tmp_path}/*val*.bin",
        "--num_iterations=30", "--val_every=30", "--val_tokens=512", f"--log_dir={tmp_path}/logs",
        f"--checkpoint_dir={tmp_path}/ckpt", "--cooldown_frac=1", "--lr_final_frac=0", "--zero_init_out=0",
        "--run_id=flags"]
    result = tg.main(args)
    assert glob.glob(f"{tmp_path}/ckpt/flags.pt")
    assert math.isfinite(result["val_loss"]) and result["val_loss"] < math.log(64)


@pytest.mark.parametrize("flag", ["--lr_final_frac=1.5", "--zero_init_out=2"])
def test_bad_values_are_refused_with_the_flag_named(flag):
    with pytest.raises(ValueError, match=flag.split("=")[0]):
        tg.Hyperparameters.from_args([flag])
