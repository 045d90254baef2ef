"""Writing files so that a crash, a full disk or Ctrl-C never leaves half of one.

Every file fmnist writes (checkpoints, metrics, reports, figures, downloads) goes through
`atomic_write_bytes`: the bytes go to a temporary file in the same folder, are flushed to disk,
and only then renamed over the target. A crash at any moment leaves the old file or the new one.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from fmnist.errors import FmnistError
from fmnist.faults import kill_point


class WriteError(FmnistError):
    """A file or folder cannot be written (read-only, no permission, disk full)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    try:
        handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from None
    try:
        # mkstemp creates the file 0600; give it the permissions a plain open() would.
        os.chmod(temp_name, 0o666 & ~current_umask())
        with os.fdopen(handle, "wb") as temp_file:
            temp_file.write(data)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        kill_point(f"write-{path.name}")  # test-only: a SIGKILL with the new file written, not yet in place
        os.replace(temp_name, path)
    except BaseException as error:
        Path(temp_name).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None:  # a full disk: name the file it hit
            raise OSError(error.errno, error.strerror, str(path)) from None
        raise


def atomic_torch_save(value, path: Path) -> None:
    """torch.save `value` to `path` atomically: serialized in memory, then written as above."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, value) -> None:
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def check_writable(folder: Path, what: str) -> None:
    """Fail now, in one line, if `folder` cannot take new files (read-only media, permissions, a full
    disk): better than after an epoch of training."""
    folder = Path(folder)
    try:
        handle, name = tempfile.mkstemp(dir=folder, prefix=".fmnist-write-test.", suffix=".tmp")
        os.close(handle)
        os.unlink(name)
    except OSError as error:
        raise WriteError(f"{what} {folder}: cannot write there ({error.strerror or error}); "
                         "choose a writable folder") from None


class FolderLocked(FmnistError):
    """Another process is writing into the same run or sweep folder."""


@contextmanager
def exclusive_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (its .lock file) for as long as the block runs.

    Two processes training into one run folder would overwrite each other's checkpoints; the second
    one gets a one-line error instead. The lock is the kernel's (flock), so it is released when its
    holder exits, even by SIGKILL: a stale .lock file never blocks anyone.
    """
    lock_path = Path(folder) / ".lock"
    try:
        handle = open(lock_path, "a+")  # held open, and locked, for the whole block
    except OSError as error:
        raise WriteError(f"{what} {folder}: cannot write there ({error.strerror or error})") from None
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise FolderLocked(f"{what} {folder}: {holder} is using it right now; wait for it to finish "
                               "or stop it first") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"fmnist process {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.close()


@contextmanager
def reader_lock(folder: Path, what: str) -> Iterator[None]:
    """Read `folder` only while no process holds its exclusive lock (a run training or being resumed).

    A shared flock on the existing .lock file: readers never block each other, write nothing, and
    work in a read-only folder; a folder that has never been locked has no writer to wait for.
    """
    lock_path = Path(folder) / ".lock"
    try:
        handle = open(lock_path)
    except OSError:
        yield
        return
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read().strip() or "another process"
            raise FolderLocked(f"{what} {folder}: {holder} is using it right now; wait for it to finish "
                               "or stop it first") from None
        yield
