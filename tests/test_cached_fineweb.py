"""data/cached_fineweb10B.py: fast, clear offline failure; skips valid shards; validates downloads.

The script runs as a subprocess, as a user would run it. "Network" is either unreachable
(HF_HUB_OFFLINE=1, a loopback port that hangs up, a loopback port that never answers) or a small
in-process stand-in for the Hub on loopback that serves shards the test wrote. Each counts the
connections or requests it gets: the tests assert that the script tried once and stopped with one
clear message (no retry loop), never how long it took.
"""
import hashlib
import os

import numpy as np
import pytest
from download_helpers import FileServer, Listener, assert_one_clear_error, run_script

from data import cached_fineweb10B as fw
from data.shards import make_header, read_shard, write_shard

REPO_PREFIX = "/datasets/kjj0/fineweb10B-gpt2/resolve/main/"


def run(args, tmp_path, **env_overrides):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
    env.update(env_overrides)
    return run_script("data/cached_fineweb10B.py", args, env)


def assert_clear_failure(r, *phrases):
    assert_one_clear_error(r, *phrases)
    assert "Retrying" not in r.stderr  # no huggingface_hub retry loop


def fake_shard_bytes(n, seed, magic_ok=True):
    tokens = np.random.default_rng(seed).integers(0, 50257, n).astype("<u2")
    header = make_header(n)
    if not magic_ok:
        header[0] = 12345
    return header.tobytes() + tokens.tobytes()


def test_offline_mode_fails_without_touching_the_network(tmp_path):
    with Listener() as hub:
        r = run(["2", "--dir", str(tmp_path / "fw")], tmp_path, HF_HUB_OFFLINE="1", HF_ENDPOINT=hub.url)
    assert_clear_failure(r, "cannot download 3 shard(s)", "fineweb_val_000000.bin", "HF_HUB_OFFLINE")
    assert hub.connections == 0
    assert not (tmp_path / "fw").exists()


def test_unreachable_endpoint_is_tried_once_and_reported_clearly(tmp_path):
    with Listener() as hub:  # hangs up on every connection
        r = run(["1", "--dir", str(tmp_path / "fw")], tmp_path, HF_ENDPOINT=hub.url)
    assert_clear_failure(r, "cannot reach the Hugging Face Hub", hub.url, "appears to be offline",
                         "rerun the same command", "HF_ENDPOINT")
    assert hub.connections == 1  # one probe, then no download attempt
    assert not (tmp_path / "fw").exists()


def test_silent_endpoint_is_given_up_after_one_probe(tmp_path):
    with Listener(answer_never=True) as hub:
        r = run(["1", "--dir", str(tmp_path / "fw"), "--timeout", "1"], tmp_path, HF_ENDPOINT=hub.url)
    assert_clear_failure(r, "cannot reach the Hugging Face Hub", hub.url)
    assert "timed out" in r.stderr.lower() or "no answer within 1 s" in r.stderr, r.stderr
    assert hub.connections == 1


def test_valid_shards_present_are_skipped_without_network(tmp_path):
    d = tmp_path / "fw"
    d.mkdir()
    for i, name in enumerate(fw.shard_filenames(2)):
        write_shard(d / name, np.arange(1000 + i) % 50257)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in d.iterdir()}
    with Listener() as hub:
        for env in (dict(HF_HUB_OFFLINE="1"), dict()):
            r = run(["2", "--dir", str(d)], tmp_path, HF_ENDPOINT=hub.url, **env)  # a network attempt would fail
            assert r.returncode == 0, r.stderr
            assert "3 of 3 shards already present and valid" in r.stdout
            assert "done: 0 downloaded, 3 already present" in r.stdout
    assert hub.connections == 0
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in d.iterdir()} == before


def test_invalid_shard_present_is_reported_and_fetched_again(tmp_path):
    d = tmp_path / "fw"
    d.mkdir()
    write_shard(d / "fineweb_val_000000.bin", np.arange(500))
    (d / "fineweb_train_000001.bin").write_bytes(fake_shard_bytes(300, 1)[:-10])  # cut short
    with Listener() as hub:
        r = run(["1", "--dir", str(d)], tmp_path, HF_ENDPOINT=hub.url)
    assert "fineweb_train_000001.bin: present but invalid, will download again" in r.stdout
    assert "truncated" in r.stdout
    assert_clear_failure(r, "cannot download 1 shard(s) (fineweb_train_000001.bin)")
    assert hub.connections == 1
    assert (d / "fineweb_train_000001.bin").exists()  # nothing deleted on failure


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"\[0, 103\]"):
        fw.shard_filenames(104)
    assert fw.shard_filenames(2) == ["fineweb_val_000000.bin", "fineweb_train_000001.bin",
                                     "fineweb_train_000002.bin"]
    with pytest.raises(SystemExit) as info:
        fw.main(["200"])
    assert info.value.code == 2


# --------------------------------------------------------------------------- a stand-in Hub on loopback

class FakeHub(FileServer):
    """Serves `files` (name -> bytes) at the Hub's resolve URLs of the dataset, and records requests."""

    def __init__(self, files):
        super().__init__({REPO_PREFIX + name: body for name, body in files.items()},
                         headers=lambda body: {"X-Repo-Commit": "0" * 40,
                                               "ETag": '"%s"' % hashlib.sha1(body).hexdigest()},
                         missing_headers={"X-Error-Code": "EntryNotFound"})
        self.endpoint = self.url

    def downloads(self):
        return sorted(p[len(REPO_PREFIX):] for m, p in self.requests if m == "GET" and p.startswith(REPO_PREFIX))

    def requests_for(self, name):
        return [m for m, p in self.requests if p == REPO_PREFIX + name]


def test_downloads_missing_shards_and_validates_them(tmp_path):
    files = {name: fake_shard_bytes(200 + 50 * i, i) for i, name in enumerate(fw.shard_filenames(2))}
    d = tmp_path / "fw"
    d.mkdir()
    (d / "fineweb_train_000001.bin").write_bytes(files["fineweb_train_000001.bin"])  # already there
    (d / "fineweb_train_000002.bin").write_bytes(files["fineweb_train_000002.bin"][:1500])  # partial
    with FakeHub(files) as hub:
        r = run(["2", "--dir", str(d)], tmp_path, HF_ENDPOINT=hub.endpoint)
    assert r.returncode == 0, r.stderr
    assert hub.downloads() == ["fineweb_train_000002.bin", "fineweb_val_000000.bin"]
    assert "done: 2 downloaded, 1 already present" in r.stdout
    for name, body in files.items():
        assert (d / name).read_bytes() == body
        assert len(read_shard(d / name, vocab_size=50257)) == (len(body) - 1024) // 2


def test_corrupt_download_is_rejected_with_a_clear_message(tmp_path):
    files = {"fineweb_val_000000.bin": fake_shard_bytes(100, 0, magic_ok=False),
             "fineweb_train_000001.bin": fake_shard_bytes(100, 1)}
    with FakeHub(files) as hub:
        r = run(["1", "--dir", str(tmp_path / "fw")], tmp_path, HF_ENDPOINT=hub.endpoint)
    assert_clear_failure(r, "downloaded fineweb_val_000000.bin is not a valid shard",
                         "bad magic number 12345", "Rerun the same command")
    assert hub.downloads() == ["fineweb_val_000000.bin"]  # fetched once, and the run stopped there
    assert hub.requests_for("fineweb_train_000001.bin") == []


def test_file_missing_upstream_is_one_clear_message(tmp_path):
    with FakeHub({"fineweb_val_000000.bin": fake_shard_bytes(100, 0)}) as hub:
        r = run(["1", "--dir", str(tmp_path / "fw")], tmp_path, HF_ENDPOINT=hub.endpoint)
    assert_clear_failure(r, "downloading fineweb_train_000001.bin failed", "404")
    assert hub.requests_for("fineweb_train_000001.bin") == ["HEAD"]  # the 404 is final: no retries
    assert (tmp_path / "fw" / "fineweb_val_000000.bin").exists()  # what succeeded is kept
