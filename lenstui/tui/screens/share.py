"""The share-vs-theta view: for a sample of the vocabulary (random speakable tokens and the
hardest by the scan's theta bound), the estimated share of directions that say each token
(log10, with its 95% interval) against its certified cap angle theta, and the cap's own share
(the certified lower bound) for comparison: how much larger than the widest cap the region is.

A pushed Screen (Esc or q goes back) over plain numbers (a ``ShareSample``), drawn with
textual-plotext as the trajectory and aim views are.
"""

from __future__ import annotations

from typing import Optional

from textual.app import ComposeResult
from textual.binding import Binding
from textual.color import Color
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Static
from textual_plotext import PlotextPlot

from lenstui.core.textfmt import visible
from lenstui.tui.safety import Guarded


def sample_summary(sample, token_id: Optional[int] = None) -> str:
    """One line: how many tokens, the range of the share against the cap's, the selected token."""
    points = sample.points
    if not points:
        return "no tokens measured yet"
    shares = sorted(p.log10 for p in points)
    caps = [p.log10_cap for p in points if p.log10_cap is not None]
    gap = min(p.log10 - p.log10_cap for p in points if p.log10_cap is not None) if caps else None
    line = (
        f"{len(points)} tokens: share 10^{shares[0]:.1f} … 10^{shares[-1]:.1f} (median 10^{shares[len(shares) // 2]:.1f})"
        + (f"; always ≥ 10^{gap:.0f} × the widest cap's share" if gap is not None else "")
    )
    chosen = next((p for p in points if p.id == token_id), None)
    if chosen is not None:
        line += f" · {visible(chosen.text)} #{chosen.id}: θ {chosen.theta_deg:.2f}°, share 10^{chosen.log10:.1f}"
    return line


class ShareVsTheta(Guarded, Screen):
    """Scatter of log10 share (estimate, interval ends) and log10 cap share against theta."""

    BINDINGS = [
        Binding("escape,q", "app.pop_screen", "Back", id="lenstui.share_back"),
        Binding("c", "toggle_cap", "Cap bound", id="lenstui.share_cap"),
    ]
    DEFAULT_CSS = """
    ShareVsTheta { layout: vertical; }
    ShareVsTheta #share-heading { height: auto; padding: 0 1; }
    ShareVsTheta #share-plot { height: 1fr; }
    ShareVsTheta #share-hint { height: 1; padding: 0 1; color: $text-muted; }
    """

    def __init__(self, sample, token_id: Optional[int] = None):
        super().__init__()
        self.sample, self.token_id = sample, token_id
        self.drawn: dict[str, int] = {}  # series name -> points drawn (tests read it)
        self.show_cap = False  # the cap's share is hundreds of decades lower: off by default

    def compose(self) -> ComposeResult:
        partial = "" if self.sample.complete else f" (partial: {len(self.sample.points)}/{self.sample.requested})"
        yield Static(
            Content.assemble(
                ("share of directions vs θ", "bold"),
                f" · {self.sample.model}{partial}\n",
                (sample_summary(self.sample, self.token_id), "$accent"),
            ),
            id="share-heading",
        )
        yield PlotextPlot(id="share-plot")
        yield Static(
            Content.assemble(
                ("● share (estimate)", "$primary"), "  ", ("· 95% interval", "$secondary"), "  ",
                ("x hardest by θ", "$error"), "  ", ("c: the widest cap's share", "$warning"), "  ·  Esc back",
            ),
            id="share-hint",
        )

    def action_toggle_cap(self) -> None:
        self.show_cap = not self.show_cap
        self.draw()
        self.query_one(PlotextPlot).refresh()

    def on_mount(self) -> None:
        self.draw()

    def draw(self) -> None:
        plt = self.query_one(PlotextPlot).plt
        plt.clear_data()
        self.drawn = {}
        points = sorted(self.sample.points, key=lambda p: p.theta_deg)
        if not points:
            plt.title("no tokens measured yet")
            return
        colors = self.app.theme_variables
        rgb = lambda name: Color.parse(colors[name]).rgb  # noqa: E731
        easy = [p for p in points if not p.hardest]
        hard = [p for p in points if p.hardest]
        ends = [(p.theta_deg, p.log10_lo) for p in points] + [(p.theta_deg, p.log10_hi) for p in points]
        plt.scatter([x for x, _ in ends], [y for _, y in ends], marker="·", color=rgb("secondary"))
        self.drawn["interval"] = len(ends)
        if easy:
            plt.scatter([p.theta_deg for p in easy], [p.log10 for p in easy], marker="●", color=rgb("primary"))
            self.drawn["share"] = len(easy)
        if hard:
            plt.scatter([p.theta_deg for p in hard], [p.log10 for p in hard], marker="x", color=rgb("error"))
            self.drawn["hardest"] = len(hard)
        caps = [p for p in points if p.log10_cap is not None]
        if caps and self.show_cap:
            plt.plot([p.theta_deg for p in caps], [p.log10_cap for p in caps], marker="-", color=rgb("warning"))
            self.drawn["cap"] = len(caps)
        plt.xlabel("θ, the widest cap's half-angle (degrees)")
        plt.ylabel("log10 share")
