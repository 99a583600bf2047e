"""tools/robustness.py: accuracy under attack and certified, against oracles and soundness properties, on real
checkpoints trained here (3 blocks, 200 steps, reduced width) and on a model whose exact robust accuracy and
Lipschitz constant are known; the empirical Lipschitz lower bound against the certificate; one-line errors."""
import json
import math
import os
from types import SimpleNamespace

import pytest
import torch

import constraints
import lipschitz as L
import train_gpt as tg
from tools import robustness as R
from assertions import one_line_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt")
TEXT_CHARS = 120_000  # a val split of 12,000 byte tokens
# the smoke preset with 3 blocks (the paper's depth) at reduced width: 200 steps take ~6-15 s on one core
TRAIN = ["--preset=smoke", "--n_layer=3", "--num_iterations=200", "--val_every=200", "--val_tokens=1024",
         "--dtype=fp32", "--compile=no"]
EPS = (1e-4, 1e-3, 1e-2, 1e-1)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Shakespeare byte shards (the first 120,000 characters) and two checkpoints trained 200 steps by
    train_gpt.main: Muon + soft cap at w_max 1 (sharp bound ~10^1.7, so small budgets certify tokens) and at
    w_max 2 (~10^5.8, the regime of the real runs)."""
    from data import shakespeare
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("robustness")
    text = d / "tiny.txt"
    docs = shakespeare.read_documents(TINY if os.path.exists(TINY) else None)
    text.write_text(b"\n\n".join(data for _, data in docs).decode("utf-8")[:TEXT_CHARS], encoding="utf-8")
    shakespeare.build(input_path=str(text), out_dir=str(d / "shards"))
    runs = {}
    for w in ("1", "2"):
        runs[f"w{w}"] = tg.main([*TRAIN, f"--w_max={w}", f"--lm_head_w_max={w}", f"--run_id=w{w}",
                                 f"--train_files={d}/shards/*train*.bin", f"--val_files={d}/shards/*val*.bin",
                                 f"--log_dir={d}/logs", f"--checkpoint_dir={d}/ckpt"])
    return SimpleNamespace(dir=d, shards=d / "shards", runs=runs)


# ----------------------------------------------------------------------------- margins and the margin bound


def test_margins_against_a_loop():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 12, generator=gen, dtype=torch.float64)
    logits[0, 0, 3] = logits[0, 0, 7] = 9.0  # a tie for the top: argmax takes index 3
    targets = torch.randint(0, 10, (3, 5), generator=gen)
    targets[0, 0] = 7
    correct, margin = R.margins(logits, targets, vocab_size=10)  # logits 10, 11 are padding: ignored
    for b in range(3):
        for t in range(5):
            z = logits[b, t, :10].tolist()
            y = int(targets[b, t])
            assert bool(correct[b, t]) == (z.index(max(z)) == y)
            assert float(margin[b, t]) == z[y] - max(v for j, v in enumerate(z) if j != y)
    assert not bool(correct[0, 0]) and float(margin[0, 0]) == 0.0


def test_margin_bound_holds_and_is_attained_on_the_vocabulary_step():
    """For any dz with RMS over V_pad at most c, every margin moves by <= sqrt(2 V_pad) c (Cauchy-Schwarz), with
    equality at dz = c sqrt(V_pad / 2) (e_j - e_y)."""
    V_pad, c = 64, 0.3
    M = R.margin_change_bound(1.0, c, V_pad)  # L = 1, eps = c: a logit change of RMS c
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(200, V_pad, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 60, (200,), generator=gen)
    dz = torch.randn(200, V_pad, generator=gen, dtype=torch.float64)
    dz = c * dz / dz.square().mean(-1, keepdim=True).sqrt()
    _, m0 = R.margins(z[None], y[None], 60)
    _, m1 = R.margins((z + dz)[None], y[None], 60)
    assert ((m0 - m1).abs() <= M * (1 + 1e-12)).all()
    worst = torch.zeros(V_pad, dtype=torch.float64)
    worst[0], worst[1] = -1.0, 1.0
    worst *= c * math.sqrt(V_pad / 2)
    assert worst.square().mean().sqrt().item() == pytest.approx(c, rel=1e-12)
    z0 = torch.zeros(1, 1, V_pad, dtype=torch.float64)
    z0[..., 0] = 5.0
    _, a = R.margins(z0, torch.tensor([[0]]), 60)
    _, b = R.margins(z0 + worst, torch.tensor([[0]]), 60)
    assert (a - b).item() == pytest.approx(M, rel=1e-12)


def test_soft_min_objective_weights_the_nearest_tokens_and_never_overflows():
    m = torch.tensor([[1e4, 0.5, -3e4, 2.0]], dtype=torch.float64, requires_grad=True)
    active = torch.tensor([[True, True, False, True]])
    (g,) = torch.autograd.grad(R.attack_objective(m, active, tau=1e-3), m)
    assert torch.isfinite(g).all() and g[0, 2] == 0  # inactive tokens pull nothing, even at exp(3e7)
    assert g[0, 1] == pytest.approx(-1.0) and g.sum().item() == pytest.approx(-1.0)  # the smallest active margin
    (g,) = torch.autograd.grad(R.attack_objective(m, active, tau=None), m)
    assert g.tolist() == [[-1.0, -1.0, 0.0, -1.0]]


def test_non_finite_logits_flip_nothing():
    x = torch.zeros(1, 4, 8, dtype=torch.float64)
    y = torch.zeros(1, 4, dtype=torch.long)
    clean = torch.zeros(1, 4, 16, dtype=torch.float64)
    clean[..., 0] = 1.0
    correct, margin = R.margins(clean, y, 16)

    def f(inp):  # right at delta = 0, NaN anywhere else
        return clean + inp.sum() * (float("nan") if bool((inp != 0).any()) else 0.0)

    res = R.pgd_attack(f, x, y, correct, margin, 16, 0.1, restarts=3, steps=3, gen=torch.Generator().manual_seed(0))
    assert not res.flipped.any() and torch.equal(res.min_margin, margin)


# ----------------------------------------------------------------------------- a model with known answers


def tokenwise_linear_model(seed=0):
    """Out projections zero: f(x)_t = fls (1-a)^(2N) W x_t, position by position. Its exact Lipschitz constant
    is the sharp bound, and its exact robust accuracy at eps is known: token t survives iff for every j != y,
    z_y - z_j > eps sqrt(d) ||c (w_y - w_j)||_2 (the worst delta_t of RMS eps aligns with w_j - w_y)."""
    hp = tg.Hyperparameters.from_preset("smoke", vocab_size=64, n_layer=2, d_model=32, n_head=2, head_dim=16,
                                        final_logit_scale=4.0, seq_len=16)
    model = tg.make_model(hp)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "embed.weight":
                p.copy_(constraints.apply(torch.randn(p.shape, generator=gen), "svd_cap", 1.5))
        for block in model.blocks:
            block.attn.o.weight.zero_()
            block.mlp.proj.weight.zero_()
    return model.double().requires_grad_(False)


def exact_robust(model, x, y, eps):
    """(B, T) bool: right when clean and no delta of token RMS <= eps flips it (the closed form above)."""
    c = model.final_logit_scale * (1 - model.blocks[0].alpha) ** (2 * len(model.blocks))
    W = c * model.lm_head.weight[:model.hp.vocab_size]  # (V, d)
    z = x @ W.T
    d = x.shape[-1]
    correct, _ = R.margins(z, y, model.hp.vocab_size)
    gap = z.gather(-1, y[..., None]) - z  # z_y - z_j, (B, T, V)
    reach = eps * math.sqrt(d) * (W[y][..., None, :] - W).norm(dim=-1)  # (B, T, V): the most delta_t moves it
    is_y = torch.nn.functional.one_hot(y, model.hp.vocab_size).bool()
    return correct & ((gap > reach) | is_y).all(-1)


def test_attack_finds_the_exact_robust_accuracy_of_a_tokenwise_linear_model():
    model = tokenwise_linear_model()
    gen = torch.Generator().manual_seed(2)
    x = L.project_to_ball(torch.randn(4, 16, 32, generator=gen, dtype=torch.float64), 1.0)
    with torch.no_grad():
        y = model.logits_from_embeddings(x)[..., :64].argmax(-1)  # right when clean by construction ...
    y[:, ::3] = torch.randint(0, 64, y[:, ::3].shape, generator=gen)  # ... except about a third
    f = model.logits_from_embeddings
    correct, clean_margin = R.margins(f(x), y, 64)
    L_exact = L.certified_bound(model, radius=1.0 + 0.1)
    flipped = None
    for eps in (0.003, 0.01, 0.03, 0.1):
        res = R.pgd_attack(f, x, y, correct, clean_margin, 64, eps, restarts=2, steps=30, gen=gen,
                           already_flipped=flipped)
        flipped = res.flipped
        truth = exact_robust(model, x, y, eps)
        attacked = correct & ~flipped
        assert not (truth & flipped).any(), eps  # a flip of a provably robust token: an attack bug
        assert int((attacked & ~truth).sum()) <= 1, eps  # it finds (nearly) every flippable token
        certified = correct & (clean_margin > R.margin_change_bound(L_exact, eps, 64))
        assert not (certified & ~truth).any()
    assert 0 < int((correct & ~flipped).sum()) < int(correct.sum())  # the sweep spans some flips, not all


def test_ratio_attack_attains_the_exact_lipschitz_constant():
    model = tokenwise_linear_model(seed=3)
    exact = L.certified_bound(model)
    gen = torch.Generator().manual_seed(0)
    x = L.project_to_ball(torch.randn(2, 16, 32, generator=gen, dtype=torch.float64), 1.0)
    found = R.ratio_attack(model.logits_from_embeddings, x, 1.0, restarts=1, steps=60, gen=gen)["ratio"]
    assert exact * 0.99 <= found <= exact * (1 + 1e-9)


# ----------------------------------------------------------------------------- real checkpoints


@pytest.fixture(scope="module")
def scored(trained):
    """evaluate_checkpoint of the w_max 1 run over the EPS sweep (float64, the run's 1,024 val tokens), and the
    same in float32 at the largest eps."""
    path = trained.runs["w1"]["checkpoint"]
    f64 = R.evaluate_checkpoint(path, EPS, tokens=1024, restarts=2, steps=10, dtype="float64", progress=False)
    f32 = R.evaluate_checkpoint(path, EPS[-1:], tokens=1024, restarts=1, steps=5, dtype="float32", progress=False)
    return SimpleNamespace(f64=f64, f32=f32)


def test_clean_accuracy_is_the_runs_own_validation(trained, scored):
    """--tokens = the run's val_tokens scores train_gpt.evaluate's windows with its argmax: the same accuracy as
    the training log, up to a token whose top two logits tie within rounding (float32 here, float64 too)."""
    logged = trained.runs["w1"]["val_acc"]
    assert scored.f32["tokens"] == 1024 and scored.f64["tokens"] == 1024
    for res in (scored.f32, scored.f64):
        assert abs(res["rows"][0]["clean"] - logged) <= 2 / 1024


def test_sound_on_a_trained_checkpoint(scored):
    """certified <= attacked <= clean, no certified token flipped, no margin moved by more than M(eps), both
    accuracies non-increasing in eps; and neither side is vacuous: small budgets certify tokens, the largest
    flips most of them."""
    rows = scored.f64["rows"]
    for row in rows:
        assert row["certified"] <= row["attacked"] <= row["clean"], row
        assert row["certified_but_flipped"] == 0, row
        assert row["max_margin_drop"] <= row["margin_bound"], row
    for a, b in zip(rows, rows[1:]):
        assert b["attacked"] <= a["attacked"] and b["certified"] <= a["certified"]
        assert b["bound_sharp"] >= a["bound_sharp"]  # the certificate's ball grows with eps
    assert rows[0]["certified"] > 0.5 * rows[0]["clean"]
    assert rows[-1]["attacked"] < 0.5 * rows[-1]["clean"]
    assert R.unsound([scored.f64]) == []


@pytest.mark.parametrize("run", ["w1", "w2"])
def test_empirical_lipschitz_lower_bound_stays_below_the_certificate(trained, run):
    """The ratio search from the val text, on every map the certificate covers (embedding -> block k, -> logits).
    Each ratio is <= its sharp bound; and the search has teeth: it reaches within 10^-1 of the first block's bound
    (and, at w_max 1, of the whole model's), so a bound too small by more than that would fail here. The ratios
    this reaches are recorded in records/2026-11-22-shakespeare-h100/certify/robustness-ratio.md."""
    model, state = R.checkpoint_model(trained.runs[run]["checkpoint"], torch.float64)
    val = R.val_stream(model.hp, None, trained.runs[run]["checkpoint"])
    starts = R.window_starts(1024, model.hp.seq_len, val.total)
    res = R.ratio_on_text(model, val, starts, tg.window_size(model.hp, state["step"]), restarts=3, steps=60, batch=2,
                          gen=torch.Generator().manual_seed(0))
    tight = {m["name"]: m["log10_tightness"] for m in res["maps"]}
    assert list(tight) == ["block 0", "block 1", "block 2", "logits"]
    assert all(t <= math.log10(1 + 1e-9) for t in tight.values()), tight
    assert tight["block 0"] > -1.0, tight
    if run == "w1":
        assert tight["logits"] > -1.5, tight


# ----------------------------------------------------------------------------- the command line


def test_cli_table_json_and_progress(trained, capsys):
    path = trained.runs["w2"]["checkpoint"]
    args = [path, "--eps=0.1,0.01", "--tokens=128", "--restarts=1", "--steps=2", "--dtype=float64"]
    assert R.main(args) == 0
    out, err = capsys.readouterr()
    rows = [line for line in out.splitlines() if line.startswith("| w2.pt")]
    assert [r.split("|")[3].strip() for r in rows] == ["0.01", "0.1"]  # ascending
    assert "robustness.py: w2.pt: windows 1-2 of 2, eps 0.1:" in err
    assert R.main(args + ["--json", "--data", str(trained.shards)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["eps"] == [0.01, 0.1]
    (res,) = data["results"]
    assert res["step"] == 200 and res["tokens"] == 128 and res["arch"] == "lipschitz"
    for row in res["rows"]:
        assert {"eps", "clean", "attacked", "certified", "bound_sharp", "margin_bound"} <= set(row)
        assert 0 <= row["certified"] <= row["attacked"] <= row["clean"] <= 1


def test_bad_input_is_one_line(trained, tmp_path, capsys):
    good = trained.runs["w2"]["checkpoint"]
    one_line_error(capsys, R.main([str(tmp_path / "missing.pt")]), "missing.pt", "no such checkpoint")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    one_line_error(capsys, R.main([str(tmp_path / "junk.pt")]), "junk.pt")
    for eps in ("0", "-0.1", "0.1,0", "x", "nan", ""):
        one_line_error(capsys, R.main([good, f"--eps={eps}"]), "--eps")
    one_line_error(capsys, R.main([good, "--tokens=10000000"]), "--tokens=10000000", "val split")
    one_line_error(capsys, R.main([good, "--tokens=8"]), "--tokens=8", "seq_len")
    one_line_error(capsys, R.main([good, "--tokens=0"]), "--tokens")
    one_line_error(capsys, R.main([good, "--data", str(tmp_path / "nodir")]), "--data", "not a directory")
    one_line_error(capsys, R.main([good, "--data", str(tmp_path)]), "no val shards", "--data")
    one_line_error(capsys, R.main([good, "--dtype=float16"]), "--dtype")
    one_line_error(capsys, R.main([good, "--steps=0"]), "--steps")
    one_line_error(capsys, R.main([good, "--nonsense"]), "--nonsense")
    one_line_error(capsys, R.main([]), "checkpoints")
