"""The scripts under records/ keep running on the current code: every *.py there (found by glob, so a new script
fails here until it gets an invocation in RECIPES) runs as a subprocess with its real command line on a tiny
input and must exit 0 with sane output; every run.sh parses. eval_protocols.py reads exactly the paper's
windows and its `ours` is train_gpt.evaluate. Bad input to each script is one line on stderr, exit 2."""
import glob
import importlib.util
import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import lipschitz
import train_gpt as tg
from assertions import one_line_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt")
H100 = "records/2026-11-22-shakespeare-h100"
GAP = f"{H100}/gap-screen"
# 120,000 characters: a val split of 12,000 tokens holds the notebook protocol's 20 x 512 stride-1 windows
TEXT_CHARS = 120_000
# the smoke preset, smaller still: 10,240 notebook windows of 17 tokens take about a second on one core
TINY_MODEL = ["--n_layer=1", "--d_model=32", "--head_dim=16", "--seq_len=16", "--batch_size=64",
              "--micro_batch_size=64", "--val_tokens=1024", "--dtype=fp32"]

pytestmark = pytest.mark.usefixtures("one_thread")


def script_paths() -> list[str]:
    """Every Python script under records/, relative to the repository root."""
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "records", "**", "*.py"),
                                                               recursive=True))


def load_script(rel: str):
    """A record script as a module (its folder names are not importable package names)."""
    spec = importlib.util.spec_from_file_location(os.path.basename(rel)[:-3], os.path.join(ROOT, rel))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(rel: str, *args, cwd) -> subprocess.CompletedProcess:
    """The script's real command line, from another directory and without PYTHONPATH: it must find the
    project by itself."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, os.path.join(ROOT, rel), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def source_text() -> str:
    from data import shakespeare
    docs = shakespeare.read_documents(TINY if os.path.exists(TINY) else None)
    return b"\n\n".join(data for _, data in docs).decode("utf-8")[:TEXT_CHARS]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 120,000-character Shakespeare text, its byte shards, and a 5-step smoke checkpoint and log on them."""
    from data import shakespeare
    d = tmp_path_factory.mktemp("records")
    text = d / "tiny.txt"
    text.write_text(source_text(), encoding="utf-8")
    shards = d / "shards"
    shakespeare.build(input_path=str(text), out_dir=str(shards))
    result = tg.main(["--preset=smoke", "--num_iterations=5", "--val_every=5", "--run_id=smoke",
                      f"--train_files={shards}/*train*.bin", f"--val_files={shards}/*val*.bin",
                      f"--log_dir={d}/logs", f"--checkpoint_dir={d}/ckpt", *TINY_MODEL])
    return SimpleNamespace(dir=d, text=text, shards=shards, ckpt=result["checkpoint"], log=result["log"],
                           val_loss=result["val_loss"], val_acc=result["val_acc"])


def table_rows(out: str, first_cell: str) -> list[list[str]]:
    """The cells of the markdown rows whose first cell is first_cell."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in out.splitlines()
            if line.startswith("|")]
    return [r for r in rows if r[0] == first_cell]


def finite(cells) -> list[float]:
    values = [float(c.split()[0]) for c in cells]
    assert all(math.isfinite(v) for v in values), cells
    return values


# ----------------------------------------------------------------------------- one invocation per script


def check_eval_protocols(tiny, proc):
    mod = load_script(f"{GAP}/eval_protocols.py")
    header = table_rows(proc.stdout, "checkpoint")[0]
    assert header[3:] == list(mod.PROTOCOLS)
    (row,) = table_rows(proc.stdout, "smoke.pt")
    assert row[1:3] == ["5", "fp32"]
    losses = dict(zip(mod.PROTOCOLS, finite(row[3:])))  # each cell "loss / accuracy"
    accuracies = dict(zip(mod.PROTOCOLS, finite(c.split("/")[1] for c in row[3:])))
    assert all(0 < v < math.log(256) + 1 for v in losses.values()), losses
    assert all(0 <= v <= 1 for v in accuracies.values()), accuracies
    assert f"{losses['ours']:.4f}" == f"{tiny.val_loss:.4f}"  # the run's own validation, to the logged digits
    assert f"{accuracies['ours']:.4f}" == f"{tiny.val_acc:.4f}"
    # without --data it read the shards named in the checkpoint; the stride-1 windows are the paper's
    assert table_rows(proc.stdout, "paper_20x64") == [["paper_20x64", "val", "1280", "0..1279 stride 1", "0..1295"]]


def check_accounting(tiny, proc):
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in proc.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| accounting")]
    assert len(rows) == 7, proc.stdout  # certified, tight, literal, and the literal with 3 simplifications, certified
    finite(r[1] for r in rows)
    model, _ = tg.model_from_checkpoint(tiny.ckpt)
    assert rows[0][0].startswith("certified (per-head")
    assert float(rows[0][1]) == pytest.approx(lipschitz.bound_report(model)["log10_bound"], abs=0.006)  # 2 digits


def check_ngram_difficulty(tiny, proc):
    for order in ("1", "3"):
        (row,) = table_rows(proc.stdout, order)
        values = finite(row[1:6])
        assert all(0 < v < math.log(256) for v in values), row
    assert "1,536 (paper 20x64), 3,456 (paper 50x64)" in proc.stdout


def check_train_vs_val(tiny, proc):
    committed = open(os.path.join(ROOT, GAP, "train_vs_val.md")).read().splitlines()
    lines = proc.stdout.splitlines()
    assert lines[:len(committed)] == committed  # the committed table, reproduced from its logs
    (row,) = table_rows(proc.stdout, "smoke.txt")
    assert row[1] == "5" and row[2].endswith("(n=1)") and finite([row[3]])


def scores_of_tiny(tiny) -> str:
    """eval_protocols.py --json of the tiny checkpoint (two protocols), as the protocol table's input."""
    path = tiny.dir / "scores.json"
    if not path.exists():
        proc = run_script(f"{GAP}/eval_protocols.py", tiny.ckpt, "--json", "--protocols", "ours,paper_20x64",
                          cwd=tiny.dir)
        assert proc.returncode == 0, proc.stderr
        path.write_text(proc.stdout)
    return str(path)


def check_protocol_table(tiny, proc):
    losses, accuracies = proc.stdout.split("\n\n")[:2]
    (row,) = table_rows(losses, "smoke")
    assert row[1] == "1" and f"{float(row[2]):.4f}" == f"{tiny.val_loss:.4f}"  # ours, one seed: no spread
    assert finite([row[4]])[0] > 0 and row[3] == "-"  # paper 20x64 scored; the whole split was not asked for
    assert f"{float(row[9]):.4f}" == f"{tiny.val_loss:.4f}"  # min over the run's validations (only step 5)
    assert f"{float(row[10]):.4f}" == f"{tiny.val_acc:.4f}"  # the log's val acc
    model, _ = tg.model_from_checkpoint(tiny.ckpt)
    rep = lipschitz.bound_report(model)
    for cell, key in ((row[11], "log10_bound_sharp"), (row[12], "log10_bound_paper_literal")):
        assert float(cell) == pytest.approx(rep[key], abs=1e-4), key  # the log's 4 digits
    (acc,) = table_rows(accuracies, "smoke")
    assert acc[1] == "1" and f"{float(acc[2]):.4f}" == f"{tiny.val_acc:.4f}" and acc[3] == "-"
    assert 0 <= finite([acc[4]])[0] <= 1
    assert proc.stdout.strip().splitlines()[-1].startswith("Under the paper's own protocol")
    assert "our smoke model scores" in proc.stdout and "(1 seed), against the paper's 1.29" in proc.stdout
    # the paper's windows at the run's seq_len 16: starts 0..1279, tokens 0..1295
    assert "(the first 1,296 characters of the val split" in proc.stdout


def robustness_of_tiny(tiny) -> str:
    """tools/robustness.py --json of the tiny checkpoint (64 tokens, two budgets), as the robustness report's input."""
    path = tiny.dir / "robustness.json"
    if not path.exists():
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["OMP_NUM_THREADS"] = "1"
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "robustness.py"), tiny.ckpt, "--json",
                               "--tokens=64", "--eps=0.001,0.1", "--restarts=1", "--steps=3"], cwd=tiny.dir, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        path.write_text(proc.stdout)
    (tiny.dir / "robustness").mkdir(exist_ok=True)
    return str(path)


def check_robustness_report(tiny, proc):
    accuracies, kept, margins = proc.stdout.split("\n\n")[:5:2]
    (row,) = table_rows(accuracies, "smoke")
    assert row[1] == "5"  # the run's last step: not preliminary
    assert row[2].startswith("10^") and 0 <= float(row[3]) <= 1
    for cell in row[4:6]:
        attacked, certified = (float(v) for v in cell.split(" / "))
        assert 0 <= certified <= attacked <= float(row[3])
    (k,) = table_rows(kept, "smoke")
    assert [float(c) for c in k[2:]] == pytest.approx([float(c.split(" / ")[0]) / float(row[3]) for c in row[4:6]],
                                                      abs=1e-3)
    (m,) = table_rows(margins, "smoke")
    for cell in m[1:]:
        found, bound = (float(v) for v in cell.split(" / "))
        assert 0 <= found <= bound
    out = tiny.dir / "robustness"
    assert (out / "table.md").read_text() == proc.stdout
    assert (out / "accuracy_vs_eps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def check_rescale(tiny, proc):
    old, _ = tg.model_from_checkpoint(tiny.ckpt)
    new, state = tg.model_from_checkpoint(str(tiny.dir / "rescaled.pt"))
    assert state["hp"]["run_id"] == "rescaled" and torch.equal(new.lm_head.weight, old.lm_head.weight)
    sharp = lipschitz.bound_report(new)["bound_sharp"]
    assert sharp <= 2 and sharp == pytest.approx(2, rel=1e-6)  # at most the target, and at it
    factor = new.final_logit_scale / old.final_logit_scale
    assert factor == pytest.approx(sharp / lipschitz.bound_report(old)["bound_sharp"], rel=1e-9)
    tokens = torch.randint(0, old.hp.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # same tokens predicted, logits scaled: accuracy is blind to the bound
        a, b = old.logits_from_embeddings(old.embed(tokens)), new.logits_from_embeddings(new.embed(tokens))
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert torch.allclose(b, a * factor, rtol=1e-5, atol=0)
    assert "sharp bound: 10^" in proc.stdout and "= 2" in proc.stdout


def check_bigram(tiny, proc):
    """The printed accuracies against a dictionary count of the same shards (ties broken toward the smaller id)."""
    from collections import Counter
    from data.shards import read_shard
    train, val = ([int(t) for p in sorted(glob.glob(str(tiny.shards / f"*{split}*.bin"))) for t in read_shard(p)]
                  for split in ("train", "val"))
    pairs = Counter(zip(train, train[1:]))
    best = {}
    for (a, b), n in sorted(pairs.items()):
        if n > best.get(a, (0, None))[0]:
            best[a] = (n, b)
    first = sum(best.get(a, (0, 0))[1] == b for a, b in zip(val[:1000], val[1:1001])) / 1000
    whole = sum(best.get(a, (0, 0))[1] == b for a, b in zip(val, val[1:])) / (len(val) - 1)
    accs = [float(line.split("accuracy ")[1].split(",")[0]) for line in proc.stdout.splitlines()[1:]]
    assert accs == pytest.approx([first, whole], abs=5e-5)


# relative path -> (arguments given the `tiny` fixture, check of the finished process)
RECIPES = {
    "records/2026-12-05-paper-bound-screen/bigram.py": (
        lambda t: ["--data", t.shards, "--val_tokens", "1000"], check_bigram),
    "records/2026-12-05-paper-bound-screen/rescale.py": (
        lambda t: [t.ckpt, "--target", "2", "--out", str(t.dir / "rescaled.pt")], check_rescale),
    "records/2026-12-03-protocol-table/table.py": (
        lambda t: [scores_of_tiny(t), "--logs", os.path.dirname(t.log), "--config", "smoke"], check_protocol_table),
    "records/2026-12-05-robustness/report.py": (
        lambda t: [robustness_of_tiny(t), "--out", t.dir / "robustness"], check_robustness_report),
    f"{GAP}/eval_protocols.py": (lambda t: [t.ckpt], check_eval_protocols),
    f"{GAP}/accounting.py": (lambda t: [t.ckpt], check_accounting),
    f"{GAP}/ngram_difficulty.py": (lambda t: [t.text, "--orders", "1,3", "--ours-chars", "8192"],
                                   check_ngram_difficulty),
    f"{GAP}/train_vs_val.py": (lambda t: [*sorted(glob.glob(os.path.join(ROOT, H100, "logs", "shakespeare-2000",
                                                                         "*.txt"))), t.log],
                               check_train_vs_val),
}


@pytest.mark.parametrize("rel", script_paths())
def test_record_script_runs_on_a_tiny_input(rel, tiny):
    if rel not in RECIPES:
        pytest.fail(f"{rel} has no smoke invocation: add one to RECIPES in tests/test_records.py")
    args, check = RECIPES[rel]
    proc = run_script(rel, *args(tiny), cwd=tiny.dir)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    check(tiny, proc)


def test_every_recipe_names_a_script():
    assert set(RECIPES) <= set(script_paths()), set(RECIPES) - set(script_paths())


@pytest.mark.parametrize("rel", sorted(os.path.relpath(p, ROOT) for p in
                                       glob.glob(os.path.join(ROOT, "records", "**", "*.sh"), recursive=True)))
def test_shell_scripts_parse(rel):
    proc = subprocess.run(["bash", "-n", os.path.join(ROOT, rel)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------------- eval_protocols.py


def paper_loader_starts(n_tokens: int, seq_len: int, batch: int, val_iters: int) -> list[int]:
    """The window starts the paper's validation reads, transcribed from its code: TokenDataset has
    len(data) - context_length - 1 items, item i = data[i : i + context_length + 1]; DataLoader(shuffle=False,
    drop_last=True) yields items in order, batch by batch; the validation loop stops after val_iters batches."""
    length = n_tokens - seq_len - 1
    starts = []
    for i in range(length // batch):
        if i == val_iters:
            break
        starts.extend(range(i * batch, (i + 1) * batch))
    return starts


def test_paper_20x64_reads_windows_0_to_1279_and_the_first_1536_tokens():
    ep = load_script(f"{GAP}/eval_protocols.py")
    hp = tg.Hyperparameters.from_preset("shakespeare", vocab_size=65)  # seq_len 256, as the paper's
    val, train = SimpleNamespace(total=111_540), SimpleNamespace(total=1_003_854)  # tiny Shakespeare's splits
    windows = ep.protocol_windows(hp, val, train, random_batches=20, seed=0)
    split, starts = windows["paper_20x64"]
    assert split == "val" and starts.tolist() == list(range(1280))
    covered = np.zeros(val.total, dtype=bool)
    for s in starts:  # each window reads tokens s .. s + seq_len (inputs and targets)
        covered[s:s + hp.seq_len + 1] = True
    assert covered[:1536].all() and not covered[1536:].any()
    for name, (iters, batch), tokens in [("paper_20x64", (20, 64), 1536), ("paper_50x64", (50, 64), 3456),
                                         ("notebook_20x512", (20, 512), 10496)]:
        assert windows[name][1].tolist() == paper_loader_starts(val.total, hp.seq_len, batch, iters), name
        assert windows[name][1].max() + hp.seq_len + 1 == tokens, name
    assert windows["ours"][1].tolist() == [256 * i for i in range(256)]  # the preset's 65,536 val tokens
    assert windows["train"][0] == "train"
    assert windows["val_all"][1][-1] + hp.seq_len + 1 <= val.total < windows["val_all"][1][-1] + 2 * hp.seq_len + 1
    nano = windows["nanogpt"][1]
    assert len(nano) == 20 * 64 and nano.min() >= 0 and nano.max() + hp.seq_len + 1 <= val.total


def test_stride1_stops_early_like_the_paper_loader_on_a_short_split():
    ep = load_script(f"{GAP}/eval_protocols.py")
    assert ep.stride1_starts(20, 64, 1000, 256).tolist() == paper_loader_starts(1000, 256, 64, 20)  # 11 batches
    with pytest.raises(ValueError, match="no full batch"):
        ep.stride1_starts(20, 64, 300, 256)


def test_ours_is_train_gpt_evaluate(tiny):
    """Both sum model.eval_sums over the same windows in the same chunks in float64, so they agree to
    rounding: rel 1e-6 is ~15 float32 ulps (2^-24 = 6e-8), room for a BLAS reduction order that differs with
    the chunking, while a window more or less, or a target off by one, moves the mean by > 1e-3."""
    ep = load_script(f"{GAP}/eval_protocols.py")
    model, state = tg.model_from_checkpoint(tiny.ckpt)
    hp = model.hp
    splits = ep.open_splits(hp, None, tiny.ckpt)
    amp, dtype = tg.autocast_for(hp, torch.device("cpu"))
    window = tg.window_size(hp, state["step"])
    windows = ep.protocol_windows(hp, splits["val"], splits["train"], random_batches=1, seed=0)
    ours, ours_acc = ep.loss_and_accuracy(model, splits["val"], windows["ours"][1], amp, window)
    reference, _, _ = tg.evaluate(model, splits["val"], hp, tg.Context.local(hp, torch.device("cpu"), amp), window)
    assert ours == pytest.approx(reference, rel=1e-6)
    assert ours == pytest.approx(tiny.val_loss, rel=1e-6)  # and the validation the training run logged
    assert ours_acc == tiny.val_acc  # a count of argmax hits over the same logits


def test_json_with_data_flag_matches(tiny, capsys):
    ep = load_script(f"{GAP}/eval_protocols.py")
    assert ep.main([tiny.ckpt, "--data", str(tiny.shards), "--json", "--random-batches", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    (res,) = out["results"]
    assert out["protocols"] == list(ep.PROTOCOLS) and list(res["loss"]) == list(ep.PROTOCOLS)
    assert list(res["accuracy"]) == list(ep.PROTOCOLS) and all(0 <= a <= 1 for a in res["accuracy"].values())
    assert res["loss"]["ours"] == pytest.approx(tiny.val_loss, rel=1e-6)
    assert res["accuracy"]["ours"] == pytest.approx(tiny.val_acc, abs=1e-12)
    assert res["num_iterations"] == 5 and res["step"] == 5
    assert res["windows"]["nanogpt"]["windows"] == 2 * 64
    assert res["windows"]["notebook_20x512"] == dict(split="val", windows=10240, first_start=0, last_start=10239,
                                                     stride=1, last_token=10239 + 16)
    # --protocols: a subset, in PROTOCOLS order, with the same numbers
    assert ep.main([tiny.ckpt, "--json", "--protocols", "paper_20x64,ours"]) == 0
    sub = json.loads(capsys.readouterr().out)
    assert sub["protocols"] == ["ours", "paper_20x64"] and list(sub["results"][0]["loss"]) == ["ours", "paper_20x64"]
    assert sub["results"][0]["loss"]["paper_20x64"] == pytest.approx(res["loss"]["paper_20x64"], rel=1e-9)


def test_protocol_table_counts_a_run_complete_only_when_checkpoint_log_and_length_agree():
    table = load_script("records/2026-12-03-protocol-table/table.py")
    assert table.is_complete(2000, 2000, 2000, 2000)
    assert table.is_complete(2000, 2000, 2000, None)  # scores from before num_iterations was recorded
    assert not table.is_complete(1800, 2000, 2000, 2000)  # a checkpoint copied before the run ended
    assert not table.is_complete(1800, 1800, 2000, 2000)  # both cut off
    assert not table.is_complete(2000, 2000, 2000, 3000)  # the log's M is not the checkpoint's
    assert not table.is_complete(2000, 2100, 2000, 2000)  # the log went on past the checkpoint


# ----------------------------------------------------------------------------- bad input: one line, exit 2


def test_eval_protocols_bad_input(tiny, tmp_path, capsys):
    ep = load_script(f"{GAP}/eval_protocols.py")
    one_line_error(capsys, ep.main([str(tmp_path / "missing.pt")]), "missing.pt", "no such checkpoint")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    one_line_error(capsys, ep.main([str(tmp_path / "junk.pt")]), "junk.pt")
    one_line_error(capsys, ep.main([tiny.ckpt, "--data", str(tmp_path / "nodir")]), "--data", "not a directory")
    one_line_error(capsys, ep.main([tiny.ckpt, "--data", str(tmp_path)]), "no train shards", "--data")
    one_line_error(capsys, ep.main([tiny.ckpt, "--random-batches", "0"]), "--random-batches")
    one_line_error(capsys, ep.main([tiny.ckpt, "--protocols", "ours,paper"]), "--protocols")
    one_line_error(capsys, ep.main([tiny.ckpt, "--nonsense"]), "--nonsense")
    if not torch.cuda.is_available():
        one_line_error(capsys, ep.main([tiny.ckpt, "--device", "cuda"]), "--device=cuda", "--device=cpu")
    one_line_error(capsys, ep.main([]), "checkpoints")


def test_other_scripts_bad_input(tiny, tmp_path, capsys):
    accounting = load_script(f"{GAP}/accounting.py")
    one_line_error(capsys, accounting.main([str(tmp_path / "missing.pt")]), "missing.pt")
    one_line_error(capsys, accounting.main([]), "one checkpoint")
    ngram = load_script(f"{GAP}/ngram_difficulty.py")
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be\n" * 100)
    one_line_error(capsys, ngram.main([str(short)]), "--ours-chars")
    one_line_error(capsys, ngram.main([str(tiny.text), "--orders", "2,x"]), "--orders")
    one_line_error(capsys, ngram.main([str(tmp_path / "missing.txt")]), "missing.txt")
    tvv = load_script(f"{GAP}/train_vs_val.py")
    one_line_error(capsys, tvv.main([str(tmp_path / "missing.txt")]), "missing.txt")
    one_line_error(capsys, tvv.main([tiny.log, "--last", "0"]), "--last")
    table = load_script("records/2026-12-03-protocol-table/table.py")
    one_line_error(capsys, table.main([str(tmp_path / "missing.json")]), "missing.json", "eval_protocols.py --json")
    (tmp_path / "list.json").write_text("[1, 2]")
    one_line_error(capsys, table.main([str(tmp_path / "list.json")]), "list.json", "results")
    one_line_error(capsys, table.main([scores_of_tiny(tiny), "--logs", str(tmp_path)]), "smoke.txt", "--logs")
    one_line_error(capsys, table.main([]), "scores")
    rescale = load_script("records/2026-12-05-paper-bound-screen/rescale.py")
    one_line_error(capsys, rescale.main([str(tmp_path / "list.json"), "--target=2", "--out=x.pt"]), "list.json")
    one_line_error(capsys, rescale.main([tiny.ckpt, "--target=0", "--out=x.pt"]), "--target")
    one_line_error(capsys, rescale.main([tiny.ckpt, "--target=2", f"--out={tiny.ckpt}"]), "--out")
    report = load_script("records/2026-12-05-robustness/report.py")
    one_line_error(capsys, report.main([str(tmp_path / "missing.json")]), "missing.json", "robustness.py --json")
    one_line_error(capsys, report.main([str(tmp_path / "list.json")]), "list.json", "results")
    one_line_error(capsys, report.main([robustness_of_tiny(tiny), "--out", str(tmp_path / "nodir")]), "--out")


def test_robustness_report_reads_parallel_parts_as_one_list(tiny, tmp_path, capsys):
    """run.sh with JOBS=2 writes one output per process; report.py tables their checkpoints together."""
    report = load_script("records/2026-12-05-robustness/report.py")
    part = robustness_of_tiny(tiny)
    assert report.main([part, part, "--out", str(tmp_path)]) == 0
    accuracies = capsys.readouterr().out.split("\n\n")[0]
    one, two = table_rows(accuracies, "smoke")
    assert one == two


def test_protocol_table_reads_scores_in_batches(tiny, tmp_path, capsys):
    """Checkpoints scored as their runs finish: several eval_protocols.py outputs read as one list, none twice."""
    table = load_script("records/2026-12-03-protocol-table/table.py")
    scores, logs = scores_of_tiny(tiny), os.path.dirname(tiny.log)
    assert table.main([scores, "--logs", logs, "--config", "smoke"]) == 0
    whole = capsys.readouterr().out
    (tmp_path / "none.json").write_text(json.dumps({"results": []}))
    assert table.main([scores, str(tmp_path / "none.json"), "--logs", logs, "--config", "smoke"]) == 0
    assert capsys.readouterr().out == whole
    one_line_error(capsys, table.main([scores, scores, "--logs", logs]), "more than one", "once")
