"""Typing a token to pin: a one-line input over the explorer (palette "pin: type a token").

Accepts what ``lenstui lens --track`` accepts: a token's text (`` sea`` with its leading
space), a vocabulary piece (``ĠðŁ``) or ``#ID`` (``#15107``). The lens run resolves it; a
token that does not resolve is dropped again with the engine's one-sentence reason.
"""

from __future__ import annotations

from typing import Optional, Union

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from lenstui.tui.safety import Guarded


def typed_pin(text: str) -> Optional[Union[int, str]]:
    """What was typed, as a pin: ``#15107`` -> 15107, else the text itself (spaces kept:
    `` sea`` is a different token from ``sea``). Empty -> None."""
    if not text.strip():
        return None
    stripped = text.strip()
    if stripped.startswith("#") and stripped[1:].isdigit():
        return int(stripped[1:])
    return text


class PinPrompt(Guarded, ModalScreen[Optional[Union[int, str]]]):
    """Dismisses with the pin typed (None on Escape or nothing typed)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="pin.cancel")]
    DEFAULT_CSS = """
    PinPrompt { align: center middle; }
    PinPrompt > Vertical {
        width: 60; max-width: 100%; height: auto; padding: 0 1;
        background: $panel; border: round $accent;
    }
    PinPrompt Static { color: $text-muted; }
    """

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Pin a token: its text (leading space counts), a piece like ĠðŁ, or #ID")
            yield Input(placeholder=" sea", id="pin-input")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(typed_pin(event.value))

    def action_cancel(self) -> None:
        self.dismiss(None)
