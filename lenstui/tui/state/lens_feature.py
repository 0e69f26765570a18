"""The one seam between the lens runs (``lens_flow.py``) and the features that ride on
them: the causal lens (``causal.CausalFeature``), pins (``pins.PinFeature``) and learned
lenses (``lenses.LearnedLensFeature``).

The app hands its features to the lens flow once; the flow tells each what happened (a
model loaded, a run streaming in, answered or failed) and lets it take over ^n; the app
asks them whether their keys apply. A new feature subclasses ``LensFeature`` and
overrides what it needs: every method's default does nothing.
"""

from __future__ import annotations

from typing import Optional, Union

from lenstui.core.lens_result import LensResult
from lenstui.jobs.protocol import ModelInfo, RunLens


class LensFeature:
    def model_loaded(self, info: ModelInfo) -> None:
        """A model is ready (the start's, a restarted worker's or a switch's)."""

    def run_streaming(self) -> None:
        """Some columns of a new clean run arrived (before the grid decides what to show)."""

    def run_shown(self, result: LensResult, request: RunLens) -> None:
        """A complete clean result is now the one on show (``host.shown_result``)."""

    def run_failed(self, dropped: Optional[Union[int, str]]) -> None:
        """The current lens run failed; ``dropped`` is the typed pin it failed on."""

    def take_step(self) -> bool:
        """^n: True when this feature took the step (the steered run's next token)."""
        return False

    def check_action(self, action: str) -> Optional[bool]:
        """Whether one of this feature's keys applies now (None: not one of its keys)."""
        return None
