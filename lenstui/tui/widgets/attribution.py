"""The attribution view: which components and heads wrote a lens cell's token.

Pure rendering of the engine's plain :class:`AttributionResult` (never a tensor): a
signed bar chart per block with attention and MLP side by side (layer order, or by
size with ``s``), the top heads with their strongest source tokens, and, on Enter, the
chosen head's attention row over the whole prompt. Tokens are shown as the grid shows
them (``visible``). Fits 80x24.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from lenstui.core.attribution_result import AttributionResult, HeadAttribution
from lenstui.core.textfmt import cell_len, fit, signed_bar, visible
from lenstui.tui.panes.inspector import LinesView
from lenstui.tui.safety import Guarded

LABEL_WIDTH = 6
VALUE_WIDTH = 8
STRONG, MEDIUM = 0.2, 0.05  # attention weights shown bold / plain (the rest muted)
SHORT_NOTE = "norm scale frozen at this row: parts add up exactly, not removal effects"


@dataclass(frozen=True)
class BlockRow:
    """One line of the chart: a block's attention and MLP parts, or a lone part."""

    label: str
    attn: Optional[float]
    mlp: Optional[float]

    @property
    def size(self) -> float:
        return abs(self.attn or 0.0) + abs(self.mlp or 0.0)


def block_rows(result: AttributionResult, by_size: bool = False) -> list[BlockRow]:
    """Embedding parts, then one row per block, then the bias (or all of them by size)."""
    rows: list[BlockRow] = []
    blocks: dict[int, dict[str, float]] = {}
    for part in result.components:
        if part.kind in ("attn", "mlp"):
            blocks.setdefault(part.layer, {})[part.kind] = part.contribution
    for part in result.components:
        if part.kind == "embed" or part.kind == "bias":
            label = {"embed": "embed", "pos_embed": "pos", "bias": "bias"}.get(part.name, part.name)
            rows.append(BlockRow(label, part.contribution, None))
        elif part.kind == "attn":
            pair = blocks[part.layer]
            rows.append(BlockRow(f"L{part.layer}", pair.get("attn"), pair.get("mlp")))
    if by_size:
        rows.sort(key=lambda row: -row.size)
    return rows


def chart_lines(result: AttributionResult, width: int = 76, by_size: bool = False) -> list[Content]:
    """The signed bar chart: label, attention value and bar, MLP value and bar."""
    half = max(2, (width - LABEL_WIDTH - 2 * VALUE_WIDTH - 2 - 2) // 4)
    scale = max((abs(c.contribution) for c in result.components), default=0.0)
    column = VALUE_WIDTH + 2 * half + 1
    titles = fit("", LABEL_WIDTH) + fit("attention", column) + "  MLP"
    order = "by size" if by_size else "layer order"
    lines = [
        Content.assemble(
            (titles, "bold $secondary"),
            (fit(f"  ({order})", max(0, width - cell_len(titles))).rstrip(), "$text-muted"),
        )
    ]
    for row in block_rows(result, by_size):
        parts = [Content(fit(row.label, LABEL_WIDTH))]
        for index, value in enumerate((row.attn, row.mlp)):
            if index:
                parts.append(Content("  "))
            if value is None:
                parts.append(Content(" " * column))
                continue
            tone = "$success" if value > 0 else "$error" if value < 0 else "$text-muted"
            parts.append(Content(fit(f"{value:+.3f}", VALUE_WIDTH)))
            parts.append(Content.styled(signed_bar(value, scale, half), tone))
        lines.append(Content.assemble(*parts))
    return lines


def head_prompt(head: HeadAttribution, width: int = 74) -> str:
    """A head as one line: name, contribution, strongest sources as ``token@pos weight``."""
    sources = "  ".join(f"{visible(s.token.text)}@{s.position} {s.weight:.2f}" for s in head.attends_to)
    return fit(f"{head.name:<7} {head.contribution:+.3f}   {sources}", width).rstrip()


def attention_lines(result: AttributionResult, head: HeadAttribution, width: int = 76) -> list[Content]:
    """The head's attention row from the cell's position over the prompt, wrapped."""
    at = visible(result.prompt_tokens[result.position].text)
    lines = [
        Content.styled(
            fit(f"{head.name} from {at}@{result.position}: attention over the prompt", width).rstrip(),
            "bold $secondary",
        )
    ]
    line: list[Content] = []
    used = 0
    for position, weight in enumerate(head.pattern):
        text = f"{visible(result.prompt_tokens[position].text)} {_weight(weight)}"
        style = "bold $accent" if weight >= STRONG else "" if weight >= MEDIUM else "$text-muted"
        cells = cell_len(text) + (2 if line else 0)
        if line and used + cells > width:
            lines.append(Content.assemble(*line))
            line, used, cells = [], 0, cell_len(text)
        if line:
            line.append(Content("  "))
        line.append(Content.styled(fit(text, min(cell_len(text), width)), style))
        used += cells
    if line:
        lines.append(Content.assemble(*line))
    return lines


def _weight(weight: float) -> str:
    """An attention weight in three cells: ".62", "1.0"."""
    return "1.0" if weight >= 0.995 else f"{weight:.2f}"[1:]


def heading_lines(result: AttributionResult) -> list[Content]:
    at = visible(result.prompt_tokens[result.position].text)
    baseline = "mean logit" if result.contrast is None else f"logit({visible(result.contrast.text)})"
    return [
        Content.assemble(
            (f"{at}@{result.position} · {result.row_label}  ", "bold $primary"),
            (f"logit({visible(result.token.text)}) - {baseline} = {result.total:+.3f}", "bold"),
            (f"  parts {result.component_sum:+.3f}", "$text-muted"),
        ),
        Content.styled(SHORT_NOTE, "$text-muted italic"),
    ]


class ChartView(LinesView):
    def __init__(self, *, id: Optional[str] = None, classes: Optional[str] = None) -> None:
        super().__init__(id=id, classes=classes)
        self.result: Optional[AttributionResult] = None
        self.by_size = False

    def lines_for(self, width: int) -> list[Content]:
        return [] if self.result is None else chart_lines(self.result, width, self.by_size)


class AttentionRowView(LinesView):
    def __init__(self, *, id: Optional[str] = None, classes: Optional[str] = None) -> None:
        super().__init__(id=id, classes=classes)
        self.result: Optional[AttributionResult] = None
        self.head: Optional[HeadAttribution] = None

    def lines_for(self, width: int) -> list[Content]:
        if self.result is None or self.head is None:
            return [Content.styled("Enter on a head: its attention row over the prompt.", "$text-muted")]
        return attention_lines(self.result, self.head, width)


class AttributionView(Guarded, Vertical):
    """Shows one AttributionResult (or a message while there is none)."""

    BORDER_TITLE = "attribution"

    DEFAULT_CSS = """
    AttributionView {
        border: round $primary 50%;
        padding: 0 1;
        height: 1fr;
    }
    AttributionView:focus-within {
        border: round $primary;
    }
    AttributionView #attribution-heading {
        height: auto;
    }
    AttributionView #attribution-message {
        height: auto;
        color: $text-muted;
        text-style: italic;
    }
    AttributionView #attribution-message.-error {
        color: $error;
        text-style: none;
    }
    AttributionView #attribution-chart {
        height: 1fr;
        min-height: 4;
        scrollbar-size-vertical: 1;
    }
    AttributionView #attribution-heads {
        height: auto;
        max-height: 6;
        border: none;
        padding: 0;
        scrollbar-size-vertical: 1;
    }
    AttributionView #attribution-attention {
        height: auto;
        max-height: 5;
    }
    AttributionView .-hidden {
        display: none;
    }
    """

    BINDINGS = [
        Binding(
            "s",
            "toggle_order",
            "Sorted/layers",
            id="attribution.toggle_order",
            tooltip="List blocks by the size of their parts, or in layer order",
        ),
    ]

    @dataclass
    class HeadSelected(Message):
        """Enter on a head: its attention row is shown (the app may do more with it)."""

        layer: int
        head: int

    def __init__(self, *, id: Optional[str] = None, classes: Optional[str] = None) -> None:
        super().__init__(id=id, classes=classes)
        self.result: Optional[AttributionResult] = None

    def compose(self) -> ComposeResult:
        yield Static(id="attribution-heading", classes="-hidden")
        yield Static("Choose a grid cell to attribute it.", id="attribution-message")
        with VerticalScroll(id="attribution-chart", classes="-hidden"):
            yield ChartView()
        yield OptionList(id="attribution-heads", classes="-hidden")
        yield AttentionRowView(id="attribution-attention", classes="-hidden")

    # -- the public API the app calls (from the UI thread) --------------------------

    def show_result(self, result: AttributionResult) -> None:
        self.result = result
        self.query_one("#attribution-heading", Static).update(Content("\n").join(heading_lines(result)))
        chart = self.query_one(ChartView)
        chart.result = result
        chart.refresh(layout=True)
        heads = self.query_one("#attribution-heads", OptionList)
        heads.clear_options()
        heads.add_options(
            [Option(head_prompt(h), id=f"{h.layer}:{h.head}") for h in result.heads]
        )
        heads.highlighted = 0 if result.heads else None  # Enter works at once
        attention = self.query_one(AttentionRowView)
        attention.result, attention.head = result, None
        attention.refresh(layout=True)
        for part in ("heading", "chart", "heads", "attention"):
            self.query_one(f"#attribution-{part}").remove_class("-hidden")
        self.query_one("#attribution-heads").set_class(not result.heads, "-hidden")
        self.query_one("#attribution-message").add_class("-hidden")

    def show_message(self, text: str, error: bool = False) -> None:
        """A sentence instead of a result (working, or the request failed)."""
        message = self.query_one("#attribution-message", Static)
        message.update(text)
        message.set_class(error, "-error")
        message.remove_class("-hidden")

    @property
    def by_size(self) -> bool:
        return self.query_one(ChartView).by_size

    def action_toggle_order(self) -> None:
        chart = self.query_one(ChartView)
        chart.by_size = not chart.by_size
        chart.refresh(layout=True)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if self.result is None or event.option.id is None:
            return
        layer, head = (int(x) for x in event.option.id.split(":"))
        chosen = next(h for h in self.result.heads if (h.layer, h.head) == (layer, head))
        attention = self.query_one(AttentionRowView)
        attention.head = chosen
        attention.refresh(layout=True)
        self.post_message(self.HeadSelected(layer, head))
