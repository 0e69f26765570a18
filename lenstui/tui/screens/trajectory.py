"""The trajectory view: pinned tokens (and the target) followed through the layers at one
position, probability on a log scale (or rank) against layer, drawn with textual-plotext.

``trajectory_series`` turns a LensResult column into plain series (testable without a
screen); ``TrajectoryScreen`` draws them over the explorer. Each line has a theme colour
*and* its own marker, so the lines stay apart in the high-contrast theme and in a
terminal without colour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from textual.app import ComposeResult
from textual.binding import Binding
from textual.color import Color
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual_plotext import PlotextPlot

from lenstui.core.lens_result import PENDING, LensResult
from lenstui.core.textfmt import visible
from lenstui.tui.safety import Guarded

PROB_FLOOR = 1e-12  # log-scale plots clip below this (and say so on the axis)
MARKERS = ("●", "x", "+", "o", "*", "#", "@", "%", "=")
COLOUR_VARIABLES = ("primary", "secondary", "success", "error", "accent", "warning", "foreground")
FALLBACK_COLOURS = ("magenta", "cyan", "green", "red", "blue", "yellow", "white", "orange")


@dataclass
class Series:
    label: str
    token_id: int
    probs: list[float]  # per row of result.layers
    ranks: list[int]
    is_target: bool = False


def token_label(text: str, piece: str) -> str:
    """How a token is named in legends: its text, or its piece when the text is a partial
    UTF-8 sequence (``ĠðŁ``)."""
    return piece if "\ufffd" in text else visible(text)


def column_computed(result: LensResult, column: int) -> bool:
    """Whether grid column ``column`` holds cells (a streamed run's may be PENDING)."""
    return (
        0 <= column < (len(result.grid[0]) if result.grid else 0)
        and result.targets[column] is not PENDING
        and all(row[column] is not PENDING for row in result.grid)
    )


def trajectory_series(result: LensResult, column: int) -> list[Series]:
    """The target's and each pinned token's probability and rank per row at grid column
    ``column`` (a pinned token that is also the target is drawn once, as pinned); none
    for a column not computed yet."""
    if not column_computed(result, column):
        return []
    rows = result.grid
    series = []
    for j, token in enumerate(result.tracked):
        series.append(
            Series(
                label=token_label(token.text, token.piece),
                token_id=token.id,
                probs=[row[column].tracked[j].prob for row in rows],
                ranks=[row[column].tracked[j].rank for row in rows],
            )
        )
    target = result.targets[column]
    if all(s.token_id != target.id for s in series):
        series.insert(
            0,
            Series(
                label=f"{token_label(target.text, target.piece)} (target)",
                token_id=target.id,
                probs=[row[column].target_prob for row in rows],
                ranks=[row[column].target_rank for row in rows],
                is_target=True,
            ),
        )
    return series


def _log10(value: float, floor: float) -> float:
    return math.log10(max(value, floor))


class TrajectoryPlot(Guarded, PlotextPlot):
    """One line per series against layer; the cursor's layer is a vertical line."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.series: list[Series] = []
        self.row_labels: list[str] = []
        self.cursor_row: Optional[int] = None
        self.depth_row: Optional[int] = None
        self.mode = "prob"  # or "rank"
        self.heading = ""

    def show(self, series, layers, cursor_row, mode, heading, depth_row=None) -> None:
        self.series, self.row_labels, self.cursor_row, self.mode, self.heading = series, layers, cursor_row, mode, heading
        self.depth_row = depth_row
        self.replot()

    def _colours(self) -> list:
        variables = self.app.theme_variables
        colours, seen = [], set()
        for name in COLOUR_VARIABLES:
            try:
                rgb = Color.parse(variables[name]).rgb
            except Exception:
                continue
            if rgb not in seen:
                seen.add(rgb)
                colours.append(rgb)
        return colours + [c for c in FALLBACK_COLOURS]

    def replot(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        if not self.series:
            self.refresh()
            return
        x = list(range(len(self.row_labels)))
        colours = self._colours()
        if self.mode == "prob":
            lowest = min(min(p for p in s.probs) for s in self.series)
            floor = max(PROB_FLOOR, 10 ** math.floor(math.log10(max(lowest, PROB_FLOOR))))
            for i, s in enumerate(self.series):
                plt.plot(x, [_log10(p, floor) for p in s.probs], label=s.label, marker=MARKERS[i % len(MARKERS)],
                         color=colours[i % len(colours)])
            bottom = math.log10(floor)
            ticks = list(range(int(bottom), 1, max(1, -int(bottom) // 4)))
            if 0 not in ticks:
                ticks.append(0)
            plt.yticks(ticks, [("≤" if t == int(bottom) and floor > lowest else "") + _prob_label(t) for t in ticks])
            plt.ylim(bottom, 0.3)
            plt.ylabel("probability (log)")
        else:
            top_rank = max(max(s.ranks) for s in self.series)
            for i, s in enumerate(self.series):
                plt.plot(x, [-math.log10(r + 1) for r in s.ranks], label=s.label, marker=MARKERS[i % len(MARKERS)],
                         color=colours[i % len(colours)])
            depth = max(1, math.ceil(math.log10(top_rank + 1)))
            ticks = [-k for k in range(depth, -1, -max(1, depth // 4))]
            if 0 not in ticks:
                ticks.append(0)
            plt.yticks(ticks, [f"#{10 ** -t:g}" for t in ticks])
            plt.ylim(-depth, 0.1)
            plt.ylabel("rank (log; #1 at the top)")
        self._finish_rows()

    def _finish_rows(self) -> None:
        """The rest of a plot against the rows: about eight row labels along x (the last
        always), the cursor's row as a vertical line, the heading; then draw."""
        plt, count = self.plt, len(self.row_labels)
        shown = list(range(0, count, max(1, count // 8)))
        if shown[-1] != count - 1:
            shown.append(count - 1)
        plt.xticks(shown, [self.row_labels[i] for i in shown])
        if self.cursor_row is not None:
            plt.vline(self.cursor_row, "gray")
        plt.title(self.heading)
        self.refresh()


def _prob_label(exponent: int) -> str:
    return "1" if exponent == 0 else f"1e{exponent}"


class TrajectoryScreen(Guarded, Screen):
    """The selected position's trajectories, over the explorer (Escape goes back)."""

    BINDINGS = [
        Binding("escape,T", "app.pop_screen", "Back", id="trajectory.back"),
        Binding("r", "toggle_mode", "Prob ⇄ rank", id="trajectory.mode"),
        Binding("left,[", "position(-1)", "Prev position", id="trajectory.prev"),
        Binding("right,]", "position(1)", "Next position", id="trajectory.next"),
        Binding("up", "layer(-1)", "Layer up", id="trajectory.layer_up", show=False),
        Binding("down", "layer(1)", "Layer down", id="trajectory.layer_down", show=False),
    ]

    DEFAULT_CSS = """
    TrajectoryScreen { layout: vertical; }
    TrajectoryScreen #trajectory-info { height: auto; max-height: 3; padding: 0 1; color: $text-muted; }
    TrajectoryScreen TrajectoryPlot { height: 1fr; }
    """

    def __init__(self, result: LensResult, position: int, row: int, mode: str = "prob") -> None:
        super().__init__()
        self.result = result
        self.position = position
        self.row = row
        self.mode = mode

    def compose(self) -> ComposeResult:
        yield Static(id="trajectory-info")
        yield TrajectoryPlot(id="trajectory-plot")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.redraw()

    def show_result(self, result: LensResult) -> None:
        """A new lens answer (a pin changed, the prompt grew): redraw at the same place."""
        self.result = result
        self.position = min(self.position, len(result.tokens) - 1)
        self.row = min(self.row, len(result.layers) - 1)
        self.redraw()

    @property
    def column(self) -> int:
        positions = self.result.column_positions
        return positions.index(self.position) if self.position in positions else len(positions) - 1

    def redraw(self) -> None:
        result = self.result
        column = self.column
        series = trajectory_series(result, column)
        token = visible(result.tokens[self.position].text)
        if not column_computed(result, column):
            self.query_one(TrajectoryPlot).show([], result.layers, self.row, self.mode, "")
            self.query_one("#trajectory-info", Static).update(
                f"position {self.position} ({token}) is not computed yet: it is drawn when the lens run lands"
            )
            return
        depth = result.depth[column]
        settles = "never" if depth.top1 is None else result.layers[depth.top1]
        heading = f"position {self.position} ({token}) · cursor {result.layers[self.row]}"
        self.query_one(TrajectoryPlot).show(series, result.layers, self.row, self.mode, heading, depth.top1)
        cursor = self.row
        parts = []
        for s in series:
            parts.append(f"{s.label} {s.probs[cursor]:.2g} #{s.ranks[cursor] + 1}")
        pins = "" if result.tracked else " · no pinned tokens yet: P pins the token under the grid's cursor"
        info = f"at {result.layers[cursor]}: " + " · ".join(parts) + f" · answer settles (top-1) at {settles}{pins}"
        self.query_one("#trajectory-info", Static).update(info)

    def action_toggle_mode(self) -> None:
        self.mode = "rank" if self.mode == "prob" else "prob"
        self.redraw()

    def action_position(self, delta: int) -> None:
        positions = self.result.column_positions
        index = max(0, min(len(positions) - 1, self.column + delta))
        self.position = positions[index]
        self.redraw()

    def action_layer(self, delta: int) -> None:
        self.row = max(0, min(len(self.result.layers) - 1, self.row + delta))
        self.redraw()
