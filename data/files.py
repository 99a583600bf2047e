"""Atomic file writes: a crash or an error never leaves a half-written file under the final name."""
import os
import tempfile
from typing import Callable

FILE_MODE = 0o644  # mkstemp creates 0600; what we write are ordinary data files


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Replace `path` with what `write(tmp)` writes to the file `tmp`, all at once.

    `tmp` is a fresh empty file in the same directory as `path` (so the rename never crosses file
    systems), named `<name>.<random>.tmp`; `write` may reopen or truncate it. After `write` returns,
    the data is fsynced, renamed onto `path` (os.replace: readers see the old file or the new one,
    never a mix) and the directory entry is fsynced. On any error or interrupt, including one raised
    by `write`, the temp file is removed, `path` is left as it was and the exception propagates.
    The parent directory is created if missing (an OSError if that is impossible).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        _fsync(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory):
    """Make the rename itself durable; some file systems cannot fsync a directory, which is harmless."""
    try:
        _fsync(directory)
    except OSError:
        pass


def writable_dir_problem(path: str) -> str | None:
    """Create directory `path` if needed and prove a file can be written there: None, or why not (one line)."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        return f"cannot write there ({e.strerror or e})"
    return None
