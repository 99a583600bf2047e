"""data/tinyshakespeare.py: checked download, skip when present, one clear message when offline.

No test touches the internet: "offline" is an unreachable proxy or host on loopback (each counting the
connections it gets, to show the script tries once and never loops), and "online" is a small HTTP
server on loopback. Tests with the real text use the shared copy when present and skip otherwise.
"""
import hashlib
import os

import pytest
from download_helpers import FileServer, Listener, assert_one_clear_error, run_script

from data import tinyshakespeare as ts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_TINY = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt")
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def shared_text():
    if not os.path.isfile(SHARED_TINY):
        pytest.skip(f"tiny shakespeare not found at {SHARED_TINY}")
    with open(SHARED_TINY, "rb") as f:
        return f.read()


def run(args, **env_overrides):
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS}
    env.update(env_overrides)
    return run_script("data/tinyshakespeare.py", args, env)


class TextServer(FileServer):
    """Serves `body` at /input.txt; `url` is the file's URL, `base` the server's."""

    def __init__(self, body, short_by=0):
        super().__init__({"/input.txt": body}, short_by=short_by)
        self.base, self.url = self.url, self.url + "/input.txt"

    def methods(self):
        return [m for m, _ in self.requests]


# --------------------------------------------------------------------------- offline

def test_offline_default_url_fails_once_and_clearly(tmp_path):
    out = tmp_path / "ts" / "input.txt"
    with Listener(answer_never=False) as proxy:  # every connection to the internet goes through it
        r = run(["--out", str(out)], HTTPS_PROXY=proxy.url, https_proxy=proxy.url)
    assert_one_clear_error(r, "cannot download tiny Shakespeare from " + ts.URL, "appears to be offline",
                           "raw.githubusercontent.com", "rerun the same command", ts.SHA256,
                           "python data/shakespeare.py")
    assert proxy.connections == 1  # one bounded probe, no retries, no GET after it failed
    assert not out.exists() and not (tmp_path / "ts").exists()


def test_host_that_never_answers_is_given_up_after_one_try(tmp_path):
    with Listener(answer_never=True) as host:
        r = run(["--out", str(tmp_path / "input.txt"), "--url", host.url + "/input.txt", "--timeout", "1"])
    assert_one_clear_error(r, "cannot download tiny Shakespeare", host.url)
    assert "timed out" in r.stderr or "no answer within 1 s" in r.stderr, r.stderr
    assert host.connections == 1
    assert os.listdir(tmp_path) == []


def test_valid_file_present_needs_no_network(tmp_path):
    out = tmp_path / "input.txt"
    out.write_bytes(shared_text())
    before = out.stat().st_mtime_ns
    with Listener(answer_never=False) as host:
        r = run(["--out", str(out), "--url", host.url + "/input.txt"])
    assert r.returncode == 0, r.stderr
    assert "already present and valid" in r.stdout and "--tokenizer char" in r.stdout
    assert host.connections == 0 and out.stat().st_mtime_ns == before


# --------------------------------------------------------------------------- download from a loopback server

def test_cli_downloads_checks_and_writes_the_text(tmp_path):
    text = shared_text()
    out = tmp_path / "new" / "input.txt"
    with TextServer(text) as server:
        r = run(["--out", str(out), "--url", server.url])
        assert r.returncode == 0, r.stderr
        assert f"{out}: downloaded" in r.stdout
        assert server.methods() == ["HEAD", "GET"]
        assert out.read_bytes() == text and os.listdir(out.parent) == ["input.txt"]
        r = run(["--out", str(out), "--url", server.url])  # rerun: nothing fetched
        assert r.returncode == 0 and "already present and valid" in r.stdout
        assert server.methods() == ["HEAD", "GET"]
    assert hashlib.sha256(out.read_bytes()).hexdigest() == ts.SHA256 and len(text) == ts.SIZE


def test_wrong_file_served_is_refused_and_an_old_file_kept(tmp_path):
    out = tmp_path / "input.txt"
    out.write_bytes(b"an old, damaged copy")
    wrong = b"not shakespeare\n" * 100
    with TextServer(wrong) as server:
        r = run(["--out", str(out), "--url", server.url])
    assert f"{out}: present but invalid (SHA-256 {hashlib.sha256(b'an old, damaged copy').hexdigest()}" in r.stdout
    assert_one_clear_error(r, f"served 1,600 bytes with SHA-256 {hashlib.sha256(wrong).hexdigest()}",
                           f"expected {ts.SHA256}", "Nothing was written")
    assert out.read_bytes() == b"an old, damaged copy" and os.listdir(tmp_path) == ["input.txt"]


def test_missing_upstream_file_is_one_clear_message(tmp_path):
    with TextServer(b"x") as server:
        r = run(["--out", str(tmp_path / "input.txt"), "--url", server.base + "/moved.txt"])
        assert server.methods() == ["HEAD", "GET"]  # the host answered the probe; the GET reports the 404
    assert_one_clear_error(r, f"downloading {server.base}/moved.txt failed", "404", "rerun the same command")
    assert os.listdir(tmp_path) == []


def small_file(tmp_path):
    body = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 10
    return body, hashlib.sha256(body).hexdigest(), tmp_path / "d" / "input.txt"


def test_download_replaces_an_invalid_copy_and_then_skips(tmp_path):
    body, digest, out = small_file(tmp_path)
    out.parent.mkdir()
    out.write_bytes(body[:-5])  # truncated
    logs = []
    with TextServer(body) as server:
        assert ts.download(str(out), server.url, 5.0, sha256=digest, log=logs.append) == "downloaded"
        assert ts.download(str(out), server.url, 5.0, sha256=digest, log=logs.append) == "present"
        assert server.methods() == ["HEAD", "GET"]
    assert out.read_bytes() == body and os.listdir(out.parent) == ["input.txt"]
    assert len(logs) == 1 and "present but invalid" in logs[0]


def test_connection_cut_mid_body_writes_nothing(tmp_path):
    body, digest, out = small_file(tmp_path)
    with TextServer(body[:200], short_by=len(body) - 200) as server:
        with pytest.raises(ts.DownloadFailed, match=f"closed after 200 of {len(body):,} bytes"):
            ts.download(str(out), server.url, 5.0, sha256=digest)
    assert not out.exists() and os.listdir(out.parent) == []


def test_oversized_answer_is_cut_off(tmp_path):
    body, digest, out = small_file(tmp_path)
    with TextServer(body) as server:
        with pytest.raises(ts.DownloadFailed, match="serves more than 100 bytes"):
            ts.atomic_write(str(out), lambda tmp: ts.fetch_into(server.url, tmp, 5.0, digest, max_bytes=100))
    assert os.listdir(out.parent) == []


# --------------------------------------------------------------------------- bad arguments

def test_bad_arguments_are_one_line_errors(tmp_path):
    r = run(["--url", "ftp://example.com/input.txt", "--out", str(tmp_path / "x.txt")])
    assert r.returncode == 2 and "--url must be an http:// or https:// URL" in r.stderr
    r = run(["--timeout", "0", "--out", str(tmp_path / "x.txt")])
    assert r.returncode == 2 and "--timeout must be positive" in r.stderr
    r = run(["--out", str(tmp_path)])
    assert_one_clear_error(r, "cannot write --out", "is a directory", os.path.join(str(tmp_path), "input.txt"))
    assert os.listdir(tmp_path) == []
