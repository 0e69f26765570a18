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


def typed_pin(text: str) -> Optional[Union[int, str]]:
    """What was typed, as a pin: ``#15107`` -> 15107, else the text itself (spaces kept:
    `` sea`` is a different token from ``sea``). Empty -> None."""
    if not text.strip():
        return None
    stripped = text.strip()
    if stripped.startswith("#") and stripped[1:].isdigit():
        return int(stripped[1:])
    return text


class PinPrompt(ModalScreen[Optional[Union[int, str]]]):
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


# ---------------------------------------------------------------- the app's side (thin helpers)
# app.py's actions delegate here, so its own hunks stay one line each.


def _after_pins_changed(app) -> None:
    app.grid.set_pins(app.session.pins)
    app._rerun()


def pin_token(app, token: Union[int, str]) -> None:
    app.notify(app.session.pin(token), timeout=2)
    _after_pins_changed(app)


def pin_selected(app) -> None:
    """Pin (or unpin, if pinned) the token under the grid's cursor, else the inspector's."""
    if app.screen is not app.base_screen:
        return
    cell = app.grid.current_cell
    report = app.inspector_pane.report
    token_id = cell.token_id if cell is not None else (report.id if report is not None else None)
    if token_id is None:
        app.notify("Run the lens first, then pin a token from the grid.", severity="warning", timeout=3)
        return
    app.notify(app.session.toggle_pin(token_id), timeout=2)
    _after_pins_changed(app)


def unpin(app, token: Union[int, str]) -> None:
    if app.session.unpin(token):
        app.notify(f"Unpinned {token!r}.", timeout=2)
        _after_pins_changed(app)


def unpin_all(app) -> None:
    count = app.session.unpin_all()
    app.notify(f"Unpinned {count} token{'s' if count != 1 else ''}.", timeout=2)
    if count:
        _after_pins_changed(app)


def ask_pin(app) -> None:
    def typed(token) -> None:
        if token is not None:
            pin_token(app, token)

    app.push_screen(PinPrompt(), typed)


def lens_answered(app, request, result) -> None:
    """A lens answer: typed pins become ids; an open trajectory view redraws."""
    from lenstui.trajectory import TrajectoryScreen

    before = app.session.last_request
    app.session.pins_resolved(request, [t.id for t in result.tracked])
    if app.shown_request == before and app.session.last_request != before:
        app.shown_request = app.session.last_request
    app.grid.set_pins(app.session.pins)
    for screen in app.screen_stack:
        if isinstance(screen, TrajectoryScreen):
            screen.show_result(result)


def lens_failed(app, dropped) -> None:
    if dropped is not None:
        app.notify(f"Unpinned {dropped!r}: it is not one token of this model.", severity="warning", timeout=6)
        app.grid.set_pins(app.session.pins)
        app._rerun()


def show_trajectory(app) -> None:
    from lenstui.trajectory import TrajectoryScreen

    if app.shown_result is None or app.screen is not app.base_screen:
        if app.shown_result is None:
            app.notify("Run the lens first.", severity="warning", timeout=3)
        return
    grid = app.grid
    cell = grid.current_cell
    row = cell.layer_index if cell is not None else len(app.shown_result.layers) - 1
    app.push_screen(TrajectoryScreen(app.shown_result, grid.cursor_pos, row))


def show_compare(app) -> None:
    from lenstui.compare_view import CompareScreen

    if app.screen is not app.base_screen:
        return
    session = app.session
    if not session.has_prompt:
        app.notify("Type prompt A first (the explorer's prompt).", severity="warning", timeout=3)
        return
    prompt_a = session.steps[-1].ids if session.steps else session.prompt_text
    options = dict(
        top_k=session.top_k,
        lens=session.lens_kind,
        incl_mid=session.incl_mid,
        target=session.target,
        track=tuple(session.pins),
    )
    app.push_screen(CompareScreen(prompt_a, session.prompt_b, options=options, chat=session.chat))


def commands(app):
    from textual.app import SystemCommand

    key = app.key_for
    yield SystemCommand("pin: the selected token", f"follow it through the layers ({key('lenstui.pin')}; again unpins)", app.action_pin_selected)
    yield SystemCommand("pin: type a token", "text ( sea), a piece (ĠðŁ) or #ID", app.action_pin_typed)
    yield SystemCommand("pin: unpin all", key("lenstui.unpin_all"), app.action_unpin_all)
    result = app.shown_result
    for token in (result.tracked if result is not None else []):
        yield SystemCommand(f"pin: unpin {token.piece if chr(0xFFFD) in token.text else token.text!r}", f"token {token.id}", lambda t=token.id: unpin(app, t))
    yield SystemCommand("view: trajectory of the pinned tokens", f"probability or rank per layer at the cursor's position ({key('lenstui.trajectory')})", app.action_show_trajectory)
    yield SystemCommand("compare: set prompt B", f"two prompts side by side, KL(A‖B) per layer ({key('lenstui.compare')})", app.action_show_compare)
