"""Under-trained tokens as plain data (computed by ``lenstui.engine.speak.undertrained``):
the tokenizer round-trip class of every token, the Magikarp indicator, the candidates and
their verification by repetition prompts.

Land & Bartolo, "Fishing for Magikarp: Automatically Detecting Under-trained Tokens in Large
Language Models" (EMNLP 2024; code: cohere-ai/magikarp).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

# Magikarp's tokenizer round-trip classes (``TokenizerAnalyzer.categorize_token``), plus
# NO_TOKEN for unembedding rows past the tokenizer (padding). Codes are positions here.
CATEGORIES = (
    "OK",
    "OK_SPECIAL",
    "UNREACHABLE_SPECIAL",
    "UNDECODEABLE",
    "UNREACHABLE_SINGLE_TOKEN",
    "UNREACHABLE_MULTI_TOKEN",
    "NO_TOKEN",
)
# A candidate is verified when the largest probability any prompt gives it stays below this
# (the paper's 1%); below STRONG it is "strongly verified" (the code's 0.1%).
VERIFIED_BELOW = 0.01
STRONG_BELOW = 0.001


@dataclass
class Verification:
    """One candidate's repetition-prompt results: the largest probability the model gave the
    token at any of the generated positions, per prompt, and which prompt gave the maximum."""

    id: int
    max_prob: float
    prompt: str  # the prompt that gave max_prob
    probs: dict[str, float]  # per prompt run
    output: str  # what the model generated on that prompt
    stopped_early: bool = False  # a prompt already crossed VERIFIED_BELOW: the rest were skipped

    @property
    def verified(self) -> bool:
        return self.max_prob < VERIFIED_BELOW

    @property
    def strong(self) -> bool:
        return self.max_prob < STRONG_BELOW

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "max_prob": self.max_prob,
            "verified": self.verified,
            "strong": self.strong,
            "prompt": self.prompt,
            "probs": self.probs,
            "output": self.output,
            "stopped_early": self.stopped_early,
        }


@dataclass
class UndertrainedResult:
    """The whole vocabulary's round-trip classes and indicator, the candidates (the lowest
    ``candidate_share`` of the indicator among reachable tokens) and their verifications."""

    model: str
    key: str  # the model's scan key (same weights, same answer)
    n_vocab: int
    categories: np.ndarray  # int8 codes into CATEGORIES
    indicator: np.ndarray  # float64: cosine distance to the unused mean, first PC removed
    indicator_name: str
    matrix: str  # which matrix the indicator reads ("unembedding (tied with the embedding)", ...)
    tied: bool
    reference_ids: list[int]
    reference_why: str
    candidate_share: float  # percent of the reachable (OK) tokens
    threshold: float
    candidates: list[int]  # sorted by indicator, lowest first
    candidates_found: int = 0  # before --limit cut the list
    verifications: dict[int, Verification] = field(default_factory=dict)
    prompts: dict[str, str] = field(default_factory=dict)  # name -> the prompt text (with the placeholder)
    placeholder: Optional[int] = None
    embedding_norm: Optional[np.ndarray] = None  # untied models: |W_E[j]| (Magikarp's first indicator there)
    seconds: float = 0.0
    decode: Optional[Callable[[int], str]] = field(default=None, repr=False)

    def category(self, token_id: int) -> str:
        return CATEGORIES[int(self.categories[token_id])]

    @property
    def verified_ids(self) -> frozenset[int]:
        return frozenset(i for i, v in self.verifications.items() if v.verified)

    @property
    def complete(self) -> bool:
        """Every candidate has been verified."""
        return all(i in self.verifications for i in self.candidates)

    def _candidate_set(self) -> frozenset[int]:
        if getattr(self, "_candidates_cached", None) is None or len(self._candidates_cached) != len(self.candidates):
            self._candidates_cached = frozenset(self.candidates)
        return self._candidates_cached

    def category_counts(self) -> dict[str, int]:
        counts = np.bincount(self.categories, minlength=len(CATEGORIES))
        return {name: int(counts[k]) for k, name in enumerate(CATEGORIES)}

    def token_record(self, token_id: int) -> dict:
        i = int(token_id)
        value = float(self.indicator[i])
        verification = self.verifications.get(i)
        return {
            "category": self.category(i),
            "indicator": value if math.isfinite(value) else None,
            "candidate": i in self._candidate_set(),
            "max_prob": verification.max_prob if verification else None,
            "verified": verification.verified if verification else None,
        }


@dataclass(frozen=True)
class UndertrainedMarks:
    """What the app needs from an under-trained run (plain ids and numbers, no arrays, no
    callables, so it crosses to the UI's process): the verified tokens with their max
    probability and the prompt that gave it, the candidates, and a one-line summary."""

    model: str
    verified: frozenset[int]
    candidates: frozenset[int]
    max_prob: dict[int, float]  # verified or rejected candidates
    prompt: dict[int, str]
    checked: int
    complete: bool
    share: float
    reference: tuple[int, ...]
    reference_why: str

    def summary(self) -> str:
        state = "" if self.complete else f" (verification {self.checked:,}/{len(self.candidates):,})"
        return (
            f"under-trained: {len(self.verified):,} verified of {len(self.candidates):,} candidates "
            f"(lowest {self.share:g}% of the Magikarp indicator){state}"
        )


def marks_for_undertrained(result: UndertrainedResult) -> UndertrainedMarks:
    verifications = result.verifications
    return UndertrainedMarks(
        model=result.model,
        verified=result.verified_ids,
        candidates=frozenset(result.candidates),
        max_prob={i: v.max_prob for i, v in verifications.items()},
        prompt={i: v.prompt for i, v in verifications.items()},
        checked=len(verifications),
        complete=result.complete,
        share=result.candidate_share,
        reference=tuple(result.reference_ids),
        reference_why=result.reference_why,
    )
