"""What the causal lens hands every face: a patched run, a sweep, a steered run.

Plain dataclasses (ids, floats, strings; no tensors), computed by
``lenstui.engine.causal`` and read by the app, the CLI's ``--json`` and the tests.

**The causal cone.** A patch (or a steer) changes some cells of the lens grid and
provably leaves the others alone: a causal model's position p reads positions <= p
only, and a row reads only what was computed before it. ``cone[pos]`` is the first
row index that can change at that position (``None``: nothing there can). Rows are
the lens' labels (``embed``, ``L0.attn``, ``L0``, ...):

- a patch of block L's output (``resid``; ``L = -1`` is the embedding) at position P
  lands in row ``L{L}`` (``embed``) at P; its attention output (``attn``, a head) in
  ``L{L}.attn`` when mid rows are shown (else ``L{L}``); its MLP output in ``L{L}``.
  At P, every row from there on can change. At a later position only what an
  attention sublayer *after* the patch reads can change: rows from ``L{L+1}.attn``
  (``L{L+1}``) on. Earlier positions never change.
- the extended lens decodes each row over all positions, so a later position's row
  changes as soon as the patched position's row did (from the landing row on).
- a steer adds to block L's output at every position from P on: from row ``L{L}`` on,
  at every one of those positions.

The KL to the final row and the prediction depth of a cell outside the cone can still
differ from the clean run's, since they are measured against that position's final
row, which the patch may have moved; the cell's own distribution cannot.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Sequence, Union

from lenstui.core.lens_result import LensResult, TopToken, TrackedValue
from lenstui.core.tokens import TokenRef

COMPONENTS = ("resid", "attn", "mlp", "head")
ABLATIONS = ("zero", "mean")
SWEEPS = ("layers", "positions")


def attention_counts(layers: Sequence[str]) -> list[int]:
    """Per row label, how many attention sublayers have run when the row is read:
    ``embed`` 0, ``L3.attn`` and ``L3`` both 4."""
    counts = []
    for label in layers:
        if label == "embed":
            counts.append(0)
        else:
            counts.append(int(label[1:].split(".", 1)[0]) + 1)
    return counts


def block_row(layers: Sequence[str], layer: int) -> int:
    """The row index of block ``layer``'s output (``-1``: the embedding)."""
    return list(layers).index("embed" if layer < 0 else f"L{layer}")


def landing_row(layers: Sequence[str], component: str, layer: int) -> int:
    """The row a patch of ``component`` at block ``layer`` writes first."""
    if component in ("attn", "head") and f"L{layer}.attn" in layers:
        return list(layers).index(f"L{layer}.attn")
    return block_row(layers, layer)


def patch_cone(
    layers: Sequence[str], n_positions: int, *, component: str, layer: int, position: int, extended: bool = False
) -> list[Optional[int]]:
    """``cone[pos]``: the first row a patch of ``component`` at block ``layer``,
    position ``position`` can change there (None: no row can). See the module doc."""
    first = landing_row(layers, component, layer)
    counts = attention_counts(layers)
    later = first if extended else next((r for r, c in enumerate(counts) if c >= layer + 2), None)
    cone: list[Optional[int]] = []
    for pos in range(n_positions):
        cone.append(None if pos < position else first if pos == position else later)
    return cone


def steer_cone(layers: Sequence[str], n_positions: int, *, layer: int, position: int) -> list[Optional[int]]:
    """``cone[pos]`` for a steer added to block ``layer``'s output from ``position`` on."""
    first = block_row(layers, layer)
    return [None if pos < position else first for pos in range(n_positions)]


def in_cone(cone: Sequence[Optional[int]], row: int, pos: int) -> bool:
    first = cone[pos] if 0 <= pos < len(cone) else None
    return first is not None and row >= first


def select_columns(result: LensResult, positions: Sequence[int]) -> LensResult:
    """A whole-grid LensResult cut to the columns at ``positions`` (in that order)."""
    cols = [result.column_positions.index(p) for p in positions]
    return replace(
        result,
        grid=[[row[c] for c in cols] for row in result.grid],
        targets=[result.targets[c] for c in cols],
        positions=[result.column_positions[c] for c in cols],
    )


def layer_label(layer: int) -> str:
    return "embed" if layer < 0 else f"L{layer}"


@dataclass(frozen=True)
class PatchSite:
    """Where a patch writes, as a person names it (the engine reads it against the model
    into a :class:`PatchSpec`): block ``layer``'s ``component`` at ``position`` of prompt A,
    taken from ``from_position`` of prompt B (default: ``position`` read in B)."""

    layer: Union[int, str, None] = None  # "L3", 3, "embed" (-1); None: every layer (a layers sweep)
    position: int = -1  # negative counts from the end
    component: str = "resid"  # resid, attn, mlp, head (with ``head``), or a head as "L3H4"/"H4"
    head: Optional[int] = None
    from_position: Optional[int] = None


@dataclass(frozen=True)
class SteerSetting:
    """A steer as a person names it: ``alpha`` times ``scale`` (default: the median residual
    norm after block ``layer``) along the direction toward ``toward`` (away from ``away``),
    added after block ``layer`` from ``position`` on."""

    toward: Union[str, int]
    layer: Union[int, str] = "L0"
    alpha: float = 4.0
    away: Union[str, int, None] = None
    position: int = 0
    scale: Optional[float] = None  # fixes the unit (the app keeps the first run's while it steps)


@dataclass(frozen=True)
class PatchSpec:
    """One intervention on prompt A: block ``layer``'s ``component`` at ``position``
    replaced by prompt B's at ``from_position`` (``source`` "prompt"), or by zeros or
    its mean over A's positions (``source`` "zero", "mean")."""

    component: str  # "resid" | "attn" | "mlp" | "head"
    layer: int  # the block; -1: the embedding (resid only)
    position: int  # P in prompt A (non-negative)
    source: str = "prompt"  # "prompt" | "zero" | "mean"
    from_position: Optional[int] = None  # Q in prompt B, for source "prompt"
    head: Optional[int] = None  # for component "head"

    @property
    def site(self) -> str:
        """What is patched: ``L3`` (the residual after block 3), ``embed``, ``L3.attn``,
        ``L3.mlp``, ``L3H4``."""
        if self.component == "resid":
            return layer_label(self.layer)
        if self.component == "head":
            return f"L{self.layer}H{self.head}"
        return f"L{self.layer}.{self.component}"

    @property
    def label(self) -> str:
        """``B@5 L3 -> A@5``, ``zero L3.mlp -> A@5``, ``mean L3H4 -> A@19``."""
        source = f"B@{self.from_position}" if self.source == "prompt" else self.source
        return f"{source} {self.site} -> A@{self.position}"

    def to_json(self) -> dict:
        return {
            "component": self.component,
            "layer": layer_label(self.layer),
            "block": self.layer,
            "head": self.head,
            "position": self.position,
            "source": self.source,
            "from_position": self.from_position,
            "site": self.site,
            "label": self.label,
        }


@dataclass(frozen=True)
class ForwardCost:
    """How much of the model a patched run recomputed (the rest was the clean run's)."""

    path: str  # "resume": positions >= P, blocks >= the patched one; "prefix": positions >= P; "full"
    positions: int  # positions the forward ran for
    blocks: int  # blocks it ran through
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"path": self.path, "positions": self.positions, "blocks": self.blocks, "seconds": self.seconds}


@dataclass
class PatchResult:
    """The patched run's whole lens grid beside the clean one, and per cell the change.

    ``patched`` reads every position's target from the clean run (the clean run's own
    top-1 by default), so ``target_before``/``target_after`` are the same token's
    probability. Effects outside ``cone`` are exactly 0 (before == after)."""

    spec: PatchSpec
    clean: LensResult
    patched: LensResult
    kl: list[list[float]]  # [row][position]: KL(patched || clean), nats
    target_before: list[list[float]]  # [row][position]
    target_after: list[list[float]]
    cone: list[Optional[int]]  # per position: the first row that can change (None: none)
    source_tokens: Optional[list[TokenRef]] = None  # prompt B's tokens (source "prompt")
    cost: Optional[ForwardCost] = None
    seconds: float = 0.0

    def in_cone(self, row: int, pos: int) -> bool:
        return in_cone(self.cone, row, pos)

    def select(self, positions: Sequence[int]) -> "PatchResult":
        """Only these prompt positions' columns (``lens --positions``), in that order: the
        grids' ``positions`` say which; the cone stays per prompt position."""
        cols = list(positions)
        return replace(
            self,
            clean=select_columns(self.clean, cols),
            patched=select_columns(self.patched, cols),
            kl=[[row[c] for c in cols] for row in self.kl],
            target_before=[[row[c] for c in cols] for row in self.target_before],
            target_after=[[row[c] for c in cols] for row in self.target_after],
        )

    @property
    def cone_cells(self) -> int:
        n_rows = len(self.patched.layers)
        return sum(n_rows - first for first in self.cone if first is not None)

    def to_json(self) -> dict:
        """``lens --json`` of the patched run, plus ``patch`` and ``effect``."""
        payload = self.patched.to_json()
        patch = self.spec.to_json()
        patch["cone"] = list(self.cone)
        if self.source_tokens is not None:
            patch["from_tokens"] = [t.to_json() for t in self.source_tokens]
        if self.cost is not None:
            patch["forward"] = self.cost.to_json()
        patch["seconds"] = self.seconds
        payload["patch"] = patch
        payload["effect"] = {
            "kl": self.kl,
            "target_prob_before": self.target_before,
            "target_prob_after": self.target_after,
        }
        return payload


@dataclass(frozen=True)
class SweepPoint:
    """One patched run of a sweep, read at the measured position's final row."""

    layer: int  # the block patched (-1: the embedding)
    position: int  # P in A
    from_position: Optional[int]  # Q in B
    target_prob: float
    target_rank: int
    top: TopToken  # the patched run's top-1 there
    kl: float  # KL(patched || clean) at the final row, nats
    tracked: tuple[TrackedValue, ...] = ()  # the source's answer first (when there is one), then --track

    @property
    def label(self) -> str:
        return layer_label(self.layer)

    def to_json(self) -> dict:
        return {
            "layer": self.label,
            "block": self.layer,
            "position": self.position,
            "from_position": self.from_position,
            "target_prob": self.target_prob,
            "target_rank": self.target_rank,
            "top": self.top.to_json(),
            "kl": self.kl,
            "tracked": [t.to_json() for t in self.tracked],
        }


@dataclass
class SweepResult:
    """Patch after patch, and the target's probability at A's last position each time:
    ``mode`` "layers" patches one position at every layer, "positions" every position
    at one layer."""

    model: str
    mode: str  # "layers" | "positions"
    component: str
    source: str  # "prompt" | "zero" | "mean"
    head: Optional[int]
    tokens: list[TokenRef]  # prompt A
    source_tokens: Optional[list[TokenRef]]  # prompt B
    measured_position: int  # where the target's probability is read (A's last position)
    target: TokenRef
    clean_target_prob: float  # in clean A, at the measured position
    clean_target_rank: int
    source_answer: Optional[TokenRef]  # clean B's top-1 at its last position (source "prompt")
    source_target_prob: Optional[float]  # the target's probability in clean B there
    source_answer_prob: Optional[float]  # the source answer's probability there
    clean_tracked: tuple[TrackedValue, ...]  # the tracked tokens in clean A (source answer first)
    points: list[SweepPoint] = field(default_factory=list)
    cost: Optional[ForwardCost] = None  # summed over the points
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "sweep": self.mode,
            "component": self.component,
            "source": self.source,
            "head": self.head,
            "tokens": [t.to_json() for t in self.tokens],
            "from_tokens": None if self.source_tokens is None else [t.to_json() for t in self.source_tokens],
            "measured_position": self.measured_position,
            "target": self.target.to_json(),
            "clean": {
                "target_prob": self.clean_target_prob,
                "target_rank": self.clean_target_rank,
                "tracked": [t.to_json() for t in self.clean_tracked],
            },
            "source_clean": None
            if self.source_answer is None
            else {
                "answer": self.source_answer.to_json(),
                "answer_prob": self.source_answer_prob,
                "target_prob": self.source_target_prob,
            },
            "points": [p.to_json() for p in self.points],
            "forward": None if self.cost is None else self.cost.to_json(),
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class SteerSpec:
    """``alpha x scale x unit(direction)`` added to block ``layer``'s output at every
    position from ``position`` on; the direction is ``toward``'s effective unembedding
    row (the final norm's gain folded in), minus ``away``'s when given; ``scale`` is the
    median residual norm after that block over the prompt's positions."""

    layer: int  # -1: the embedding
    position: int
    toward: TokenRef
    alpha: float
    scale: float
    away: Optional[TokenRef] = None

    @property
    def label(self) -> str:
        direction = repr(self.toward.text) + (f" - {self.away.text!r}" if self.away is not None else "")
        return f"steer {direction} x{self.alpha:g} at {layer_label(self.layer)} from @{self.position}"

    def to_json(self) -> dict:
        return {
            "layer": layer_label(self.layer),
            "block": self.layer,
            "position": self.position,
            "toward": self.toward.to_json(),
            "away": None if self.away is None else self.away.to_json(),
            "alpha": self.alpha,
            "scale": self.scale,
            "norm": abs(self.alpha) * self.scale,
            "label": self.label,
        }


@dataclass
class SteerResult:
    """The steered run's lens grid over the prompt and the tokens generated under the
    steer; the clean run's greedy continuation beside them."""

    spec: SteerSpec
    steered: LensResult  # prompt + generated tokens, all under the steer
    prompt_length: int
    generated: list[TokenRef]  # greedy, under the steer
    clean_generated: list[TokenRef]  # greedy, without it (as many steps)
    cone: list[Optional[int]]
    cost: Optional[ForwardCost] = None
    seconds: float = 0.0

    def to_json(self) -> dict:
        payload = self.steered.to_json()
        steer = self.spec.to_json()
        steer["cone"] = list(self.cone)
        steer["prompt_length"] = self.prompt_length
        if self.cost is not None:
            steer["forward"] = self.cost.to_json()
        steer["seconds"] = self.seconds
        payload["steer"] = steer
        payload["generated"] = {
            "steered": [t.to_json() for t in self.generated],
            "steered_text": "".join(t.text for t in self.generated),
            "clean": [t.to_json() for t in self.clean_generated],
            "clean_text": "".join(t.text for t in self.clean_generated),
        }
        return payload
