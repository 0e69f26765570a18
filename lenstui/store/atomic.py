"""The one atomic writer: a file is either the old one or the whole new one, never half.

The bytes go to a temporary file in the same folder (so the rename stays on one file
system), are flushed to disk, then ``os.replace`` the target in one step. A crash or a
full disk mid-write leaves the old file as it was (and no temporary file behind). An
existing file keeps its permission bits.

``atomic_file(path)`` is the same as a context manager, for writers that want a file
object (``numpy.savez``); ``write_bytes_atomic`` / ``write_text_atomic`` for data in hand.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator, Union


@contextlib.contextmanager
def atomic_file(path: Union[str, Path]) -> Iterator[BinaryIO]:
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = None
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_bytes_atomic(path: Union[str, Path], data: bytes) -> Path:
    with atomic_file(path) as handle:
        handle.write(data)
    return Path(path)


def write_text_atomic(path: Union[str, Path], text: str, encoding: str = "utf-8") -> Path:
    return write_bytes_atomic(path, text.encode(encoding))
