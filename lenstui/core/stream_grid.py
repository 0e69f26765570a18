"""The grid of a streamed lens run while its columns arrive, chunk by chunk.

A ``StreamGrid`` reads like ``list[list[LensCell]]`` (``grid[row][column]``, ``len``,
iteration, assignment) and starts all PENDING. ``fill`` takes a partial result's
columns *without reading them*: a cell is taken from the partial's grid (a
``core.packed_grid.PackedGrid`` off the pipe, which builds it from its arrays) only
when something reads it, so a chunk that lands outside the view costs the UI next to
nothing. Prediction depth is kept per column as the chunks land (from the partial's
arrays when it has them), so a paint never walks the whole grid for it.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from lenstui.core.lens_result import PENDING, Depth, column_depth

_UNKNOWN = Depth(top1=None, topk=None)


class StreamGrid:
    def __init__(self, n_rows: int, n_columns: int):
        self._rows = [StreamRow(n_columns) for _ in range(n_rows)]
        self._depth: list[Depth] = [_UNKNOWN] * n_columns

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, row: int) -> "StreamRow":
        return self._rows[row]

    def __iter__(self) -> Iterator["StreamRow"]:
        return iter(self._rows)

    def __eq__(self, other: object) -> bool:
        # Equal to any grid with the same cells (a list of lists, another StreamGrid).
        try:
            return [list(row) for row in self] == [list(row) for row in other]  # type: ignore[union-attr]
        except TypeError:
            return NotImplemented

    __hash__ = None  # mutable, like the lists it stands for

    def fill(self, grid: Sequence[Sequence[Any]], columns: Sequence[int], top_k: int) -> None:
        """Column ``i`` of ``grid`` (a partial result's) is column ``columns[i]`` here."""
        columns = list(columns)
        for row, source in zip(self._rows, grid):
            for i, column in enumerate(columns):
                row._sources[column] = (source, i)
                row._cells[column] = None  # read from the source when asked
        depth = self._depth_of(grid, len(columns), top_k)
        for i, column in enumerate(columns):
            self._depth[column] = depth[i]

    def depth(self, top_k: int) -> list[Depth]:
        """Prediction depth per column (unknown for the columns not in yet), as ``fill``
        measured it (a run's chunks all have its top-k)."""
        return list(self._depth)

    @staticmethod
    def _depth_of(grid, n_columns: int, top_k: int) -> list[Depth]:
        from_arrays = getattr(grid, "depth", None)  # a PackedGrid reads its arrays
        if callable(from_arrays):
            return from_arrays(top_k)
        return [column_depth([row[column] for row in grid], top_k) for column in range(n_columns)]


class StreamRow:
    def __init__(self, n_columns: int):
        self._cells: list[Any] = [PENDING] * n_columns  # None: in its source, not read yet
        self._sources: dict[int, tuple[Sequence[Any], int]] = {}

    def __len__(self) -> int:
        return len(self._cells)

    def __getitem__(self, column):
        if isinstance(column, slice):
            return [self[c] for c in range(*column.indices(len(self)))]
        if column < 0:
            column += len(self._cells)
        cell = self._cells[column]
        if cell is None:
            source, index = self._sources.pop(column)
            cell = self._cells[column] = source[index]
        return cell

    def __setitem__(self, column: int, cell: Any) -> None:
        if column < 0:
            column += len(self._cells)
        self._sources.pop(column, None)
        self._cells[column] = cell

    def __iter__(self) -> Iterator[Any]:
        return (self[c] for c in range(len(self._cells)))
