"""The compare view: prompt A (the explorer's) beside a second prompt B on the same model.

Per layer: A's and B's top tokens at the compared positions (the last of each unless
moved with ``[ ]`` / ``{ }``), KL(A ‖ B) in nats, and each pinned token's probability
in A and in B. Both prompts run through the incremental lens (``RunCompare``: lens
slots "a" and "b"), so editing one does not recompute the other. ``ctrl+o`` switches
which prompt is edited; Enter runs.
"""

from __future__ import annotations

from typing import Optional

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from lenstui.core.comparison import Comparison
from lenstui.core.lenses import LensOptions
from lenstui.core.textfmt import visible
from lenstui.jobs.protocol import Done, Failed, RunCompare
from lenstui.tui.host import explorer
from lenstui.tui.safety import Guarded
from lenstui.tui.state import causal
from lenstui.tui.screens.trajectory import token_label

DEFAULT_PROMPT_B = "Is there a fish emoji?"


class CompareScreen(Guarded, Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="compare.back"),
        Binding("ctrl+o", "switch_prompt", "Edit A ⇄ B", id="compare.switch"),
        Binding("[", "move('a',-1)", "A pos -1", id="compare.a_prev", show=False),
        Binding("]", "move('a',1)", "A pos +1", id="compare.a_next", show=False),
        Binding("{", "move('b',-1)", "B pos -1", id="compare.b_prev", show=False),
        Binding("}", "move('b',1)", "B pos +1", id="compare.b_next", show=False),
        # The causal lens (tui/state/causal.py): B@Q as the patch source, patch A, sweep.
        Binding("m", "mark_source", "Mark B as source", id="compare.mark"),
        Binding("p", "patch", "Patch A", id="compare.patch"),
        Binding("w", "sweep", "Sweep layers", id="compare.sweep"),
    ]

    DEFAULT_CSS = """
    CompareScreen { layout: vertical; }
    CompareScreen Input { height: 3; }
    CompareScreen #compare-info { height: auto; padding: 0 1; color: $text-muted; }
    CompareScreen DataTable { height: 1fr; }
    """

    def __init__(self, prompt_a, prompt_b: str, *, options: LensOptions, chat: bool = False) -> None:
        super().__init__()
        self.prompt_a = prompt_a  # text, or the explorer's ids (generated steps)
        self.prompt_b = prompt_b or DEFAULT_PROMPT_B
        self.options = options
        self.chat = chat
        self.positions = [-1, -1]
        self.comparison: Optional[Comparison] = None
        self.settled = True

    def compose(self) -> ComposeResult:
        text_a = self.prompt_a if isinstance(self.prompt_a, str) else ""
        placeholder = "the explorer's prompt (with its generated tokens)" if not text_a else ""
        yield Input(text_a, placeholder=placeholder, id="compare-a")
        yield Input(self.prompt_b, id="compare-b")
        yield Static("", id="compare-info")
        yield DataTable(id="compare-table", zebra_stripes=True, cursor_type="row")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#compare-a", Input).border_title = "prompt A"
        self.query_one("#compare-b", Input).border_title = "prompt B"
        self.query_one("#compare-b", Input).focus()
        self.run_compare()

    def request(self) -> RunCompare:
        return RunCompare(
            self.prompt_a, self.prompt_b, self.positions[0], self.positions[1], chat=self.chat, options=self.options
        )

    def run_compare(self) -> None:
        self.settled = False
        self.query_one("#compare-info", Static).update("running both lenses…")
        explorer(self).submit(self.request(), reply_to=self)

    def resubmit(self) -> None:
        """The worker restarted: run the comparison again if its answer was still to come."""
        if not self.settled:
            self.run_compare()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "compare-a":
            if event.value.strip():
                self.prompt_a = event.value
                self.positions[0] = -1
        elif event.value.strip():
            self.prompt_b = event.value
            self.positions[1] = -1
            explorer(self).session.prompt_b = event.value  # kept for the next time C opens
        self.run_compare()

    def action_switch_prompt(self) -> None:
        a, b = self.query_one("#compare-a", Input), self.query_one("#compare-b", Input)
        (b if a.has_focus else a).focus()

    def action_move(self, which: str, delta: int) -> None:
        if self.comparison is None:
            return
        index = 0 if which == "a" else 1
        result = self.comparison.a if which == "a" else self.comparison.b
        n = len(result.tokens)
        self.positions[index] = max(0, min(n - 1, self.comparison.positions[index] + delta))
        self.run_compare()

    def on_worker_reply(self, message) -> None:
        result = message.result
        if not isinstance(result.request, RunCompare):
            return
        if isinstance(result, Done):
            self.show(result.value)
            self.settled = True
        elif isinstance(result, Failed):
            self.query_one("#compare-info", Static).update(result.message)
            self.settled = True

    def show(self, comparison: Comparison) -> None:
        self.comparison = comparison
        a, b = comparison.a, comparison.b
        ca, cb = comparison.column("a"), comparison.column("b")
        pa, pb = comparison.positions
        info = (
            f"A position {pa} ({visible(a.tokens[pa].text)}) vs B position {pb} ({visible(b.tokens[pb].text)})"
            f" · KL(A‖B) nats · [ ] moves A's position, {{ }} B's"
            f" · in the table: m marks B@{pb} as the patch source, p patches A@{pa} at the row's layer, w sweeps every layer"
        )
        self.query_one("#compare-info", Static).update(info)
        table = self.query_one("#compare-table", DataTable)
        table.clear(columns=True)
        table.add_columns("layer", "A top", "B top", "KL(A‖B)")
        for token in a.tracked:
            table.add_column(f"{token_label(token.text, token.piece)} A/B")
        for row, label in enumerate(a.layers):
            cell_a, cell_b = a.grid[row][ca], b.grid[row][cb]
            values = [
                label,
                f"{visible(cell_a.top[0].text)} {cell_a.top[0].prob:.2f}",
                f"{visible(cell_b.top[0].text)} {cell_b.top[0].prob:.2f}",
                f"{comparison.kl[row]:.3f}",
            ]
            values += [f"{ta.prob:.1e} / {tb.prob:.1e}" for ta, tb in zip(cell_a.tracked, cell_b.tracked)]
            table.add_row(*values)
        table.move_cursor(row=len(a.layers) - 1)

    # ------------------------------------------------------------ the causal lens

    def _row_layer(self) -> str:
        table = self.query_one("#compare-table", DataTable)
        layers = self.comparison.a.layers
        return layers[max(0, min(len(layers) - 1, table.cursor_row))]

    def action_mark_source(self) -> None:
        if self.comparison is None:
            return
        b = self.comparison.b
        pos = self.comparison.positions[1]
        causal.mark_source(explorer(self), tuple(b.token_ids), pos, b.tokens[pos].text, self._row_layer())

    def action_patch(self) -> None:
        """Patch A at the compared position and the table row's layer; back to the grid,
        which shows the patched run when it lands."""
        if self.comparison is None:
            return
        host = explorer(self)
        if host.causal.source is None:
            self.action_mark_source()
        layer, pa = self._row_layer(), self.comparison.positions[0]
        if causal.patch_at(host, tuple(self.comparison.a.token_ids), layer, pa):
            self.app.pop_screen()
            host.grid.place_cursor(layer, pa)

    def action_sweep(self) -> None:
        """Patch B@Q's activation into A@P at every layer; the plot opens when it is done."""
        if self.comparison is None:
            return
        pa, pb = self.comparison.positions
        causal.sweep(
            explorer(self),
            tuple(self.comparison.a.token_ids),
            pa,
            prompt_b=tuple(self.comparison.b.token_ids),
            from_position=pb,
        )
