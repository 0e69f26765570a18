"""The logit lens: every residual-stream row x every position, read as a prediction.

Rows are the embedding, then the residual after each block (optionally also the
mid-block residual, after attention and before the MLP). Each row is read through the
model's final norm, ``W_U``, ``b_U`` and any post-unembedding transform by the fused
readout (``readout.py``: how fast), which never holds a ``[vectors, vocab]`` tensor;
``lens_state.py`` keeps what was computed for which ids, so a run computes only the
positions and settings that changed. TransformerLens 4's ``logit_readout`` is the
reference the tests hold it to.

Lens variants:
- ``logit``: final norm, then unembedding (the classic logit lens);
- ``extended``: the last N blocks are part of the decoder: a row from before block
  ``L-N`` is written into block ``L-N``'s input and run through blocks ``L-N..L-1``
  (attention over every position, all rows batched into one forward pass), then read
  as ``logit``; rows from block ``L-N`` on are already past the cut and read as the
  model's own output (nostalgebraist's "extended decoder" for gpt-neo);
- ``raw``: unembedding without the final norm.

Per cell: the top-k tokens (probability and logit), the entropy of the row's
distribution, KL(final || row) where "final" is the model's own output distribution,
and the rank and probability of a target token (default: the model's own top-1 at
that position).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

# Cancelled lives in errors.py; re-exported so ``from lenstui.engine.lens import Cancelled`` keeps working.
from lenstui.engine.errors import Cancelled, InputError  # noqa: F401
from lenstui.engine.lens_kinds import LENS_KINDS
from lenstui.engine.models import LoadedModel
from lenstui.engine.vocab import TokenRef, TokenSpec

MAX_TOP_K = 100
# Tokens followed through the layers at once (pinned in the app, --track in the CLI).
MAX_TRACKED = 8


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


@dataclass
class LensResult:
    model: str
    lens: str
    tokens: list[TokenRef]  # the prompt's tokens, in order
    layers: list[str]  # row labels: "embed", then "L0".. (with "L3.attn" mid rows)
    grid: list[list[LensCell]]  # grid[row][position]
    targets: list[TokenRef]  # the target token at each position
    target_is_default: bool = True
    seconds: float = 0.0
    extended_blocks: int = 0
    # The prompt positions the grid's columns are (None: every position, in order).
    positions: Optional[list[int]] = None
    tracked: list[TokenRef] = field(default_factory=list)  # tokens followed in every cell
    top_k: int = 0  # tokens per cell (0: read it from the cells)

    @property
    def depth(self) -> list[Depth]:
        """Prediction depth per grid column, rows indexing ``layers``."""
        # A streamed grid has None for columns not computed yet: their depth is unknown.
        first = next((cell for row in self.grid for cell in row if cell is not None), None)
        k = self.top_k or (len(first.top) if first is not None else 1)
        out = []
        for col in range(len(self.grid[0]) if self.grid else 0):
            column = [row[col] for row in self.grid]
            if any(cell is None for cell in column):
                out.append(Depth(top1=None, topk=None))
                continue
            ranks = [cell.final_top1_rank for cell in column]
            out.append(Depth(top1=settle_row(ranks, 1), topk=settle_row(ranks, k)))
        return out

    @property
    def column_positions(self) -> list[int]:
        """The prompt position of each grid column."""
        return list(range(len(self.tokens))) if self.positions is None else list(self.positions)

    @property
    def next_token(self) -> TokenRef:
        """The model's greedy next token after the prompt (final row, last computed position)."""
        top = self.grid[-1][-1].top[0]
        return TokenRef(top.id, top.text, top.piece)

    @property
    def token_ids(self) -> list[int]:
        return [t.id for t in self.tokens]

    def to_json(self) -> dict:
        payload = {
            "model": self.model,
            "lens": self.lens,
            "tokens": [t.to_json() for t in self.tokens],
            "layers": list(self.layers),
            "grid": [[cell.to_json() for cell in row] for row in self.grid],
            "targets": [t.to_json() for t in self.targets],
            "extended_blocks": self.extended_blocks,
            "seconds": self.seconds,
        }
        if self.positions is not None:  # a subset: grid and targets columns are these positions
            payload["positions"] = list(self.positions)
        if self.tracked:
            payload["tracked"] = [t.to_json() for t in self.tracked]
        payload["depth"] = [d.to_json() for d in self.depth]
        return payload


def parse_positions(spec: str, n_tokens: int) -> list[int]:
    """Positions from ``-1``, ``3``, ``5:12`` (end exclusive, like Python) or a comma list
    of those; negative counts from the end. Raises InputError with the accepted forms."""
    chosen: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if ":" in part:
                first, _, last = part.partition(":")
                start = int(first) if first.strip() else 0
                stop = int(last) if last.strip() else n_tokens
                picked = list(range(n_tokens))[start:stop]
            else:
                index = int(part)
                if not -n_tokens <= index < n_tokens:
                    raise InputError(
                        f"Position {index} is outside the prompt ({n_tokens} tokens: 0..{n_tokens - 1}, or -1 for the last)."
                    )
                picked = [index % n_tokens]
        except ValueError:
            raise InputError(
                f"Cannot read positions {spec!r}: use an index (3, -1), a range (5:12) or a comma list of them."
            ) from None
        if not picked:
            raise InputError(f"Positions {part!r} select nothing in a {n_tokens}-token prompt.")
        chosen.extend(p for p in picked if p not in chosen)
    return chosen


def run_lens(
    model: LoadedModel,
    prompt: Union[str, Sequence[int]],
    *,
    top_k: int = 10,
    lens: str = "logit",
    extended_blocks: int = 1,
    incl_mid: bool = False,
    target: Optional[TokenSpec] = None,
    positions: Union[None, str, Sequence[int]] = None,
    track: Sequence[TokenSpec] = (),
    slot: str = "a",
    should_stop: Optional[Callable[[], bool]] = None,
) -> LensResult:
    """Run the lens on a prompt (text or token ids): the whole grid, or only the columns
    at ``positions`` (indices, negative from the end, or a spec for :func:`parse_positions`).

    Incremental through the model's :class:`~lenstui.engine.lens_state.LensState`: what
    the last run shares with this one (its token prefix, its forward pass, cells read
    with the same settings) is reused. Raises InputError on bad input and Cancelled when
    ``should_stop()`` turns true between chunks.

    ``track``: up to MAX_TRACKED tokens (text, vocabulary piece or id) whose probability
    and rank every cell reports (extra targets of the same readout pass). ``slot``: which
    of the model's lens states to use ("a", "b": two prompts side by side stay incremental).
    """
    from lenstui.engine.lens_state import lens_state

    started = time.perf_counter()
    state = lens_state(model, slot)
    plan = state.prepare(
        prompt,
        top_k=top_k,
        lens=lens,
        extended_blocks=extended_blocks,
        incl_mid=incl_mid,
        target=target,
        track=track,
        should_stop=should_stop,
    )
    if positions is None:
        return state.result(should_stop, started=started)
    n = plan.n_positions
    if isinstance(positions, str):
        chosen = parse_positions(positions, n)
    else:
        chosen = [int(p) % n if -n <= int(p) < 0 else int(p) for p in positions]
    columns = state.cells(chosen, should_stop)
    settings = plan.settings
    return LensResult(
        model=model.name,
        lens=settings.lens,
        tokens=plan.tokens,
        layers=plan.layers,
        grid=columns.cells,
        targets=columns.targets,
        target_is_default=settings.target_id is None,
        seconds=time.perf_counter() - started,
        extended_blocks=settings.extended_blocks,
        positions=columns.positions,
        tracked=plan.tracked,
        top_k=settings.top_k,
    )
