"""The training and validation token streams: the .bin shards matching a glob, read as one memory-mapped
stream, and what the folder's meta.json says of them (vocabulary size, tokenizer)."""
from __future__ import annotations

import glob
import json
import os

import numpy as np

from data.shakespeare import GPT2_VOCAB
from data.shards import read_shard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_hint(pattern: str) -> str:
    if "fineweb" in pattern:
        return "Download them with: python data/cached_fineweb10B.py 8"
    return "Build them with: python data/shakespeare.py  (or pass --train_files=/--val_files= globs)"


def shard_files(pattern: str, what: str) -> list[str]:
    """The sorted shards matching `pattern` (relative to the repository root unless absolute);
    FileNotFoundError saying how to get them when there are none."""
    files = sorted(glob.glob(pattern if os.path.isabs(pattern) else os.path.join(ROOT, pattern)))
    if not files:
        raise FileNotFoundError(f"no {what} shards match {pattern!r}. {data_hint(pattern)}")
    return files


class TokenStream:
    """The shards matching a glob, as one memory-mapped stream of tokens."""

    def __init__(self, pattern: str, vocab_size: int, what: str):
        self.shards = [read_shard(f, vocab_size) for f in shard_files(pattern, what)]
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])
        self.total = int(self.starts[-1])

    def window(self, start: int, n: int) -> np.ndarray:
        """Tokens [start, start+n) of the stream (wrapping around at the end)."""
        out, start = [], start % self.total
        while n > 0:
            i = int(np.searchsorted(self.starts, start, side="right") - 1)
            off = start - int(self.starts[i])
            chunk = self.shards[i][off:off + n]
            out.append(chunk)
            n -= len(chunk)
            start = (start + len(chunk)) % self.total
        return np.concatenate(out) if len(out) > 1 else out[0]


def shards_meta(train_files: str) -> dict:
    """meta.json beside the training shards ({} when there is none, as for FineWeb)."""
    meta = os.path.join(os.path.dirname(shard_files(train_files, "training")[0]), "meta.json")
    if not os.path.exists(meta):
        return {}
    with open(meta) as f:
        return json.load(f)


def read_vocab_size(train_files: str, vocab_size: int) -> int:
    """vocab_size when given (> 0), else the one meta.json beside the training shards records."""
    if vocab_size > 0:
        return vocab_size
    meta = shards_meta(train_files)
    if "vocab_size" not in meta:
        raise FileNotFoundError(f"no meta.json with a vocab_size beside {train_files!r}: pass --vocab_size= "
                                f"or rebuild the shards")
    return int(meta["vocab_size"])


def tokenizer_record(train_files: str, vocab_size: int) -> dict:
    """How the run's tokens decode, kept in every checkpoint so tools/sample.py needs no data folder:
    {"tokenizer": "byte" | "char" | "gpt2", "vocab_size": V, "chars": [...] (char only)}, or {} if unknown.
    Shards without meta.json and a vocab of 50257 are GPT-2 (FineWeb)."""
    meta = shards_meta(train_files)
    if meta.get("tokenizer"):
        return {k: meta[k] for k in ("tokenizer", "vocab_size", "chars") if k in meta}
    return {"tokenizer": "gpt2", "vocab_size": GPT2_VOCAB} if vocab_size == GPT2_VOCAB else {}
