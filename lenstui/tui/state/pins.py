"""Pinned tokens in the explorer: the keys and palette entries that pin and unpin, and
what a lens answer changes about them (typed pins become ids).

The pins themselves are the session's (``LensSession.pins``: the ``RunLens.track`` of the
next run); these helpers keep the grid's highlight and the open trajectory view in step,
and re-run the lens through the host; ``PinFeature`` is their side of the lens flow's
seam.
"""

from __future__ import annotations

from typing import Optional, Union

from textual.app import SystemCommand

from lenstui.core.errors import quoted
from lenstui.core.lens_result import LensResult
from lenstui.jobs.protocol import RunLens
from lenstui.tui.host import ExplorerHost
from lenstui.tui.screens.compare import CompareScreen
from lenstui.tui.screens.pin_prompt import PinPrompt
from lenstui.tui.screens.trajectory import TrajectoryScreen
from lenstui.tui.state.lens_feature import LensFeature


def _after_pins_changed(host: ExplorerHost) -> None:
    host.grid.set_pins(host.session.pins)
    host.rerun_lens()


def pin_token(host: ExplorerHost, token: Union[int, str]) -> None:
    host.notify(host.session.pin(token), timeout=2)
    _after_pins_changed(host)


def pin_selected(host: ExplorerHost) -> None:
    """Pin (or unpin, if pinned) the token under the grid's cursor, else the inspector's."""
    if host.screen is not host.base_screen:
        return
    cell = host.grid.current_cell
    report = host.inspector_pane.report
    token_id = cell.token_id if cell is not None else (report.id if report is not None else None)
    if token_id is None:
        host.notify("Run the lens first, then pin a token from the grid.", severity="warning", timeout=3)
        return
    host.notify(host.session.toggle_pin(token_id), timeout=2)
    _after_pins_changed(host)


def unpin(host: ExplorerHost, token: Union[int, str]) -> None:
    if host.session.unpin(token):
        host.notify(f"Unpinned {quoted(token)}.", timeout=2)
        _after_pins_changed(host)


def unpin_all(host: ExplorerHost) -> None:
    count = host.session.unpin_all()
    host.notify(f"Unpinned {count} token{'s' if count != 1 else ''}.", timeout=2)
    if count:
        _after_pins_changed(host)


def ask_pin(host: ExplorerHost) -> None:
    def typed(token: Optional[Union[int, str]]) -> None:
        if token is not None:
            pin_token(host, token)

    host.push_screen(PinPrompt(), typed)


class PinFeature(LensFeature):
    """Pins on the lens flow's seam (``lens_feature.py``)."""

    def __init__(self, host: ExplorerHost) -> None:
        self.host = host

    def run_shown(self, result: LensResult, request: RunLens) -> None:
        """A lens answer: typed pins become ids; an open trajectory view redraws."""
        host = self.host
        before = host.session.last_request
        host.session.pins_resolved(request, [t.id for t in result.tracked])
        if host.shown_request == before and host.session.last_request != before:
            host.shown_request = host.session.last_request
        host.grid.set_pins(host.session.pins)
        for screen in host.screen_stack:
            if isinstance(screen, TrajectoryScreen):
                screen.show_result(result)

    def run_failed(self, dropped: Optional[Union[int, str]]) -> None:
        """A lens run failed; ``dropped`` is the typed pin it failed on (unpinned again)."""
        if dropped is not None:
            host = self.host
            host.notify(f"Unpinned {quoted(dropped)}: it is not one token of this model.", severity="warning", timeout=6)
            host.grid.set_pins(host.session.pins)
            host.rerun_lens()


def show_trajectory(host: ExplorerHost) -> None:
    """The trajectories at the cursor's position of the result on screen (a streamed one's
    column may not be computed yet: the view says so, and draws when the run lands)."""
    grid = host.grid
    result = grid.result
    if result is None or host.screen is not host.base_screen:
        if result is None:
            host.notify("Run the lens first.", severity="warning", timeout=3)
        return
    label = grid.cursor_layer
    row = result.layers.index(label) if label in result.layers else len(result.layers) - 1
    position = max(0, min(grid.cursor_pos, len(result.tokens) - 1))
    host.push_screen(TrajectoryScreen(result, position, row))


def show_compare(host: ExplorerHost) -> None:
    if host.screen is not host.base_screen:
        return
    session = host.session
    if not session.has_prompt:
        host.notify("Type prompt A first (the explorer's prompt).", severity="warning", timeout=3)
        return
    prompt_a = session.steps[-1].ids if session.steps else session.prompt_text
    host.push_screen(CompareScreen(prompt_a, session.prompt_b, options=session.options(), chat=session.chat))


def commands(host: ExplorerHost):
    """The palette's pin, trajectory and compare entries."""
    key = host.key_for
    yield SystemCommand("pin: the selected token", f"follow it through the layers ({key('lenstui.pin')}; again unpins)", lambda: pin_selected(host))
    yield SystemCommand("pin: type a token", "text ( sea), a piece (ĠðŁ) or #ID", lambda: ask_pin(host))
    yield SystemCommand("pin: unpin all", key("lenstui.unpin_all"), lambda: unpin_all(host))
    result = host.shown_result
    for token in (result.tracked if result is not None else []):
        name = token.piece if "\ufffd" in token.text else repr(token.text)
        yield SystemCommand(f"pin: unpin {name}", f"token {token.id}", lambda t=token.id: unpin(host, t))
    yield SystemCommand("view: trajectory of the pinned tokens", f"probability or rank per layer at the cursor's position ({key('lenstui.trajectory')})", lambda: show_trajectory(host))
    yield SystemCommand("compare: set prompt B", f"two prompts side by side, KL(A‖B) per layer ({key('lenstui.compare')})", lambda: show_compare(host))
