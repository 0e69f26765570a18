"""Typing a path: a one-line input over the explorer (the palette's "lens: load a tuned
lens folder…", "lens: evaluate on a text file…"). Dismisses with the path typed, ``~``
expanded (None on Escape or nothing typed); whether it is a lens is the worker's to say."""

from __future__ import annotations

import os
from typing import Optional

from textual.binding import Binding

from lenstui.tui.screens.line_prompt import LinePrompt


class PathPrompt(LinePrompt):
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="path.cancel")]
    INPUT_ID = "path-input"

    def read(self, text: str) -> Optional[str]:
        text = text.strip()
        return os.path.expanduser(text) if text else None
