"""Direct logit attribution of one lens cell as plain data (computed by
``lenstui.engine.attribution``): the components and heads that wrote its logit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from lenstui.core.tokens import TokenRef

FROZEN_SCALE_NOTE = (
    "Direct contributions through the final norm with its scale frozen at this row: "
    "they add up to the row's logit exactly, but a component's share is not what "
    "removing it would change (that would move the scale too)."
)


@dataclass(frozen=True)
class Component:
    """One term of the decomposition: "embed", "pos_embed", "L3.attn", "L3.mlp" or "bias"."""

    name: str
    kind: str  # "embed", "attn", "mlp" or "bias"
    layer: Optional[int]  # the block, for "attn" and "mlp"
    contribution: float

    def to_json(self) -> dict:
        return {"name": self.name, "contribution": self.contribution}


@dataclass(frozen=True)
class Source:
    """A source position an attention head reads from the query position."""

    position: int
    token: TokenRef
    weight: float

    def to_json(self) -> dict:
        return {"position": self.position, "token": self.token.text, "weight": self.weight}


@dataclass(frozen=True)
class HeadAttribution:
    layer: int
    head: int
    contribution: float
    attends_to: tuple[Source, ...]  # the strongest sources, by weight
    pattern: tuple[float, ...]  # the full attention row from the query: weights over 0..p

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}"

    def to_json(self) -> dict:
        return {
            "layer": self.layer,
            "head": self.head,
            "contribution": self.contribution,
            "attends_to": [s.to_json() for s in self.attends_to],
        }


@dataclass
class AttributionResult:
    model: str
    prompt_tokens: list[TokenRef]
    position: int
    layer: int  # the lens row index (0 = embed, k + 1 = after block k)
    row_label: str  # "embed", "L0", ...
    token: TokenRef
    contrast: Optional[TokenRef]  # None: against the mean logit over the vocabulary
    total: float  # the row's actual logit (difference), read by the model's own final norm
    components: list[Component]  # layer order: embed, (pos_embed), L0.attn, L0.mlp, ..., bias
    heads: list[HeadAttribution]  # the top heads by |contribution|
    head_grid: list[list[float]] = field(default_factory=list)  # [block][head], all heads
    attn_bias: list[float] = field(default_factory=list)  # per block: attn output minus its heads (b_O)
    norm_scale: float = 1.0  # the frozen norm scale at this cell
    seconds: float = 0.0
    note: str = FROZEN_SCALE_NOTE

    @property
    def component_sum(self) -> float:
        return sum(c.contribution for c in self.components)

    @property
    def unexplained(self) -> float:
        """The actual row value minus the sum of the parts (float error when all is well)."""
        return self.total - self.component_sum

    @property
    def target_text(self) -> str:
        baseline = "mean logit" if self.contrast is None else f"logit({self.contrast.text!r})"
        return f"logit({self.token.text!r}) - {baseline}"

    def sorted_components(self) -> list[Component]:
        """Largest |contribution| first."""
        return sorted(self.components, key=lambda c: -abs(c.contribution))

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "prompt_tokens": [t.text for t in self.prompt_tokens],
            "position": self.position,
            "layer": self.layer,
            "row": self.row_label,
            "token": self.token.text,
            "token_id": self.token.id,
            "contrast": None if self.contrast is None else self.contrast.text,
            "contrast_id": None if self.contrast is None else self.contrast.id,
            "total": self.total,
            "component_sum": self.component_sum,
            "norm_scale": self.norm_scale,
            "note": self.note,
            "components": [c.to_json() for c in self.components],
            "heads": [h.to_json() for h in self.heads],
            "seconds": self.seconds,
        }
