"""A streamed run's grid (``core.stream_grid.StreamGrid``): the chunks of a real lens run,
sent through the pipe's format and filled in any order, read back exactly as the whole
run computed at once, with its prediction depth; and a chunk costs the UI no cells until
one is read."""

from __future__ import annotations

import random

import pytest

from dataclasses import replace

from lenstui.core.lenses import LensOptions
from lenstui.core.lens_result import PENDING
from lenstui.core.packed_grid import PackedGrid
from lenstui.core.stream_grid import StreamGrid
from lenstui.engine.lens.state import LensState
from lenstui.jobs.transport import dumps, loads

PROMPT = "Sometimes, when people say plasma, they mean the liquid part of blood."


def _cells(cell):
    return (
        [(t.id, t.prob, t.logit) for t in cell.top],
        cell.entropy,
        cell.kl_to_final,
        cell.target_rank,
        cell.final_top1_rank,
    )


def _streamed(partial):
    """What the grid widget starts a streamed run as (widgets/grid.py, show_partial)."""
    return replace(partial.placeholders(), grid=StreamGrid(len(partial.layers), len(partial.tokens)))


@pytest.fixture(scope="module")
def run(tiny_llama):
    state = LensState(tiny_llama)
    plan = state.prepare(PROMPT, LensOptions(top_k=4))
    whole = state.result()
    n = plan.n_positions
    order = list(range(n))
    random.Random(7).shuffle(order)
    chunks = [sorted(order[i : i + 3]) for i in range(0, n, 3)]
    # As the UI receives them: packed arrays off the pipe.
    partials = [loads(dumps(plan.result(state.cells(chunk)))) for chunk in chunks]
    return whole, partials


def test_chunks_in_any_order_read_back_as_the_whole_run(run):
    whole, partials = run
    shown = _streamed(partials[0])
    filled: set[int] = set()
    for partial in partials:
        assert isinstance(partial.grid, PackedGrid)
        shown.grid.fill(partial.grid, partial.column_positions, whole.top_k)
        filled.update(partial.column_positions)
        depth = shown.depth
        for pos in range(len(whole.tokens)):
            if pos in filled:
                assert [_cells(row[pos]) for row in shown.grid] == [_cells(row[pos]) for row in whole.grid]
                assert depth[pos] == whole.depth[pos]
            else:
                assert all(row[pos] is PENDING for row in shown.grid)
                assert depth[pos].top1 is None and depth[pos].topk is None
    assert shown.grid == whole.grid  # every cell, as lists compare


def test_a_filled_chunk_makes_no_cell_until_one_is_read(run):
    whole, partials = run
    partial = loads(dumps(partials[1]))  # fresh arrays: no cell built yet
    shown = _streamed(partial)
    shown.grid.fill(partial.grid, partial.column_positions, whole.top_k)
    assert shown.depth  # depth comes from the arrays
    assert all(cell is None for row in partial.grid for cell in row._cells)
    pos = partial.column_positions[0]
    assert _cells(shown.grid[2][pos]) == _cells(whole.grid[2][pos])
    built = [(r, c) for r, row in enumerate(partial.grid) for c, cell in enumerate(row._cells) if cell is not None]
    assert built == [(2, 0)]  # just the one read


def test_a_cell_set_by_hand_replaces_the_chunks(run):
    whole, partials = run
    partial = partials[0]
    shown = _streamed(partial)
    shown.grid.fill(partial.grid, partial.column_positions, whole.top_k)
    pos = partial.column_positions[0]
    shown.grid[0][pos] = PENDING
    assert shown.grid[0][pos] is PENDING and shown.grid[0][-len(whole.tokens) + pos] is PENDING
