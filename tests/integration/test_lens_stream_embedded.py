"""Streamed lens results in the explorer on the embedded model: the visible columns are painted
before the whole grid, a burst of edits leaves no stale cell, and moving to columns not
computed yet brings them first."""

from __future__ import annotations

import asyncio

import pytest

from lenstui.core.lens_result import PENDING
from lenstui.engine.lens.state import LensState
from lenstui.jobs.protocol import RunLens
from lenstui.tui.app import LenstuiApp
from lenstui.tui.widgets.grid import PENDING_MARK, LensGrid
from testkit.apphelpers import LONG_PROMPT
from testkit.checks import assert_cells_equal
from lenstui.core.lenses import LensOptions

SETTLE_TIMEOUT = 600


class StreamApp(LenstuiApp):
    """Records what the grid was given, in order, and whether it was current then."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.worker_stop_timeout = 300
        self.paints: list[tuple[str, object, list[int], bool]] = []
        self.first_partial = asyncio.Event()

    def on_mount(self) -> None:
        grid = self.grid
        show_partial, show_result = grid.show_partial, grid.show_result

        def record_partial(partial, run):
            self.paints.append(("partial", run, list(partial.column_positions), run == self.session.last_request))
            show_partial(partial, run)
            self.first_partial.set()

        def record_result(result):
            if result.grid and all(c is not PENDING for c in result.grid[0]):  # not a skeleton
                self.paints.append(("result", self.session.last_request, [], True))
            show_result(result)

        grid.show_partial, grid.show_result = record_partial, record_result


@pytest.fixture
def make_app(embedded):
    def make(prompt: str = "") -> StreamApp:
        embedded.caches.lens_states.pop("a", None)  # each test starts from a cold lens state
        return StreamApp(prompt, loader=lambda spec, **kw: embedded)

    return make


async def settle(app, pilot) -> None:
    await pilot.pause()
    await asyncio.wait_for(app.model_settled.wait(), SETTLE_TIMEOUT)
    await asyncio.wait_for(app.lens_settled.wait(), SETTLE_TIMEOUT)
    await pilot.pause()


def grid_text(app) -> str:
    grid = app.query_one(LensGrid)
    return "\n".join(grid.render_line(y).text for y in range(grid.scrollable_content_region.height))


def assert_grid_is_a_fresh_run(app, model, text: str) -> None:
    """Every cell the grid holds equals a from-scratch lens run of ``text``."""
    reference = LensState(model)
    reference.prepare(text, LensOptions(top_k=app.session.top_k))
    expected = reference.result()
    shown = app.grid.result
    assert [t.id for t in shown.tokens] == [t.id for t in expected.tokens]
    for row in range(len(expected.layers)):
        for pos in range(len(expected.tokens)):
            assert_cells_equal(shown.grid[row][pos], expected.grid[row][pos])


async def test_visible_columns_are_painted_before_the_complete_grid(make_app, embedded):
    n_tokens = len(embedded.tokenizer(LONG_PROMPT)["input_ids"])
    assert n_tokens >= 130
    app = make_app(LONG_PROMPT)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        kinds = [kind for kind, *_ in app.paints]
        assert kinds[-1] == "result" and kinds.count("result") == 1
        partials = [positions for kind, _, positions, _ in app.paints if kind == "partial"]
        assert len(partials) >= 3  # the visible columns, then chunks, then the whole grid
        assert n_tokens - 1 in partials[0]  # the prompt's end is in view: it came first
        assert 0 not in partials[0]
        # (A column can come twice: a re-prioritised run repeats what was done, for free.)
        assert sorted({p for chunk in partials for p in chunk}) == list(range(n_tokens))
        assert app.grid.streaming is False
        assert PENDING_MARK not in grid_text(app)
        assert_grid_is_a_fresh_run(app, embedded, LONG_PROMPT)


async def test_a_burst_of_edits_leaves_no_stale_cell(make_app, embedded):
    app = make_app(LONG_PROMPT)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        app.paints.clear()
        # Runs at the end, then one at the start (every position changes), each
        # superseding the last before it finished.
        await pilot.press("end", "x", "enter", "backspace", "y", "enter", "home", "A", "enter", "end", "z")
        await pilot.press("enter")
        await settle(app, pilot)
        final = app.prompt_pane.input.value
        assert final == "A" + LONG_PROMPT + "yz"
        assert app.paints and all(current for *_, current in app.paints)  # nothing stale painted
        assert app.paints[-1][0] == "result" and app.paints[-1][1] == RunLens(final)
        assert_grid_is_a_fresh_run(app, embedded, final)


async def test_moving_to_columns_not_computed_yet_brings_them_first(make_app, embedded):
    app = make_app(LONG_PROMPT)
    async with app.run_test(size=(120, 40)) as pilot:
        await asyncio.wait_for(app.first_partial.wait(), SETTLE_TIMEOUT)
        grid = app.grid
        assert grid.streaming
        grid.action_position(-10_000)  # to the prompt's start, the last chunk in stream order
        in_view = set(grid.positions_in_view())
        missing = set(grid._missing)
        assert in_view & missing  # placeholders are what the view shows now
        assert PENDING_MARK in grid_text(app)
        others = missing - in_view
        moved_at = len(app.paints)
        await settle(app, pilot)

        def completed(positions: set[int]) -> int:
            todo = set(positions)
            for index, (kind, _, painted, _) in enumerate(app.paints[moved_at:]):
                todo -= set(painted) if kind == "partial" else todo
                if not todo:
                    return index
            raise AssertionError(f"never painted: {sorted(todo)[:10]}")

        assert completed(in_view & missing) < completed(others)
        assert_grid_is_a_fresh_run(app, embedded, LONG_PROMPT)
