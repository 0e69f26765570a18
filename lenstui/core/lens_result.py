"""What a lens run hands every face: plain dataclasses (ids, floats, strings).

``LensResult`` is the grid of one run: ``grid[row][column]`` cells (a ``LensCell``: the
row's top-k tokens, entropy, KL to the final row, the target's rank and probability,
the tracked tokens' values), the prompt's tokens, the row labels and the target per
position. The app's grid, the CLI's ``--json`` and the tests all read it; no tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from lenstui.core.learned_lens import LensFile
from lenstui.core.tokens import TokenRef


@dataclass(frozen=True)
class TrackedValue:
    """A tracked token's value in one cell: its probability and rank in that row."""

    id: int
    text: str
    prob: float
    rank: int  # 0 = the row's argmax

    def to_json(self) -> dict:
        return {"id": self.id, "text": self.text, "prob": self.prob, "rank": self.rank}


@dataclass(frozen=True)
class TopToken:
    id: int
    text: str
    piece: str
    prob: float
    logit: float

    def to_json(self) -> dict:
        return {"id": self.id, "text": self.text, "piece": self.piece, "prob": self.prob, "logit": self.logit}


@dataclass(frozen=True)
class LensCell:
    top: tuple[TopToken, ...]
    entropy: float  # nats
    kl_to_final: float  # KL(final || this row), nats
    target_rank: int  # 0 = the row's argmax
    target_prob: float
    tracked: tuple[TrackedValue, ...] = ()  # the tracked tokens, in the order asked
    # The rank in this row of the model's own final top-1 at this position (whatever the
    # target is): prediction depth is read from it. -1 where it was not computed.
    final_top1_rank: int = -1

    def to_json(self) -> dict:
        payload = {
            "top": [t.to_json() for t in self.top],
            "entropy": self.entropy,
            "kl_to_final": self.kl_to_final,
            "target_rank": self.target_rank,
            "target_prob": self.target_prob,
        }
        if self.tracked:
            payload["tracked"] = [t.to_json() for t in self.tracked]
        return payload


class Pending:
    """Where a streamed run's column is not computed yet: its cells and its target.

    A grid being streamed is a ``LensResult`` holding ``PENDING`` (the one instance) in
    those places; a complete result never does. Test with ``is PENDING``."""

    _instance: Optional["Pending"] = None

    def __new__(cls) -> "Pending":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "PENDING"


PENDING = Pending()


@dataclass(frozen=True)
class Depth:
    """Where a position's answer settles: the first row from which the model's final top-1
    is the top-1 (``top1``) / inside the top-k (``topk``) in that row and every later one.
    None when it is not, even in the last row (the raw lens, say)."""

    top1: Optional[int]
    topk: Optional[int]

    def to_json(self) -> dict:
        return {"top1": self.top1, "topk": self.topk}


def settle_row(ranks: Sequence[int], below: int) -> Optional[int]:
    """The first index from which every rank is < ``below`` (None if the last one is not)."""
    row = None
    for index in range(len(ranks) - 1, -1, -1):
        if not 0 <= ranks[index] < below:
            break
        row = index
    return row


def column_depth(column: Sequence["LensCell"], top_k: int) -> Depth:
    """Prediction depth of one grid column (its cells, rows in order, none PENDING)."""
    ranks = [cell.final_top1_rank for cell in column]
    return Depth(top1=settle_row(ranks, 1), topk=settle_row(ranks, top_k))


@dataclass
class LensResult:
    model: str
    lens: str
    tokens: list[TokenRef]  # the prompt's tokens, in order
    layers: list[str]  # row labels: "embed", then "L0".. (with "L3.attn" mid rows)
    grid: list[list[LensCell]]  # grid[row][position] (PENDING where a streamed column is not in)
    targets: list[TokenRef]  # the target token at each position (PENDING likewise)
    target_is_default: bool = True
    seconds: float = 0.0
    extended_blocks: int = 0
    # The prompt positions the grid's columns are (None: every position, in order).
    positions: Optional[list[int]] = None
    tracked: list[TokenRef] = field(default_factory=list)  # tokens followed in every cell
    top_k: int = 0  # tokens per cell (0: read it from the cells)
    lens_file: Optional[LensFile] = None  # the learned lens's file (lens "tuned", "jacobian")
    patchscope_target: Optional[str] = None  # the target prompt (lens "patchscope")

    @property
    def depth(self) -> list[Depth]:
        """Prediction depth per grid column, rows indexing ``layers``."""
        # A streamed grid has PENDING columns: their depth is unknown yet.
        k = self.top_k
        if not k:  # (only then a cell is read: a streamed grid builds its cells when read)
            first = next((cell for row in self.grid for cell in row if cell is not PENDING), None)
            k = len(first.top) if first is not None else 1
        from_arrays = getattr(self.grid, "depth", None)  # a PackedGrid reads its arrays
        if callable(from_arrays):
            return from_arrays(k)
        out = []
        for col in range(len(self.grid[0]) if self.grid else 0):
            column = [row[col] for row in self.grid]
            if any(cell is PENDING for cell in column):
                out.append(Depth(top1=None, topk=None))
                continue
            out.append(column_depth(column, k))
        return out

    @property
    def column_positions(self) -> list[int]:
        """The prompt position of each grid column."""
        return list(range(len(self.tokens))) if self.positions is None else list(self.positions)

    @property
    def next_token(self) -> TokenRef:
        """The model's greedy next token after the prompt (final row, last computed position)."""
        cell = self.grid[-1][-1]
        if cell is PENDING:
            raise ValueError("the last position of this streamed grid is not computed yet")
        top = cell.top[0]
        return TokenRef(top.id, top.text, top.piece)

    @property
    def token_ids(self) -> list[int]:
        return [t.id for t in self.tokens]

    def placeholders(self) -> "LensResult":
        """The whole grid of this run with every column PENDING: what a streamed grid
        starts as, before this result's columns (and the others) are filled in."""
        n = len(self.tokens)
        return LensResult(
            model=self.model,
            lens=self.lens,
            tokens=self.tokens,
            layers=self.layers,
            grid=[[PENDING] * n for _ in self.layers],
            targets=[PENDING] * n,
            target_is_default=self.target_is_default,
            seconds=self.seconds,
            extended_blocks=self.extended_blocks,
            tracked=self.tracked,
            top_k=self.top_k,
            lens_file=self.lens_file,
            patchscope_target=self.patchscope_target,
        )

    @property
    def complete(self) -> bool:
        """No cell or target is PENDING (a streamed grid before its last column is not)."""
        return all(t is not PENDING for t in self.targets) and all(
            cell is not PENDING for row in self.grid for cell in row
        )

    def to_json(self) -> dict:
        """The ``lenstui lens --json`` payload; a cell or target not computed yet (a
        streamed grid) is ``null``."""
        payload = {
            "model": self.model,
            "lens": self.lens,
            "tokens": [t.to_json() for t in self.tokens],
            "layers": list(self.layers),
            "grid": [[None if cell is PENDING else cell.to_json() for cell in row] for row in self.grid],
            "targets": [None if t is PENDING else t.to_json() for t in self.targets],
            "extended_blocks": self.extended_blocks,
            "seconds": self.seconds,
        }
        if self.positions is not None:  # a subset: grid and targets columns are these positions
            payload["positions"] = list(self.positions)
        if self.tracked:
            payload["tracked"] = [t.to_json() for t in self.tracked]
        payload["depth"] = [d.to_json() for d in self.depth]
        if self.lens_file is not None:
            payload["lens_file"] = self.lens_file.to_json()
        if self.patchscope_target is not None:
            payload["patchscope_target"] = self.patchscope_target
        return payload
