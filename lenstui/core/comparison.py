"""Two prompts' lens results side by side, with KL(A || B) per row (computed by
``lenstui.engine.lens.compare``)."""

from __future__ import annotations

from dataclasses import dataclass

from lenstui.core.lens_result import LensResult


@dataclass
class Comparison:
    """A's and B's lens columns (one position each) and KL(A || B) per row, nats."""

    a: LensResult  # the whole grid of A (the position compared is ``positions[0]``)
    b: LensResult
    positions: tuple[int, int]  # the prompt positions compared, in A and in B
    kl: list[float]  # per row of ``a.layers``

    def column(self, which: str) -> int:
        """The grid column of the compared position in result ``which`` ("a" or "b")."""
        result, pos = (self.a, self.positions[0]) if which == "a" else (self.b, self.positions[1])
        return result.column_positions.index(pos)

    def to_json(self) -> dict:
        return {
            "a": self.a.to_json(),
            "b": self.b.to_json(),
            "compare": {"positions": list(self.positions), "kl": list(self.kl)},
        }
