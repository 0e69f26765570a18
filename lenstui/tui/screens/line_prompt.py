"""A one-line prompt over the explorer: a sentence, an input; Enter dismisses with what
was typed (as the subclass reads it), Escape with None. ``PathPrompt`` (a file or folder),
``PinPrompt`` (a token to pin) and ``TargetPrompt`` (the Patchscope's target) are its uses."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from lenstui.tui.safety import Guarded


class LinePrompt(Guarded, ModalScreen):
    DEFAULT_CSS = """
    LinePrompt { align: center middle; }
    LinePrompt > Vertical {
        max-width: 100%; height: auto; padding: 0 1;
        background: $panel; border: round $accent;
    }
    LinePrompt Static { color: $text-muted; }
    """
    WIDTH = 76  # the box's columns (at most the screen's)
    INPUT_ID = "line-input"

    def __init__(self, label: str, placeholder: str = "", *, value: str = "") -> None:
        super().__init__()
        self.label = label
        self.placeholder = placeholder
        self.value = value  # the text the input starts with (to edit rather than retype)

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.styles.width = self.WIDTH
            yield Static(self.label)
            yield Input(self.value, placeholder=self.placeholder, id=self.INPUT_ID)

    def read(self, text: str) -> Any:
        """What the prompt dismisses with for ``text`` as typed (None: nothing)."""
        return text or None

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(self.read(event.value))

    def action_cancel(self) -> None:
        self.dismiss(None)
