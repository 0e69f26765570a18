"""The aim measure of one token as plain data (computed by ``lenstui.engine.speak.aim``):
how precisely a residual must point for the model to say it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class AimResult:
    """One token's aim measure with both certificates; ``to_json`` is the CLI contract."""

    id: int
    text: str
    method: str  # "cap" (direction-only readout) or "ball" (offsets differ)
    verdict: str  # "speakable" (theta > 0 certified), "unspeakable" (theta* = 0) or "undetermined"
    theta_deg: float  # certified lower bound (0 when none)
    theta_upper_deg: float  # certified upper bound
    exact: bool  # geometric lower bound and upper bound agree to EXACT_TOLERANCE_DEG
    geometric_lower_deg: float  # the lower bound before the rounding allowance
    rounding_deg: float  # what the speakability tolerance costs the lower bound
    offset_deg: Optional[float]  # angle between the axis and the token's own direction
    log10_share_lower: Optional[float]  # cap: share of directions; ball: share of the ball's volume
    axis: list[float]  # unit post-norm direction u (cap) or of the ball's centre (ball)
    upper: list[dict]  # [{"id", "weight"}]: convex weights on the normalised a_j
    dimension: int  # dimension of the reachable subspace
    radius_fraction: Optional[float] = None  # ball: rho_L / R
    radius_fraction_upper: Optional[float] = None  # ball: rho_U / R
    centre_norm: Optional[float] = None  # ball: |z0|
    tightest: Optional[int] = None  # the competitor that limits the lower bound
    rounds: int = 0
    constraints: int = 0
    seconds: float = 0.0
    model: str = ""
    reason: str = ""

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "text": self.text,
            "theta_deg": self.theta_deg,
            "theta_upper_deg": self.theta_upper_deg,
            "offset_deg": self.offset_deg,
            "log10_share_lower": self.log10_share_lower,
            "axis": self.axis,
            "upper": self.upper,
            "method": self.method,
            "verdict": self.verdict,
            "exact": self.exact,
            "geometric_lower_deg": self.geometric_lower_deg,
            "rounding_deg": self.rounding_deg,
            "dimension": self.dimension,
            "radius_fraction": self.radius_fraction,
            "radius_fraction_upper": self.radius_fraction_upper,
            "centre_norm": self.centre_norm,
            "tightest": self.tightest,
            "rounds": self.rounds,
            "constraints": self.constraints,
            "seconds": self.seconds,
            "model": self.model,
            "reason": self.reason,
        }
