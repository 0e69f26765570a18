"""Saving what the explorer shows: the lens grid as JSON, the screen as SVG.

The JSON is the same shape as ``lenstui lens --json`` (``LensResult.to_json``); the SVG
is Textual's own screenshot, for slides. Both are written atomically (a temporary file,
then a rename), so a crash or a full disk never leaves half a file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

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


def save_json(result, folder: Path) -> Path:
    """Write a LensResult's JSON into ``folder``; returns the path."""
    path = folder / f"{export_stem()}.json"
    write_text_atomic(path, json.dumps(result.to_json(), ensure_ascii=False))
    return path


def save_svg(svg: str, folder: Path) -> Path:
    """Save a screenshot (Textual's ``export_screenshot()`` text) into ``folder``; returns the path."""
    return write_text_atomic(folder / f"{export_stem()}.svg", svg)
