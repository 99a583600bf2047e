"""Token shards: the `.bin` format the speedrun's data loader reads.

Layout (little-endian), as in modded-nanogpt and kjj0/fineweb10B-gpt2:

    header: 256 int32   [0] magic 20240520, [1] version 1, [2] token count, rest zero
    body:   count uint16 tokens

so a valid file is exactly 1024 + 2 * count bytes. A shard holds at least one token.

`read_shard` memory-maps the body (read-only, nothing is loaded until touched) after checking the
header against the file size. Every defect raises `ShardError`, a `ValueError` whose message names
the file and what is wrong; a missing file raises `ShardNotFoundError`, which is both a
`ShardError` and a `FileNotFoundError` and says how to build the shards.
`write_shard` writes atomically (data/files.py), so a crash never leaves a half-written shard under the
final name.
"""
import os

import numpy as np

from data.files import atomic_write

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
HEADER_DTYPE = np.dtype("<i4")
TOKEN_DTYPE = np.dtype("<u2")
MAX_TOKEN = np.iinfo(TOKEN_DTYPE).max  # 65535
MAX_COUNT = np.iinfo(HEADER_DTYPE).max  # the count field is an int32

BUILD_HINT = ("build shards with `python data/shakespeare.py` (offline, byte-level) or "
              "`python data/cached_fineweb10B.py N` (FineWeb, GPT-2 tokens)")


class ShardError(ValueError):
    """A token shard is missing, malformed, or inconsistent with what the caller expects."""


class ShardNotFoundError(ShardError, FileNotFoundError):
    """The shard file does not exist (catchable as ShardError, ValueError or FileNotFoundError)."""


def shard_nbytes(count):
    """Size in bytes of a valid shard holding `count` tokens."""
    return HEADER_BYTES + count * TOKEN_DTYPE.itemsize


def _as_tokens(tokens):
    """Validate `tokens` (any 1-D integer array-like) and return a new little-endian uint16 array."""
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"tokens must be a 1-D sequence, got shape {arr.shape}; flatten it first")
    if arr.size == 0:
        raise ValueError("tokens is empty: a shard must hold at least one token")
    if arr.size > MAX_COUNT:
        raise ValueError(f"{arr.size} tokens do not fit one shard (at most {MAX_COUNT}); split them")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"tokens must be integers, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > MAX_TOKEN:
        bad = lo if lo < 0 else hi
        raise ValueError(f"token id {bad} does not fit uint16 [0, {MAX_TOKEN}]: "
                         "shards store 16-bit tokens, so the vocabulary must be at most 65536")
    return arr.astype(TOKEN_DTYPE)  # always a copy: the caller's array is never touched


def make_header(count):
    """The 256-int32 header for a shard of `count` tokens."""
    header = np.zeros(HEADER_INTS, dtype=HEADER_DTYPE)
    header[0], header[1], header[2] = MAGIC, VERSION, count
    return header


def write_shard(path, tokens):
    """Write `tokens` (1-D integers in [0, 65535], at least one) to the shard `path`, atomically.

    Raises ValueError for tokens that cannot be stored; the input is never modified. Returns `path`.
    """
    body = _as_tokens(tokens)
    path = os.fspath(path)

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(make_header(body.size).tobytes())
            f.write(body.tobytes())

    atomic_write(path, write)
    return path


def read_header(path):
    """Validate the header of shard `path` against its file size and return its token count.

    Cheap (reads 1 KiB and stats the file), so it is how downloaders decide a shard is complete.
    Raises ShardNotFoundError / ShardError naming the file and the defect.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ShardNotFoundError(f"shard {path!r} does not exist; {BUILD_HINT}")
    if not os.path.isfile(path):
        raise ShardError(f"shard {path!r} is not a regular file")
    size = os.path.getsize(path)
    if size == 0:
        raise ShardError(f"shard {path!r} is empty (0 bytes): an interrupted write or download? "
                         f"Delete it and rebuild; {BUILD_HINT}")
    if size < HEADER_BYTES:
        raise ShardError(f"shard {path!r} is truncated: {size} bytes, shorter than the "
                         f"{HEADER_BYTES}-byte header")
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(HEADER_BYTES), dtype=HEADER_DTYPE)
    magic, version, count = (int(v) for v in header[:3])
    if magic != MAGIC:
        raise ShardError(f"shard {path!r} has bad magic number {magic} (expected {MAGIC}): "
                         "not a token shard, or a different format")
    if version != VERSION:
        raise ShardError(f"shard {path!r} has unsupported version {version} (expected {VERSION})")
    if count <= 0:
        raise ShardError(f"shard {path!r} has token count {count} in its header; "
                         "a shard holds at least one token")
    expected = shard_nbytes(count)
    if size < expected:
        raise ShardError(f"shard {path!r} is truncated: header says {count} tokens "
                         f"({expected} bytes) but the file has {size} bytes")
    if size > expected:
        raise ShardError(f"shard {path!r} has a token count mismatch: header says {count} tokens "
                         f"({expected} bytes) but the file has {size} bytes")
    return count


def read_shard(path, vocab_size=None):
    """Memory-map the tokens of shard `path`: a read-only uint16 array of shape (count,).

    If `vocab_size` is given, every token must be < vocab_size (this scans the shard once).
    Raises ShardNotFoundError / ShardError (a ValueError) naming the file and the defect.
    """
    if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer))
                                   or vocab_size <= 0):
        raise ValueError(f"vocab_size must be a positive integer or None, got {vocab_size!r}")
    count = read_header(path)
    tokens = np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(count,))
    if vocab_size is not None:
        top = int(tokens.max())
        if top >= vocab_size:
            where = int(np.argmax(tokens >= vocab_size))
            raise ShardError(f"shard {os.fspath(path)!r} holds token {int(tokens[where])} at position "
                             f"{where} (max token {top}), outside the vocabulary of size {vocab_size}: "
                             "was it built with a different tokenizer?")
    return tokens
