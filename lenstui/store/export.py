"""Saving what the explorer shows: the lens grid as JSON, the screen as SVG.

The JSON is the same shape as ``lenstui lens --json`` (``LensResult.to_json``); the SVG
is Textual's own screenshot, for slides. Both are written atomically (a temporary file,
then a rename), so a crash or a full disk never leaves half a file.

Names sort by time, ``lenstui-YYYYmmdd-HHMMSS``; a second export in the same second (or
another lenstui process's) gets ``-2``, ``-3``...: :func:`reserve_stem` claims the
names with exclusive creates, so two writers never pick the same one.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import Iterable, Optional

from lenstui.store.atomic import write_text_atomic


def export_dir(configured: Optional[str]) -> Path:
    """Where exports go: the configured export_dir, else the current dir if writable,
    else the data dir's ``exports`` (created as needed)."""
    if configured:
        folder = Path(configured).expanduser()
    elif os.access(os.getcwd(), os.W_OK):
        folder = Path.cwd()
    else:
        from lenstui.store.paths import data_dir

        folder = data_dir() / "exports"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def export_stem() -> str:
    """A file name stem that sorts by time: ``lenstui-YYYYmmdd-HHMMSS``."""
    return time.strftime("lenstui-%Y%m%d-%H%M%S")


def reserve_stem(folder: Path, suffixes: Iterable[str] = (".json", ".svg")) -> str:
    """A stem no file in ``folder`` has with any of ``suffixes``, claimed by creating
    those files empty (``O_EXCL``: another process cannot claim the same); the writers
    then replace them. ``release`` removes the claim of a write that failed."""
    suffixes = tuple(suffixes)
    base = export_stem()
    for n in itertools.count(1):
        stem = base if n == 1 else f"{base}-{n}"
        claimed: list[Path] = []
        try:
            for suffix in suffixes:
                path = folder / f"{stem}{suffix}"
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                claimed.append(path)
        except FileExistsError:
            for path in claimed:
                release(path)
            continue
        return stem
    raise AssertionError("unreachable")


def release(path: Path) -> None:
    """Remove a claimed name that was never written (an empty file), so a failed export
    leaves no 0-byte file behind."""
    try:
        if path.stat().st_size == 0:
            path.unlink()
    except OSError:
        pass


def _write_claimed(path: Path, text: str) -> Path:
    try:
        return write_text_atomic(path, text)
    except BaseException:
        release(path)
        raise


def save_json(result, folder: Path, stem: Optional[str] = None) -> Path:
    """Write a LensResult's JSON into ``folder`` (as ``stem``.json, claimed by
    :func:`reserve_stem`, default: a new stem); returns the path."""
    stem = stem or reserve_stem(folder, (".json",))
    return _write_claimed(folder / f"{stem}.json", json.dumps(result.to_json(), ensure_ascii=False))


def save_svg(svg: str, folder: Path, stem: Optional[str] = None) -> Path:
    """Save a screenshot (Textual's ``export_screenshot()`` text) into ``folder``; returns the path."""
    stem = stem or reserve_stem(folder, (".svg",))
    return _write_claimed(folder / f"{stem}.svg", svg)
