"""The app's side of issue 32: under-trained tokens, the share of directions and the
share-vs-theta view — the palette's commands and what they do (the work runs in the worker:
``FindUndertrained``, ``EstimateShare``, ``SampleShares``)."""

from __future__ import annotations

from typing import Iterator

from textual.app import SystemCommand

from lenstui.jobs.protocol import EstimateShare, FindUndertrained, SampleShares


def commands(app) -> Iterator[SystemCommand]:
    yield SystemCommand(
        "speak: find under-trained tokens",
        "Magikarp: indicator candidates verified by repetition prompts (long; resumable; x stops)",
        lambda: app.speak_pane.find_undertrained(),
    )
    yield SystemCommand(
        "speak: share of directions for the inspected token",
        "estimate with a 95% interval (S in the inspector)",
        lambda: app.inspector_pane.action_estimate_share(),
    )
    yield SystemCommand(
        "speak: share vs θ",
        "a sample of the vocabulary: the share of directions against the widest cap (measured once, then kept)",
        lambda: open_share_plot(app),
    )


def open_share_plot(app) -> None:
    """The kept sample opens at once; without one, it is measured first (progress in the
    speakability pane)."""
    app.submit(SampleShares(cached_only=True), reply_to=app.speak_pane)


def cancel_running(app) -> bool:
    """Stop this issue's jobs; whether one was running (``|``: every kind is cancelled)."""
    return bool(app.cancel(FindUndertrained) | app.cancel(SampleShares) | app.cancel(EstimateShare))
