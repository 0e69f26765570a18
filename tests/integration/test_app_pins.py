"""Pinned tokens, the trajectory view and the compare view in the explorer, on the real
model: keys and palette actions reach the session, the lens answers with the pins'
values, the views draw them, exports carry them."""

from __future__ import annotations

import json

import pytest

from lenstui.tui.screens.compare import CompareScreen
from lenstui.tui.screens.pin_prompt import PinPrompt
from lenstui.tui.screens.trajectory import TrajectoryPlot, TrajectoryScreen, trajectory_series
from testkit.apphelpers import EIFFEL, grid_lines, settle, until


async def pin_typed(app, pilot, text: str) -> None:
    app.action_pin_typed()
    await pilot.pause()
    assert isinstance(app.screen, PinPrompt)
    app.screen.query_one("#pin-input").value = text
    await pilot.press("enter")
    await settle(app, pilot)


async def test_pin_three_tokens_trajectory_unpin_and_export(make_app, embedded, tmp_path):
    app = make_app(EIFFEL)
    app.config.export_dir = str(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("escape")  # to the grid: cursor on " Paris", last layer
        await pilot.press("P")
        await settle(app, pilot)
        paris = embedded.tokenizer.encode(" Paris")[0]
        assert app.session.pins == [paris]
        await pin_typed(app, pilot, " London")
        await pin_typed(app, pilot, "#15107")
        london = embedded.tokenizer.encode(" London")[0]
        assert app.session.pins == [paris, london, 15107]  # typed pins resolved to ids
        result = app.shown_result
        assert [t.id for t in result.tracked] == [paris, london, 15107]
        last = result.grid[-1][-1]
        assert last.tracked[0].rank == 0 and last.tracked[0].prob == pytest.approx(last.top[0].prob)
        # the grid highlights the pinned token and shows the depth row
        assert any(line.startswith("depth") for line in grid_lines(app))

        await pilot.press("T")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, TrajectoryScreen)
        series = trajectory_series(result, len(result.tokens) - 1)
        assert [s.token_id for s in series] == [paris, london, 15107]  # target (Paris) drawn once
        assert series[0].probs == [row[-1].tracked[0].prob for row in result.grid]
        plot_text = screen.query_one(TrajectoryPlot).plt.build()
        assert "Paris" in plot_text and "London" in plot_text
        await pilot.press("r")  # rank mode
        assert screen.mode == "rank"
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, TrajectoryScreen)

        # export carries the pins
        app.action_export()
        exported = json.loads(next(tmp_path.glob("*.json")).read_text())
        assert [t["id"] for t in exported["tracked"]] == [paris, london, 15107]
        assert len(exported["grid"][0][0]["tracked"]) == 3 and "depth" in exported

        # unpin one (the key again on the same cell), then all
        await pilot.press("P")
        await settle(app, pilot)
        assert app.session.pins == [london, 15107]
        app.action_unpin_all()
        await settle(app, pilot)
        assert app.session.pins == [] and app.shown_result.tracked == []


async def test_a_typed_pin_that_is_not_one_token_is_dropped(make_app):
    app = make_app(EIFFEL)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        shown = app.shown_result
        await pin_typed(app, pilot, "not one token at all")
        await settle(app, pilot)
        assert app.session.pins == []
        assert any("not one" in text for _, text in app.notices)
        assert app.shown_result is not None and app.shown_result.token_ids == shown.token_ids


async def test_compare_view_two_prompts(make_app):
    app = make_app("Is there a seahorse emoji?")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pin_typed(app, pilot, " sea")
        await pilot.press("escape")
        await pilot.press("C")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        await until(pilot, lambda: screen.comparison is not None, "the comparison")
        comparison = screen.comparison
        assert "".join(t.text for t in comparison.b.tokens) == "Is there a fish emoji?"
        assert len(comparison.kl) == len(comparison.a.layers)
        assert comparison.kl[0] > 0 or comparison.kl[-1] > 0
        table = screen.query_one("#compare-table")
        assert table.row_count == len(comparison.a.layers)
        assert any("sea" in str(col.label) for col in table.columns.values())
        # a new prompt B keeps A's forward (incremental slots)
        screen.query_one("#compare-b").value = "Is there a horse emoji?"
        screen.query_one("#compare-b").focus()
        await pilot.press("enter")
        await until(pilot, lambda: screen.comparison is not comparison and screen.settled, "the new comparison")
        assert "horse" in "".join(t.text for t in screen.comparison.b.tokens)
        assert app.session.prompt_b == "Is there a horse emoji?"
