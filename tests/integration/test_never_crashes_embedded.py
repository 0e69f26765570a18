"""The issue's key sequence on the embedded model, held while the grid streams: nothing reaches the safety net."""

from __future__ import annotations

from lenstui.tui.screens.attribution import AttributionScreen
from testkit.apphelpers import gate_lens_runs, grid_lines, settle, until


async def test_the_issue_sequence_on_the_embedded_model(make_app):
    """The first crash as the issue found it, on the embedded model (a long prompt,
    F4, Home, X, Enter), held at the gate so the frame with the placeholder is drawn."""
    from testkit.apphelpers import LONG_PROMPT

    app = make_app(LONG_PROMPT)
    async with app.run_test(size=(120, 40)) as pilot:
        gate = gate_lens_runs(app)
        await settle(app, pilot)
        await pilot.press("f4")
        gate.hold()
        await pilot.press("home", "X", "enter")
        await until(pilot, lambda: gate.holding.is_set() and app.grid.streaming, "the streamed grid")
        assert "#1" in grid_lines(app)[0]
        await pilot.press("escape", "a")
        await until(pilot, lambda: isinstance(app.screen, AttributionScreen), "the attribution screen")
        assert app.screen.request.prompt_ids == tuple(app.grid.result.token_ids)
        gate.release()
        await settle(app, pilot)
        assert app.grid.result.tokens[0].text.startswith("X")
        assert not app.crashes
