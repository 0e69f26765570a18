"""The inspector pane: one token's bytes, facts and neighbours, and the prompt's tokens
joined into the characters they make.

``InspectorPane`` is pure rendering: it is handed the core's plain dataclasses
(``TokenReport``, ``JoinedSequence``) and never sees a tensor or the model.
``WiredInspector`` follows the grid's cursor (``TokenFocused``, forwarded by the app) and
asks the worker for reports (``InspectToken``, replies as ``WorkerReply`` messages). Pressing ``t`` asks the app
to make the inspected token the lens target (the pane only posts
:class:`InspectorPane.TargetRequested`; the app decides what that means).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.content import Content
from textual.geometry import Size
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Static

from lenstui.core.textfmt import cell_len, fit, neighbor_row, report_rows, visible, visible_bytes
from lenstui.core.token_bytes import JoinedSequence, TokenGroup
from lenstui.core.token_report import Neighbor, TokenReport
from lenstui.core.share_result import share_words
from lenstui.jobs.protocol import Done, EstimateShare, Failed, InspectReply, InspectToken, Progress
from lenstui.tui.host import explorer
from lenstui.tui.safety import Guarded
from lenstui.tui.widgets.events import TokenFocused

LABEL_WIDTH = 16
_TONES = {"": "", "good": "$success", "warn": "$warning", "bad": "$error"}


def labelled_lines(rows, width: int) -> list[Content]:
    """``(label, value, tone)`` rows as lines no wider than ``width``: long values wrap under
    their own column (a hanging indent past the labels)."""
    width = max(width, 20)
    label_width = min(LABEL_WIDTH, width // 3)
    lines: list[Content] = []
    for label, value, tone in rows:
        style = _TONES.get(tone, tone)
        wrapped = Content.styled(value, style).wrap(width - label_width) or [Content("")]
        lines.append(Content.assemble((fit(label, label_width), "$text-muted"), wrapped[0]))
        lines += [Content(" " * label_width) + more for more in wrapped[1:]]
    return lines


def report_lines(report: TokenReport, width: int = 80) -> list[Content]:
    """The report's facts and neighbours as styled lines no wider than ``width``.

    Long values wrap under their own column (a hanging indent past the labels), and
    neighbour rows are cut at the width rather than wrapped, so columns stay columns.
    """
    width = max(width, 20)
    lines = labelled_lines(report_rows(report), width)
    lines += _neighbor_lines("nearest by readout direction", report.neighbors, width)
    if report.embedding_neighbors is not None:
        lines += _neighbor_lines("nearest by embedding W_E", report.embedding_neighbors, width)
    return lines


def _neighbor_lines(title: str, neighbors: tuple[Neighbor, ...], width: int) -> list[Content]:
    if not neighbors:
        return []
    lines = [Content(""), Content.styled(fit(title + " (cosine)", width).rstrip(), "bold $secondary")]
    for n in neighbors:
        lines.append(Content(fit(neighbor_row(n.cosine, n.id, n.data, n.piece), width).rstrip()))
    return lines


def heading_content(report: TokenReport, show_timings: bool = True) -> Content:
    timing = f" · {report.seconds * 1000:.0f} ms" if show_timings else ""
    return Content.assemble(
        (f"token {report.id}", "bold $primary"),
        "  ",
        (visible(report.piece), "bold"),
        (f"   {report.model}{timing}", "$text-muted"),
    )


# ------------------------------------------------------------------ joined sequence


def _group_lines(group: TokenGroup) -> tuple[str, str, str]:
    """A group as three aligned lines: the characters, the pieces, the ids."""
    if group.special:
        text = visible(group.pieces[0])
    elif group.chars:
        text = visible_bytes(group.data)
    else:
        text = visible("")
    pieces = " ".join(visible(p) for p in group.pieces)
    ids = " ".join(str(i) for i in group.token_ids)
    return text, pieces, ids


def sequence_lines(sequence: JoinedSequence, width: int, selected: Optional[int] = None) -> list[Content]:
    """The joined sequence laid out as blocks (text / pieces / ids), wrapped to ``width``.

    The block holding token position ``selected`` is highlighted.
    """
    width = max(width, 8)
    rows: list[list[tuple[TokenGroup, tuple[str, str, str], int]]] = [[]]
    used = 0
    for group in sequence.groups:
        lines = _group_lines(group)
        block = min(max(cell_len(line) for line in lines), width)
        needed = used + 2 + block if rows[-1] else block
        if needed > width:
            rows.append([])
            needed = block
        rows[-1].append((group, lines, block))
        used = needed

    out: list[Content] = []
    for row in rows:
        for line_no, style in ((0, "bold"), (1, "$text-muted"), (2, "$text-muted")):
            parts: list = []
            for k, (group, lines, block) in enumerate(row):
                if k:
                    parts.append("  ")
                chosen = selected is not None and selected in group.token_indices
                cell_style = style
                if chosen:
                    cell_style = f"{style} reverse $accent" if line_no == 0 else f"{style} $accent"
                elif line_no == 0 and not group.complete and not group.special:
                    cell_style = "bold $warning"
                elif group.special and line_no == 0:
                    cell_style = "italic $text-muted"
                parts.append((fit(lines[line_no], block), cell_style))
            out.append(Content.assemble(*parts))
        out.append(Content(""))
    return out[:-1] if out else out


class LinesView(Guarded, Widget):
    """A widget drawn as lines laid out for its current width (reflows on resize)."""

    DEFAULT_CSS = """
    LinesView {
        height: auto;
        width: 1fr;
    }
    """

    def lines_for(self, width: int) -> list[Content]:
        raise NotImplementedError

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self.lines_for(width))

    def render(self) -> Content:
        return Content("\n").join(self.lines_for(self.content_size.width or 80))


class ReportView(LinesView):
    """One token report: facts with a hanging indent, then the neighbour tables."""

    def __init__(self, *, id: Optional[str] = None, classes: Optional[str] = None) -> None:
        super().__init__(id=id, classes=classes)
        self.report: Optional[TokenReport] = None

    def set_report(self, report: Optional[TokenReport]) -> None:
        self.report = report
        self.refresh(layout=True)

    def lines_for(self, width: int) -> list[Content]:
        return [] if self.report is None else report_lines(self.report, width)


class SpeakLinesView(LinesView):
    """The token's speakability class and aim line (``speak_lines`` rows), wrapped."""

    def __init__(self, *, id: Optional[str] = None, classes: Optional[str] = None) -> None:
        super().__init__(id=id, classes=classes)
        self.rows: list[tuple[str, str, str]] = []

    def set_rows(self, rows) -> None:
        self.rows = list(rows)
        self.refresh(layout=True)

    def lines_for(self, width: int) -> list[Content]:
        return labelled_lines(self.rows, width)

    def render(self) -> Content:
        return Content("\n").join(self.lines_for(self.content_size.width or 80))


class JoinedSequenceView(LinesView):
    """Blocks of characters with their tokens underneath; reflows with its width."""

    def __init__(self, *, id: Optional[str] = None, classes: Optional[str] = None) -> None:
        super().__init__(id=id, classes=classes)
        self._sequence: Optional[JoinedSequence] = None
        self._selected: Optional[int] = None

    def set_sequence(self, sequence: Optional[JoinedSequence], selected: Optional[int] = None) -> None:
        self._sequence = sequence
        self._selected = selected
        self.refresh(layout=True)

    def lines_for(self, width: int) -> list[Content]:
        if self._sequence is None or not self._sequence.groups:
            return []
        return sequence_lines(self._sequence, width, self._selected)


# ------------------------------------------------------------------ the pane


class InspectorPane(Guarded, VerticalScroll):
    """Shows one token report, a message, and (optionally) the prompt's joined tokens."""

    BORDER_TITLE = "inspector"

    DEFAULT_CSS = """
    InspectorPane {
        border: round $primary 50%;
        padding: 0 1;
        height: 1fr;
        scrollbar-size-vertical: 1;
    }
    InspectorPane:focus-within, InspectorPane:focus {
        border: round $primary;
    }
    InspectorPane #inspector-heading {
        height: auto;
        margin-bottom: 1;
    }
    InspectorPane #inspector-speak {
        height: auto;
        margin-bottom: 1;
    }
    InspectorPane #inspector-message {
        height: auto;
        color: $text-muted;
        text-style: italic;
    }
    InspectorPane #inspector-message.-error {
        color: $error;
        text-style: none;
    }
    InspectorPane #inspector-sequence-title {
        height: auto;
        margin-top: 1;
        color: $secondary;
        text-style: bold;
    }
    InspectorPane .-hidden {
        display: none;
    }
    """

    BINDINGS = [
        Binding(
            "t",
            "request_target",
            "Use as target",
            id="inspector.use_as_target",
            tooltip="Make the inspected token the lens grid's target token",
        ),
        Binding(
            "S",
            "estimate_share",
            "Share",
            id="inspector.share",
            tooltip="Estimate the share of directions that make the inspected token the argmax",
        ),
    ]

    @dataclass
    class TargetRequested(Message):
        """The user asked for the inspected token to become the lens target."""

        token_id: int

    def __init__(self, *, id: Optional[str] = None, classes: Optional[str] = None) -> None:
        super().__init__(id=id, classes=classes)
        self.report: Optional[TokenReport] = None
        self.sequence: Optional[JoinedSequence] = None
        self.show_timings = True  # off for snapshot tests: timings differ run to run

    def compose(self) -> ComposeResult:
        yield Static(id="inspector-heading", classes="-hidden")
        yield SpeakLinesView(id="inspector-speak", classes="-hidden")
        yield Static("Select a prompt token or a grid cell to inspect it.", id="inspector-message")
        yield ReportView(id="inspector-body", classes="-hidden")
        yield Static("prompt, joined into characters", id="inspector-sequence-title", classes="-hidden")
        yield JoinedSequenceView(id="inspector-sequence", classes="-hidden")

    # -- the public API the app calls (from the UI thread) --------------------------

    def show_report(self, report: TokenReport) -> None:
        """Show a token report (keeps the joined sequence, highlighting nothing new)."""
        self.report = report
        heading = self.query_one("#inspector-heading", Static)
        heading.update(heading_content(report, self.show_timings))
        self.query_one(ReportView).set_report(report)
        heading.remove_class("-hidden")
        self.query_one("#inspector-body").remove_class("-hidden")
        self.query_one("#inspector-message").add_class("-hidden")
        self.scroll_home(animate=False)

    def show_message(self, text: str, *, error: bool = False) -> None:
        """Replace the report with a line of text ("loading…", an error)."""
        self.report = None
        message = self.query_one("#inspector-message", Static)
        message.update(Content(text))
        message.set_class(error, "-error")
        message.remove_class("-hidden")
        self.query_one("#inspector-heading").add_class("-hidden")
        self.query_one("#inspector-body").add_class("-hidden")

    def show_sequence(self, sequence: Optional[JoinedSequence], selected: Optional[int] = None) -> None:
        """Show the prompt's tokens joined into characters; ``selected`` is a token index."""
        self.sequence = sequence
        hidden = sequence is None or not sequence.groups
        self.query_one(JoinedSequenceView).set_sequence(sequence, selected)
        for node in self.query("#inspector-sequence-title, #inspector-sequence"):
            node.set_class(hidden, "-hidden")

    def action_request_target(self) -> None:
        if self.report is not None:
            self.post_message(self.TargetRequested(self.report.id))

    def show_speak_lines(self, rows) -> None:
        """The token's speakability class and aim (hidden when there is nothing to say)."""
        node = self.query_one("#inspector-speak", SpeakLinesView)
        node.set_rows(rows)
        node.set_class(not rows or self.report is None, "-hidden")

    def action_estimate_share(self) -> None:
        """Overridden where a worker is at hand (``WiredInspector``)."""


INSPECT_NEIGHBORS = 12


class WiredInspector(InspectorPane):
    """The inspector pane, following the grid's cursor."""

    # The ids of the prompt the grid shows (set by the app when a lens result lands):
    # the inspector joins them into characters under the report.
    prompt_ids: Optional[tuple[int, ...]] = None

    def on_token_focused(self, message: TokenFocused) -> None:
        self.inspect(message.cell.token_id, message.cell.position)

    def forget_model(self) -> None:
        """Another model was loaded: the shown report and marks were about the old one."""
        self.forget_shares()
        self.prompt_ids = None
        self.border_subtitle = ""
        self.show_message("Select a prompt token or a grid cell to inspect it.")
        self.show_sequence(None)

    def inspect(self, token_id: int, position: Optional[int] = None) -> None:
        sequence = self.prompt_ids
        selected = position if sequence is not None else None
        explorer(self).submit(InspectToken(token_id, INSPECT_NEIGHBORS, sequence, selected), reply_to=self)

    def on_worker_reply(self, message) -> None:
        result = message.result
        if isinstance(result.request, EstimateShare):
            self._on_share_reply(result)
            return
        if isinstance(result, Done):
            reply: InspectReply = result.value
            self.show_report(reply.report)
            self.show_sequence(reply.sequence, reply.selected)
            self._show_scan_mark(reply.report.id)
            self.refresh_speak_lines()
        elif isinstance(result, Failed):
            self.show_message(result.message, error=True)

    # -- the speakability class and the aim line ------------------------------------

    def action_estimate_share(self) -> None:
        if self.report is None:
            self.notify("Inspect a token first.", severity="warning", timeout=3)
            return
        self._share_state()[self.report.id] = "estimating the share of directions…"
        explorer(self).submit(EstimateShare(self.report.id), reply_to=self)
        self.refresh_speak_lines()

    def _share_state(self) -> dict:
        """Token id -> its ShareReply, or a sentence while it runs or after it failed."""
        if not hasattr(self, "_shares_by_id"):
            self._shares_by_id = {}
        return self._shares_by_id

    def _on_share_reply(self, result) -> None:
        token = result.request.token_id
        state = self._share_state()
        if isinstance(result, Progress):
            state[token] = f"estimating the share: {result.message}"
        elif isinstance(result, Done):
            state[token] = result.value
        elif isinstance(result, Failed):
            state[token] = f"share not estimated: {result.message}"
        else:  # stopped or superseded
            state.pop(token, None)
        if self.report is not None and self.report.id == token:
            self.refresh_speak_lines()

    def refresh_speak_lines(self) -> None:
        if self.report is None:
            return
        host = explorer(self)
        pane = getattr(host, "speak_pane", None)
        undertrained = getattr(pane, "undertrained", None)
        share = self._share_state().get(self.report.id)
        self.show_speak_lines(
            speak_lines(self.report.id, host.scan_marks, undertrained, share, "S")
        )

    def forget_shares(self) -> None:
        self._share_state().clear()

    def _show_scan_mark(self, token_id: int) -> None:
        marks = explorer(self).scan_marks
        if marks is None:
            self.border_subtitle = ""
        elif token_id in marks.unspeakable:
            self.border_subtitle = "† unspeakable (vocabulary scan)"
        elif token_id in marks.hard_to_speak:
            self.border_subtitle = f"° {marks.hard_rule} (vocabulary scan)"
        else:
            self.border_subtitle = "speakable (vocabulary scan)" if marks.complete else ""


def speakability_class(token_id: int, marks, undertrained) -> tuple[str, str]:
    """(the token's class in words, tone): certified unspeakable / under-trained (verified) /
    hard to speak (theta) / fine, from the vocabulary scan and the under-trained run; an empty
    class when neither has run."""
    parts, tone = [], ""
    if marks is not None and token_id in marks.unspeakable:
        return "certified unspeakable: no residual makes it the argmax (vocabulary scan)", "bad"
    if undertrained is not None and token_id in undertrained.verified:
        prob = undertrained.max_prob.get(token_id)
        where = undertrained.prompt.get(token_id, "")
        parts.append(f"under-trained (verified: max prob {prob:.1e} on {where})" if prob is not None else "under-trained (verified)")
        tone = "warn"
    if marks is not None and token_id in marks.hard_to_speak:
        bound = _theta_bound(marks, token_id)
        parts.append("hard to speak" + (f" (θ ≥ {bound:.2f}°, {marks.hard_rule})" if bound is not None else f" ({marks.hard_rule})"))
        tone = "warn"
    if parts:
        return " · ".join(parts), tone
    if marks is None and undertrained is None:
        return "", ""
    known = []
    if marks is not None:
        known.append("speakable" if marks.complete else "not in the partial scan")
        bound = _theta_bound(marks, token_id)
        if bound is not None:
            known[-1] += f", θ ≥ {bound:.1f}°"
    if undertrained is not None:
        if token_id in undertrained.candidates and token_id in undertrained.max_prob:
            known.append(f"candidate, rejected (max prob {undertrained.max_prob[token_id]:.2g})")
        elif token_id in undertrained.candidates:
            known.append("under-trained candidate, not yet verified")
    return "fine: " + "; ".join(known), "good"


def _theta_bound(marks, token_id: int) -> Optional[float]:
    scan = marks.scan
    if token_id >= scan.n_scanned:
        return None
    value = float(scan.theta_lower[token_id])
    return value if value == value else None


def speak_lines(token_id: int, marks, undertrained, share, share_key: str = "S") -> list[tuple[str, str, str]]:
    """The inspector's class row and aim row for one token: ``(label, value, tone)``; none
    until there is something to say (a vocabulary scan, an under-trained run, a share)."""
    rows: list[tuple[str, str, str]] = []
    if marks is None and undertrained is None and share is None:
        return rows
    words, tone = speakability_class(token_id, marks, undertrained)
    if words:
        rows.append(("class", words, tone))
    measured = share is not None and not isinstance(share, str)
    if isinstance(share, str):
        aim = share
    elif measured:
        aim = _aim_words(share.aim, share.share)
    else:
        bound = _theta_bound(marks, token_id) if marks is not None else None
        start = f"θ ≥ {bound:.2f}° (scan) · " if bound is not None else ""
        aim = f"{start}press {share_key} for the share of directions that say it"
        if marks is not None and token_id in marks.unspeakable:
            aim = "share of directions exactly 0 (log10 = -inf): certified unspeakable"
    rows.append(("aim", aim, "$accent" if measured else ""))
    return rows


def _aim_words(aim: dict, share: dict) -> str:
    if share.get("exact_zero"):
        return "no direction says it: share exactly 0 (log10 = -inf, certified)"
    theta = aim.get("theta_deg")
    words = f"θ {theta:.2f}° · " if theta else ""
    words += share_words(share)
    floor = share.get("log10_certified_lower")
    if isinstance(floor, (int, float)):
        words += f" · the cap alone: ≥ 10^{floor:.1f}"
    return words
