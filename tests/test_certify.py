"""tools/certify.py: the report (old and new bounds side by side), one-line errors for bad flags and files."""
import math

import pytest
import torch

import constraints
import lipschitz as L
import train_gpt as tg
from tools import certify


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: fastest on one thread


def small_model(arch="lipschitz"):
    hp = tg.Hyperparameters.from_preset("smoke", vocab_size=256, n_layer=2, d_model=32, n_head=2, head_dim=16,
                                        final_logit_scale=2.0, arch=arch)
    model = tg.make_model(hp)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "embed.weight":
                p.copy_(constraints.apply(torch.randn(p.shape, generator=gen), "svd_cap", 1.5))
    return model


def save(tmp_path, model, name="run.pt"):
    path = str(tmp_path / name)
    tg.save_checkpoint(path, model, [], model.hp, 7, 0.0)
    return path


def test_prints_layers_bounds_side_by_side_and_search(tmp_path, capsys):
    model = small_model()
    path = save(tmp_path, model)
    assert certify.main([path, "--restarts", "2", "--steps", "10", "--seq_len", "8", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    rep = L.bound_report(model)
    assert "step 7" in out and "attn_sharp" in out and "cum_paper" in out
    for key in ("log10_bound", "log10_bound_tight", "log10_bound_sharp", "log10_bound_paper_literal"):
        assert f"log10 {rep[key]:.4f}" in out, key
    ratio = certify.fmt(rep["log10_bound_sharp"] - rep["log10_bound"])
    assert f"sharp / paper = {ratio}" in out
    assert "empirical worst ratio" in out and "tightness [sharp]" in out
    table = out.split("cum_sharp\n")[1].splitlines()[:2]
    assert [line.split()[0] for line in table] == ["0", "1"]  # one row per layer
    assert "REFERENCE" not in out


@pytest.mark.parametrize("flag", ["--steps=-1", "--restarts=0", "--batch=0", "--seq_len=-3", "--steps=x",
                                  "--seed=-1", "--nonsense=1"])
def test_bad_flags_one_line(tmp_path, capsys, flag):
    path = save(tmp_path, small_model())
    assert certify.main([path, flag]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert flag.split("=")[0] in err


def test_bad_files_one_line(tmp_path, capsys):
    def run(path):
        assert certify.main([str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(path) in err and "weights_only" not in err, err
        return err

    assert "no such checkpoint" in run(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert "not a readable checkpoint" in run(tmp_path / "bad.pt")
    torch.save({"model": {}}, tmp_path / "nohp.pt")
    assert "hp" in run(tmp_path / "nohp.pt")
    good = save(tmp_path, small_model())
    blob = open(good, "rb").read()
    (tmp_path / "truncated.pt").write_bytes(blob[: len(blob) // 2])
    run(tmp_path / "truncated.pt")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "pickled.pt")  # a pickled module, refused unloaded
    run(tmp_path / "pickled.pt")
    state = torch.load(good, weights_only=True)
    state["model"]["lm_head.weight"] = torch.zeros(3, 3)
    del state["model"]["blocks.0.mlp.fc.weight"]
    torch.save(state, tmp_path / "mismatch.pt")
    err = run(tmp_path / "mismatch.pt")
    assert "missing: blocks.0.mlp.fc.weight" in err and "wrong shape: lm_head.weight (3, 3)" in err
    state["hp"]["n_layer"] = "three"
    state["hp"]["no_such_field"] = 1
    torch.save(state, tmp_path / "badhp.pt")
    assert "hyperparameters" in run(tmp_path / "badhp.pt")


def test_speedrun_arch_has_no_bound(tmp_path, capsys):
    path = save(tmp_path, small_model("speedrun"))
    assert certify.main([path]) == 0
    assert "bound: inf" in capsys.readouterr().out


def test_fmt_whole_numbers():
    assert certify.fmt(2.0) == "100" and certify.fmt(8.7) == "1e+8.70" and certify.fmt(-math.inf) == "0"
    assert certify.fmt(math.inf) == "inf"
