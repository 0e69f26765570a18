"""The explorer's attribution screen: which components wrote the selected cell's token.

``attribution_request`` turns what the grid shows (the lens result, the cursor's cell,
the lens target) into an ``AttributeCell`` request, or one sentence saying why that
cell cannot be attributed. ``AttributionScreen`` is pushed over the grid: it submits
the request to the worker (``lenstui.jobs.handlers.attribute_handler`` runs the engine),
shows a loading line, then the result in an ``AttributionView``; Esc or q goes back.
Everything here is plain UI: the engine and torch stay with the model's worker (a child
process, or a thread when the app was given a loader).
"""

from __future__ import annotations

import re
from typing import Optional

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static

from lenstui.core.errors import InputError
from lenstui.core.lens_result import PENDING, LensResult
from lenstui.core.lenses import LEARNED_LENSES
from lenstui.core.textfmt import visible
from lenstui.jobs.protocol import AttributeCell, Done, Failed, Stopped
from lenstui.tui.host import ExplorerHost, explorer
from lenstui.tui.safety import Guarded
from lenstui.tui.widgets.attribution import AttributionView
from lenstui.tui.widgets.grid import GridCell

ATTRIBUTION_HEADS = 8
LEARNED_NOTE = "attribution decomposes the logit lens, not the {lens} lens's translator"
_BLOCK_ROW = re.compile(r"L(\d+)")


def lens_row_index(label: str) -> Optional[int]:
    """The attribution engine's row index for a grid row label ("embed" -> 0, "L3" -> 4);
    None for a row it cannot attribute (a mid-block row such as "L3.attn")."""
    if label == "embed":
        return 0
    match = _BLOCK_ROW.fullmatch(label)
    return int(match.group(1)) + 1 if match else None


def attribution_request(
    result: LensResult,
    cell: GridCell,
    *,
    contrast: Optional[tuple[int, str]] = None,
    heads: int = ATTRIBUTION_HEADS,
) -> tuple[AttributeCell, str]:
    """The request for the cell under the grid's cursor, and the words that name it.

    The token is the lens target when one is set, else the token under the cursor (the
    cell's top-1 in the positions view); ``contrast`` is a pinned (id, text) or None.
    Raises InputError with a sentence for a cell the engine cannot attribute, and for a
    cell that is not one of ``result``'s (the cursor's cell must come from the result on
    screen: a cell of another run has no business with these tokens)."""
    if not 0 <= cell.position < len(result.tokens) or cell.layer not in result.layers:
        raise InputError(
            f"The selected cell ({cell.layer} at position {cell.position}) is not in the grid on "
            "screen any more: pick a cell again."
        )
    learned = result.lens in LEARNED_LENSES
    if result.lens != "logit" and not learned:
        raise InputError(
            f"Attribution reads the plain logit lens, and the grid shows the {result.lens} lens: "
            "switch back to logit (F5) to attribute a cell."
        )
    row = lens_row_index(cell.layer)
    if row is None:
        raise InputError(
            f"Row {cell.layer} is a mid-block row (after the attention, before the MLP), and "
            "attribution covers block outputs only: pick an Lk row or embed."
        )
    if result.target_is_default:
        token_id, token_text = cell.token_id, cell.text
    else:
        target = result.targets[cell.position]
        if target is PENDING:
            raise InputError("The lens target at that position is not computed yet: try again in a moment.")
        token_id, token_text = target.id, target.text
    contrast_id, contrast_text = contrast if contrast is not None else (None, "")
    if contrast_id == token_id:
        raise InputError(
            f"The token and the contrast are both {visible(token_text)}: pin another contrast "
            "or use the palette's \"attribute: no contrast\"."
        )
    at = visible(result.tokens[cell.position].text)
    vs = "" if contrast_id is None else f" vs {visible(contrast_text)}"
    label = f"{visible(token_text)}{vs} at {at}@{cell.position} · {cell.layer}"
    if learned:  # the decomposition is of the row the logit lens reads, before any translator
        label += f" · read by the logit lens ({LEARNED_NOTE.format(lens=result.lens)})"
    request = AttributeCell(tuple(result.token_ids), cell.position, row, token_id, contrast_id, heads)
    return request, label


class AttributionScreen(Guarded, Screen):
    """The attribution of one cell over the whole terminal; Esc or q returns to the grid."""

    DEFAULT_CSS = """
    AttributionScreen {
        layout: vertical;
    }
    AttributionScreen #attribution-note {
        height: auto;
        padding: 0 2;
        color: $text-muted;
        display: none;
    }
    AttributionScreen.-tall #attribution-note.-shown {
        display: block;
    }
    """

    BINDINGS = [
        Binding("escape,q", "close", "Back to the grid", id="attribution.close"),
        # The screen's own `s`, so the app's `s` (speakability) never fires here.
        Binding("s", "toggle_order", "Sorted/layers", id="attribution.sort"),
    ]

    def __init__(self, request: AttributeCell, label: str) -> None:
        super().__init__()
        self.request: AttributeCell = request
        self.label = label  # what is being attributed, for the loading line
        self.result = None  # the AttributionResult shown (plain data)
        self.seq: Optional[int] = None  # the worker's number for the request asked last

    def compose(self) -> ComposeResult:
        yield AttributionView(id="attribution")
        yield Static(id="attribution-note")
        yield Footer(compact=True)

    @property
    def view(self) -> AttributionView:
        return self.query_one(AttributionView)

    def on_mount(self) -> None:
        self.attribute(self.request, self.label)

    def attribute(self, request: AttributeCell, label: str) -> None:
        """Ask the worker for ``request`` (a newer one supersedes a running one)."""
        self.request, self.label = request, label
        self.result = None  # (until this request's answer lands)
        self.view.show_message(f"Attributing {label}…")
        self.seq = explorer(self).submit(request, reply_to=self)

    def resubmit(self) -> None:
        """The worker restarted: ask again if the answer is still to come."""
        if self.result is None:
            self.attribute(self.request, self.label)

    def on_worker_reply(self, message) -> None:
        result = message.result
        if result.request != self.request:
            return
        if isinstance(result, Done):
            self.result = result.value
            self.view.show_result(result.value)
            note = self.query_one("#attribution-note", Static)
            learned = self.label.partition(" · read by the logit lens (")[2].rstrip(")")
            note.update(f"{learned[:1].upper()}{learned[1:]}. {result.value.note}" if learned else result.value.note)
            note.add_class("-shown")
            self.view.query_one("#attribution-heads").focus()
        elif isinstance(result, Failed):  # the app has shown it as a notice too
            self.view.show_message(result.message, error=True)
        elif isinstance(result, Stopped):
            self.view.show_message("Stopped.")

    def action_toggle_order(self) -> None:
        self.view.action_toggle_order()

    def action_close(self) -> None:
        explorer(self).cancel(AttributeCell)  # nobody will look at the answer
        self.dismiss()


def open_attribution(
    app: ExplorerHost,
    result: Optional[LensResult],
    cell: Optional[GridCell],
    contrast: Optional[tuple[int, str]] = None,
) -> None:
    """Show the attribution of ``cell``: refresh the screen if it is up, else push one.
    A cell the engine cannot attribute gets a notice instead (the grid stays)."""
    if result is None or cell is None:
        app.notify("Run the lens first, then pick a cell to attribute.", severity="warning", timeout=3)
        return
    try:
        request, label = attribution_request(result, cell, contrast=contrast)
    except InputError as err:
        app.notify(str(err), title=AttributeCell.title, severity="warning", timeout=8)
        return
    if result.lens in LEARNED_LENSES:
        app.notify(f"The grid shows the {result.lens} lens; {LEARNED_NOTE.format(lens=result.lens)}: "
                   "it reads the row as the logit lens does.", title=AttributeCell.title, timeout=8)
    if isinstance(app.screen, AttributionScreen):
        app.screen.attribute(request, label)
    else:
        app.push_screen(AttributionScreen(request, label))
