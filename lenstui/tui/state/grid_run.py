"""Which run the grid shows: the one place that decides between the clean run, a patched
run and a steered run.

- **steered** while a steer is on (``causal.CausalState.steer``): its answer is painted
  when it lands; until then the grid keeps what it shows, so a new clean answer (a step,
  an edit, a pin) never flickers through before it is steered again.
- **patched** while a patch is on show (``CausalState.shown``); a new clean run of the
  lens drops it (``causal.CausalFeature``), ``Esc`` too.
- **clean** otherwise: the explorer's own lens result (``host.shown_result``), or the
  columns of the clean run streaming in.

The lens flow (``lens_flow.py``) and the causal lens (``causal.py``) change the state and
call ``paint``; neither paints the grid itself.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from lenstui.core.patch_result import PatchResult, SteerResult

# causal.py imports this module: its types are named in words here, not imported (even for
# type checking: the contracts count every import, lazy ones included).
CausalState = Any  # tui/state/causal.CausalState
CausalHost = Any  # tui/state/causal.CausalHost

GridRun = Literal["clean", "patched", "steered"]


def grid_run(state: CausalState) -> GridRun:
    """Which run the grid shows now."""
    if state.steer is not None:
        return "steered"
    if isinstance(state.shown, PatchResult):
        return "patched"
    return "clean"


def paint(host: CausalHost, hint: Optional[str] = None) -> None:
    """Put the run ``grid_run`` picks on the grid, unless it is there already. With no
    clean result to show, ``hint`` (when given) takes the grid's place."""
    state, grid = host.causal, host.grid
    run = grid_run(state)
    shown = state.shown
    if run == "steered":
        if isinstance(shown, SteerResult) and grid.result is not shown.steered:
            grid.show_causal(shown.steered, shown.cone, state.steer.label)
        return  # (no steered answer yet: what is on the grid stays until it lands)
    if run == "patched":
        if grid.result is not shown.patched:
            grid.show_causal(shown.patched, shown.cone, f"patched: {shown.spec.label}")
        return
    clean = host.shown_result
    if clean is not None:
        if grid.result is not clean:
            grid.show_result(clean)
    elif hint is not None:
        if grid.result is not None:
            grid.clear(hint)  # a half-painted run that will never finish
        grid.show_hint(hint)
