"""A vocabulary scan's verdicts as plain arrays (numpy, no torch), and what the grid
marks with them. Filled by ``lenstui.engine.speak.scan``; cached on disk by
``lenstui.engine.speak.scan_cache``; exported (``scan --out``) by
``lenstui.store.scan_export``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from lenstui.core.verdicts import Method, Verdict

# The int8 codes stored per token (and on disk) are positions in these tuples.
VERDICT_CODES = tuple(Verdict)


PENDING, SPEAKABLE, UNSPEAKABLE, UNDETERMINED = (
    VERDICT_CODES.index(v) for v in (Verdict.PENDING, Verdict.SPEAKABLE, Verdict.UNSPEAKABLE, Verdict.UNDETERMINED)
)


METHODS = tuple(Method)


# The grid's hard-to-speak mark, once a scan has theta bounds: the hardest share of the
# speakable tokens by that bound.
HARDEST_SHARE = 0.01


@dataclass
class ScanResult:
    """Per-token verdicts for a whole vocabulary (``complete`` once every token has one)."""

    model: str
    key: str
    n_vocab: int
    verdicts: np.ndarray  # int8 codes into VERDICT_CODES
    hard: np.ndarray  # int8: 1 hard to speak, 0 not, -1 not computed yet
    best_match: np.ndarray  # int64: argmax_j w_j . w_t + c_j
    margin: np.ndarray  # float64: witness gap (speakable), certificate bound (unspeakable), best gap (undetermined)
    method: np.ndarray  # int8 codes into METHODS
    tried: np.ndarray  # int16 bitmask: phases done per token (see _TRIED)
    certificates: dict[int, tuple[list[int], list[float]]] = field(default_factory=dict)
    lp_witnesses: dict[int, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    scope: int = 0  # tokens 0..scope-1 are scanned (``--limit``); 0 means the whole vocabulary
    reachable_set: str = ""
    speak_tolerance: float = 0.0
    certificate_tolerance: float = 0.0
    decode: Optional[Callable[[int], str]] = field(default=None, repr=False)
    # Certified lower bound of the aim measure theta (degrees) around each speakable token's
    # witness direction (``aim.cap_lower_bounds``); NaN where not computed (offset readouts,
    # unspeakable and undetermined tokens, or not yet).
    theta_lower: Optional[np.ndarray] = None
    # Sentences for the user about how this scan came to be (a damaged cache was set
    # aside and the scan started over); not saved.
    notes: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.theta_lower is None:
            self.theta_lower = np.full(self.n_vocab, np.nan)

    @property
    def n_scanned(self) -> int:
        return self.scope or self.n_vocab

    @property
    def complete(self) -> bool:
        """Every token in scope has a verdict and a hard-to-speak flag."""
        n = self.n_scanned
        return bool((self.verdicts[:n] != PENDING).all() and (self.hard[:n] >= 0).all())

    def verdict(self, token_id: int) -> str:
        return VERDICT_CODES[int(self.verdicts[token_id])]

    def is_hard_to_speak(self, token_id: int) -> Optional[bool]:
        value = int(self.hard[token_id])
        return None if value < 0 else bool(value)

    @property
    def unspeakable_ids(self) -> frozenset[int]:
        return frozenset(np.nonzero(self.verdicts == UNSPEAKABLE)[0].tolist())

    @property
    def undetermined_ids(self) -> frozenset[int]:
        return frozenset(np.nonzero(self.verdicts == UNDETERMINED)[0].tolist())

    @property
    def hard_to_speak_ids(self) -> frozenset[int]:
        return frozenset(np.nonzero(self.hard == 1)[0].tolist())

    def theta_values(self) -> np.ndarray:
        """The theta lower bounds computed within scope (speakable tokens only)."""
        n = self.n_scanned
        values = self.theta_lower[:n]
        return values[np.isfinite(values) & (self.verdicts[:n] == SPEAKABLE)]

    def theta_quantiles(self, levels=(0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0)) -> Optional[dict[float, float]]:
        values = self.theta_values()
        if not len(values):
            return None
        return {q: float(v) for q, v in zip(levels, np.quantile(values, levels))}

    @property
    def has_theta(self) -> bool:
        """Every speakable token in scope has its theta bound."""
        n = self.n_scanned
        speakable = self.verdicts[:n] == SPEAKABLE
        return bool(speakable.any() and np.isfinite(self.theta_lower[:n][speakable]).all())

    def hardest_by_theta(self, share: float = HARDEST_SHARE) -> Optional[tuple[frozenset[int], float]]:
        """(the ``share`` of speakable tokens with the smallest theta lower bound, the
        largest bound among them) when every speakable token has one, else None."""
        if not self.has_theta:
            return None
        n = self.n_scanned
        ids = np.nonzero((self.verdicts[:n] == SPEAKABLE))[0]
        values = self.theta_lower[ids]
        count = max(1, int(math.ceil(share * len(ids))))
        order = np.argsort(values, kind="stable")[:count]
        return frozenset(ids[order].tolist()), float(values[order].max())

    def counts(self) -> dict[str, int]:
        """Tokens per verdict (within scope), and how many are hard to speak."""
        n = self.n_scanned
        verdicts, hard = self.verdicts[:n], self.hard[:n]
        out = {name: int((verdicts == code).sum()) for code, name in enumerate(VERDICT_CODES)}
        out["hard_to_speak"] = int((hard == 1).sum())
        out["hard_to_speak_but_speakable"] = int(((hard == 1) & (verdicts == SPEAKABLE)).sum())
        return out

    def token_record(self, token_id: int) -> dict:
        decode = self.decode or (lambda i: f"#{i}")
        i = int(token_id)
        record = {
            "id": i,
            "text": decode(i),
            "verdict": self.verdict(i),
            "hard_to_speak": self.is_hard_to_speak(i),
            "best_match": int(self.best_match[i]),
            "best_match_text": decode(int(self.best_match[i])) if self.hard[i] >= 0 else None,
            "margin": float(self.margin[i]) if math.isfinite(self.margin[i]) else None,
            "method": METHODS[int(self.method[i])],
            "theta_lower_deg": float(self.theta_lower[i]) if math.isfinite(self.theta_lower[i]) else None,
        }
        if i in self.certificates:
            ids, weights = self.certificates[i]
            record["certificate"] = {
                "combination": [{"id": a, "weight": w} for a, w in zip(ids, weights)],
                "max_lead_bound": float(self.margin[i]),
            }
        return record


@dataclass(frozen=True)
class ScanMarks:
    """What the grid and inspector need from a vocabulary scan: id sets, no arrays."""

    scan: "ScanResult"  # for the speak pane's summary line
    unspeakable: frozenset[int]
    hard_to_speak: frozenset[int]
    complete: bool
    # What the ° mark means: the own-direction test, or (a scan with theta bounds) the
    # hardest 1% of speakable tokens by their certified theta lower bound.
    hard_rule: str = "hard to speak"


def marks_for(scan: "ScanResult") -> ScanMarks:
    """The grid's marks: † unspeakable; ° the hardest 1% of speakable tokens by their
    certified theta lower bound when the scan has one for each, else the own-direction
    hard-to-speak test (which marks most of SmolLM2's vocabulary)."""
    hardest = scan.hardest_by_theta()
    if hardest is not None:
        ids, bound = hardest
        rule = f"among the hardest 1% to aim at (θ bound ≤ {bound:.2f}°)"
        return ScanMarks(scan, scan.unspeakable_ids, ids, scan.complete, hard_rule=rule)
    return ScanMarks(scan, scan.unspeakable_ids, scan.hard_to_speak_ids, scan.complete)
