"""data/files.py: atomic_write replaces a file all at once or not at all, and cleans up after itself."""
import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from data.files import atomic_write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def writer(data):
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    return write


def test_writes_the_file_with_ordinary_permissions_and_no_leftovers(tmp_path):
    path = tmp_path / "a.bin"
    atomic_write(str(path), writer(b"first"))
    atomic_write(str(path), writer(b"second, longer"))
    assert path.read_bytes() == b"second, longer"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["a.bin"]


def test_creates_missing_parent_directories(tmp_path):
    path = tmp_path / "x" / "y" / "meta.json"
    atomic_write(path, writer(b"{}"))  # os.PathLike is accepted too
    assert path.read_bytes() == b"{}"


def test_temp_file_is_beside_the_target_and_named_tmp(tmp_path):
    seen = []

    def write(tmp):
        seen.append(tmp)
        assert os.path.isfile(tmp) and os.path.getsize(tmp) == 0  # a fresh empty file
        writer(b"z")(tmp)

    atomic_write(str(tmp_path / "c.bin"), write)
    (tmp,) = seen
    assert os.path.dirname(tmp) == str(tmp_path)  # same directory: the rename never crosses file systems
    assert os.path.basename(tmp).startswith("c.bin.") and tmp.endswith(".tmp")  # never matches *.bin globs


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt(), ValueError("bad data")])
def test_error_mid_write_leaves_the_old_file_and_no_temp(tmp_path, error):
    path = tmp_path / "s.bin"
    atomic_write(str(path), writer(b"old contents"))

    def crash(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half of the new")
        raise error

    with pytest.raises(type(error)):
        atomic_write(str(path), crash)
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["s.bin"]


def test_failed_rename_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "s.bin"
    atomic_write(str(path), writer(b"old"))

    def fail(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="simulated"):
        atomic_write(str(path), writer(b"new"))
    monkeypatch.undo()
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["s.bin"]


def test_no_target_file_appears_when_the_first_write_fails(tmp_path):
    with pytest.raises(RuntimeError):
        atomic_write(str(tmp_path / "new.bin"), lambda tmp: (_ for _ in ()).throw(RuntimeError("boom")))
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names synced files through /proc (Linux)")
def test_data_is_fsynced_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write(str(tmp_path / "d.bin"), writer(b"data"))
    (at,) = [i for i, (kind, _) in enumerate(events) if kind == "replace"]
    tmp = events[at][1]
    assert ("fsync", tmp) in events[:at]
    assert ("fsync", str(tmp_path)) in events[at:]


def test_write_may_replace_the_temp_file_itself(tmp_path):
    def recreate(tmp):  # like torch.save(obj, tmp) or a tool that unlinks and recreates its output
        os.remove(tmp)
        writer(b"recreated")(tmp)

    atomic_write(str(tmp_path / "r.bin"), recreate)
    assert (tmp_path / "r.bin").read_bytes() == b"recreated"
    assert os.listdir(tmp_path) == ["r.bin"]


def test_target_that_is_a_directory_fails_and_cleans_up(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(OSError):
        atomic_write(str(tmp_path / "dir"), writer(b"x"))
    assert os.listdir(tmp_path) == ["dir"] and os.listdir(tmp_path / "dir") == []


def test_parent_that_is_a_file_fails_without_creating_anything(tmp_path):
    (tmp_path / "f").write_bytes(b"a file")
    with pytest.raises(OSError):
        atomic_write(str(tmp_path / "f" / "x.bin"), writer(b"x"))
    assert (tmp_path / "f").read_bytes() == b"a file" and os.listdir(tmp_path) == ["f"]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_process_killed_mid_write_leaves_the_old_file_intact(tmp_path):
    """A real crash: no handler runs, so the temp file stays, but the target is the old file, whole."""
    path = tmp_path / "ckpt.pt"
    atomic_write(str(path), writer(b"old checkpoint"))
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {ROOT!r})
        from data.files import atomic_write
        def write(tmp):
            with open(tmp, "wb") as f:
                f.write(b"half of a new checkpoint")
                f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        atomic_write({str(path)!r}, write)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert r.returncode == -signal.SIGKILL
    assert path.read_bytes() == b"old checkpoint"
    leftovers = sorted(set(os.listdir(tmp_path)) - {"ckpt.pt"})
    assert len(leftovers) == 1 and leftovers[0].endswith(".tmp")  # ignored by *.bin / *.pt globs and .gitignore

