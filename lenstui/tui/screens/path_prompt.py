"""Typing a path: a one-line input over the explorer (the palette's "lens: load a tuned
lens folder…", "lens: evaluate on a text file…"). Dismisses with the path typed, ``~``
expanded (None on Escape or nothing typed); whether it is a lens is the worker's to say."""

from __future__ import annotations

import os
from typing import Optional

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static
from lenstui.tui.safety import Guarded


class PathPrompt(Guarded, ModalScreen[Optional[str]]):
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="path.cancel")]
    DEFAULT_CSS = """
    PathPrompt { align: center middle; }
    PathPrompt > Vertical {
        width: 76; max-width: 100%; height: auto; padding: 0 1;
        background: $panel; border: round $accent;
    }
    PathPrompt Static { color: $text-muted; }
    """

    def __init__(self, label: str, placeholder: str = "", *, value: str = "", path: bool = True) -> None:
        super().__init__()
        self.label = label
        self.placeholder = placeholder
        self.value = value
        self.path = path  # False: any one-line text (a Patchscope target), ``~`` kept

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.label)
            yield Input(self.value, placeholder=self.placeholder, id="path-input")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip() if self.path else event.value
        if not text.strip():
            self.dismiss(None)
        else:
            self.dismiss(os.path.expanduser(text) if self.path else text)

    def action_cancel(self) -> None:
        self.dismiss(None)
