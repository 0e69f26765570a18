"""The prompt pane: one-line input, debounced runs as you type, history, presets.

It only says *what* to run (``PromptPane.Run``); the app decides how (chat template,
generation steps) and the worker does the tokenizing.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Optional

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Input, Static

from lenstui.store.history import PromptHistory
from lenstui.tui.safety import Guarded


@dataclass(frozen=True)
class Preset:
    name: str
    text: str
    chat: bool


# From the seeds: the seahorse-emoji story (asked as the assistant, so the chat
# template is on), nostalgebraist's "plasma" repetition prompt, and the classic
# factual recall prompt.
PRESETS = (
    Preset("seahorse", "Is there a seahorse emoji?", True),
    Preset(
        "plasma",
        "Sometimes, when people say plasma, they mean a state of matter. Other times, when people say plasma",
        False,
    ),
    Preset("eiffel", "The Eiffel Tower is located in the city of", False),
    Preset("repeat", "i love plasma i love plasma i love plasma i love", False),
)


class PromptInput(Guarded, Input):
    """An Input whose up/down walk the prompt history."""

    BINDINGS = [
        Binding("up", "history(-1)", "Earlier prompt", id="prompt.history_back", show=False),
        Binding("down", "history(1)", "Later prompt", id="prompt.history_forward", show=False),
    ]

    def __init__(self, history: PromptHistory, **kwargs) -> None:
        super().__init__(**kwargs)
        self.history = history
        self._browse: Optional[int] = None  # index into history while walking it
        self._draft = ""

    async def _on_key(self, event: events.Key) -> None:
        # Textual inserts a printable key here at once, but runs a key's *bindings*
        # (backspace, delete, arrows, Enter, and the app's ^n/^b...) only after the Key
        # event has bubbled up to the App, one message queue per ancestor. Keys that
        # arrive together (the UI thread was busy, a fast typist, a terminal
        # multiplexer) were then applied out of order: Backspaces typed before
        # "Germany" deleted its end instead. So the bindings of the focused chain run
        # here, in the order the keys came. (Input._on_key runs after this for
        # printable keys; prevent_default stops it and the bubbling otherwise.)
        if event.is_printable:
            return
        if await self.app._check_bindings(event.key):
            event.stop()
            event.prevent_default()
        elif event.character and unicodedata.category(event.character) == "Cf":
            # Zero-width joiners and direction marks are text (emoji sequences, Arabic,
            # Hebrew), but str.isprintable() says no, so Input would drop them.
            event.stop()
            event.prevent_default()
            self.insert_text_at_cursor(event.character)

    def action_history(self, step: int) -> None:
        entries = self.history.entries
        if not entries:
            return
        if self._browse is None:
            if step > 0:
                return
            self._draft = self.value
            index = len(entries) - 1
        else:
            index = self._browse + step
        if index >= len(entries):
            self._browse = None
            self.value = self._draft
        else:
            self._browse = max(0, index)
            self.value = entries[self._browse]
        self.cursor_position = len(self.value)

    def forget_browsing(self) -> None:
        self._browse = None


class PromptPane(Guarded, Vertical):
    DEFAULT_CSS = """
    PromptPane {
        height: auto;
        padding: 0 1;
        background: $panel;
        #prompt-row { height: 1; }
        #prompt-mark { width: 2; color: $accent; text-style: bold; }
        #prompt-input {
            border: none;
            height: 1;
            width: 1fr;
            padding: 0 1;
            background: $boost;
            &:focus { background: $surface; }
        }
        #prompt-info { height: 1; color: $text-muted; }
    }
    """

    class Run(Message):
        """Run the lens on this text (``immediate``: Enter or a preset, not typing)."""

        def __init__(self, text: str, immediate: bool) -> None:
            super().__init__()
            self.text = text
            self.immediate = immediate

    def __init__(self, *, debounce_ms: int = 350, history: Optional[PromptHistory] = None, id=None) -> None:
        super().__init__(id=id)
        self.debounce = debounce_ms / 1000
        self.history = history if history is not None else PromptHistory()
        self._timer: Optional[Timer] = None
        self._quiet_value: Optional[str] = None
        self._info: Optional[str] = None  # the info line's text, as last shown

    def compose(self) -> ComposeResult:
        with Horizontal(id="prompt-row"):
            yield Static("❯", id="prompt-mark")
            yield PromptInput(
                self.history,
                id="prompt-input",
                placeholder="Type a prompt · Enter runs · ↑↓ history · F2 presets",
            )
        yield Static("", id="prompt-info", markup=False)

    @property
    def input(self) -> PromptInput:
        return self.query_one(PromptInput)

    @property
    def text(self) -> str:
        return self.input.value

    def set_text(self, text: str) -> None:
        """Replace the text without a debounced run (the caller runs it)."""
        self._cancel_timer()
        if self.input.value != text:
            self._quiet_value = text  # its Input.Changed arrives later: skip that one
            self.input.value = text
        self.input.cursor_position = len(text)

    @property
    def debounce_pending(self) -> bool:
        """Whether a debounced Run is on its way (typing stopped less than the pause ago)."""
        return self._timer is not None

    def show_info(self, text: str) -> None:
        if text != self._info:  # every step and run asks; most change nothing
            self._info = text
            # One line high by CSS: a new text never moves anything, so no screen-wide layout.
            self.query_one("#prompt-info", Static).update(text, layout=False)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def on_input_changed(self, event: Input.Changed) -> None:
        # Not stopped: the app hears it too and knows a debounced run is on its way.
        if self._quiet_value is not None and event.value == self._quiet_value:
            self._quiet_value = None
            return
        self._quiet_value = None
        self._cancel_timer()
        self._timer = self.set_timer(self.debounce, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.post_message(self.Run(self.text, immediate=False))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._cancel_timer()
        self.input.forget_browsing()
        self.history.add(event.value)
        self.post_message(self.Run(event.value, immediate=True))
