"""InspectorPane in a throwaway App: it renders engine dataclasses and posts its request."""

from __future__ import annotations

import pytest
from rich.cells import cell_len
from textual.app import App, ComposeResult
from textual.widgets import Static

from lenstui.core.token_bytes import BYTE_LEVEL, TokenBytes, join_token_bytes
from lenstui.engine.inspect.neighbors import inspect_token
from lenstui.tui.panes.inspector import InspectorPane, JoinedSequenceView, ReportView, report_lines, sequence_lines


def fish_sequence():
    """The seeds' ` 🐠` as SmolLM2 tokenizes it, framed by ordinary tokens."""
    tokens = [
        TokenBytes(8279, "Is", b"Is", BYTE_LEVEL, False),
        TokenBytes(15107, "ĠðŁ", b" \xf0\x9f", BYTE_LEVEL, False),
        TokenBytes(234, "Ĳ", b"\x90", BYTE_LEVEL, False),
        TokenBytes(250, "ł", b"\xa0", BYTE_LEVEL, False),
        TokenBytes(30, "?", b"?", BYTE_LEVEL, False),
    ]
    return join_token_bytes(tokens)


class InspectorApp(App):
    def __init__(self):
        super().__init__()
        self.requested: list[int] = []

    def compose(self) -> ComposeResult:
        yield InspectorPane(id="inspector")

    def on_inspector_pane_target_requested(self, message: InspectorPane.TargetRequested) -> None:
        self.requested.append(message.token_id)


def test_sequence_lines_put_the_fish_over_its_three_tokens():
    lines = [line.plain for line in sequence_lines(fish_sequence(), width=80)]
    assert lines[0].split() == ["Is", "␣🐠", "?"]
    assert "ĠðŁ Ĳ ł" in lines[1] and "15107 234 250" in lines[2]
    # each block is as wide on all three lines, so the columns line up
    assert len({cell_len(line) for line in lines}) == 1
    # the fish's text starts in the same column as its pieces and ids
    column = lines[1].index("ĠðŁ")
    assert cell_len(lines[0][: lines[0].index("␣🐠")]) == column == lines[2].index("15107")


def test_sequence_lines_wrap_to_the_width():
    lines = sequence_lines(fish_sequence(), width=12)
    assert len(lines) > 3
    assert all(cell_len(line.plain) <= 12 for line in lines)


def test_report_lines_wrap_under_their_column(tiny_llama):
    lead_byte = tiny_llama.tokenizer.convert_tokens_to_ids("ð")  # 0xF0 alone
    report = inspect_token(tiny_llama, lead_byte, n_neighbors=3)
    assert report.utf8_description == "the first byte of a 4-byte character"
    for width in (30, 50, 80):
        lines = [line.plain for line in report_lines(report, width)]
        assert all(cell_len(line) <= width for line in lines), width
        utf8 = next(k for k, line in enumerate(lines) if line.startswith("UTF-8"))
        label_width = min(16, width // 3)
        if width < 80:  # the description wraps, and continues under the values
            assert lines[utf8 + 1].startswith(" " * label_width) and lines[utf8 + 1].strip()
        else:
            assert "4-byte character" in lines[utf8]


async def test_pane_shows_report_message_and_sequence(tiny_llama):
    report = inspect_token(tiny_llama, 10, n_neighbors=4)
    app = InspectorApp()
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(InspectorPane)
        message = app.query_one("#inspector-message", Static)
        assert "Select a prompt token" in str(message.render())

        pane.show_report(report)
        await pilot.pause()
        body = str(app.query_one(ReportView).render())
        assert "shows as" in body and report.bytes_hex in body
        assert "nearest by readout direction" in body
        assert str(report.neighbors[0].id) in body
        assert not message.display

        pane.show_sequence(fish_sequence(), selected=2)
        await pilot.pause()
        view = app.query_one(JoinedSequenceView)
        assert view.display and view.size.height == 3
        assert "15107 234 250" in str(view.render())

        pane.focus()
        await pilot.press("t")
        await pilot.pause()
        assert app.requested == [10]

        pane.show_message("The model failed to load.", error=True)
        await pilot.pause()
        assert message.display and message.has_class("-error")
        assert not app.query_one("#inspector-body").display
        await pilot.press("t")  # nothing inspected: no request
        await pilot.pause()
        assert app.requested == [10]


@pytest.mark.parametrize("width", [40, 80])
async def test_pane_renders_at_narrow_widths(tiny_llama, width):
    report = inspect_token(tiny_llama, 3, n_neighbors=10)
    app = InspectorApp()
    async with app.run_test(size=(width, 24)) as pilot:
        pane = app.query_one(InspectorPane)
        pane.show_report(report)
        pane.show_sequence(fish_sequence())
        await pilot.pause()
        assert pane.outer_size.width == width
        assert app.query_one(JoinedSequenceView).size.height >= 3
