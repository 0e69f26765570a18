"""A lens grid as a few arrays: how a ``LensResult`` crosses from the model's process to
the UI's without thousands of small objects.

``pack_lens_result`` turns a result's cells into numpy arrays (ids, probabilities, logits,
entropies, KLs, ranks) and one table of the token texts they use; ``unpack_lens_result``
gives a ``LensResult`` back whose ``grid`` is a ``PackedGrid``: it reads like
``list[list[LensCell]]`` (``grid[row][column]``, ``len``, iteration) but makes each
``LensCell`` only when it is read, so the UI pays for the cells it draws, not for the
whole grid. Prediction depth is read straight from the arrays.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Iterator, Optional

import numpy as np

from lenstui.core.lens_result import PENDING, Depth, LensCell, LensResult, TopToken, TrackedValue, settle_row


class PackedGrid:
    """``grid[row][column]`` over arrays; cells are built on first read and kept."""

    def __init__(self, arrays: dict[str, np.ndarray], texts: dict[int, tuple[str, str]]):
        self.arrays = arrays
        self.texts = texts  # id -> (text, piece)
        self.n_rows, self.n_columns = arrays["entropy"].shape
        self._rows = [PackedRow(self, r) for r in range(self.n_rows)]

    def __len__(self) -> int:
        return self.n_rows

    def __getitem__(self, row: int) -> "PackedRow":
        return self._rows[row]

    def __iter__(self) -> Iterator["PackedRow"]:
        return iter(self._rows)

    def cell(self, row: int, column: int) -> LensCell:
        a = self.arrays
        text = self.texts
        top = tuple(
            TopToken(int(i), text[int(i)][0], text[int(i)][1], float(p), float(g))
            for i, p, g in zip(a["top_ids"][row, column], a["top_probs"][row, column], a["top_logits"][row, column])
        )
        tracked = tuple(
            TrackedValue(int(i), text[int(i)][0], float(p), int(k))
            for i, p, k in zip(a["tracked_ids"], a["tracked_probs"][row, column], a["tracked_ranks"][row, column])
        )
        return LensCell(
            top=top,
            entropy=float(a["entropy"][row, column]),
            kl_to_final=float(a["kl"][row, column]),
            target_rank=int(a["target_rank"][row, column]),
            target_prob=float(a["target_prob"][row, column]),
            tracked=tracked,
            final_top1_rank=int(a["final_top1_rank"][row, column]),
        )

    def depth(self, top_k: int) -> list[Depth]:
        """Prediction depth per column (``LensResult.depth`` asks the grid for it)."""
        ranks = self.arrays["final_top1_rank"]  # [rows, columns]
        return [
            Depth(top1=settle_row(ranks[:, c].tolist(), 1), topk=settle_row(ranks[:, c].tolist(), top_k))
            for c in range(self.n_columns)
        ]


class PackedRow:
    def __init__(self, grid: PackedGrid, row: int):
        self._grid = grid
        self._row = row
        self._cells: list[Optional[LensCell]] = [None] * grid.n_columns

    def __len__(self) -> int:
        return self._grid.n_columns

    def __getitem__(self, column):
        if isinstance(column, slice):
            return [self[c] for c in range(*column.indices(len(self)))]
        if column < 0:
            column += len(self)
        cell = self._cells[column]
        if cell is None:
            cell = self._cells[column] = self._grid.cell(self._row, column)
        return cell

    def __iter__(self) -> Iterator[LensCell]:
        return (self[c] for c in range(len(self)))


def pack_lens_result(result: LensResult) -> tuple:
    """The arguments of ``unpack_lens_result`` for ``result`` (a complete grid or a subset
    of columns: no PENDING cells)."""
    grid = result.grid
    rows = len(grid)
    columns = len(grid[0]) if rows else 0
    if isinstance(grid, PackedGrid):
        arrays, texts = grid.arrays, grid.texts
    else:
        first = grid[0][0] if rows and columns else None
        k = len(first.top) if first is not None else 0
        tracked_ids = np.array([t.id for t in result.tracked], dtype=np.int64)
        n_tracked = len(tracked_ids)
        cells = [cell for row in grid for cell in row]
        if any(cell is PENDING for cell in cells):
            raise ValueError("a streamed grid with PENDING columns is not packed")
        shape = (rows, columns)
        # One pass over every top token (a step's grid has ~20,000 of them: this runs on
        # every result the model's process sends).
        top_ids, top_probs, top_logits = [], [], []
        texts = {}
        for cell in cells:
            for t in cell.top:
                top_ids.append(t.id)
                top_probs.append(t.prob)
                top_logits.append(t.logit)
                if t.id not in texts:
                    texts[t.id] = (t.text, t.piece)
        arrays = {
            "top_ids": np.array(top_ids, dtype=np.int64).reshape(*shape, k),
            "top_probs": np.array(top_probs, dtype=np.float64).reshape(*shape, k),
            "top_logits": np.array(top_logits, dtype=np.float64).reshape(*shape, k),
            "entropy": np.array([c.entropy for c in cells], dtype=np.float64).reshape(shape),
            "kl": np.array([c.kl_to_final for c in cells], dtype=np.float64).reshape(shape),
            "target_rank": np.array([c.target_rank for c in cells], dtype=np.int64).reshape(shape),
            "target_prob": np.array([c.target_prob for c in cells], dtype=np.float64).reshape(shape),
            "final_top1_rank": np.array([c.final_top1_rank for c in cells], dtype=np.int64).reshape(shape),
            "tracked_ids": tracked_ids,
            "tracked_probs": np.array([[t.prob for t in c.tracked] for c in cells], dtype=np.float64).reshape(*shape, n_tracked),
            "tracked_ranks": np.array([[t.rank for t in c.tracked] for c in cells], dtype=np.int64).reshape(*shape, n_tracked),
        }
        for ref in result.tracked:
            texts[ref.id] = (ref.text, ref.piece)
    rest = {f.name: getattr(result, f.name) for f in fields(result) if f.name != "grid"}
    return (rest, arrays, texts)


def unpack_lens_result(rest: dict, arrays: dict[str, np.ndarray], texts: dict[int, tuple[str, str]]) -> LensResult:
    return LensResult(grid=PackedGrid(arrays, texts), **rest)
