"""The lens evaluation plot: per row, each lens's mean KL(final || row), its top-1
agreement with the final top-1, or the final top-1's mean rank, over the current prompt
or a text file (``EvaluateLenses`` on the worker; ``lenstui lenses eval`` prints the same).

``eval_lines`` turns a ``LensEval`` into plain series (testable without a screen);
``LensEvalScreen`` draws them with textual-plotext over the explorer: ``m`` switches the
measure, ``↑``/``↓`` mark a row (its values are written above the plot), Esc goes back.
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

from lenstui.core.learned_lens import LensEval, short_path
from lenstui.jobs.protocol import Done, EvaluateLenses, Failed, Progress, Stopped
from lenstui.tui.host import explorer
from lenstui.tui.screens.trajectory import MARKERS, TrajectoryPlot
from lenstui.tui.safety import Guarded

MEASURES = ("kl", "top1_agree", "final_rank")
MEASURE_NAMES = {
    "kl": "KL(final ‖ row), nats (log)",
    "top1_agree": "top-1 = final top-1 (share)",
    "final_rank": "rank of the final top-1 (log)",
}


@dataclass
class EvalLine:
    lens: str
    values: list[float]


def eval_lines(result: LensEval, measure: str) -> list[EvalLine]:
    """One line per lens: ``measure`` per row."""
    return [EvalLine(name, list(getattr(curves, measure))) for name, curves in result.lenses.items()]


def summary(result: LensEval) -> str:
    """``mean KL embed..L28: logit 17.65 · tuned 2.70 (0.15×)`` over every row but the last."""
    names = list(result.lenses)
    span = f"{result.rows[0]}..{result.rows[-2]}" if len(result.rows) > 1 else result.rows[0]
    base = result.mean_kl(names[0])
    parts = []
    for name in names:
        mean = result.mean_kl(name)
        ratio = f" ({mean / base:.2f}×)" if name != names[0] and base > 0 else ""
        parts.append(f"{name} {mean:.2f}{ratio}")
    return f"mean KL over {span}: " + " · ".join(parts)


class EvalPlot(TrajectoryPlot):
    """The lenses' lines against row; the marked row is a vertical line."""

    def show_eval(self, lines: list[EvalLine], rows: list[str], measure: str, cursor_row: int, heading: str) -> None:
        self.lines, self.row_labels, self.measure = lines, rows, measure
        self.cursor_row, self.heading = cursor_row, heading
        self.replot()

    def replot(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        lines = getattr(self, "lines", [])
        if not lines:
            self.refresh()
            return
        x = list(range(len(self.row_labels)))
        colours = self._colours()
        log = self.measure in ("kl", "final_rank")
        floor = 0.01 if self.measure == "kl" else 0.1
        for i, line in enumerate(lines):
            ys = [math.log10(max(v, floor)) if log else v for v in line.values]
            plt.plot(x, ys, label=line.lens, marker=MARKERS[i % len(MARKERS)], color=colours[i % len(colours)])
        if log:
            top = max(max(line.values) for line in lines)
            exponents = list(range(int(math.log10(floor)), max(1, math.ceil(math.log10(max(top, floor * 10)))) + 1))
            plt.yticks(exponents, [f"{10 ** e:g}" for e in exponents])
            plt.ylim(math.log10(floor), exponents[-1])
        else:
            plt.ylim(0, 1.05)
        plt.ylabel(MEASURE_NAMES[self.measure])
        self._finish_rows()


class LensEvalScreen(Guarded, Screen):
    """The lenses compared row by row over the explorer (Escape goes back)."""

    BINDINGS = [
        Binding("escape,E", "close", "Back", id="lens_eval.back"),
        Binding("m", "next_measure", "KL ⇄ top-1 ⇄ rank", id="lens_eval.measure"),
        Binding("up", "row(-1)", "Row up", id="lens_eval.row_up", show=False),
        Binding("down", "row(1)", "Row down", id="lens_eval.row_down", show=False),
    ]

    DEFAULT_CSS = """
    LensEvalScreen { layout: vertical; }
    LensEvalScreen #lens-eval-info { height: auto; max-height: 4; padding: 0 1; color: $text-muted; }
    LensEvalScreen EvalPlot { height: 1fr; }
    """

    def __init__(self, request: EvaluateLenses, what: str) -> None:
        super().__init__()
        self.request = request
        self.what = what  # "the prompt (12 tokens)", "heldout.txt"
        self.result: Optional[LensEval] = None
        self.measure = "kl"
        self.row: Optional[int] = None
        self.settled = False  # tests wait on it

    def compose(self) -> ComposeResult:
        yield Static(f"Evaluating {', '.join(self.request.lenses)} on {self.what}…", id="lens-eval-info")
        yield EvalPlot(id="lens-eval-plot")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        explorer(self).submit(self.request, reply_to=self)

    def on_worker_reply(self, message) -> None:
        result = message.result
        if result.request != self.request:
            return
        info = self.query_one("#lens-eval-info", Static)
        if isinstance(result, Progress):
            info.update(f"Evaluating on {self.what}: {result.message}")
        elif isinstance(result, Done):
            self.result = result.value
            self.row = self.row if self.row is not None else max(0, len(self.result.rows) // 2)
            self.redraw()
            self.settled = True
        elif isinstance(result, Failed):
            info.update(result.message)
            self.settled = True
        elif isinstance(result, Stopped):
            info.update("Stopped.")
            self.settled = True

    def redraw(self) -> None:
        result = self.result
        if result is None:
            return
        row = self.row or 0
        values = " · ".join(f"{n} {_value(self.measure, getattr(c, self.measure)[row])}" for n, c in result.lenses.items())
        files = "".join(f" · {n}: {f.origin}, {short_path(f.path)}" for n, f in result.files.items())
        self.query_one("#lens-eval-info", Static).update(
            f"{self.what} · {result.tokens:,} positions (position 0 of each window left out){files}\n"
            f"{summary(result)}\nat {result.rows[row]}: {values}"
        )
        heading = f"{MEASURE_NAMES[self.measure]} per row · {self.what}"
        self.query_one(EvalPlot).show_eval(eval_lines(result, self.measure), result.rows, self.measure, row, heading)

    def action_next_measure(self) -> None:
        self.measure = MEASURES[(MEASURES.index(self.measure) + 1) % len(MEASURES)]
        self.redraw()

    def action_row(self, delta: int) -> None:
        if self.result is not None:
            self.row = max(0, min(len(self.result.rows) - 1, (self.row or 0) + delta))
            self.redraw()

    def action_close(self) -> None:
        explorer(self).cancel(EvaluateLenses)  # nobody will look at the answer
        self.dismiss()


def _value(measure: str, value: float) -> str:
    if measure == "kl":
        return f"{value:.2f} nats ({value / math.log(2):.2f} bits)"
    if measure == "top1_agree":
        return f"{value:.0%}"
    return f"#{value + 1:.0f}"
