"""data/shards.py: the .bin token-shard format, checked against an independent struct-based encoder."""
import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data.shards import HEADER_BYTES, ShardError, ShardNotFoundError, read_header, read_shard, write_shard


def reference_shard_bytes(tokens, magic=20240520, version=1, count=None):
    """The format spelled out independently: 256 little-endian int32, then little-endian uint16."""
    count = len(tokens) if count is None else count
    header = struct.pack("<3i", magic, version, count) + bytes(4 * 253)
    return header + struct.pack(f"<{len(tokens)}H", *tokens)


def put(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


token_lists = st.lists(st.integers(0, 65535), min_size=1, max_size=3000)


@settings(max_examples=60, deadline=None)
@given(tokens=token_lists)
def test_round_trip_matches_reference_encoding(tmp_path_factory, tokens):
    path = str(tmp_path_factory.mktemp("rt") / "x.bin")
    write_shard(path, tokens)
    with open(path, "rb") as f:
        assert f.read() == reference_shard_bytes(tokens)
    out = read_shard(path)
    assert isinstance(out, np.memmap) and out.dtype == np.uint16 and out.shape == (len(tokens),)
    assert out.tolist() == tokens
    assert read_header(path) == len(tokens)


@settings(max_examples=30, deadline=None)
@given(tokens=token_lists)
def test_reads_shards_written_by_another_writer(tmp_path_factory, tokens):
    path = put(tmp_path_factory.mktemp("ref") / "y.bin", reference_shard_bytes(tokens))
    assert read_shard(path, vocab_size=max(tokens) + 1).tolist() == tokens


def test_read_shard_is_read_only_memmap(tmp_path):
    path = str(tmp_path / "a.bin")
    write_shard(path, np.arange(100))
    out = read_shard(path)
    with pytest.raises(ValueError):
        out[0] = 7
    assert out.filename == os.path.abspath(path) and out.offset == HEADER_BYTES


def test_write_accepts_any_integer_dtype_and_does_not_mutate_input(tmp_path):
    for dtype in (np.int64, np.int32, np.uint16, np.uint8):
        tokens = np.array([0, 1, 255, 3], dtype=dtype)
        before = tokens.copy()
        write_shard(tmp_path / f"{np.dtype(dtype).name}.bin", tokens)
        assert np.array_equal(tokens, before) and tokens.dtype == dtype
        assert read_shard(tmp_path / f"{np.dtype(dtype).name}.bin").tolist() == [0, 1, 255, 3]


@pytest.mark.parametrize("tokens, match", [
    ([0, 65536], "65536 does not fit uint16"),
    ([-1, 3], "-1 does not fit uint16"),
    (np.array([1.0, 2.0]), "must be integers"),
    (np.zeros((2, 3), dtype=np.int64), "1-D"),
    ([], "empty"),
])
def test_write_rejects_unstorable_tokens_and_leaves_nothing_behind(tmp_path, tokens, match):
    path = tmp_path / "bad.bin"
    write_shard(path, [5, 6, 7])  # an existing good shard must survive a failed overwrite
    with pytest.raises(ValueError, match=match):
        write_shard(path, tokens)
    assert read_shard(path).tolist() == [5, 6, 7]
    assert os.listdir(tmp_path) == ["bad.bin"]


def test_write_is_atomic_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "s.bin"
    write_shard(path, [1, 2, 3])

    def crash(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        write_shard(path, np.arange(1000))
    monkeypatch.undo()
    assert read_shard(path).tolist() == [1, 2, 3]  # old shard intact, no temp file left
    assert os.listdir(tmp_path) == ["s.bin"]


# --------------------------------------------------------------------------- corrupt shards

GOOD = list(range(1, 101))


def corrupt(kind, tmp_path):
    """Write a shard with one defect; return its path."""
    p = tmp_path / f"{kind}.bin"
    good = reference_shard_bytes(GOOD)
    if kind == "bad_magic":
        return put(p, reference_shard_bytes(GOOD, magic=20240521))
    if kind == "bad_version":
        return put(p, reference_shard_bytes(GOOD, version=2))
    if kind == "truncated_body":
        return put(p, good[:-3])
    if kind == "truncated_header":
        return put(p, good[:500])
    if kind == "count_mismatch":  # header claims fewer tokens than the file holds
        return put(p, reference_shard_bytes(GOOD, count=len(GOOD) - 10))
    if kind == "zero_count":
        return put(p, reference_shard_bytes([], count=0))
    if kind == "negative_count":
        return put(p, reference_shard_bytes(GOOD, count=-5))
    if kind == "empty_file":
        return put(p, b"")
    if kind == "missing_file":
        return str(p)
    if kind == "directory":
        p.mkdir()
        return str(p)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, match", [
    ("bad_magic", r"bad magic number 20240521 \(expected 20240520\)"),
    ("bad_version", r"unsupported version 2 \(expected 1\)"),
    ("truncated_body", r"truncated: header says 100 tokens \(1224 bytes\) but the file has 1221 bytes"),
    ("truncated_header", r"truncated: 500 bytes, shorter than the 1024-byte header"),
    ("count_mismatch", r"count mismatch: header says 90 tokens \(1204 bytes\) but the file has 1224 bytes"),
    ("zero_count", r"token count 0"),
    ("negative_count", r"token count -5"),
    ("empty_file", r"empty \(0 bytes\)"),
    ("missing_file", r"does not exist.*python data/shakespeare.py"),
    ("directory", r"not a regular file"),
])
@pytest.mark.parametrize("reader", [read_header, read_shard])
def test_each_defect_gives_an_error_naming_file_and_defect(tmp_path, kind, match, reader):
    path = corrupt(kind, tmp_path)
    with pytest.raises(ShardError, match=match) as info:
        reader(path)
    assert isinstance(info.value, ValueError)
    assert repr(path) in str(info.value)  # names the file


def test_missing_file_is_also_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_shard(tmp_path / "nope.bin")
    assert issubclass(ShardNotFoundError, ShardError)


def test_out_of_vocab_token_reports_value_and_first_position(tmp_path):
    path = str(tmp_path / "v.bin")
    tokens = [3, 255, 40, 256, 7, 300]
    write_shard(path, tokens)
    assert read_shard(path, vocab_size=301).tolist() == tokens  # boundary: max token 300 < 301
    with pytest.raises(ShardError, match=r"token 256 at position 3 \(max token 300\).*vocabulary of size 256") as info:
        read_shard(path, vocab_size=256)
    assert repr(path) in str(info.value)
    with pytest.raises(ShardError, match="token 300 at position 5"):
        read_shard(path, vocab_size=300)


@pytest.mark.parametrize("vocab_size", [0, -3, 2.5, True, "256"])
def test_read_rejects_bad_vocab_size(tmp_path, vocab_size):
    path = write_shard(tmp_path / "g.bin", [1, 2])
    with pytest.raises(ValueError, match="vocab_size must be a positive integer"):
        read_shard(path, vocab_size=vocab_size)

