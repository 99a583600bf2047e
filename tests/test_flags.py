"""flags.py on a small dataclass of its own: parsing, presets, --help from the comments, range checks."""
from dataclasses import dataclass

import pytest

import flags


@dataclass
class Knobs:
    preset: str = "big"  # which preset
    width: int = 8  # how wide
    rate: float = 0.5  # how fast
    name: str = "x"  # what to call it


PRESETS = {"big": {}, "small": {"width": 2}}


def test_parse_applies_the_preset_then_the_flags_with_their_types():
    k = flags.parse_args(Knobs, PRESETS, ["--preset=small", "--rate=2", "--name=y"], lambda: "")
    assert k == Knobs(preset="small", width=2, rate=2.0, name="y")
    assert flags.parse_args(Knobs, PRESETS, [], lambda: "") == Knobs()
    assert flags.preset_overrides(k, PRESETS) == {"width": 2}
    assert flags.preset_overrides(flags.from_preset(Knobs, PRESETS, "small", width=3), PRESETS) == {}


@pytest.mark.parametrize("argv, message", [
    (["--width"], "bad argument '--width': use --field=value"),
    (["--widht=3"], "unknown hyperparameter --widht"),
    (["--width=2.5"], "--width='2.5' is not a valid int"),
    (["--preset=huge"], "--preset=huge: unknown; choose one of big, small"),
])
def test_bad_flags_get_one_line_naming_them(argv, message):
    with pytest.raises(ValueError) as e:
        flags.parse_args(Knobs, PRESETS, argv, lambda: "")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_help_lists_every_field_with_default_comment_and_choices(capsys):
    with pytest.raises(SystemExit) as e:
        flags.parse_args(Knobs, PRESETS, ["--help"], lambda: flags.usage(Knobs, "Knobs.", PRESETS,
                                                                         {"name": ("x", "y")}))
    assert e.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Knobs." and "  --rate=0.5  how fast" in lines
    assert "  --name='x'  what to call it  [x | y]" in lines


def test_range_checks_name_the_flag():
    flags.check_ranges(Knobs(), {"name": ("x",)}, positive=("width",), unit_interval=("rate",))
    for knobs, kw, message in [
        (Knobs(width=0), dict(positive=("width",)), "--width=0 must be > 0"),
        (Knobs(rate=-1.0), dict(non_negative=("rate",)), "--rate=-1.0 must be >= 0"),
        (Knobs(width=2), dict(switches=("width",)), "--width=2 must be 0 or 1"),
        (Knobs(rate=1.5), dict(unit_interval=("rate",)), "--rate=1.5 must be in [0, 1]"),
        (Knobs(name="z"), dict(), "--name=z: use one of x"),
    ]:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            flags.check_ranges(knobs, {"name": ("x",)}, **kw)


# train_gpt's own flags: the hyperparameters that stayed from the study of the gap to the paper's Shakespeare
# loss (lr_final_frac, zero_init_out; zero_init_out=0 is in tests/test_lipschitz.py) do what their help says.

import math  # noqa: E402

import torch  # noqa: E402

import train_gpt as tg  # noqa: E402

SMALL_MODEL = dict(n_layer=2, n_head=2, head_dim=16, d_model=32, vocab_size=64, seq_len=16, batch_size=2,
                   micro_batch_size=2)


def small_hp(**kw):
    return tg.Hyperparameters.from_preset("smoke", **{**SMALL_MODEL, **kw})


def test_defaults_keep_one_hidden_group_adam_embedding_and_zero_init():
    h = small_hp()
    model = tg.make_model(h)
    muon, emb = tg.make_optimizers(model, h)
    assert [len(g["params"]) for g in muon.param_groups] == [6 * h.n_layer, 1]
    assert [g["lr"] for g in muon.param_groups] == [h.muon_lr, h.lm_head_lr]
    assert isinstance(emb, torch.optim.Adam) and emb.param_groups[0]["lr"] == h.embed_lr
    for block in model.blocks:
        assert not block.attn.o.weight.any() and not block.mlp.proj.weight.any()
    assert not model.lm_head.weight.any()


def test_lr_final_frac_sets_the_end_of_the_schedule():
    assert tg.lr_multiplier(small_hp(num_iterations=100), 100) == pytest.approx(0.1)  # default, as before
    paper = small_hp(num_iterations=100, cooldown_frac=1.0, lr_final_frac=0.0)  # the paper's "linear"
    for step in (0, 25, 50, 100):
        assert tg.lr_multiplier(paper, step) == pytest.approx((100 - step) / 100)


def test_lr_final_frac_and_zero_init_out_train_end_to_end(tmp_path):
    """One short CPU run with both flags on reaches a finite, lower loss."""
    import glob
    import os

    import numpy as np

    from data.shards import write_shard
    rng = np.random.default_rng(0)
    text = np.tile(rng.integers(0, 64, size=97), 400).astype(np.uint16)  # a periodic, learnable stream
    write_shard(os.path.join(tmp_path, "x_train_000000.bin"), text)
    write_shard(os.path.join(tmp_path, "x_val_000000.bin"), text[:4000])
    args = [f"--{k}={v}" for k, v in SMALL_MODEL.items()] + [
        "--preset=smoke", f"--train_files={tmp_path}/*train*.bin", f"--val_files={tmp_path}/*val*.bin",
        "--num_iterations=30", "--val_every=30", "--val_tokens=512", f"--log_dir={tmp_path}/logs",
        f"--checkpoint_dir={tmp_path}/ckpt", "--cooldown_frac=1", "--lr_final_frac=0", "--zero_init_out=0",
        "--run_id=flags"]
    result = tg.main(args)
    assert glob.glob(f"{tmp_path}/ckpt/flags.pt")
    assert math.isfinite(result["val_loss"]) and result["val_loss"] < math.log(64)


@pytest.mark.parametrize("flag", ["--lr_final_frac=1.5", "--zero_init_out=2"])
def test_bad_values_of_train_gpt_flags_are_refused_with_the_flag_named(flag):
    """Parsed as given; train_gpt.validate (what main() runs before step 0) refuses them in one line."""
    hp = tg.Hyperparameters.from_args([flag])
    with pytest.raises(ValueError, match=flag.split("=")[0]) as e:
        tg.validate(hp)
    assert "\n" not in str(e.value)
