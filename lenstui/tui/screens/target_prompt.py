"""Typing the Patchscope's target prompt: a one-line input over the explorer, holding the
current target to edit (``\\n`` stands for a line break; the caller reads it back)."""

from __future__ import annotations

from typing import Optional

from textual.binding import Binding

from lenstui.tui.screens.line_prompt import LinePrompt


class TargetPrompt(LinePrompt):
    """Dismisses with the text typed, spaces kept (a target's spaces are tokens); None on
    Escape or when nothing but spaces was typed."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="target.cancel")]
    INPUT_ID = "target-input"

    def read(self, text: str) -> Optional[str]:
        return text if text.strip() else None
