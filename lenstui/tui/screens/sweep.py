"""The sweep view: a patch sweep's answer as a plot (textual-plotext) of the target's
probability at A's last position against the layer (or position) patched, with the
source's answer (clean B's top-1) beside it and the clean run as a level line.

``sweep_series`` turns a ``SweepResult`` into plain series (testable without a screen);
``sweep_summary`` is the one-line answer under the plot: where the top-1 first flips
and the largest single-layer drop. ``l`` switches between a linear and a log scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual_plotext import PlotextPlot

from lenstui.core.patch_result import SweepResult
from lenstui.core.textfmt import visible
from lenstui.tui.screens.trajectory import FALLBACK_COLOURS, MARKERS, PROB_FLOOR
from lenstui.tui.safety import Guarded

COLOUR_VARIABLES = ("primary", "secondary", "success", "accent", "warning")


@dataclass
class SweepSeries:
    label: str
    probs: list[float]  # one per point


def sweep_labels(result: SweepResult) -> list[str]:
    """The x axis: layer labels (embed, L0, ...) or positions with their tokens."""
    if result.mode == "layers":
        return [p.label for p in result.points]
    return [f"{p.position}" for p in result.points]


def sweep_series(result: SweepResult) -> list[SweepSeries]:
    """The target's probability per point, then each tracked token's (the source's answer
    first when there is one)."""
    series = [SweepSeries(f"P({visible(result.target.text)})", [p.target_prob for p in result.points])]
    for j, token in enumerate(result.clean_tracked):
        series.append(SweepSeries(f"P({visible(token.text)})", [p.tracked[j].prob for p in result.points]))
    return series


def sweep_summary(result: SweepResult) -> str:
    """Where the patched top-1 first differs from the target, and the largest drop of the
    target's probability from one point to the next."""
    labels = sweep_labels(result)
    target = visible(result.target.text)
    parts = [f"clean P({target}) {result.clean_target_prob:.3f}"]
    flip = next((i for i, p in enumerate(result.points) if p.top.id != result.target.id), None)
    if flip is not None:
        point = result.points[flip]
        parts.append(f"top-1 becomes {visible(point.top.text)} at {labels[flip]} (P({target}) {point.target_prob:.3f})")
    else:
        parts.append(f"{target} stays the top-1 at every point")
    drops = [
        (result.points[i - 1].target_prob - result.points[i].target_prob, i) for i in range(1, len(result.points))
    ]
    if drops:
        drop, i = max(drops)
        if drop > 0:
            parts.append(f"largest drop {drop:.3f} at {labels[i]}")
    lowest = min(range(len(result.points)), key=lambda i: result.points[i].target_prob) if result.points else None
    if lowest is not None:
        parts.append(f"lowest {result.points[lowest].target_prob:.4f} at {labels[lowest]}")
    return " · ".join(parts)


def _heading(result: SweepResult) -> str:
    what = {"resid": "residual", "attn": "attention output", "mlp": "MLP output", "head": f"head {result.head}"}
    first = result.points[0] if result.points else None
    source = f"B's {what[result.component]}" if result.source == "prompt" else f"{result.source}-ablated {what[result.component]}"
    if result.mode == "layers" and first is not None:
        where = f"A@{first.position}" + (f" from B@{first.from_position}" if first.from_position is not None else "")
        return f"{source} patched at every layer into {where} · read at A@{result.measured_position}"
    return f"{source} patched at every position at {first.label if first else '?'} · read at A@{result.measured_position}"


class SweepPlot(Guarded, PlotextPlot):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.result: Optional[SweepResult] = None
        self.log_scale = False

    def show(self, result: SweepResult, log_scale: bool) -> None:
        self.result, self.log_scale = result, log_scale
        self.replot()

    def _colours(self) -> list:
        from textual.color import Color

        colours = []
        for name in COLOUR_VARIABLES:
            try:
                colours.append(Color.parse(self.app.theme_variables[name]).rgb)
            except Exception:
                continue
        return colours + list(FALLBACK_COLOURS)

    def replot(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        result = self.result
        if result is None or not result.points:
            self.refresh()
            return
        x = list(range(len(result.points)))
        colours = self._colours()

        def y(value: float) -> float:
            return math.log10(max(value, PROB_FLOOR)) if self.log_scale else value

        for i, s in enumerate(sweep_series(result)):
            plt.plot(x, [y(p) for p in s.probs], label=s.label, marker=MARKERS[i % len(MARKERS)], color=colours[i % len(colours)])
        plt.hline(y(result.clean_target_prob), "gray")
        labels = sweep_labels(result)
        step = max(1, len(x) // 10)
        shown = list(range(0, len(x), step))
        if shown[-1] != len(x) - 1:
            shown.append(len(x) - 1)
        plt.xticks(shown, [labels[i] for i in shown])
        if self.log_scale:
            plt.ylabel("probability (log10); gray: clean A")
        else:
            plt.ylim(0, 1)
            plt.ylabel("probability; gray: clean A")
        plt.title(_heading(result))
        self.refresh()


class SweepScreen(Guarded, Screen):
    """A sweep's plot over the explorer (Escape goes back)."""

    BINDINGS = [
        Binding("escape,q", "app.pop_screen", "Back", id="sweep.back"),
        Binding("l", "toggle_scale", "Linear ⇄ log", id="sweep.scale"),
    ]

    DEFAULT_CSS = """
    SweepScreen { layout: vertical; }
    SweepScreen #sweep-info { height: auto; max-height: 3; padding: 0 1; color: $text-muted; }
    SweepScreen SweepPlot { height: 1fr; }
    """

    def __init__(self, result: SweepResult) -> None:
        super().__init__()
        self.result = result
        self.log_scale = False

    def compose(self) -> ComposeResult:
        yield Static(id="sweep-info", markup=False)
        yield SweepPlot(id="sweep-plot")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.redraw()

    def redraw(self) -> None:
        self.query_one(SweepPlot).show(self.result, self.log_scale)
        self.query_one("#sweep-info", Static).update(sweep_summary(self.result))

    def action_toggle_scale(self) -> None:
        self.log_scale = not self.log_scale
        self.redraw()
