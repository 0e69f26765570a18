"""The one atomic writer: a file is either the old one or the whole new one, never half.

The bytes go to a temporary file in the same folder (so the rename stays on one file
system), are flushed to disk, then ``os.replace`` the target in one step, and the folder
is synced so the rename itself survives a power cut. A crash or a full disk mid-write
leaves the old file as it was (and no temporary file behind).

- An existing file keeps its permission bits; a new one gets the umask's mode
  (``0o666 & ~umask``, as ``open()`` would), not ``mkstemp``'s private 0600, unless the
  caller asks for a ``mode``.
- A path that is a symbolic link writes the file the link points to (the link stays a
  link): a talk file kept in a dotfiles folder and linked from elsewhere stays shared.
- Two processes writing the same file at once each write a whole file under their own
  temporary name; the last rename wins and a reader never sees a mix. Writers that must
  merge (the history, the GGUF digest memo) hold :func:`file_lock` around read-merge-write.

``atomic_file(path)`` is the same as a context manager, for writers that want a file
object (``numpy.savez``); ``write_bytes_atomic`` / ``write_text_atomic`` for data in hand.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Iterator, Optional, Union

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:  # elsewhere: set and restore (briefly process-wide, hence the lock)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def target_of(path: Union[str, Path]) -> Path:
    """Where a write to ``path`` should land: the file a symbolic link points to (its
    whole chain resolved), else ``path`` itself."""
    path = Path(path)
    if path.is_symlink():
        return Path(os.path.realpath(path))
    return path


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder; the file itself was synced
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Union[str, Path], mode: Optional[int] = None) -> Iterator[BinaryIO]:
    """Write ``path`` in one step (see the module doc). ``mode``: the new file's
    permission bits (default: an existing file's, else the umask's)."""
    path = target_of(path)
    folder = path.parent if str(path.parent) else Path(".")
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o666 & ~current_umask()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _sync_folder(folder)


def write_bytes_atomic(path: Union[str, Path], data: bytes, mode: Optional[int] = None) -> Path:
    with atomic_file(path, mode=mode) as handle:
        handle.write(data)
    return Path(path)


def write_text_atomic(path: Union[str, Path], text: str, encoding: str = "utf-8", mode: Optional[int] = None) -> Path:
    return write_bytes_atomic(path, text.encode(encoding), mode=mode)


@contextlib.contextmanager
def file_lock(path: Union[str, Path], timeout: float = 10.0) -> Iterator[bool]:
    """Hold an exclusive advisory lock on ``path + ".lock"`` (created as needed) for a
    read-merge-write of ``path`` shared with other lenstui processes. Yields True when
    locked; False when the lock could not be had (no ``fcntl``, an unwritable folder, or
    ``timeout`` seconds passed): the caller then goes on unlocked (last writer wins,
    still whole), because a lock must never cost the user their data or the session."""
    lock_path = Path(str(target_of(path)) + ".lock")
    try:
        import fcntl
    except ImportError:  # not on POSIX
        yield False
        return
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
    except OSError:
        yield False
        return
    import time

    locked = False
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.02)
            except OSError:
                break
        yield locked
    finally:
        if locked:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            except OSError:
                pass
        os.close(fd)
