"""Visible cells first, the rest streamed: the worker's partial results, the lens
handler's order, and the explorer painting them (Pilot, the real embedded model).

Nothing here asserts on time: the order of what was posted and painted is recorded
and checked, and the grid's final cells are checked against a from-scratch lens run
(a fresh ``LensState``, which shares nothing with the app's incremental one).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass
from typing import ClassVar

import pytest

from lenstui.core.lenses import LensOptions
from lenstui.core.lens_result import PENDING
from lenstui.engine.lens.state import LensState, lens_state
from lenstui.jobs.handlers import run_lens_handler
from lenstui.jobs.protocol import Done, Partial, Progress, Request, RunLens, Stopped
from lenstui.jobs.scheduler import ModelWorker
from lenstui.tui.app import LenstuiApp, WorkerReply
from lenstui.tui.widgets.grid import PENDING_MARK, LensGrid

TIMEOUT = 120
SETTLE_TIMEOUT = 600

# About 150 tokens: long enough that the stream has several chunks after the first.
LONG_PROMPT = (
    "The history of the lighthouse begins with fires lit on hilltops to guide ships home. "
    "Later, towers were built of stone, and keepers climbed their stairs every evening to "
    "trim the wicks and polish the lenses. The most famous of the ancient lights stood at "
    "Alexandria, where a great tower rose above the harbour for more than a thousand years. "
    "In the nineteenth century, the Fresnel lens changed everything: a ring of glass prisms "
    "could bend the light of a single lamp into a beam that sailors saw from twenty miles "
    "away. Today most lighthouses run without keepers, their lamps switched by clocks and "
    "sensors, but people still visit them to climb the stairs and look out over the sea, "
    "wondering what the keepers saw on the long nights of winter when storms came in."
)


# ---------------------------------------------------------------- the worker


@dataclass(frozen=True)
class Chunked(Request):
    """A test-only kind whose handler posts partials and waits between them."""

    label: str = ""
    needs_model: ClassVar[bool] = False


def test_partials_carry_their_seq_and_stop_when_superseded():
    results: "queue.Queue" = queue.Queue()
    worker = ModelWorker(results.put).start()
    release = threading.Event()

    def handler(model, request, ctx):
        ctx.partial((request.label, 1))
        if request.label == "old":
            release.wait(TIMEOUT)
        ctx.partial((request.label, 2))  # not posted once a newer request replaced this one
        return request.label

    worker.register(Chunked, handler)
    try:
        old = worker.submit(Chunked("old"))
        first = results.get(timeout=TIMEOUT)
        assert isinstance(first, Partial) and first.seq == old and first.value == ("old", 1)
        assert worker.is_current(first)
        new = worker.submit(Chunked("new"))
        assert not worker.is_current(first)  # the app drops it from now on
        release.set()
        seen = [results.get(timeout=TIMEOUT) for _ in range(4)]
    finally:
        worker.stop()
    by_seq = {seq: [r for r in seen if r.seq == seq] for seq in (old, new)}
    assert [type(r) for r in by_seq[old]] == [Stopped]  # its second partial never left
    assert [(type(r), getattr(r, "value", None)) for r in by_seq[new]] == [
        (Partial, ("new", 1)),
        (Partial, ("new", 2)),
        (Done, "new"),
    ]
    assert all(worker.is_current(r) for r in by_seq[new])


def test_partials_are_never_merged_away_in_the_app_queue():
    request = RunLens("x")
    a, b = WorkerReply(Partial(1, request, "a")), WorkerReply(Partial(1, request, "b"))
    assert not a.can_replace(b) and not b.can_replace(a)
    progress = [WorkerReply(Progress(1, request, m)) for m in "ab"]
    assert progress[1].can_replace(progress[0])  # progress still collapses to the latest


def test_first_positions_do_not_make_a_different_run():
    assert RunLens("x", first_positions=(1, 2)) == RunLens("x")
    assert RunLens("x", first_positions=(1,)) != RunLens("y", first_positions=(1,))


# ---------------------------------------------------------------- the handler


class Context:
    """What run_lens_handler needs of the worker's JobContext: a plain recorder."""

    def __init__(self, stop_after_partials: int | None = None):
        self.partials = []
        self.stop_after = stop_after_partials

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.partials) >= self.stop_after

    def partial(self, value) -> None:
        self.partials.append(value)


def _cells_equal(a, b) -> None:
    assert [t.id for t in a.top] == [t.id for t in b.top]
    assert [t.prob for t in a.top] == pytest.approx([t.prob for t in b.top], abs=1e-5)
    assert a.target_rank == b.target_rank


def test_the_handler_streams_the_first_positions_then_everything_once(tiny_llama):
    tiny_llama.caches.lens_states.pop("a", None)  # a cold state: nothing reused
    ids = list(range(3, 43))  # 40 positions
    ctx = Context()
    done = run_lens_handler(tiny_llama, RunLens(tuple(ids), first_positions=(-2, -1, 5), options=LensOptions(top_k=3)), ctx)
    assert ctx.partials[0].positions == [5, 38, 39]
    later = [p for part in ctx.partials[1:] for p in part.positions]
    assert sorted(later) == [p for p in range(40) if p not in (5, 38, 39)]  # each exactly once
    assert len(ctx.partials) >= 3  # chunks after the first
    reference = LensState(tiny_llama)
    reference.prepare(ids, LensOptions(top_k=3))
    expected = reference.result()
    for part in ctx.partials:
        for i, pos in enumerate(part.positions):
            for row in range(len(expected.layers)):
                _cells_equal(part.grid[row][i], expected.grid[row][pos])
            assert part.targets[i] == expected.targets[pos]
    for row in range(len(expected.layers)):
        for pos in range(40):
            _cells_equal(done.grid[row][pos], expected.grid[row][pos])


def test_a_reprioritised_run_keeps_what_the_stopped_one_computed(tiny_llama):
    from lenstui.core.errors import Cancelled

    tiny_llama.caches.lens_states.pop("a", None)
    ids = tuple(range(5, 65))  # 60 positions: the first partial, then 2 chunks
    stopped = Context(stop_after_partials=2)
    with pytest.raises(Cancelled):
        run_lens_handler(tiny_llama, RunLens(ids, first_positions=(-1,), options=LensOptions(top_k=3)), stopped)
    computed = set(lens_state(tiny_llama).computed_positions())
    assert computed  # the stopped stream left its columns behind
    again = Context()
    forwards = lens_state(tiny_llama).forward_count
    run_lens_handler(tiny_llama, RunLens(ids, first_positions=(0, 1), options=LensOptions(top_k=3)), again)
    assert lens_state(tiny_llama).forward_count == forwards  # same ids: no forward at all
    assert set(again.partials[0].positions) == computed | {0, 1}  # all of it, at once
    rest = [p for part in again.partials[1:] for p in part.positions]
    assert not set(rest) & computed


# ---------------------------------------------------------------- the explorer


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
        # (Textual runs LenstuiApp.on_mount after this one: handlers walk the MRO.)


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
            _cells_equal(shown.grid[row][pos], expected.grid[row][pos])


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
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
