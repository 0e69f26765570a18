"""The learned lenses' plain data (torch-free): which file a lens was read from, what a
fit did, and a lens evaluation's per-row curves.

``LensFile`` names a tuned-lens directory or a J-lens file and says where it came from;
``LensResult.lens_file`` carries it so every face can say which file it reads.
``FitReport`` is what ``lenstui lenses fit`` prints; ``LensEval`` what ``lenstui lenses
eval`` prints (the tuned-lens paper's per-layer figure) and the app's eval plot draws.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Optional


def short_path(path: str) -> str:
    """A path as a person reads it: the home directory as ``~``."""
    home = os.path.expanduser("~")
    if home and home != "/" and (path == home or path.startswith(home + os.sep)):
        return "~" + path[len(home):]
    return path


@dataclass(frozen=True)
class LensFile:
    """A learned lens on disk, as the faces show it."""

    kind: str  # "tuned" or "jacobian"
    path: str  # the tuned-lens directory, or the J-lens .pt file
    origin: str  # one phrase: "fitted by lenstui on 6,144 self-sampled tokens", "tuned-lens file for gpt2"
    rows: tuple[str, ...] = ()  # the rows it transforms; the others read as the logit lens
    note: str = ""  # what to keep in mind when reading it (position 0, missing rows)

    def describe(self) -> str:
        """``tuned lens · fitted by lenstui on … · ~/…/tuned`` (the status line's words)."""
        return f"{self.kind} lens · {self.origin} · {short_path(self.path)}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "path": self.path, "origin": self.origin, "rows": list(self.rows), "note": self.note}


@dataclass
class FitReport:
    """What a fit did: where the lens went, on how much text, how long each phase took."""

    kind: str
    path: str
    model: str
    tokens: int  # positions the fit used (position 0 of every sequence is left out)
    sequences: int
    source: str  # "sampled" (the model's own text) or the text file's path
    seconds: dict[str, float] = field(default_factory=dict)  # phase -> seconds, and "total"
    refine_steps: int = 0
    refine_kl: Optional[tuple[float, float]] = None  # mean KL over the rows on the fit's data, before/after
    unembed_hash: Optional[str] = None
    lens_file: Optional[LensFile] = None

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "path": self.path,
            "model": self.model,
            "tokens": self.tokens,
            "sequences": self.sequences,
            "source": self.source,
            "seconds": dict(self.seconds),
            "refine_steps": self.refine_steps,
            "refine_kl": None if self.refine_kl is None else list(self.refine_kl),
            "unembed_hash": self.unembed_hash,
        }


@dataclass(frozen=True)
class FitEstimate:
    """What a J-lens fit would cost here, measured on this machine before it starts."""

    device: str
    prompts: int
    seconds: float  # the estimate for the whole fit
    per_prompt: float
    backward_passes: int  # per prompt

    def sentence(self) -> str:
        return (
            f"A J-lens fit on {self.prompts} prompts needs {self.backward_passes} backward passes per prompt: "
            f"about {format_duration(self.seconds)} on {self.device} ({self.per_prompt:.1f} s per prompt, measured here)."
        )


@dataclass
class LensCurves:
    """One lens's per-row figures over an evaluation text."""

    kl: list[float]  # mean KL(final || row), nats
    top1_agree: list[float]  # share of positions whose row top-1 is the final top-1
    final_rank: list[float]  # mean rank of the final top-1 in the row (0 = its top-1)

    @property
    def kl_bits(self) -> list[float]:
        return [value / math.log(2) for value in self.kl]

    def to_json(self) -> dict:
        return {"kl": list(self.kl), "top1_agree": list(self.top1_agree), "final_rank": list(self.final_rank)}


@dataclass
class LensEval:
    """Per row, for each lens: the tuned-lens paper's per-layer figure over a text."""

    tokens: int  # positions evaluated (position 0 of each chunk is left out)
    rows: list[str]
    lenses: dict[str, LensCurves]
    files: dict[str, LensFile] = field(default_factory=dict)  # the learned lenses' files
    model: str = ""
    seconds: float = 0.0

    def mean_kl(self, lens: str, last_row: Optional[int] = None) -> float:
        """The mean KL over rows 0..last_row (default: every row but the last, which is
        the model's own output and 0 under every lens)."""
        values = self.lenses[lens].kl
        stop = len(values) - 1 if last_row is None else last_row + 1
        return sum(values[:stop]) / max(1, stop)

    def to_json(self) -> dict:
        return {
            "tokens": self.tokens,
            "rows": list(self.rows),
            "lenses": {name: curves.to_json() for name, curves in self.lenses.items()},
        }


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 10 s``, ``6.8 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        minutes, rest = divmod(int(round(seconds)), 60)
        return f"{minutes} min {rest:02d} s"
    return f"{seconds / 3600:.1f} h"
