"""Download tiny Shakespeare, the char-rnn text the paper's Shakespeare experiments train on.

    python data/tinyshakespeare.py [--out data/tinyshakespeare/input.txt] [--url URL] [--timeout SECONDS]

Fetches input.txt (1,115,394 bytes, 40,000 lines of Shakespeare's plays, collected by A. Karpathy for
char-rnn) from the char-rnn repository (--url: a mirror), checks its SHA-256 and writes it atomically
(data/files.py). A file already at --out with the right SHA-256 is kept without touching the network,
so reruns are free; one with the wrong digest is reported and downloaded again (and kept if that fails).
Before downloading, the host is probed once with a short timeout: offline, the script prints one
message and exits with status 1 within seconds. Then build shards from it, e.g. the paper's
character-level data set:

    python data/shakespeare.py --input data/tinyshakespeare/input.txt --tokenizer char --out data/tiny
"""
import argparse
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # so `python data/tinyshakespeare.py` can import the `data` package
    sys.path.insert(0, ROOT)

from data.files import atomic_write  # noqa: E402
from data.net import describe, unreachable_reason  # noqa: E402

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SIZE = 1_115_394
MAX_BYTES = 16 * SIZE  # read no further from a URL that serves something else (the digest fails anyway)
DEFAULT_OUT = os.path.join(ROOT, "data", "tinyshakespeare", "input.txt")
DEFAULT_TIMEOUT = 5.0
CHUNK = 1 << 16


class DownloadFailed(RuntimeError):
    """The text could not be fetched (host unreachable, HTTP error) or was not the expected file."""


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_problem(path, sha256=SHA256):
    """None if `path` is a regular file with SHA-256 `sha256`, otherwise why not."""
    if not os.path.exists(path):
        return "missing"
    if not os.path.isfile(path):
        return "not a regular file"
    actual = sha256_of(path)
    if actual != sha256:
        return f"SHA-256 {actual}, expected {sha256}"
    return None


def _head(url, timeout):
    """HTTP HEAD of `url`; any HTTP status (even 404) means the host answered."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        pass


def _offline_help(url, out):
    host = urllib.parse.urlparse(url).netloc
    return (f"The machine appears to be offline or {host} is unreachable. Connect to the internet (or pass "
            f"--url of a mirror) and rerun the same command, or copy the file to {out} by hand (SHA-256 {SHA256}). "
            "The default Shakespeare data needs no download: python data/shakespeare.py")


NETWORK_ERRORS = (OSError, http.client.HTTPException)  # URLError, HTTPError, timeouts, a connection cut


def fetch_into(url, path, timeout, sha256=SHA256, max_bytes=MAX_BYTES):
    """GET `url` into the file `path` (streamed); raise DownloadFailed unless its SHA-256 is `sha256`.
    Network failures raise DownloadFailed; local write failures (disk full, ...) their own OSError."""
    def failed(e):
        return DownloadFailed(f"downloading {url} failed ({describe(e)}). Check the connection (or --url) "
                              "and rerun the same command")

    digest, size = hashlib.sha256(), 0
    with open(path, "wb") as f:
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
        except NETWORK_ERRORS as e:
            raise failed(e) from None
        with response:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except NETWORK_ERRORS as e:
                    raise failed(e) from None
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise DownloadFailed(f"{url} serves more than {max_bytes:,} bytes: not tiny Shakespeare "
                                         f"({SIZE:,} bytes). Check --url; nothing was written")
                digest.update(chunk)
                f.write(chunk)
            missing = response.length  # bytes of Content-Length not received (read(n) ends quietly at EOF)
            if missing:
                raise DownloadFailed(f"downloading {url} failed: the connection closed after {size:,} of "
                                     f"{size + missing:,} bytes. Rerun the same command")
    if digest.hexdigest() != sha256:
        raise DownloadFailed(f"{url} served {size:,} bytes with SHA-256 {digest.hexdigest()}, expected {sha256}: "
                             "not the canonical tiny Shakespeare (a changed file or a wrong --url). "
                             "Nothing was written")


def download(out=DEFAULT_OUT, url=URL, timeout=DEFAULT_TIMEOUT, sha256=SHA256, log=print):
    """Make `out` hold the file with SHA-256 `sha256`, fetched from `url` unless already there.

    Returns "present" (valid file kept, no network used) or "downloaded". Raises DownloadFailed (quickly
    when the host does not answer within ~`timeout` s); an existing file is never removed or truncated.
    """
    if os.path.isdir(out):
        raise IsADirectoryError(f"{out} is a directory; give the file's path, e.g. {os.path.join(out, 'input.txt')}")
    problem = file_problem(out, sha256)
    if problem is None:
        return "present"
    if problem != "missing":
        log(f"{out}: present but invalid ({problem}), will download again")
    reason = unreachable_reason(lambda: _head(url, timeout), timeout)
    if reason is not None:
        raise DownloadFailed(f"cannot download tiny Shakespeare from {url} ({reason}). {_offline_help(url, out)}")
    atomic_write(out, lambda tmp: fetch_into(url, tmp, timeout, sha256))
    return "downloaded"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="PATH",
                        help="where to write the text (default data/tinyshakespeare/input.txt)")
    parser.add_argument("--url", default=URL, help="where to fetch it from (default: the char-rnn repository)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds to wait for the host before giving up (default {DEFAULT_TIMEOUT:g})")
    args = parser.parse_args(argv)
    if not args.timeout > 0:
        parser.error(f"--timeout must be positive, got {args.timeout}")
    if urllib.parse.urlparse(args.url).scheme not in ("http", "https") or not urllib.parse.urlparse(args.url).netloc:
        parser.error(f"--url must be an http:// or https:// URL, got {args.url!r}")
    try:
        outcome = download(args.out, args.url, args.timeout)
    except DownloadFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # reading an existing file or writing the new one
        print(f"error: cannot write --out {args.out!r} ({describe(e)}): choose a writable path", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was written; rerun the same command", file=sys.stderr)
        return 130
    print(f"{args.out}: {'already present and valid' if outcome == 'present' else 'downloaded'} "
          f"(SHA-256 {SHA256[:12]}...)")
    print(f"next: python data/shakespeare.py --input {args.out} --tokenizer char --out data/tiny")
    return 0


if __name__ == "__main__":
    sys.exit(main())
