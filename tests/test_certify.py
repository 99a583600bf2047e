"""tools/certify.py: the report (old and new bounds side by side), the search's progress, one-line errors for bad
flags and files."""
import io
import math
import re

import pytest
import torch

import constraints
import lipschitz as L
import run_control as rc
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
    rc.save_checkpoint(path, model, [], model.hp, 7, 0.0)
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


def test_search_progress_on_stderr(tmp_path, capsys):
    """Every step's line with --progress_every=0: restart i of n, the step, the best ratio so far (never
    falling, ending at the worst ratio reported) and the time left; stdout keeps only the report."""
    path = save(tmp_path, small_model())
    assert certify.main([path, "--restarts", "2", "--steps", "3", "--seq_len", "4", "--batch", "1",
                         "--progress_every", "0"]) == 0
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert lines[0] == "attack: searching for the worst ratio, 2 restarts x 3 steps of 1 pairs of 4 tokens; progress every step"
    found = [re.fullmatch(r"attack: restart (\d) of 2, step (\d) of 3, best ratio so far (\S+), about \d+m\d\ds left", x)
             for x in lines[1:]]
    assert all(found) and [(int(m[1]), int(m[2])) for m in found] == [(r, s) for r in (1, 2) for s in (1, 2, 3)]
    best = [float(m[3]) for m in found]
    assert best == sorted(best) and best[0] > 0
    assert f"empirical worst ratio {best[-1]:.6g} " in out and "attack:" not in out


def test_progress_lines_at_most_every_few_seconds():
    """A line once `every_s` seconds have passed since the last (or the start), with the time left at the
    pace so far; a clock stands in for time."""
    times = iter([100.0, 101.0, 104.0, 106.0, 107.0, 111.5, 300.0])
    out = io.StringIO()
    progress = certify.AttackProgress(restarts=2, steps=10, every_s=5, out=out, clock=lambda: next(times))
    for restart, step in [(1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (2, 10)]:
        progress(restart, step, 1.5 * step)
    assert out.getvalue().splitlines() == [
        "attack: restart 1 of 2, step 3 of 10, best ratio so far 4.5, about 0m34s left",  # 6 s for 3 of 20 steps
        "attack: restart 1 of 2, step 5 of 10, best ratio so far 7.5, about 0m34s left",  # 11.5 s for 5
        "attack: restart 2 of 2, step 10 of 10, best ratio so far 15, about 0m00s left"]


def test_help_shows_every_default_and_the_time(capsys):
    with pytest.raises(SystemExit) as e:
        certify.parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    entries = re.split(r"\n  (?=-)", out.split("options:")[1].split("\n\nTime:")[0])  # one per option
    for flag, default in [("--restarts", 5), ("--steps", 200), ("--seq_len", 16), ("--batch", 4), ("--seed", 0),
                          ("--progress_every", certify.PROGRESS_EVERY_S)]:
        entry = next(e for e in entries if e.startswith(flag + " "))
        assert f"(default: {default})" in " ".join(entry.split()), entry
    assert "about 9 minutes with the defaults" in out
