"""The attribution screen inside the explorer, on the real embedded model: `a` on a grid
cell opens it, the worker computes what `attribute(...)` computes, Esc goes back, a newer
request supersedes an older one, and a cell the engine cannot attribute is a notice."""

from __future__ import annotations

import dataclasses
import threading
from typing import ClassVar

import pytest
from textual.widgets import OptionList, Static

from lenstui.engine.attribution import attribute
from lenstui.jobs.protocol import AttributeCell, CheckSpeakable, Request
from lenstui.tui.panes.prompt import PRESETS
from lenstui.tui.screens.attribution import AttributionScreen, attribution_request
from lenstui.tui.widgets.attribution import AttentionRowView, AttributionView, ChartView
from testkit.apphelpers import drain_worker, settle, until

PLASMA = next(p for p in PRESETS if p.name == "plasma")
SAY = 19  # the second " say": the position that predicts the repeated " plasma"


async def plasma_at_say(app, pilot) -> None:
    """The plasma preset, cursor on the second " say" at the last row, " plasma" the target."""
    await settle(app, pilot)
    app.apply_preset(PLASMA)
    await settle(app, pilot)
    await pilot.press("escape", "G")  # the grid; its last row
    tokens = app.shown_result.tokens
    while app.grid.cursor_pos > SAY:
        await pilot.press("[")
    assert tokens[SAY].text == " say" and [t.text for t in tokens].count(" say") == 2
    app.set_target(tokens[5].id)  # " plasma", as the first mention spells it
    await settle(app, pilot)


async def screen_result(app, pilot):
    screen = app.screen
    assert isinstance(screen, AttributionScreen)
    await until(pilot, lambda: screen.result is not None and screen.result.position == screen.request.position, "the attribution")
    await pilot.pause()
    return screen.result


async def test_a_opens_the_attribution_the_engine_computes(make_app, embedded):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await plasma_at_say(app, pilot)
        plasma_id = app.shown_result.tokens[5].id
        await pilot.press("a")
        result = await screen_result(app, pilot)

        expected = attribute(embedded, app.shown_result.token_ids, position=SAY, layer=-1, token=plasma_id)
        assert (result.position, result.layer, result.token.id) == (SAY, 30, plasma_id)
        assert result.contrast is None
        assert [c.name for c in result.components] == [c.name for c in expected.components]
        assert [c.contribution for c in result.components] == pytest.approx(
            [c.contribution for c in expected.components], abs=1e-9
        )
        assert [h.name for h in result.heads] == [h.name for h in expected.heads]
        assert result.total == pytest.approx(expected.total, abs=1e-9)

        # What the screen shows are those numbers.
        heading = str(app.screen.query_one("#attribution-heading", Static).render())
        assert f"logit(␣plasma) - mean logit = {expected.total:+.3f}" in heading
        assert "parts add up exactly" in heading
        note = str(app.screen.query_one("#attribution-note", Static).render())
        assert note.startswith("Direct contributions through the final norm with its scale frozen")
        chart = str(app.screen.query_one(ChartView).render()).splitlines()
        parts = {c.name: c.contribution for c in expected.components}
        l29 = next(line for line in chart if line.startswith("L29 "))
        assert f"{parts['L29.attn']:+.3f}" in l29 and f"{parts['L29.mlp']:+.3f}" in l29
        heads = app.screen.query_one("#attribution-heads", OptionList)
        assert heads.has_focus and heads.option_count == len(expected.heads)
        first = str(heads.get_option_at_index(0).prompt)
        assert first.startswith(expected.heads[0].name) and f"{expected.heads[0].contribution:+.3f}" in first

        # `s` sorts the blocks (the screen's own `s`, not the speakability check).
        view = app.screen.query_one(AttributionView)
        await pilot.press("s")
        await pilot.pause()
        assert view.by_size
        assert not app.speak_pane.has_class("-running") and CheckSpeakable not in app.worker.busy_kinds()
        biggest = max((r for r in expected.components if r.kind in ("attn", "mlp")), key=lambda c: abs(c.contribution))
        assert str(app.screen.query_one(ChartView).render()).splitlines()[1].startswith(f"L{biggest.layer} ")

        # Enter on the top head: its attention row over the prompt.
        await pilot.press("enter")
        await pilot.pause()
        row = str(app.screen.query_one(AttentionRowView).render())
        assert row.startswith(f"{expected.heads[0].name} from ␣say@{SAY}")

        # The grid's and the lens' keys rest while the screen covers them.
        await pilot.press("u", "f4")
        await pilot.pause()
        assert app.session.target == plasma_id and app.grid.view == "positions"

        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, AttributionScreen)
        assert app.grid.current_cell.position == SAY  # the grid as it was left
        await pilot.press("f4")
        assert app.grid.view == "topk"


async def test_contrast_from_the_palette_and_its_notices(make_app, embedded):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await plasma_at_say(app, pilot)
        await pilot.press("v", "right")  # the top-k view: rank 2 at the second " say"
        cell = app.grid.current_cell
        assert cell.rank == 1
        app.action_attribute_contrast()
        assert app.attribution_contrast == (cell.token_id, cell.text)
        await pilot.press("a")
        result = await screen_result(app, pilot)
        plasma_id = app.shown_result.tokens[5].id
        expected = attribute(
            embedded, app.shown_result.token_ids, position=SAY, layer=-1, token=plasma_id, contrast=cell.token_id
        )
        assert result.contrast.id == cell.token_id
        assert result.total == pytest.approx(expected.total, abs=1e-9)
        assert sum(c.contribution for c in result.components) == pytest.approx(result.total, abs=1e-3)
        await pilot.press("escape")

        # The contrast equal to the token: one sentence, no screen.
        app.attribution_contrast = (plasma_id, " plasma")
        await pilot.press("a")
        await pilot.pause()
        assert not isinstance(app.screen, AttributionScreen)
        assert "both ␣plasma" in app.notices[-1][1]
        app.action_attribute_no_contrast()
        assert app.attribution_contrast is None


@dataclasses.dataclass(frozen=True)
class HoldWorker(Request):
    """A request whose handler holds the worker thread until the test lets it go."""

    priority: ClassVar[int] = 0


async def test_a_newer_request_supersedes_the_running_one(make_app):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await plasma_at_say(app, pilot)
        # Hold the worker, so the first attribution is still waiting when the second one
        # is asked for (deterministic, whatever the machine's speed).
        release, holding = threading.Event(), threading.Event()
        app.worker.register(HoldWorker, lambda model, request, ctx: (holding.set(), release.wait(60)))
        app.worker.submit(HoldWorker())
        assert holding.wait(30)
        await pilot.press("a")
        screen = app.screen
        first, first_seq = screen.request, screen.seq
        shown = []  # every result the view is given
        view = screen.query_one(AttributionView)
        show_result = view.show_result
        view.show_result = lambda result: (shown.append(result), show_result(result))
        # At once, before the first answer lands: row L10 at position 3.
        assert screen.result is None
        cell = dataclasses.replace(app.grid.current_cell, layer="L10", position=3)
        request, label = attribution_request(app.shown_result, cell)
        screen.attribute(request, label)
        assert request != first and HoldWorker in app.worker.busy_kinds()
        release.set()
        result = await screen_result(app, pilot)
        assert (result.position, result.row_label) == (3, "L10")
        await drain_worker(app, pilot)  # whatever else was on its way has landed (and must not be shown)
        assert [(r.position, r.row_label) for r in shown] == [(3, "L10")]
        assert view.result is result
        assert app.worker.latest_seq(AttributeCell) == screen.seq != first_seq  # the first is stale
        assert not any(severity == "error" for severity, _ in app.notices)


async def test_cells_the_engine_cannot_attribute_are_notices(make_app):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        app.apply_preset(PLASMA)
        await settle(app, pilot)
        app.action_toggle_mid()
        await settle(app, pilot)
        await pilot.press("escape", "G", "up")  # L29.attn: after the last attention
        assert app.grid.current_cell.layer == "L29.attn"
        await pilot.press("a")
        await pilot.pause()
        assert not isinstance(app.screen, AttributionScreen)
        assert "mid-block row" in app.notices[-1][1]

        app.action_toggle_mid()
        app.set_lens("raw")
        await settle(app, pilot)
        await pilot.press("a")
        await pilot.pause()
        assert not isinstance(app.screen, AttributionScreen)
        assert "plain logit lens" in app.notices[-1][1] and "raw" in app.notices[-1][1]


async def test_an_engine_error_reaches_the_user_as_a_notice(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        app.apply_preset(PLASMA)
        await settle(app, pilot)
        # A request the engine refuses (a position past the prompt): Failed, routed as usual.
        ids = tuple(app.shown_result.token_ids)
        app.push_screen(AttributionScreen(AttributeCell(ids, len(ids), 30, 1), "a cell past the end"))
        await until(pilot, lambda: any(s == "error" for s, _ in app.notices), "the notice")
        message = next(text for s, text in app.notices if s == "error")
        assert message.startswith(f"Position {len(ids)} is outside the prompt")
        shown = app.screen.query_one("#attribution-message", Static)
        assert shown.has_class("-error") and "outside the prompt" in str(shown.render())


def plasma_attribution_before_snapshot():
    async def run_before(pilot) -> None:
        app = pilot.app
        app.prompt_pane.input.cursor_blink = False
        await plasma_at_say(app, pilot)
        await pilot.press("a")
        await screen_result(app, pilot)
        app.clear_notifications()  # the preset and target notices would cover the view
        await pilot.pause()

    return run_before


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_snapshot_plasma_attribution(snap_compare, make_app, size):
    app = make_app(show_timings=False)
    assert snap_compare(app, terminal_size=size, run_before=plasma_attribution_before_snapshot())
