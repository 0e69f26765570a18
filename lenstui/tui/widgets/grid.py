"""The logit-lens grid: a Line-API ScrollView that draws only the visible cells.

Two views of one ``LensResult`` (switched with ``v``):

- ``positions``: one row per layer, one column per prompt token (the header row),
  each cell the layer's top-1 token at that position;
- ``topk``: one row per layer at the selected position, fixed entropy and KL
  columns, then the layer's k best tokens with their probabilities.

The header row and the left columns (layer labels, entropy/KL) stay put while the
rest scrolls both ways. Cells are shaded from the background towards the theme's
heat colour (the ``lens-heat`` theme variable, else ``primary``) by probability,
with contrast-picked text; a token that equals the position's target (by default
the model's own final answer) is underlined. With many layers, ``S`` strides the
rows (the last layer is always kept). The widget holds plain data only: no tensors.

A run arrives streamed (``show_partial``): the columns in view first, then the rest in
chunks. Columns not computed yet hold ``PENDING`` and draw as a quiet placeholder (the
``lens-grid--pending`` style); when the view shows placeholders, the grid posts
``ColumnsWanted`` so the app can move those columns to the front. A streamed grid is a
state like any other: nothing here reads a cell or a target without checking for
``PENDING`` (the top-k count is the result's ``top_k``, not a cell's), and the cursor is
clamped to the shown result whenever it changes shape (``show_result``, ``clear``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Optional

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.color import Color
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from lenstui.core.lens_result import PENDING, LensResult
from lenstui.core.stream_grid import StreamGrid
from lenstui.core.textfmt import fit, visible
from lenstui.tui.safety import Guarded, catch

VIEWS = ("positions", "topk")
STRIDES = (1, 2, 3, 4)
POSITION_COLUMN = 10  # 9 cells of token text + 1 gap
TOPK_COLUMN = 14  # 9 of token text + 4 of probability + 1 gap
ENTROPY_W = 6
KL_W = 7
UNSPEAKABLE_MARK = "†"
HARD_TO_SPEAK_MARK = "°"
UNDERTRAINED_MARK = "‡"  # verified under-trained (Magikarp's repetition prompts)
HEAT_LEVELS = 20  # shading steps (a 256-colour terminal cannot show finer ones anyway)
DEPTH_MARK = "◆"  # the cell where a position's answer settles (prediction depth)
PIN_MARK = "^"  # heads the pinned tokens' rank columns in the top-k view


@lru_cache(maxsize=65536)
def _cell_text(text: str, width: int) -> str:
    return fit(visible(text), width)


def _percent(prob: float) -> str:
    if prob >= 0.995:
        return "100%"
    if prob < 0.005:
        return " <1%"
    return f"{round(prob * 100):>3d}%"


@dataclass
class GridCell:
    """What the cursor points at, for the inspector and the speakability pane."""

    layer: str
    layer_index: int
    position: int
    rank: int  # 0 = the layer's top-1 at that position
    token_id: int
    text: str
    piece: str
    prob: float


# How long after a digit the next one continues the block number (LensGrid.on_key).
JUMP_SECONDS = 1.5


class LensGrid(Guarded, ScrollView, can_focus=True):
    HELP = """
## Logit-lens grid

Each row is a layer read as if it were the last one (`embed` is the input embedding;
the last row is the model's own output). **v** switches between *layer × position*
(top-1 token per prompt position) and *layer × top-k* (the k best tokens at the
selected position, with entropy and KL(final ‖ layer) in nats). Shading is the
probability; underlined tokens equal the model's final answer at that position.
The `depth` row and **◆** mark where each position's answer settles (the first layer
from which it stays the top-1). Pinned tokens (**P**) are highlighted; in the top-k
view their ranks follow the top-k columns. **T**: their trajectories.
"""

    BINDINGS = [
        Binding("up,k", "move(0,-1)", "Up", id="grid.up", show=False),
        Binding("down,j", "move(0,1)", "Down", id="grid.down", show=False),
        Binding("left,h", "move(-1,0)", "Left", id="grid.left", show=False),
        Binding("right,l", "move(1,0)", "Right", id="grid.right", show=False),
        Binding("pageup", "page(-1)", "Page up", id="grid.page_up", show=False),
        Binding("pagedown", "page(1)", "Page down", id="grid.page_down", show=False),
        Binding("g,home", "first_layer", "First layer", id="grid.first_layer", show=False),
        Binding("G,end", "last_layer", "Last layer", id="grid.last_layer", show=False),
        Binding("[", "position(-1)", "Previous position", id="grid.prev_position", show=False),
        Binding("]", "position(1)", "Next position", id="grid.next_position", show=False),
        Binding("v", "switch_view", "View", id="grid.switch_view"),
        Binding("S", "stride", "Stride layers", id="grid.stride", show=False),
        Binding("enter", "select", "Select cell", id="grid.select", show=False),
    ]

    COMPONENT_CLASSES = {
        "lens-grid--header",
        "lens-grid--label",
        "lens-grid--axis",
        "lens-grid--cursor",
        "lens-grid--heat",
        "lens-grid--hint",
        "lens-grid--pinned",
        "lens-grid--pending",
        "lens-grid--cone",
    }

    DEFAULT_CSS = """
    LensGrid {
        background: $surface;
        scrollbar-size: 1 1;
        & > .lens-grid--header { color: $text-muted; text-style: bold; }
        & > .lens-grid--label { color: $text-muted; }
        & > .lens-grid--axis { color: $text; background: $boost; text-style: bold; }
        & > .lens-grid--cursor {
            background: $block-cursor-background;
            color: $block-cursor-foreground;
            text-style: bold;
        }
        & > .lens-grid--heat { background: $primary; }
        & > .lens-grid--hint { color: $text-muted; text-style: italic; }
        & > .lens-grid--pinned { background: $secondary; color: $background; text-style: bold; }
        & > .lens-grid--pending { color: $text-disabled; }
        & > .lens-grid--cone { background: $success; }
    }
    """

    view: reactive[str] = reactive("positions", init=False)
    stride: reactive[int] = reactive(1, init=False)

    class CellHighlighted(Message):
        """The cursor moved, or a new result arrived under it."""

        def __init__(self, grid: "LensGrid", cell: GridCell) -> None:
            super().__init__()
            self.grid = grid
            self.cell = cell

        @property
        def control(self) -> "LensGrid":
            return self.grid

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, LensGrid.CellHighlighted) and message.grid is self.grid

    class ColumnsWanted(Message):
        """The view shows columns of a streamed run that are not computed yet."""

        def __init__(self, grid: "LensGrid", run: object, positions: tuple[int, ...]) -> None:
            super().__init__()
            self.grid = grid
            self.run = run  # what show_partial was given as the run (the app: its RunLens)
            self.positions = positions

        @property
        def control(self) -> "LensGrid":
            return self.grid

    class CellSelected(CellHighlighted):
        """Enter or a click on a cell."""

        def can_replace(self, message: Message) -> bool:
            return False

    def __init__(self, *, name=None, id=None, classes=None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.result: Optional[LensResult] = None
        self.hint = "Waiting for the model…"
        self._rows: list[int] = []  # layer indices shown (stride applied)
        self.cursor_row = 0  # index into _rows
        self.cursor_pos = 0  # prompt position
        self.cursor_k = 0  # rank, in the top-k view
        self._jump, self._jump_at = "", 0.0  # a block number being typed (on_key)
        self._ramps: dict[str, list[tuple[Style, Style]]] = {}  # the shading, per theme variable (_ramp)
        # From a vocabulary scan (plain id sets): marked in the cells' last column.
        self._unspeakable: frozenset[int] = frozenset()
        self._hard_to_speak: frozenset[int] = frozenset()
        self._undertrained: frozenset[int] = frozenset()
        # Pinned token ids: highlighted wherever they appear.
        self._pinned: frozenset[int] = frozenset()
        self._depth_of = None  # the result _depth was computed for
        self._depth: list = []
        self._top_k = 0  # tokens per cell in the shown result
        # The streamed run being painted (None once its complete result is shown), the
        # positions still missing, and the last positions asked for with ColumnsWanted.
        self._stream_run: object = None
        self._missing: set[int] = set()
        self._asked: frozenset[int] = frozenset()
        # A causal run on show (tui/state/causal.py): (its result, the first row each
        # position's cone starts at, the heading). Only while that result is shown.
        self._cone: Optional[tuple[LensResult, list, str]] = None

    # ------------------------------------------------------------ data in

    def show_result(self, result: LensResult) -> None:
        """Replace the data, keeping the cursor where it makes sense (a cursor on the
        last position follows the prompt's end as it grows)."""
        previous = self.result
        at_end = previous is None or self.cursor_pos >= len(previous.tokens) - 1
        label = self.cursor_layer if previous is not None else None
        layer = self._rows[self.cursor_row] if previous is not None and 0 <= self.cursor_row < len(self._rows) else None
        self.result = result
        self._rebuild_rows()
        if label is not None and label in result.layers:  # the same row (mid rows may come or go)
            self.cursor_row = self._row_of_layer(result.layers.index(label))
        elif layer is None or layer >= len(result.layers):
            self.cursor_row = len(self._rows) - 1
        else:
            self.cursor_row = self._row_of_layer(layer)
        n = len(result.tokens)
        self.cursor_pos = max(0, n - 1 if at_end else min(self.cursor_pos, n - 1))
        self._top_k = _top_count(result)
        self.cursor_k = max(0, min(self.cursor_k, self._top_k - 1))
        self._stream_run, self._missing, self._asked = None, set(), frozenset()
        self._update_geometry()
        self._follow_cursor()
        self._announce()

    def clear(self, hint: str) -> None:
        """Drop the shown result (another model was loaded: its cells say nothing about
        this one) and show ``hint`` where the grid goes."""
        self.result = None
        self.hint = hint
        self._rows = []
        self.cursor_row = self.cursor_pos = self.cursor_k = 0
        self._depth_of, self._depth = None, []
        self._stream_run, self._missing, self._asked = None, set(), frozenset()
        self._update_geometry()

    def show_causal(self, result: LensResult, cone: list, heading: str) -> None:
        """Show a patched or steered run: its cells inside the causal cone (``cone[pos]``:
        the first row that can change there, None for none) shaded in the cone colour,
        ``heading`` before the title. Any other result shown later drops both."""
        self._cone = (result, list(cone), heading)
        self.show_result(result)

    @property
    def causal_heading(self) -> Optional[str]:
        """The heading of the causal run on show (None: the grid shows a clean run)."""
        cone = self._cone
        return cone[2] if cone is not None and cone[0] is self.result else None

    def in_cone(self, layer_index: int, pos: int) -> bool:
        cone = self._cone
        if cone is None or cone[0] is not self.result or not 0 <= pos < len(cone[1]):
            return False
        first = cone[1][pos]
        return first is not None and layer_index >= first

    def _cell_heat(self, layer_index: int, pos: int, prob: float) -> tuple[Style, Style]:
        """The shading of one cell (plain, underlined), by probability: the usual heat
        scale from the background towards the heat colour (the ``lens-heat`` theme
        variable, else ``$primary``), and inside a causal cone from a faint tint towards
        the cone colour (``lens-cone``, else ``$success``)."""
        if self.in_cone(layer_index, pos):
            ramp = self._ramp("lens-cone", "lens-grid--cone", tint=0.2)
        else:
            ramp = self._ramp("lens-heat", "lens-grid--heat")
        return ramp[max(0, min(HEAT_LEVELS, round(prob * HEAT_LEVELS)))]

    def _ramp(self, variable: str, component: str, tint: float = 0.0) -> list[tuple[Style, Style]]:
        """HEAT_LEVELS + 1 shades (plain, underlined) from the background (tinted ``tint``
        of the way) to a colour: the theme variable ``variable``, else the ``component``
        class's background. Computed once per theme."""
        ramp = self._ramps.get(variable)
        if ramp is None:
            value = self.app.theme_variables.get(variable)
            try:
                colour = Color.parse(value) if value else None
            except Exception:
                colour = None
            if colour is None:
                colour = self.get_component_styles(component).background
            base = self.background_colors[1]
            if tint:
                base = base.blend(colour, tint)
            ramp = []
            for level in range(HEAT_LEVELS + 1):
                background = base.blend(colour, level / HEAT_LEVELS)
                foreground = background + background.get_contrast_text(0.95)
                plain = Style(color=foreground.rich_color, bgcolor=background.rich_color)
                ramp.append((plain, plain + Style(underline=True)))
            self._ramps[variable] = ramp
        return ramp

    def set_marks(self, unspeakable: frozenset[int], hard_to_speak: frozenset[int]) -> None:
        """Mark tokens a vocabulary scan found unspeakable (†) or hard to speak (°)."""
        self._unspeakable = unspeakable
        self._hard_to_speak = hard_to_speak
        self.refresh()

    def set_undertrained(self, token_ids: frozenset[int]) -> None:
        """Mark tokens verified under-trained (‡), after the unspeakable ones."""
        self._undertrained = frozenset(token_ids)
        self.refresh()

    def set_pins(self, token_ids) -> None:
        """Highlight these token ids wherever they appear."""
        self._pinned = frozenset(t for t in token_ids if isinstance(t, int))
        self.refresh()

    @property
    def _header_rows(self) -> int:
        """Header lines: the tokens, plus (layer × position) where each answer settles."""
        return 2 if self.view == "positions" and self.result is not None else 1

    def _depth_rows(self) -> list:
        if self.result is None:
            return []
        # Once per result and, while columns stream in, once per arrival (show_partial
        # forgets it): a paint reads it on every line, and it walks the whole grid.
        if self._depth_of is not self.result:  # computed once per result, not per line
            self._depth_of, self._depth = self.result, self.result.depth
        return self._depth

    def _token_text(self, token_id: int, text: str, width: int) -> str:
        if token_id in self._unspeakable:
            return _cell_text(text, width - 1) + UNSPEAKABLE_MARK
        if token_id in self._undertrained:
            return _cell_text(text, width - 1) + UNDERTRAINED_MARK
        if token_id in self._hard_to_speak:
            return _cell_text(text, width - 1) + HARD_TO_SPEAK_MARK
        return _cell_text(text, width)

    def show_hint(self, text: str) -> None:
        """A one-line message where the grid goes, before there is any result."""
        self.hint = text
        if self.result is None:
            self.refresh()

    @property
    def cursor_layer(self) -> Optional[str]:
        """The label of the cursor's row ("L12"), None without a result."""
        if self.result is None or not 0 <= self.cursor_row < len(self._rows):
            return None
        return self.result.layers[self._rows[self.cursor_row]]

    @property
    def cursor_pending(self) -> bool:
        """Whether the cursor is on a cell of a streamed run not computed yet."""
        if self.result is None or not 0 <= self.cursor_row < len(self._rows):
            return False
        column = self.result.grid[self._rows[self.cursor_row]]
        return 0 <= self.cursor_pos < len(column) and column[self.cursor_pos] is PENDING

    @property
    def current_cell(self) -> Optional[GridCell]:
        """The cell under the cursor, read from the result on screen (``self.result``);
        None without a result, or on a placeholder of a streamed run."""
        if self.result is None or not 0 <= self.cursor_row < len(self._rows):
            return None
        layer_index = self._rows[self.cursor_row]
        column = self.result.grid[layer_index]
        if not 0 <= self.cursor_pos < len(column) or column[self.cursor_pos] is PENDING:
            return None  # not computed yet
        rank = self.cursor_k if self.view == "topk" else 0
        tops = column[self.cursor_pos].top
        if not 0 <= rank < len(tops):
            return None
        top = tops[rank]
        return GridCell(
            layer=self.result.layers[layer_index],
            layer_index=layer_index,
            position=self.cursor_pos,
            rank=rank,
            token_id=top.id,
            text=top.text,
            piece=top.piece,
            prob=top.prob,
        )

    # ------------------------------------------------------------ geometry

    @property
    def _label_width(self) -> int:
        if self.result is None:
            return 0
        return max(len(label) for label in self.result.layers) + 1

    @property
    def _fixed_width(self) -> int:
        if self.view == "topk":
            return self._label_width + ENTROPY_W + KL_W
        return self._label_width

    @property
    def _column_width(self) -> int:
        return TOPK_COLUMN if self.view == "topk" else POSITION_COLUMN

    @property
    def _column_count(self) -> int:
        if self.result is None:
            return 0
        if self.view == "topk":
            return self._top_k + len(self.result.tracked)  # + pinned ranks
        return len(self.result.tokens)

    @property
    def _cursor_column(self) -> int:
        return self.cursor_k if self.view == "topk" else self.cursor_pos

    def _rebuild_rows(self) -> None:
        n = len(self.result.layers) if self.result else 0
        rows = list(range(0, n, self.stride))
        if n and rows[-1] != n - 1:
            rows.append(n - 1)  # the model's own output is always shown
        self._rows = rows

    def _row_of_layer(self, layer_index: int) -> int:
        return min(range(len(self._rows)), key=lambda i: abs(self._rows[i] - layer_index))

    def _update_geometry(self) -> None:
        self._set_virtual_size()
        self._show_title()
        self.refresh()
        # Scrollbars appear or go once the new virtual size is laid out, which changes
        # the viewport without a Resize event: fit again and follow the cursor then.
        self.call_after_refresh(self._settle_geometry)

    def _set_virtual_size(self) -> None:
        content = self._column_count * self._column_width
        viewport = self.scrollable_content_region.width - self._fixed_width
        # Pad so the furthest scroll stops on a column boundary: the leftmost visible
        # cell is then never cut in half.
        pad = (-(content - viewport)) % self._column_width if content > viewport > 0 else 0
        size = Size(self._fixed_width + content + pad, len(self._rows) + self._header_rows)
        if size != self.virtual_size:
            self.virtual_size = size

    def _settle_geometry(self) -> None:
        self._set_virtual_size()
        self._follow_cursor()

    def _show_title(self) -> None:
        # Textual repaints the whole widget on every border_title set, even to the same
        # text: while a run streams in that is a full grid paint per chunk.
        title = self._title()
        if title != getattr(self, "_shown_title", None):
            self._shown_title = title
            self.border_title = title

    def _title(self) -> str:
        heading = self.causal_heading
        if heading is not None:
            return f"{heading} · {self._lens_title()}"
        return self._lens_title()

    def _lens_title(self) -> str:
        if self.result is None:
            return "logit lens"
        stride = f" · every {self.stride} layers" if self.stride > 1 else ""
        if self.result.lens != "logit":
            stride += f" · {self.result.lens} lens"
        if not self.result.target_is_default:
            shown = next((t for t in self.result.targets if t is not PENDING), None)
            stride += f" · target {visible(shown.text) if shown else '…'}"
        if self.view == "topk":
            pos = self.cursor_pos
            token = visible(self.result.tokens[pos].text) if 0 <= pos < len(self.result.tokens) else "…"
            shown_target = self.result.targets[pos] if 0 <= pos < len(self.result.targets) else PENDING
            target = "…" if shown_target is PENDING or shown_target is None else visible(shown_target.text)
            k = self._top_k
            pins = f" · pinned ranks after #{k}" if self.result.tracked else ""
            return f"layer × top-{k} at position {pos} ({token}) · target {target}{stride}{pins}"
        return f"layer × position · top-1 · {len(self.result.tokens)} tokens{stride}"

    def _follow_cursor(self) -> None:
        """Scroll the least amount that brings the cursor cell into view."""
        if self.result is None:
            return
        region = self.scrollable_content_region
        visible_rows = max(1, region.height - self._header_rows)
        visible_width = max(self._column_width, region.width - self._fixed_width)
        x, y = self.scroll_offset
        column_w = self._column_width
        left = self._cursor_column * column_w
        right = left + column_w
        new_x = x
        if left < x:
            new_x = left
        elif right > x + visible_width:
            # Snap to a column boundary so the leftmost visible cell is never cut.
            new_x = -(-(right - visible_width) // column_w) * column_w
        new_y = y
        if self.cursor_row < y:
            new_y = self.cursor_row
        elif self.cursor_row >= y + visible_rows:
            new_y = self.cursor_row - visible_rows + 1
        if (new_x, new_y) != (x, y):
            self.scroll_to(new_x, new_y, animate=False, force=True, immediate=True)

    def on_resize(self, event: events.Resize) -> None:
        self._settle_geometry()
        self.call_after_refresh(self._settle_geometry)

    # ------------------------------------------------------------ drawing

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._ramps = {}  # theme or CSS changed: recompute the shading

    def render_line(self, y: int) -> Strip:
        try:
            return self._render_line(y)
        except Exception as error:
            # One line the grid cannot draw must not stop the whole screen from drawing
            # (the compositor would fail on every frame): a blank line, and the safety net.
            if not catch(self, error, f"drawing line {y} of the lens grid"):
                raise
            return Strip.blank(self.scrollable_content_region.width, self.rich_style)

    def _render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        base = self.rich_style
        if self.result is None:
            if y == 0:
                hint = self.get_component_rich_style("lens-grid--hint")
                return Strip([Segment(fit(" " + self.hint, width), hint)], width)
            return Strip.blank(width, base)
        scroll_x, scroll_y = self.scroll_offset
        if y == 0:
            fixed, cells = self._header_line()
        elif y < self._header_rows:
            fixed, cells = self._depth_line()
        else:
            row = scroll_y + y - self._header_rows
            if row >= len(self._rows):
                return Strip.blank(width, base)
            fixed, cells = self._row_line(row)
        visible_width = max(0, width - self._fixed_width)
        scrolled = Strip(cells).crop(scroll_x, scroll_x + visible_width)
        return Strip.join([Strip(fixed), scrolled]).adjust_cell_length(width, base)

    def _columns_in_view(self) -> range:
        """The scrolled columns that overlap the viewport (only these are drawn)."""
        scroll_x = self.scroll_offset.x
        visible_width = self.scrollable_content_region.width - self._fixed_width
        first = scroll_x // self._column_width
        last = (scroll_x + visible_width) // self._column_width + 1
        return range(first, min(last, self._column_count))

    def _pad_to(self, column: int) -> list[Segment]:
        """Blank cells standing in for the columns left of the viewport (cropped away)."""
        width = column * self._column_width
        return [Segment(" " * width, self.rich_style)] if width else []

    def _header_line(self) -> tuple[list[Segment], list[Segment]]:
        header = self.get_component_rich_style("lens-grid--header")
        axis = self.get_component_rich_style("lens-grid--axis")
        gap = Segment(" ", self.rich_style)
        result = self.result
        label_w = self._label_width
        columns = self._columns_in_view()
        cells = self._pad_to(columns.start)
        if self.view == "topk":
            fixed = [
                Segment(fit("layer", label_w), header),
                Segment(fit("H", ENTROPY_W - 1) + " ", header),
                Segment(fit("KL", KL_W - 1) + " ", header),
            ]
            n_top = self._top_k  # the result's top_k: no cell needed (column 0 may be PENDING)
            for k in columns:
                style = axis if k == self.cursor_k else header
                if k >= n_top:  # a pinned token's rank column
                    if k - n_top >= len(result.tracked):
                        break
                    pin = result.tracked[k - n_top]
                    cells += [Segment(_cell_text(PIN_MARK + pin.text, TOPK_COLUMN - 1), header), gap]
                    continue
                cells += [Segment(fit(f"#{k + 1}", TOPK_COLUMN - 1), style), gap]
        else:
            fixed = [Segment(fit("layer", label_w), header)]
            for pos in columns:
                style = axis if pos == self.cursor_pos else header
                text = _cell_text(result.tokens[pos].text, POSITION_COLUMN - 1)
                cells += [Segment(text, style), gap]
        return fixed, cells

    def _depth_line(self) -> tuple[list[Segment], list[Segment]]:
        """Where each position's answer settles: the first layer from which the final
        top-1 stays top-1 (◆ marks that cell below), "-" if it never does."""
        label = self.get_component_rich_style("lens-grid--label")
        gap = Segment(" ", self.rich_style)
        depth = self._depth_rows()
        columns = self._columns_in_view()
        cells = self._pad_to(columns.start)
        for pos in columns:
            row = depth[pos].top1 if pos < len(depth) else None
            text = "-" if row is None else DEPTH_MARK + self.result.layers[row]
            cells += [Segment(fit(text, POSITION_COLUMN - 1), label), gap]
        return [Segment(fit("depth", self._label_width), label)], cells

    def _row_line(self, row: int) -> tuple[list[Segment], list[Segment]]:
        result = self.result
        layer_index = self._rows[row]
        cells_of_layer = result.grid[layer_index]
        label_style = self.get_component_rich_style(
            "lens-grid--axis" if row == self.cursor_row else "lens-grid--label"
        )
        cursor = self.get_component_rich_style("lens-grid--cursor")
        gap = Segment(" ", self.rich_style)
        on_cursor_row = row == self.cursor_row
        fixed = [Segment(fit(result.layers[layer_index], self._label_width), label_style)]
        columns = self._columns_in_view()
        cells = self._pad_to(columns.start)
        if self.view == "topk":
            cell = cells_of_layer[self.cursor_pos]
            if cell is PENDING:  # not computed yet (a streamed run)
                return fixed + self._pending_topk_fixed(), cells + self._pending_cells(columns, on_cursor_row)
            label = self.get_component_rich_style("lens-grid--label")
            fixed += [
                Segment(fit(f"{cell.entropy:.2f}", ENTROPY_W - 1) + " ", label),
                Segment(fit(f"{cell.kl_to_final:.2f}", KL_W - 1) + " ", label),
            ]
            target = result.targets[self.cursor_pos]
            target_id = None if target is PENDING else target.id
            pinned = self.get_component_rich_style("lens-grid--pinned")
            n_top = self._top_k
            for k in columns:
                if k >= n_top:  # a pinned token: its rank when outside the top-k
                    j = k - n_top
                    value = cell.tracked[j] if j < len(cell.tracked) else None
                    text = "" if value is None or value.rank < n_top else f"#{value.rank + 1} {value.prob:.0e}"
                    cells += [Segment(fit(text, TOPK_COLUMN - 1), label), gap]
                    continue
                if k >= len(cell.top):  # fewer tokens than top_k (a tiny vocabulary)
                    cells += [Segment(" " * (TOPK_COLUMN - 1), label), gap]
                    continue
                top = cell.top[k]
                plain, underlined = self._cell_heat(layer_index, self.cursor_pos, top.prob)
                style = underlined if top.id == target_id else plain
                if top.id in self._pinned:
                    style = pinned + Style(underline=top.id == target_id)
                if on_cursor_row and k == self.cursor_k:
                    style = cursor
                text = self._token_text(top.id, top.text, TOPK_COLUMN - 5) + _percent(top.prob)
                cells += [Segment(text, style), gap]
        else:
            pinned = self.get_component_rich_style("lens-grid--pinned")
            depth = self._depth_rows()
            for pos in columns:
                if cells_of_layer[pos] is PENDING:  # not computed yet (a streamed run)
                    cells += self._pending_cells([pos], on_cursor_row)
                    continue
                top = cells_of_layer[pos].top[0]
                target = result.targets[pos]
                on_target = target is not PENDING and top.id == target.id
                plain, underlined = self._cell_heat(layer_index, pos, top.prob)
                style = underlined if on_target else plain
                if top.id in self._pinned:
                    style = pinned + Style(underline=on_target)
                if on_cursor_row and pos == self.cursor_pos:
                    style = cursor
                text = self._token_text(top.id, top.text, POSITION_COLUMN - 1)
                if pos < len(depth) and depth[pos].top1 == layer_index:
                    text = DEPTH_MARK + text[:-1]  # the answer settles here
                cells += [Segment(text, style), gap]
        return fixed, cells

    # ------------------------------------------------------------ cursor

    def _set_cursor(self, *, row: Optional[int] = None, pos: Optional[int] = None, k: Optional[int] = None) -> None:
        if self.result is None:
            return
        old_pos = self.cursor_pos
        if row is not None:
            self.cursor_row = max(0, min(len(self._rows) - 1, row))
        if pos is not None:
            self.cursor_pos = max(0, min(len(self.result.tokens) - 1, pos))
        if k is not None:
            self.cursor_k = max(0, min(self._top_k - 1, k))
        if self.view == "topk" and self.cursor_pos != old_pos:
            self._show_title()
        self._follow_cursor()
        self.refresh()
        self._announce()
        self._ask_for_visible()

    def place_cursor(self, layer: Optional[str] = None, position: Optional[int] = None) -> None:
        """Put the cursor on a row (by its label: "embed", "L12", "L3.attn") and a prompt
        position; None leaves that coordinate as it is (a talk scene's cursor)."""
        if self.result is None:
            return
        row = None
        if layer is not None and layer in self.result.layers:
            row = self._row_of_layer(self.result.layers.index(layer))
        self._set_cursor(row=row, pos=position)

    def _announce(self, selected: bool = False) -> None:
        cell = self.current_cell
        if cell is not None:
            self.post_message((self.CellSelected if selected else self.CellHighlighted)(self, cell))

    def action_move(self, dx: int, dy: int) -> None:
        if dx and self.view == "topk":
            self._set_cursor(row=self.cursor_row + dy, k=self.cursor_k + dx)
        else:
            self._set_cursor(row=self.cursor_row + dy, pos=self.cursor_pos + dx)

    def action_page(self, direction: int) -> None:
        page = max(1, self.scrollable_content_region.height - 2)
        self._set_cursor(row=self.cursor_row + direction * page)

    def action_first_layer(self) -> None:
        self._set_cursor(row=0)

    def action_last_layer(self) -> None:
        self._set_cursor(row=len(self._rows) - 1)

    def on_key(self, event: events.Key) -> None:
        """Typing a block's number jumps to its row: "5" goes to L5, and "2" typed within
        JUMP_SECONDS after it to L52 (an 80-block model is two keys from any row)."""
        digit = event.character
        if self.result is None or digit is None or not digit.isdigit():
            return
        now = time.monotonic()
        typed = (self._jump if now - self._jump_at < JUMP_SECONDS else "") + digit
        if f"L{int(typed)}" not in self.result.layers:
            typed = digit  # past the last block: this digit starts a new number
        self._jump, self._jump_at = typed, now
        self.place_cursor(layer=f"L{int(typed)}")
        event.stop()
        event.prevent_default()

    def action_position(self, delta: int) -> None:
        self._set_cursor(pos=self.cursor_pos + delta)

    def action_switch_view(self) -> None:
        self.view = VIEWS[(VIEWS.index(self.view) + 1) % len(VIEWS)]

    def action_stride(self) -> None:
        self.stride = STRIDES[(STRIDES.index(self.stride) + 1) % len(STRIDES)] if self.stride in STRIDES else 1

    def action_select(self) -> None:
        self._announce(selected=True)

    def watch_view(self, old: str, new: str) -> None:
        self.scroll_to(0, self.scroll_offset.y, animate=False, force=True, immediate=True)
        self._update_geometry()
        self._follow_cursor()
        self._announce()

    def watch_stride(self, old: int, new: int) -> None:
        if self.result is None:
            return
        layer = self._rows[self.cursor_row] if self._rows else 0
        self._rebuild_rows()
        self.cursor_row = self._row_of_layer(layer)
        self._update_geometry()
        self._follow_cursor()
        self._announce()

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or self.result is None:
            return
        x, y = offset
        scroll_x, scroll_y = self.scroll_offset
        row = None if y < self._header_rows else scroll_y + y - self._header_rows
        column = None
        if x >= self._fixed_width:
            column = (scroll_x + x - self._fixed_width) // self._column_width
            if column >= self._column_count:
                column = None
        if row is not None and row >= len(self._rows):
            return
        if self.view == "topk":
            self._set_cursor(row=row, k=column)
        else:
            self._set_cursor(row=row, pos=column)
        if row is not None and column is not None:
            self._announce(selected=True)

    # ------------------------------------------------------------ streamed runs

    def show_partial(self, partial: "LensResult", run: object) -> None:
        """Paint some columns of a run before its complete result (``partial.positions``
        are its columns). A ``run`` unequal to the one being painted starts a new grid
        of placeholders: no cell of an older run stays under a newer one."""
        fresh = (
            self._stream_run is None
            or self._stream_run != run
            or self.result is None
            # The same request on another model (a switch): never mix the two models' cells.
            or self.result.model != partial.model
            or len(self.result.tokens) != len(partial.tokens)
            or self.result.layers != partial.layers
        )
        if fresh:
            # Cells are read from the chunks only when drawn (core/stream_grid.py).
            result = replace(partial.placeholders(), grid=StreamGrid(len(partial.layers), len(partial.tokens)))
        else:
            result = self.result
        columns = partial.column_positions
        if isinstance(result.grid, StreamGrid):  # cells are read from the partial when drawn
            result.grid.fill(partial.grid, columns, _top_count(partial))
        else:
            for i, pos in enumerate(columns):
                for row, cells in enumerate(partial.grid):
                    result.grid[row][pos] = cells[i]
        for i, pos in enumerate(columns):
            result.targets[pos] = partial.targets[i]
        if fresh:
            self.show_result(result)  # cursor, rows and geometry, as for a complete result
            self._stream_run = run
            self._missing = set(range(len(result.tokens)))
        self._missing.difference_update(partial.column_positions)
        self._depth_of = None  # new columns: their depth is known now
        if not fresh:
            self._show_title()
            # Chunks after the first are mostly off screen (they come nearest first): a
            # paint only for those in view keeps the UI free for keys while they stream.
            if not set(columns).isdisjoint(self.positions_in_view()):
                self.refresh()
            if self.cursor_pos in partial.column_positions:
                self._announce()  # the cell under the cursor just arrived
        self._ask_for_visible()

    @property
    def streaming(self) -> bool:
        """Whether some columns of the shown run are still placeholders."""
        return bool(self._missing)

    def positions_in_view(self) -> list[int]:
        """The prompt positions whose cells are on screen now."""
        if self.result is None:
            return []
        if self.view == "topk":
            return [self.cursor_pos]
        return list(self._columns_in_view())

    def wanted_positions(self) -> tuple[int, ...]:
        """What a new run should compute first: the positions that will be in view.
        A cursor on the last position follows the prompt's end, so then it is the last
        screenful, counted from the end (the new prompt's length is not known here)."""
        if self.view == "topk":
            at_end = self.result is None or self.cursor_pos >= len(self.result.tokens) - 1
            return (-1,) if at_end else (self.cursor_pos,)
        # Before the first layout the grid has no size yet: the screen's width bounds it.
        width = self.scrollable_content_region.width or self.app.size.width
        visible_width = max(POSITION_COLUMN, width - self._fixed_width)
        count = visible_width // POSITION_COLUMN + 1
        if self.result is None or self.cursor_pos >= len(self.result.tokens) - 1:
            return tuple(range(-count, 0))
        return tuple(self.positions_in_view())

    def watch_scroll_x(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_x(old_value, new_value)
        self._ask_for_visible()

    def _ask_for_visible(self) -> None:
        """Post ColumnsWanted when the view shows placeholders not asked for yet."""
        if not self._missing:
            return
        pending = frozenset(p for p in self.positions_in_view() if p in self._missing)
        if pending - self._asked:
            self._asked = pending
            self.post_message(self.ColumnsWanted(self, self._stream_run, tuple(sorted(pending))))

    def _pending_cells(self, columns, on_cursor_row: bool) -> list[Segment]:
        width = self._column_width - 1
        quiet = self.get_component_rich_style("lens-grid--pending")
        cursor = self.get_component_rich_style("lens-grid--cursor")
        gap = Segment(" ", self.rich_style)
        cells: list[Segment] = []
        for column in columns:
            style = cursor if on_cursor_row and column == self._cursor_column else quiet
            cells += [Segment(PENDING_MARK.center(width), style), gap]
        return cells

    def _pending_topk_fixed(self) -> list[Segment]:
        quiet = self.get_component_rich_style("lens-grid--pending")
        return [
            Segment(fit(PENDING_MARK, ENTROPY_W - 1) + " ", quiet),
            Segment(fit(PENDING_MARK, KL_W - 1) + " ", quiet),
        ]


PENDING_MARK = "·"  # a cell whose column is not computed yet


def _top_count(result: "LensResult") -> int:
    """Tokens per cell: the result's ``top_k``, else the first computed cell's; at least 1."""
    if result.top_k:
        return result.top_k
    cell = next((c for row in result.grid for c in row if c is not PENDING), None)
    return max(1, len(cell.top)) if cell is not None else 1
