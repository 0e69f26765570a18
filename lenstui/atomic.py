"""Write a file so that it is either the old one or the whole new one, never half.

The text goes to a temporary file in the same folder (so the rename stays on one file
system), is flushed to disk, then ``os.replace``s the target in one step. A crash or a
full disk mid-write leaves the old file as it was (and no temporary file behind).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union


def write_bytes_atomic(path: Union[str, Path], data: bytes) -> Path:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_text_atomic(path: Union[str, Path], text: str, encoding: str = "utf-8") -> Path:
    return write_bytes_atomic(path, text.encode(encoding))
