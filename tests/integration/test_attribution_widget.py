"""AttributionView in a throwaway App, fed real results (the view never sees a tensor)."""

from __future__ import annotations

import pytest
from rich.cells import cell_len
from textual.app import App, ComposeResult
from textual.widgets import OptionList, Static

from lenstui.core.textfmt import visible
from lenstui.engine.attribution import attribute
from lenstui.tui.widgets.attribution import (
    AttentionRowView,
    AttributionView,
    ChartView,
    attention_lines,
    block_rows,
    chart_lines,
)

PLASMA = (
    "Sometimes, when people say plasma, they mean a state of matter. "
    "Other times, when people say plasma"
)


class AttributionApp(App):
    def __init__(self):
        super().__init__()
        self.selected: list[tuple[int, int]] = []

    def compose(self) -> ComposeResult:
        yield AttributionView(id="attribution")

    def on_attribution_view_head_selected(self, message: AttributionView.HeadSelected) -> None:
        self.selected.append((message.layer, message.head))


@pytest.fixture(scope="module")
def plasma(embedded):
    """The plasma cell: " plasma" at the second " say", last row, on the real model."""
    return attribute(embedded, PLASMA, position=19, token=" plasma", heads=8)


def test_rows_pair_attention_and_mlp_per_block(plasma):
    rows = block_rows(plasma)
    assert [r.label for r in rows] == ["embed"] + [f"L{b}" for b in range(30)]
    parts = {c.name: c.contribution for c in plasma.components}
    assert rows[24].attn == parts["L23.attn"] and rows[24].mlp == parts["L23.mlp"]
    by_size = block_rows(plasma, by_size=True)
    sizes = [r.size for r in by_size]
    assert sizes == sorted(sizes, reverse=True) and len(by_size) == len(rows)
    assert by_size[0].label == max(rows, key=lambda r: r.size).label


def test_chart_lines_fit_and_sign(plasma):
    for width in (76, 116):
        lines = [line.plain for line in chart_lines(plasma, width)]
        assert all(cell_len(line) <= width for line in lines)
        assert len(lines) == 1 + 31
    line = next(line.plain for line in chart_lines(plasma, 76) if line.plain.startswith("L29 "))
    attn_part, mlp_part = line[6:].split("  ", 1)[0], line[6:]
    parts = {c.name: c.contribution for c in plasma.components}
    assert f"{parts['L29.attn']:+.3f}" in attn_part and f"{parts['L29.mlp']:+.3f}" in mlp_part
    # The largest part fills its half of the axis.
    assert "│" + "█" * 12 in line


def test_attention_lines_cover_the_prompt_up_to_the_position(plasma):
    head = plasma.heads[0]
    lines = attention_lines(plasma, head, width=60)
    body = " ".join(line.plain for line in lines[1:])
    assert all(cell_len(line.plain) <= 60 for line in lines)
    for position in range(plasma.position + 1):
        assert visible(plasma.prompt_tokens[position].text) in body
    assert f"{max(head.pattern):.2f}"[1:] in body  # weights as ".62"
    assert lines[0].plain.startswith(f"{head.name} from ␣say@19")


async def test_view_shows_toggles_and_opens_a_head(plasma):
    app = AttributionApp()
    async with app.run_test(size=(80, 24)) as pilot:
        view = app.query_one(AttributionView)
        assert "Choose a grid cell" in str(app.query_one("#attribution-message", Static).render())
        view.show_result(plasma)
        await pilot.pause()
        heading = str(app.query_one("#attribution-heading", Static).render())
        assert "logit(␣plasma) - mean logit = +15.70" in heading
        assert "parts add up exactly" in heading
        chart = app.query_one(ChartView)
        first_rows = str(chart.render()).splitlines()[1:3]
        assert first_rows[0].startswith("embed") and first_rows[1].startswith("L0 ")

        view.focus()
        await pilot.press("s")
        await pilot.pause()
        sorted_rows = str(chart.render()).splitlines()[1:3]
        assert view.by_size and sorted_rows[0].startswith("L29 ")

        heads = app.query_one("#attribution-heads", OptionList)
        assert heads.option_count == 8
        assert str(heads.get_option_at_index(0).prompt).startswith(plasma.heads[0].name)
        heads.focus()
        await pilot.press("down", "enter")
        await pilot.pause()
        chosen = plasma.heads[1]
        assert app.selected == [(chosen.layer, chosen.head)]
        row = str(app.query_one(AttentionRowView).render())
        assert row.startswith(f"{chosen.name} from ␣say@19") and "␣plasma" in row
        # Everything is on screen at 80x24: the heads list and the attention row too.
        for selector in ("#attribution-heading", "#attribution-chart", "#attribution-heads", "#attribution-attention"):
            region = app.query_one(selector).region
            assert region.height > 0 and region.bottom <= 24 and region.right <= 80


async def test_view_message_and_error(plasma):
    app = AttributionApp()
    async with app.run_test(size=(80, 24)) as pilot:
        view = app.query_one(AttributionView)
        view.show_message("Position 40 is outside the prompt.", error=True)
        await pilot.pause()
        message = app.query_one("#attribution-message", Static)
        assert message.has_class("-error") and "Position 40" in str(message.render())


class ShownApp(AttributionApp):
    """The view with a result already shown (for snapshots)."""

    def __init__(self, result):
        super().__init__()
        self.result = result

    def on_mount(self) -> None:
        self.query_one(AttributionView).show_result(self.result)


def open_second_head_sorted():
    async def run_before(pilot) -> None:
        await pilot.pause()
        pilot.app.query_one(AttributionView).focus()
        await pilot.press("s")
        pilot.app.query_one("#attribution-heads", OptionList).focus()
        await pilot.press("down", "enter")
        await pilot.pause()

    return run_before


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_snapshot_plasma(snap_compare, plasma, size):
    assert snap_compare(ShownApp(plasma), terminal_size=size, run_before=open_second_head_sorted())
