"""What the wiring check found on a load: plain values every face can show (no tensors)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WiringCheck:
    """The lens's reading of a short prompt against the model's own output.

    ``ok``: every probability of the two rows checked (the last row, against the model's
    logits; one intermediate row, against the model's own head on that residual) is within
    the tolerance of the model's; ``max_abs_dp`` the largest difference found; ``sentence``
    what a person reads (a warning when not ok)."""

    ok: bool
    max_abs_dp: float
    sentence: str
    path: str = ""  # "native" (the plain model with hooks) or "bridge" (TransformerLens')

    def to_json(self) -> dict:
        return {"ok": self.ok, "max_abs_dp": self.max_abs_dp, "sentence": self.sentence}
