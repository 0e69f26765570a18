"""Typing a token to pin: a one-line input over the explorer (palette "pin: type a token").

Accepts what ``lenstui lens --track`` accepts: a token's text (`` sea`` with its leading
space), a vocabulary piece (``ĠðŁ``) or ``#ID`` (``#15107``). The lens run resolves it; a
token that does not resolve is dropped again with the engine's one-sentence reason.
"""

from __future__ import annotations

from typing import Optional, Union

from textual.binding import Binding

from lenstui.tui.screens.line_prompt import LinePrompt


def typed_pin(text: str) -> Optional[Union[int, str]]:
    """What was typed, as a pin: ``#15107`` -> 15107, else the text itself (spaces kept:
    `` sea`` is a different token from ``sea``). Empty -> None."""
    if not text.strip():
        return None
    stripped = text.strip()
    if stripped.startswith("#") and stripped[1:].isdigit():
        return int(stripped[1:])
    return text


class PinPrompt(LinePrompt):
    """Dismisses with the pin typed (None on Escape or nothing typed)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="pin.cancel")]
    WIDTH = 60
    INPUT_ID = "pin-input"

    def __init__(self) -> None:
        super().__init__("Pin a token: its text (leading space counts), a piece like ĠðŁ, or #ID", " sea")

    def read(self, text: str) -> Optional[Union[int, str]]:
        return typed_pin(text)
