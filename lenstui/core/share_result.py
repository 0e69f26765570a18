"""The share of directions that say a token, as plain data (computed by
``lenstui.engine.speak.share``): an estimate with a 95% interval, in log10.

The share is a probability (a Gaussian's mass of a polyhedral cone), often far below what a
float holds (1e-200), so everything is kept as log10. A certified-unspeakable token's share is
exactly 0: ``log10`` is then ``-inf``, which the JSON says as the string ``"-inf"`` (JSON has
no infinities) and the UI as "0 (certified)".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

# The JSON spelling of log10(0).
MINUS_INF = "-inf"


def log10_json(value: Optional[float]):
    """A log10 for JSON: a float, ``"-inf"`` for an exact zero, None when unknown."""
    if value is None:
        return None
    if value == -math.inf:
        return MINUS_INF
    return float(value)


@dataclass
class ShareResult:
    """log10 of the share (cap: of all directions; ball: of the reachable ball's volume)
    that make token ``id`` the argmax, with a 95% interval."""

    id: int
    text: str
    measure: str  # "cap" or "ball", as the aim measure
    log10: float  # the estimate (-inf: exactly 0, certified)
    log10_lo: float  # 95% interval, never below the certified lower bound
    log10_hi: float
    samples: int  # samples per level
    method: str  # "lin-ess subset simulation" / "certificate"
    levels: int = 0  # nested domains the estimate went through
    log10_certified_lower: Optional[float] = None  # the aim's certified lower bound (the cap's share)
    theta_deg: Optional[float] = None  # the aim's certified cap angle (lower bound)
    seconds: float = 0.0
    seed: int = 0
    model: str = ""
    reason: str = ""
    # log10 of each level's conditional probability (the estimate is their sum).
    level_log10: list[float] = field(default_factory=list)

    @property
    def exact_zero(self) -> bool:
        return self.log10 == -math.inf

    def share_json(self) -> dict:
        """The ``"share"`` field of ``lenstui aim --share --json``."""
        return {
            "log10": log10_json(self.log10),
            "log10_lo": log10_json(self.log10_lo),
            "log10_hi": log10_json(self.log10_hi),
            "samples": self.samples,
            "method": self.method,
            "measure": self.measure,
            "levels": self.levels,
            "exact_zero": self.exact_zero,
            "log10_certified_lower": log10_json(self.log10_certified_lower),
            "seconds": self.seconds,
            "seed": self.seed,
            "reason": self.reason,
        }


def share_words(share: Optional[dict]) -> str:
    """A ``share_json`` payload in a few words: ``1 in 10^7.3 (95%: 10^6.9–10^7.8)``."""
    if not share:
        return ""
    value = share.get("log10")
    if value is None:
        return f"share not measured ({share.get('reason') or 'unknown reason'})"
    if value == MINUS_INF:
        return "share exactly 0 (certified unspeakable)"
    lo, hi = share.get("log10_lo"), share.get("log10_hi")
    return f"share 10^{value:.1f} (95%: 10^{lo:.1f} … 10^{hi:.1f})"


@dataclass(frozen=True)
class SharePoint:
    """One token of a share-vs-theta sample: the exact cap angle and its share estimate."""

    id: int
    text: str
    theta_deg: float  # the aim's certified lower bound (exact up to rounding for most tokens)
    log10_cap: Optional[float]  # the cap's share: the certified lower bound
    log10: float
    log10_lo: float
    log10_hi: float
    hardest: bool = False  # one of the hardest speakable tokens by the scan's theta bound


@dataclass(frozen=True)
class ShareSample:
    """Share estimates over a sample of the vocabulary (random speakable tokens plus the
    hardest by theta), for the share-vs-theta plot and the docs."""

    model: str
    points: tuple[SharePoint, ...]
    requested: int
    samples: int  # per level
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return len(self.points) >= self.requested
