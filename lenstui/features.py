"""The token inspector and speakability panes, wired to the worker (UI thread).

The app composes them into ``#inspector`` and ``#speak``. They react to the grid's
cursor (``TokenFocused``, forwarded by the app), submit requests through
``app.submit(..., reply_to=self)`` and render the ``WorkerReply`` they get back; the
handlers for those requests live in ``lenstui.handlers``. They never reach back into
the app's state: what they need is handed to them (``WiredInspector.prompt_ids``),
and what the app should know they post (``WiredSpeak.ScanMarked``).
"""

from __future__ import annotations

from typing import Optional

from textual.content import Content
from textual.message import Message
from textual.widgets import Static

from lenstui.engine.verdicts import Verdict
from lenstui.handlers import InspectReply, ScanMarks
from lenstui.widgets.events import ModelLoaded, TokenFocused
from lenstui.widgets.inspector import InspectorPane
from lenstui.widgets.speak import SpeakPane
from lenstui.worker import CheckSpeakable, Done, Failed, InspectToken, Progress, ScanVocabulary, Stopped

INSPECT_NEIGHBORS = 12


class WiredInspector(InspectorPane):
    """The inspector pane, following the grid's cursor."""

    marks: Optional[ScanMarks] = None
    # The ids of the prompt the grid shows (set by the app when a lens result lands):
    # the inspector joins them into characters under the report.
    prompt_ids: Optional[tuple[int, ...]] = None

    def on_token_focused(self, message: TokenFocused) -> None:
        self.inspect(message.cell.token_id, message.cell.position)

    def forget_model(self) -> None:
        """Another model was loaded: the shown report and marks were about the old one."""
        self.marks = None
        self.prompt_ids = None
        self.border_subtitle = ""
        self.show_message("Select a prompt token or a grid cell to inspect it.")
        self.show_sequence(None)

    def inspect(self, token_id: int, position: Optional[int] = None) -> None:
        sequence = self.prompt_ids
        selected = position if sequence is not None else None
        self.app.submit(InspectToken(token_id, INSPECT_NEIGHBORS, sequence, selected), reply_to=self)

    def on_worker_reply(self, message) -> None:
        result = message.result
        if isinstance(result, Done):
            reply: InspectReply = result.value
            self.show_report(reply.report)
            self.show_sequence(reply.sequence, reply.selected)
            self._show_scan_mark(reply.report.id)
        elif isinstance(result, Failed):
            self.show_message(result.message, error=True)

    def _show_scan_mark(self, token_id: int) -> None:
        marks = self.marks
        if marks is None:
            self.border_subtitle = ""
        elif token_id in marks.unspeakable:
            self.border_subtitle = "† unspeakable (vocabulary scan)"
        elif token_id in marks.hard_to_speak:
            self.border_subtitle = f"° {marks.hard_rule} (vocabulary scan)"
        else:
            self.border_subtitle = "speakable (vocabulary scan)" if marks.complete else ""


class WiredSpeak(SpeakPane):
    """The speakability pane: shows the cursor's token, runs checks and scans on request."""

    class ScanMarked(Message):
        """A vocabulary scan landed: the app marks its tokens in the grid and panes."""

        def __init__(self, marks: ScanMarks) -> None:
            super().__init__()
            self.marks = marks

    marks: Optional[ScanMarks] = None

    def on_token_focused(self, message: TokenFocused) -> None:
        if self.has_class("-running") and self.token_id is not None:
            return  # a check is running: keep showing its progress
        cell = message.cell
        self.show_token(cell.token_id, cell.text, known_verdict=self.known_verdict(cell.token_id))

    def on_model_loaded(self, message: ModelLoaded) -> None:
        # A scan cached earlier for this model lights up the grid's marks at once.
        self.app.submit(ScanVocabulary(cached_only=True), reply_to=self)

    def forget_model(self) -> None:
        """Another model was loaded: its verdicts and scan are not this one's."""
        self.marks = None
        self.token_id, self.token_text, self.verdict = None, "", None
        self._set_running(False)
        self.remove_class("-error")
        self.query_one("#speak-title", Static).update("speakability")
        self._body(Content("Select a token to check whether the model can say it."))
        self._hint("")
        self.query_one("#speak-scan", Static).update("")

    def known_verdict(self, token_id: int) -> Optional[str]:
        marks = self.marks
        if marks is None:
            return None
        if token_id in marks.unspeakable:
            return Verdict.UNSPEAKABLE.value
        if marks.complete:
            hard = " (hard to speak)" if token_id in marks.hard_to_speak else ""
            return Verdict.SPEAKABLE.value + hard
        return None

    def check(self, token_id: int, text: str) -> None:
        self.show_running(token_id, text)
        self.app.submit(CheckSpeakable(token_id), reply_to=self)

    def scan(self) -> None:
        self.show_scan_progress("starting", 0.0)
        self.app.submit(ScanVocabulary(), reply_to=self)

    def on_worker_reply(self, message) -> None:
        result = message.result
        if isinstance(result.request, ScanVocabulary):
            self._on_scan_reply(result)
            return
        if isinstance(result, Progress):
            self.show_progress(result.message, result.fraction)
        elif isinstance(result, Done):
            self.show_result(result.value)
        elif isinstance(result, Failed):
            self.show_error(result.message)
        elif isinstance(result, Stopped):
            self.show_cancelled()

    def _on_scan_reply(self, result) -> None:
        if isinstance(result, Progress):
            self.show_scan_progress(result.message, result.fraction)
        elif isinstance(result, Done) and result.value is not None:
            marks: ScanMarks = result.value
            self.show_scan(marks.scan)
            self.post_message(self.ScanMarked(marks))
        elif isinstance(result, Stopped):
            self.show_scan_progress("stopped", None)
        elif isinstance(result, Failed):
            self.show_scan_progress(f"failed: {result.message}", None)

