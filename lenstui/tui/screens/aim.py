"""The aim distribution view: a histogram of the vocabulary scan's certified theta lower
bounds (how precisely the model must aim to say each speakable token), with the selected
token marked.

A pushed Screen (Esc or q goes back). It only reads plain numbers from a ScanResult the
app already holds (no tensors, no worker request); the exact theta of the selected token,
when the speakability pane has measured it (``lenstui speak``'s aim), is marked too.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from textual.app import ComposeResult
from textual.binding import Binding
from textual.color import Color
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Static
from textual_plotext import PlotextPlot

from lenstui.core.textfmt import visible
from lenstui.tui.host import ExplorerHost
from lenstui.tui.safety import Guarded

BINS = 40


def selected_summary(scan, token_id: Optional[int], text: str, exact_theta: Optional[float]) -> str:
    """One line on the selected token: its bound, where it falls, the exact theta if known."""
    if token_id is None:
        return "no token selected"
    name = f"{visible(text)} #{token_id}"
    if token_id >= scan.n_scanned:
        return f"{name}: outside this scan (ids 0..{scan.n_scanned - 1})"
    bound = float(scan.theta_lower[token_id])
    if not np.isfinite(bound):
        return f"{name}: {scan.verdict(token_id)}, no θ bound"
    values = scan.theta_values()
    below = float((values < bound).mean() * 100)
    line = f"{name}: θ ≥ {bound:.2f}° ({below:.1f}% of speakable tokens have a smaller bound)"
    if exact_theta is not None:
        line += f" · exact θ {exact_theta:.2f}°"
    return line


class AimDistribution(Guarded, Screen):
    """Histogram of theta lower bounds over the scanned vocabulary, the selected token marked."""

    BINDINGS = [Binding("escape,q", "app.pop_screen", "Back", id="lenstui.aim_back")]
    DEFAULT_CSS = """
    AimDistribution { layout: vertical; }
    AimDistribution #aim-heading { height: auto; padding: 0 1; }
    AimDistribution #aim-plot { height: 1fr; }
    AimDistribution #aim-hint { height: 1; padding: 0 1; color: $text-muted; }
    """

    def __init__(self, scan, token_id: Optional[int], text: str = "", exact_theta: Optional[float] = None):
        super().__init__()
        self.scan, self.token_id, self.text, self.exact_theta = scan, token_id, text, exact_theta
        self.marked: dict[str, float] = {}  # the vertical lines drawn: "bound", "exact"

    def compose(self) -> ComposeResult:
        values = self.scan.theta_values()
        scope = "partial " if not self.scan.complete else ""
        heading = Content.assemble(
            ("aim distribution", "bold"),
            f" · certified θ lower bounds of {len(values):,} speakable tokens ({scope}scan of {self.scan.model})\n",
            (selected_summary(self.scan, self.token_id, self.text, self.exact_theta), "$accent"),
        )
        yield Static(heading, id="aim-heading")
        yield PlotextPlot(id="aim-plot")
        yield Static(
            Content.assemble(
                ("│ the selected token's bound", "$error"), "  ", ("│ its exact θ (after a check)", "$warning"), "  ·  Esc back"
            ),
            id="aim-hint",
        )

    def on_mount(self) -> None:
        plot = self.query_one(PlotextPlot)
        plt = plot.plt
        values = self.scan.theta_values()
        if not len(values):
            plt.title("no θ bounds in this scan (a readout with offsets, or a scan from an older lenstui)")
            return
        colors = self.app.theme_variables
        rgb = lambda name: Color.parse(colors[name]).rgb  # noqa: E731
        plt.hist(values.tolist(), bins=BINS, color=rgb("primary"), marker="hd")
        counts, _ = np.histogram(values, bins=BINS)
        top = int(counts.max())
        plt.yticks(sorted({round(top * k / 4) for k in range(5)}))  # whole tokens, not 3.7
        plt.xlabel("θ lower bound (degrees)")
        plt.ylabel("tokens")
        if self.token_id is not None and self.token_id < self.scan.n_scanned:
            bound = float(self.scan.theta_lower[self.token_id])
            if np.isfinite(bound):
                plt.vline(bound, rgb("error"))
                self.marked["bound"] = bound
        if self.exact_theta is not None:
            plt.vline(self.exact_theta, rgb("warning"))
            self.marked["exact"] = self.exact_theta


def open_aim_distribution(app: ExplorerHost) -> None:
    """Push the view for the speakability pane's token (else the grid cursor's), or say
    why it cannot open (no scan yet, or one without theta bounds)."""
    marks = app.scan_marks
    if marks is None:
        app.notify("No vocabulary scan yet: palette → \"speak: scan the whole vocabulary\" (or `lenstui scan`).", severity="warning", timeout=4)
        return
    scan = marks.scan
    if not len(scan.theta_values()):
        app.notify("This scan has no θ bounds (a readout with offsets, or an older cache: scan again to add them).", severity="warning", timeout=5)
        return
    pane = app.speak_pane
    token_id, text = pane.token_id, pane.token_text
    if token_id is None and app.grid.current_cell is not None:
        token_id, text = app.grid.current_cell.token_id, app.grid.current_cell.text
    aim = pane.aim if pane.token_id == token_id else None
    exact = aim.get("theta_deg") if aim else None
    app.push_screen(AimDistribution(scan, token_id, text, exact))
