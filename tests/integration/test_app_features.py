"""The inspector and speakability panes inside the explorer, on the real model:
the grid's cursor drives them, their keys reach the worker, their answers come back."""

from __future__ import annotations

from lenstui.jobs.protocol import ScanVocabulary
from lenstui.tui.panes.inspector import WiredInspector
from lenstui.tui.panes.speak import WiredSpeak
from testkit.apphelpers import EIFFEL, grid_lines, settle, until


async def test_cursor_fills_the_inspector_with_bytes_and_the_joined_prompt(make_app):
    app = make_app(EIFFEL)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        inspector = app.query_one(WiredInspector)
        await pilot.press("escape")
        cell = app.grid.current_cell
        assert cell.text == " Paris"
        await until(pilot, lambda: inspector.report is not None and inspector.report.id == cell.token_id, "the report")
        assert inspector.report.piece == "ĠParis" and inspector.report.bytes_hex == "20 50 61 72 69 73"
        assert inspector.sequence.text == EIFFEL  # the prompt, joined back into characters
        await pilot.press("up")  # another layer: a different predicted token at position 9
        cell = app.grid.current_cell
        await until(pilot, lambda: inspector.report.id == cell.token_id, "the next report")
        await pilot.press("p")  # the prompt token itself at that position: " of"
        await until(pilot, lambda: inspector.report.piece == "Ġof", "the prompt token's report")


async def test_target_key_re_ranks_the_grid(make_app):
    app = make_app(EIFFEL)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("escape", "up", "up", "up")  # L26 at the last position
        cell = app.grid.current_cell
        inspector = app.query_one(WiredInspector)
        await until(pilot, lambda: inspector.report is not None and inspector.report.id == cell.token_id, "the report")
        await pilot.press("t")
        await settle(app, pilot)
        result = app.shown_result
        assert not result.target_is_default
        assert {t.id for t in result.targets} == {cell.token_id}
        assert f"target {cell.text.replace(' ', '␣')}" in app.grid.border_title
        # The targeted token is that cell's own top-1, so it ranks first there.
        assert result.grid[result.layers.index(cell.layer)][-1].target_rank == 0
        await pilot.press("u")
        await settle(app, pilot)
        assert app.shown_result.target_is_default


async def test_speak_key_runs_a_certified_check(make_app):
    app = make_app(EIFFEL)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        speak = app.query_one(WiredSpeak)
        await pilot.press("escape", "s")
        await until(pilot, lambda: speak.verdict is not None, "the verdict")
        assert speak.verdict == "speakable" and speak.token_id == app.grid.current_cell.token_id
        body = str(speak.query_one("#speak-body").render())
        assert "witness" in body


async def test_a_vocabulary_scan_marks_tokens_in_the_grid_and_inspector(make_app):
    app = make_app(EIFFEL)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        # A scan of the first 300 ids: the special tokens 5 and 7..16 are exact twins
        # in SmolLM2's unembedding, so no residual can make one of them the argmax.
        app.submit(ScanVocabulary(limit=300), reply_to=app.speak_pane)
        await until(pilot, lambda: app.scan_marks is not None, "the scan")
        assert {5, 7, 16} <= app.scan_marks.unspeakable
        inspector = app.query_one(WiredInspector)
        inspector.inspect(5)
        await until(pilot, lambda: inspector.report is not None and inspector.report.id == 5, "the report")
        assert "unspeakable" in inspector.border_subtitle
        # The grid marks what the scan covered: mark the shown answer and look for it.
        answer = app.grid.current_cell.token_id
        app.grid.set_marks(frozenset({answer}), frozenset())
        await pilot.pause()
        assert any(line.rstrip().endswith("†") for line in grid_lines(app) if line.startswith("L29"))
