"""Visible cells first, the rest streamed: the worker's partial results, the lens
handler's order (the explorer painting them, on the embedded model:
tests/integration/test_lens_stream_embedded.py).

Nothing here asserts on time: the order of what was posted and painted is recorded
and checked, and the grid's final cells are checked against a from-scratch lens run
(a fresh ``LensState``, which shares nothing with the app's incremental one).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import ClassVar

import pytest

from lenstui.engine.lens.state import LensState, lens_state
from lenstui.jobs.handlers import run_lens_handler
from lenstui.jobs.protocol import Done, Partial, Progress, Request, RunLens, Stopped
from lenstui.jobs.scheduler import ModelWorker
from lenstui.tui.app import WorkerReply
from testkit.checks import assert_cells_equal
from lenstui.core.lenses import LensOptions

TIMEOUT = 120
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
        self.progress_lines = []

    def progress(self, message: str, fraction=None) -> None:
        self.progress_lines.append((message, fraction))

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.partials) >= self.stop_after

    def partial(self, value) -> None:
        self.partials.append(value)


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
                assert_cells_equal(part.grid[row][i], expected.grid[row][pos])
            assert part.targets[i] == expected.targets[pos]
    for row in range(len(expected.layers)):
        for pos in range(40):
            assert_cells_equal(done.grid[row][pos], expected.grid[row][pos])


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

        # (Textual runs LenstuiApp.on_mount after this one: handlers walk the MRO.)
