"""A speakability check's answer as plain data: the verdict, its witness or its
infeasibility certificate (computed by ``lenstui.engine.speak.check``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from lenstui.core.verdicts import Method, Verdict


@dataclass
class Certificate:
    """Convex weights on other tokens bounding t's best possible lead by ``bound``."""

    ids: list[int]
    weights: list[float]
    residual_norm: float  # ||P(w_t - sum_j lambda_j w_j)||
    offset_term: float  # c_t - sum_j lambda_j c_j
    bound: float  # R * residual_norm + offset_term: t's lead can never exceed this
    radius: float

    def to_json(self, decode: Optional[Callable[[int], str]] = None) -> dict:
        order = np.argsort(-np.asarray(self.weights), kind="stable")
        combination = []
        for k in order:
            entry = {"id": int(self.ids[k]), "weight": float(self.weights[k])}
            if decode is not None:
                entry["text"] = decode(int(self.ids[k]))
            combination.append(entry)
        return {
            "combination": combination,
            "residual_norm": self.residual_norm,
            "offset_term": self.offset_term,
            "radius": self.radius,
            "max_lead_bound": self.bound,
        }


@dataclass(frozen=True)
class TokenText:
    id: int
    text: str

    def to_json(self) -> dict:
        return {"id": self.id, "text": self.text}


@dataclass
class SpeakResult:
    """One token's verdict with its proof; ``to_json`` is the CLI's ``--json`` contract."""

    id: int
    text: str
    verdict: Verdict  # SPEAKABLE, UNSPEAKABLE or UNDETERMINED
    hard_to_speak: bool  # its own direction does not make it the argmax
    best_match: TokenText  # argmax_j of w_j . w_t + c_j (t itself unless hard to speak)
    margin: Optional[float]  # speakable: witness' float64 gap over the runner-up
    witness_resid: Optional[list[float]]  # speakable: pre-norm residual (d_model floats)
    binding: list[TokenText]  # runner-up / active LP constraints / certificate tokens
    certificate: Optional[Certificate]
    seconds: float
    # Extras: how the verdict was reached and the numbers behind it.
    model: str = ""
    method: Method = Method.NONE
    norm: str = ""  # "RMS" or "LN"
    reachable_set: str = ""
    runner_up: Optional[TokenText] = None
    module_margin: Optional[float] = None  # the gap through the model's own modules (its dtype)
    speak_tolerance: float = 0.0
    certificate_tolerance: float = 0.0
    best_gap_found: Optional[float] = None  # undetermined: the best witness gap seen
    lp_rounds: int = 0
    lp_constraints: int = 0
    reason: str = ""
    # The aim measure (``aim.speak_aim``): None until attached, and for unspeakable tokens.
    aim: Optional[dict] = None
    decode: Optional[Callable[[int], str]] = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "text": self.text,
            "verdict": self.verdict,
            "hard_to_speak": self.hard_to_speak,
            "best_match": self.best_match.to_json(),
            "margin": self.margin,
            "witness_resid": self.witness_resid,
            "binding": [b.to_json() for b in self.binding],
            "certificate": self.certificate.to_json(self.decode) if self.certificate else None,
            "seconds": self.seconds,
            "model": self.model,
            "method": self.method,
            "norm": self.norm,
            "reachable_set": self.reachable_set,
            "runner_up": self.runner_up.to_json() if self.runner_up else None,
            "module_margin": self.module_margin,
            "tolerances": {"speak": self.speak_tolerance, "certificate": self.certificate_tolerance},
            "best_gap_found": self.best_gap_found,
            "lp_rounds": self.lp_rounds,
            "lp_constraints": self.lp_constraints,
            "reason": self.reason,
            "aim": self.aim,
        }
