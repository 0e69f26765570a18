"""Wires the token inspector and the speakability panes into the explorer (UI thread).

The panes (``WiredInspector``, ``WiredSpeak``) react to the grid's cursor
(``TokenFocused``), submit requests through ``app.submit(..., reply_to=self)`` and
render the ``WorkerReply`` they get back; their handlers live in ``lenstui.handlers``.

``install(app)`` registers the handlers and mounts the panes into ``#inspector`` and
``#speak``; the app calls it from ``on_mount``.
"""

from __future__ import annotations

from typing import Optional

from lenstui.handlers import APP_HANDLERS, InspectReply, ScanMarks
from lenstui.widgets.events import ModelLoaded, TokenFocused
from lenstui.widgets.inspector import InspectorPane
from lenstui.widgets.speak import SpeakPane
from lenstui.worker import CheckSpeakable, Done, Failed, InspectToken, Progress, ScanVocabulary, Stopped

INSPECT_NEIGHBORS = 12


class WiredInspector(InspectorPane):
    """The inspector pane, following the grid's cursor."""

    marks: Optional[ScanMarks] = None

    def on_token_focused(self, message: TokenFocused) -> None:
        self.inspect(message.cell.token_id, message.cell.position)

    def inspect(self, token_id: int, position: Optional[int] = None) -> None:
        result = getattr(self.app, "shown_result", None)
        sequence = tuple(result.token_ids) if result is not None else None
        selected = position if result is not None else None
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
            self.border_subtitle = "° hard to speak (vocabulary scan)"
        else:
            self.border_subtitle = "speakable (vocabulary scan)" if marks.complete else ""


class WiredSpeak(SpeakPane):
    """The speakability pane: shows the cursor's token, runs checks and scans on request."""

    marks: Optional[ScanMarks] = None

    def on_token_focused(self, message: TokenFocused) -> None:
        if self.has_class("-running") and self.token_id is not None:
            return  # a check is running: keep showing its progress
        cell = message.cell
        self.show_token(cell.token_id, cell.text, known_verdict=self.known_verdict(cell.token_id))

    def on_model_loaded(self, message: ModelLoaded) -> None:
        # A scan cached earlier for this model lights up the grid's marks at once.
        self.app.submit(ScanVocabulary(cached_only=True), reply_to=self)

    def known_verdict(self, token_id: int) -> Optional[str]:
        marks = self.marks
        if marks is None:
            return None
        if token_id in marks.unspeakable:
            return "unspeakable"
        if marks.complete:
            hard = " (hard to speak)" if token_id in marks.hard_to_speak else ""
            return "speakable" + hard
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
            self.app.set_scan_marks(marks)
        elif isinstance(result, Stopped):
            self.show_scan_progress("stopped", None)
        elif isinstance(result, Failed):
            self.show_scan_progress(f"failed: {result.message}", None)


def install(app) -> tuple[WiredInspector, WiredSpeak]:
    for kind, handler in APP_HANDLERS.items():
        app.register_handler(kind, handler)
    inspector = WiredInspector(id="inspector-pane")
    inspector.show_timings = app.show_timings
    speak = WiredSpeak(show_timings=app.show_timings, id="speak-pane")
    app.mount_pane("inspector", inspector)
    app.mount_pane("speak", speak)
    return inspector, speak
