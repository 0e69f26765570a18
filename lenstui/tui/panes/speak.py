"""The speakability pane: one token's verdict with its proof, a running check's progress
(with how to cancel it), and a summary of the vocabulary scan.

Pure rendering: it is handed SpeakResult / ScanResult summaries (plain ids, floats and
strings) and progress numbers, and never touches tensors or the model. ``WiredSpeak`` wires it to the worker: on the check key it submits ``CheckSpeakable``
(handler ``lenstui.jobs.handlers.speak_handler``) and shows the replies; a vocabulary scan
that lands is posted to the app as ``WiredSpeak.ScanMarked``.
"""

from __future__ import annotations

from typing import Optional

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.message import Message
from textual.widgets import ProgressBar, Static

from lenstui.core.scan_result import ScanMarks
from lenstui.core.textfmt import aim_lines, visible
from lenstui.core.verdicts import DECIDED, Method, Verdict
from lenstui.core.undertrained_result import UndertrainedMarks
from lenstui.jobs.protocol import (
    CheckSpeakable,
    Done,
    Failed,
    FindUndertrained,
    Progress,
    SampleShares,
    ScanVocabulary,
    Stopped,
)
from lenstui.tui.host import explorer
from lenstui.tui.safety import Guarded
from lenstui.tui.widgets.events import ModelLoaded, TokenFocused

VERDICT_STYLE = {
    Verdict.SPEAKABLE: "bold $success",
    Verdict.UNSPEAKABLE: "bold $error",
    Verdict.UNDETERMINED: "bold $warning",
}
# Competitors / certificate tokens listed at most.
MAX_LISTED = 6


def _token(token_id: int, text: str) -> Content:
    return Content.assemble((visible(text), "bold"), (f" #{token_id}", "$text-muted"))


class SpeakPane(Guarded, Vertical):
    """Verdict, gap or certificate summary, binding competitors, time; progress + cancel hint."""

    DEFAULT_CSS = """
    SpeakPane {
        height: auto;
        padding: 0 1;
        background: $surface;
        & > #speak-title { color: $text; text-style: bold; }
        & > #speak-progress { display: none; height: 1; }
        & > #speak-hint { color: $text-muted; }
        & > #speak-body { color: $text; }
        & > #speak-scan { color: $text-muted; margin-top: 1; }
        & > #speak-undertrained { color: $text-muted; }
        & > #speak-undertrained.-empty { display: none; }
        &.-running > #speak-progress { display: block; }
        &.-error > #speak-body { color: $error; }
    }
    """

    def __init__(
        self,
        *,
        check_key: str = "s",
        cancel_key: str = "x",
        show_timings: bool = True,
        id: Optional[str] = None,
        classes: Optional[str] = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.check_key = check_key
        self.cancel_key = cancel_key
        self.show_timings = show_timings
        self.token_id: Optional[int] = None
        self.token_text = ""
        self.verdict: Optional[str] = None  # the last shown verdict (tests and the app read it)
        self.aim: Optional[dict] = None  # the last shown result's aim measure (the aim view reads it)
        self.undertrained: Optional[UndertrainedMarks] = None  # verified under-trained tokens, once found
        self._shown: dict[str, Content] = {}  # what each line of the pane says now (``_show``)

    def compose(self) -> ComposeResult:
        yield Static("speakability", id="speak-title", markup=False)
        yield ProgressBar(total=1.0, show_eta=False, id="speak-progress")
        yield Static("", id="speak-hint", markup=False)
        yield Static("Select a token to check whether the model can say it.", id="speak-body", markup=False)
        yield Static("", id="speak-scan", markup=False)
        yield Static("", id="speak-undertrained", markup=False, classes="-empty")

    # -- what the app calls -------------------------------------------------

    def show_token(self, token_id: int, text: str, known_verdict: Optional[str] = None) -> None:
        """A token is selected, not yet checked (``known_verdict`` from a cached scan)."""
        self.token_id, self.token_text, self.verdict, self.aim = token_id, text, None, None
        self._set_running(False)
        self.remove_class("-error")
        self._title(token_id, text)
        body = [Content(f"Press {self.check_key} to check whether the model can say it.")]
        if known_verdict:
            body.insert(0, Content.assemble("vocabulary scan: ", (known_verdict, VERDICT_STYLE.get(known_verdict, ""))))
        self._body(Content("\n").join(body))
        self._hint("")

    def show_running(self, token_id: int, text: str) -> None:
        self.token_id, self.token_text, self.verdict, self.aim = token_id, text, None, None
        self.remove_class("-error")
        self._title(token_id, text)
        self._set_running(True)
        self.query_one("#speak-progress", ProgressBar).update(progress=0.0)
        self._body(Content("checking…"))
        self._hint(f"press {self.cancel_key} to cancel")

    def show_progress(self, message: str, fraction: Optional[float]) -> None:
        self._set_running(True)
        if fraction is not None:
            self.query_one("#speak-progress", ProgressBar).update(progress=max(0.0, min(1.0, fraction)))
        self._body(Content(message or "checking…"))
        self._hint(f"press {self.cancel_key} to cancel")

    def show_result(self, result) -> None:
        """Render a ``lenstui.engine.speak.check.SpeakResult``."""
        self.token_id, self.token_text, self.verdict = result.id, result.text, result.verdict
        self.aim = getattr(result, "aim", None)
        self._set_running(False)
        self.remove_class("-error")
        self._title(result.id, result.text)
        self._body(render_result(result, show_timings=self.show_timings))
        self._hint("")

    def show_error(self, message: str) -> None:
        self._set_running(False)
        self.add_class("-error")
        self._body(Content(message))
        self._hint(f"press {self.check_key} to try again")

    def show_cancelled(self) -> None:
        self._set_running(False)
        self._body(Content("check cancelled"))
        self._hint(f"press {self.check_key} to run it again")

    def show_scan_progress(self, message: str, fraction: Optional[float]) -> None:
        percent = f"{fraction * 100:.0f}% " if fraction is not None else ""
        self.query_one("#speak-scan", Static).update(
            Content(f"vocabulary scan {percent}{message} (press {self.cancel_key} to stop; it resumes later)")
        )

    def show_scan(self, scan) -> None:
        """Summarize a ``lenstui.engine.speak.scan.ScanResult`` (counts only)."""
        self.query_one("#speak-scan", Static).update(render_scan_summary(scan, show_timings=self.show_timings))

    def show_undertrained_progress(self, message: str, fraction: Optional[float]) -> None:
        percent = f"{fraction * 100:.0f}% " if fraction is not None else ""
        line = self.query_one("#speak-undertrained", Static)
        line.update(Content(f"under-trained tokens {percent}{message} (press {self.cancel_key} to stop; it resumes later)"))
        line.remove_class("-empty")

    def show_undertrained(self, marks: Optional[UndertrainedMarks]) -> None:
        """Keep and summarize an under-trained run's marks (None: the model changed)."""
        self.undertrained = marks
        node = self.query_one("#speak-undertrained", Static)
        node.update(Content("") if marks is None else Content.assemble(("‡ ", "$warning"), marks.summary()))
        node.set_class(marks is None, "-empty")  # no line at all until there is something to say

    # -- internals ----------------------------------------------------------

    def _set_running(self, running: bool) -> None:
        self.set_class(running, "-running")

    def _title(self, token_id: int, text: str) -> None:
        self._show("#speak-title", Content.assemble("speakability of ", _token(token_id, text)))

    def _body(self, content: Content) -> None:
        self._show("#speak-body", content)

    def _hint(self, text: str) -> None:
        self._show("#speak-hint", Content(text))

    def _show(self, selector: str, content: Content) -> None:
        """Update one line of the pane, unless it already says that: each change lays the
        whole screen out again, and a generation step re-selects a token every time."""
        if content != self._shown.get(selector):
            self._shown[selector] = content
            self.query_one(selector, Static).update(content)


def render_result(result, *, show_timings: bool = True) -> Content:
    """The pane's body for a SpeakResult (also usable on its own)."""
    lines: list[Content] = []
    verdict = Content.styled(result.verdict, VERDICT_STYLE.get(result.verdict, ""))
    if result.verdict == Verdict.SPEAKABLE:
        runner = _token(result.runner_up.id, result.runner_up.text) if result.runner_up else Content("?")
        lines.append(Content.assemble(verdict, f"  gap {result.margin:.4g} over ", runner))
        lines.append(Content(f"witness residual from the {result.method} direction, re-checked in float64"))
    elif result.verdict == Verdict.UNSPEAKABLE:
        cert = result.certificate
        lines.append(Content.assemble(verdict, f"  lead ≤ {cert.bound:.3g} for every reachable residual"))
        if result.method == Method.TWIN and result.binding:
            twin = result.binding[0]
            lines.append(Content.assemble("an exact copy of ", _token(twin.id, twin.text), " (at best a tie)"))
        else:
            lines.append(
                Content(f"certificate: convex combination of {len(cert.ids)} tokens, residual {cert.residual_norm:.3g}")
            )
    else:
        lines.append(Content.assemble(verdict, "  neither proof passed its tolerance"))
        if result.best_gap_found is not None:
            lines.append(Content(f"best witness gap {result.best_gap_found:.3g} (needs > {result.speak_tolerance:.3g})"))
        if result.reason:
            lines.append(Content(result.reason))
    if result.hard_to_speak:
        lines.append(
            Content.assemble(("hard to speak", "$warning"), ": its own direction says ", _token(result.best_match.id, result.best_match.text))
        )
    else:
        lines.append(Content("its own direction already says it"))
    for line in aim_lines(getattr(result, "aim", None)):
        lines.append(Content.styled(line, "$accent"))
    if result.binding:
        label = "certificate" if result.verdict == Verdict.UNSPEAKABLE else "binding"
        parts: list = [(f"{label}: ", "$text-muted")]
        for k, ref in enumerate(result.binding[:MAX_LISTED]):
            if k:
                parts.append(", ")
            parts.append(_token(ref.id, ref.text))
        if len(result.binding) > MAX_LISTED:
            parts.append(f" +{len(result.binding) - MAX_LISTED}")
        lines.append(Content.assemble(*parts))
    if show_timings:
        lines.append(Content.styled(f"{result.seconds:.2f} s", "$text-muted"))
    return Content("\n").join(lines)


def render_scan_summary(scan, *, show_timings: bool = True) -> Content:
    counts = scan.counts()
    state = "vocabulary scan" if scan.complete else "vocabulary scan (partial)"
    parts: list = [f"{state}: "]
    for k, verdict in enumerate(DECIDED):
        if k:
            parts.append(" · ")
        parts.append((f"{counts[verdict]:,} {verdict}", VERDICT_STYLE[verdict].replace("bold ", "")))
    parts.append(f" · {counts['hard_to_speak']:,} hard to speak")
    if show_timings and scan.seconds:
        parts.append(f" · {scan.seconds:.0f} s")
    return Content.assemble(*parts)


class WiredSpeak(SpeakPane):
    """The speakability pane: shows the cursor's token, runs checks and scans on request."""

    class ScanMarked(Message):
        """A vocabulary scan landed: the app marks its tokens in the grid and panes."""

        def __init__(self, marks: ScanMarks) -> None:
            super().__init__()
            self.marks = marks

    def on_token_focused(self, message: TokenFocused) -> None:
        if self.has_class("-running") and self.token_id is not None:
            return  # a check is running: keep showing its progress
        cell = message.cell
        self.show_token(cell.token_id, cell.text, known_verdict=self.known_verdict(cell.token_id))

    def on_model_loaded(self, message: ModelLoaded) -> None:
        # A scan cached earlier for this model lights up the grid's marks at once (and the
        # under-trained tokens verified earlier).
        explorer(self).submit(ScanVocabulary(cached_only=True), reply_to=self)
        self.find_undertrained(cached_only=True)

    def forget_model(self) -> None:
        """Another model was loaded: its verdicts and scan are not this one's."""
        self.token_id, self.token_text, self.verdict = None, "", None
        self._set_running(False)
        self.remove_class("-error")
        self._show("#speak-title", Content("speakability"))
        self._body(Content("Select a token to check whether the model can say it."))
        self._hint("")
        self.query_one("#speak-scan", Static).update("")
        self.show_undertrained(None)
        explorer(self).grid.set_undertrained(frozenset())

    def forget_running(self) -> None:
        """The worker restarted: a check that was running has no answer coming."""
        if self.has_class("-running"):
            self.show_error(f"The check stopped when the worker restarted: press {self.check_key} to check again.")

    def known_verdict(self, token_id: int) -> Optional[str]:
        marks = explorer(self).scan_marks
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
        explorer(self).submit(CheckSpeakable(token_id), reply_to=self)

    def scan(self) -> None:
        self.show_scan_progress("starting", 0.0)
        explorer(self).submit(ScanVocabulary(), reply_to=self)

    def find_undertrained(self, cached_only: bool = False) -> None:
        """Find and verify under-trained tokens (long; progress on the pane's last line)."""
        if not cached_only:
            self.show_undertrained_progress("starting", 0.0)
        explorer(self).submit(FindUndertrained(cached_only=cached_only), reply_to=self)

    def on_worker_reply(self, message) -> None:
        result = message.result
        if isinstance(result.request, ScanVocabulary):
            self._on_scan_reply(result)
            return
        if isinstance(result.request, FindUndertrained):
            self._on_undertrained_reply(result)
            return
        if isinstance(result.request, SampleShares):
            self._on_sample_reply(result)
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
            for note in marks.scan.notes:  # e.g. a damaged cache was set aside and rebuilt
                self.notify(note, title="Vocabulary scan", severity="warning", timeout=10)
            self.show_scan(marks.scan)
            self.post_message(self.ScanMarked(marks))
            self.call_after_refresh(self._refresh_inspector)  # its class line reads the marks
        elif isinstance(result, Stopped):
            self.show_scan_progress("stopped", None)
        elif isinstance(result, Failed):
            self.show_scan_progress(f"failed: {result.message}", None)

    def _refresh_inspector(self) -> None:
        refresh = getattr(explorer(self).inspector_pane, "refresh_speak_lines", None)
        if refresh is not None:
            refresh()

    def _on_undertrained_reply(self, result) -> None:
        if isinstance(result, Progress):
            if not result.request.cached_only:  # reading what is kept needs no progress line
                self.show_undertrained_progress(result.message, result.fraction)
        elif isinstance(result, Done):
            marks: Optional[UndertrainedMarks] = result.value
            if marks is not None or not result.request.cached_only:
                self.show_undertrained(marks)
                explorer(self).grid.set_undertrained(marks.verified if marks else frozenset())
                self._refresh_inspector()
        elif isinstance(result, Stopped):
            self.show_undertrained_progress("stopped", None)
        elif isinstance(result, Failed):
            self.show_undertrained_progress(f"failed: {result.message}", None)

    def _on_sample_reply(self, result) -> None:
        from lenstui.tui.screens.share import ShareVsTheta

        if isinstance(result, Progress):
            self.show_undertrained_progress(result.message, result.fraction)
        elif isinstance(result, Done):
            self.show_undertrained(self.undertrained)
            if result.value is not None and result.value.points:
                explorer(self).push_screen(ShareVsTheta(result.value, self.token_id))
            elif result.request.cached_only:
                explorer(self).submit(SampleShares(), reply_to=self)  # nothing kept: measure now
                self.show_undertrained_progress("sampling the vocabulary", 0.0)
        elif isinstance(result, Stopped):
            self.show_undertrained_progress("share sample stopped", None)
        elif isinstance(result, Failed):
            self.show_undertrained_progress(f"share sample failed: {result.message}", None)
