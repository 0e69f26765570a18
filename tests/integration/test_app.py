"""The explorer driven by Textual's Pilot on the real embedded model.

The apps come from conftest's ``make_app`` (the embedded model through the app's
loader, notices kept); tests await the worker's answers with ``testkit.apphelpers.settle``.
"""

from __future__ import annotations

import asyncio
import json


from lenstui.tui.widgets.grid import LensGrid
from testkit.apphelpers import EIFFEL, SETTLE_TIMEOUT, RecordingApp, grid_lines, row, settle


async def test_the_grid_shows_paris_at_the_last_layer(make_app):
    app = make_app(EIFFEL)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        assert "␣Paris" in row(app, "L29").split()[-1]  # the last column: the prompt's end
        assert "␣of" in grid_lines(app)[0]  # prompt tokens are the column headers
        assert "10 tokens" in str(app.status.render())
        assert app.grid.has_focus is False and app.prompt_pane.input.has_focus


async def test_typing_runs_the_lens_debounced_and_on_enter(make_app):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await asyncio.wait_for(app.model_settled.wait(), SETTLE_TIMEOUT)
        await pilot.press(*"The capital of France is")
        await settle(app, pilot)  # no Enter: the debounced run
        assert "".join(t.text for t in app.shown_result.tokens) == "The capital of France is"
        await pilot.press(*" the city of", "enter")
        await settle(app, pilot)
        assert app.shown_result.tokens[-1].text == " of"
        assert app.prompt_pane.history.entries[-1] == "The capital of France is the city of"


async def test_cursor_moves_and_views_switch(make_app):
    app = make_app(EIFFEL)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        grid = app.grid
        await pilot.press("escape")  # from the prompt to the grid
        assert grid.has_focus
        assert (grid.current_cell.layer, grid.current_cell.position) == ("L29", 9)
        assert grid.current_cell.text == " Paris"
        await pilot.press("up", "k", "left", "h")
        assert (grid.current_cell.layer, grid.current_cell.position) == ("L27", 7)
        await pilot.press("G", "l", "l")
        assert (grid.current_cell.layer, grid.current_cell.position) == ("L29", 9)

        await pilot.press("v")
        assert grid.view == "topk"
        assert "top-10 at position 9 (␣of)" in grid.border_title
        lines = grid_lines(app)
        assert "#1" in lines[0] and "KL" in lines[0]
        assert "␣Paris" in row(app, "L29") and "%" in row(app, "L29")
        await pilot.press("l")
        assert grid.current_cell.rank == 1
        await pilot.press("[")
        assert "position 8" in grid.border_title

        await pilot.press("v")
        assert grid.view == "positions"
        await pilot.press("S")  # stride: every 2nd layer, the last one always kept
        labels = [line.split(" ", 1)[0] for line in grid_lines(app)[1:] if line.strip()]
        assert grid.stride == 2 and "L29" in [grid.result.layers[i] for i in grid._rows]
        assert "L0" not in [grid.result.layers[i] for i in grid._rows]
        assert labels[-1] == "L29"
        await pilot.press("S", "S", "S")
        assert grid.stride == 1
        await pilot.press("question_mark")
        await pilot.pause()
        assert app.screen.query("HelpPanel")
        await pilot.press("question_mark")
        await pilot.pause()
        assert not app.screen.query("HelpPanel")
        # A click on a cell moves the cursor there: the embed row, first visible column.
        header_y, embed_y = 0, 1
        await pilot.press("g")
        label_w = len("embed") + 1
        first_visible = grid.scroll_offset.x // 10
        assert await pilot.click(LensGrid, offset=(label_w + 2, embed_y + header_y + 1))
        assert grid.current_cell.layer == "embed"
        assert grid.current_cell.position == first_visible


async def test_stepping_generation_and_undo(make_app):
    app = make_app(EIFFEL)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("ctrl+n")
        await settle(app, pilot)
        tokens = app.shown_result.tokens
        assert len(tokens) == 11 and tokens[-1].text == " Paris"
        await pilot.press("ctrl+n")
        await settle(app, pilot)
        assert len(app.shown_result.tokens) == 12
        info = str(app.query_one("#prompt-info").render())
        assert "+2 generated" in info and "␣Paris" in info
        await pilot.press("ctrl+b")
        await settle(app, pilot)
        assert len(app.shown_result.tokens) == 11
        await pilot.press("ctrl+b")
        await settle(app, pilot)
        assert len(app.shown_result.tokens) == 10 and not app.steps


async def test_seahorse_preset_uses_the_chat_template(make_app):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await asyncio.wait_for(app.model_settled.wait(), SETTLE_TIMEOUT)
        await pilot.press("f2")
        await settle(app, pilot)
        assert app.chat is True
        assert app.prompt_pane.text == "Is there a seahorse emoji?"
        pieces = [t.text for t in app.shown_result.tokens]
        assert pieces[0] == "<|im_start|>" and "".join(pieces).endswith("<|im_start|>assistant\n")
        await pilot.press("ctrl+t")  # chat off: the bare question
        await settle(app, pilot)
        assert app.shown_result.tokens[0].text == "Is"


async def test_themes_switch_and_restyle_the_grid(make_app):
    app = make_app(EIFFEL, theme="lenstui-light")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        assert app.theme == "lenstui-light"
        grid = app.grid

        def paris_background():
            strip = grid.render_line(1 + grid._rows.index(len(grid._rows) - 1) - grid.scroll_offset.y)
            styles = [seg.style for seg in strip if "Paris" in seg.text]
            return styles[0].bgcolor

        before = paris_background()
        await pilot.press("f3")  # next shipped theme
        await pilot.pause()
        assert app.theme != "lenstui-light"
        app.switch_theme("lenstui-contrast")
        await pilot.pause()
        assert app.theme == "lenstui-contrast"
        assert paris_background() != before


async def test_an_empty_prompt_is_a_notice_not_a_crash(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await asyncio.wait_for(app.model_settled.wait(), SETTLE_TIMEOUT)
        await pilot.press("enter")
        await settle(app, pilot)
        assert any(sev == "error" and "empty" in msg for sev, msg in app.notices)
        await pilot.press(*EIFFEL, "enter")
        await settle(app, pilot)
        assert app.shown_result.next_token.text == " Paris"


async def test_a_broken_theme_file_gives_a_notice_and_a_fallback(make_app, monkeypatch, tmp_path):
    import os

    themes = os.path.join(os.environ["LENSTUI_CONFIG_DIR"], "themes")
    os.makedirs(themes)
    with open(os.path.join(themes, "typo.toml"), "w") as f:
        f.write('primay = "#ff0000"\n')
    with open(os.path.join(themes, "badcolour.toml"), "w") as f:
        f.write('primary = "#ff00zz"\n')
    with open(os.path.join(themes, "mine.toml"), "w") as f:
        f.write('name = "mine"\nprimary = "#884400"\ndark = false\n')
    app = make_app(theme="typo")
    async with app.run_test(size=(80, 24)):
        messages = " | ".join(msg for _, msg in app.notices)
        assert "unknown key 'primay' (did you mean 'primary'?)" in messages
        assert "'#ff00zz' is not a colour" in messages
        assert "No theme called 'typo'" in messages
        assert app.theme == "lenstui-dark"
        assert "mine" in app.available_themes


async def test_export_writes_json_and_svg(make_app, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    app = make_app(EIFFEL)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("ctrl+s")
        await pilot.pause()
    exported = sorted(p.suffix for p in tmp_path.iterdir())
    assert exported == [".json", ".svg"]
    data = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert set(data) >= {"model", "lens", "tokens", "layers", "grid", "targets"}
    assert data["grid"][-1][-1]["top"][0]["text"] == " Paris"
    assert "<svg" in next(tmp_path.glob("*.svg")).read_text()[:200]
    assert any("JSON" in msg and str(tmp_path) in msg for _, msg in app.notices)


async def test_history_survives_a_restart(make_app):
    first = make_app()
    async with first.run_test(size=(80, 24)) as pilot:
        await asyncio.wait_for(first.model_settled.wait(), SETTLE_TIMEOUT)
        await pilot.press(*"remember me", "enter")
        await settle(first, pilot)
    second = make_app()
    async with second.run_test(size=(80, 24)) as pilot:
        await pilot.press("up")
        assert second.prompt_pane.text == "remember me"


async def test_help_and_palette_commands(make_app):
    app = make_app(EIFFEL)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for expected in ("grid: switch view", "theme: lenstui-contrast", "export: grid as JSON"):
            assert expected in titles
        await pilot.press("f1")
        await pilot.pause()
        assert app.screen.query("HelpPanel")
        for binding in type(app).BINDINGS + LensGrid.BINDINGS:
            assert binding.id and binding.description


async def test_a_feature_pane_plugs_in_without_touching_the_app(make_app, embedded):
    from textual.widgets import Static

    from lenstui.jobs.protocol import Done, InspectToken
    from lenstui.tui.app import WorkerReply
    from lenstui.tui.widgets.events import ModelLoaded, TokenFocused

    class FakeInspector(Static):
        def __init__(self):
            super().__init__("inspector")
            self.replies, self.model_names = [], []
            self.answered = asyncio.Event()

        def on_mount(self) -> None:
            # The handler runs on the worker thread, with the model; only plain data comes back.
            self.app.register_handler(InspectToken, lambda model, req, ctx: (req.token_id, model.piece(req.token_id)))

        def on_model_loaded(self, message: ModelLoaded) -> None:
            self.model_names.append(message.info.name)

        def on_token_focused(self, message: TokenFocused) -> None:
            self.app.submit(InspectToken(message.cell.token_id), reply_to=self)

        def on_worker_reply(self, message: WorkerReply) -> None:
            self.replies.append(message.result)
            self.answered.set()

    import threading

    gate = threading.Event()

    def gated_loader(spec, **kw):
        gate.wait(SETTLE_TIMEOUT)
        return embedded

    app = make_app(EIFFEL, loader=gated_loader)
    async with app.run_test(size=(120, 40)) as pilot:
        # Swap the feature's pane into the inspector's slot while the model loads.
        slot = app.query_one("#inspector")
        await slot.remove_children()
        pane = FakeInspector()
        await slot.mount(pane)
        gate.set()
        await settle(app, pilot)
        await asyncio.wait_for(pane.answered.wait(), SETTLE_TIMEOUT)
        assert pane.model_names == ["SmolLM2-135M-Instruct"]
        assert isinstance(pane.replies[-1], Done) and pane.replies[-1].value == (7042, "ĠParis")
        assert not app.query("#inspector-placeholder")
        pane.answered.clear()
        await pilot.press("escape", "up", "up")  # L27 at the last position: still " Paris"
        await asyncio.wait_for(pane.answered.wait(), SETTLE_TIMEOUT)
        assert pane.replies[-1].value[0] == app.grid.current_cell.token_id

        # A long job's progress reaches the pane that asked, then its answer.
        from lenstui.jobs.protocol import Progress, ScanVocabulary

        def scan(model, request, ctx):
            for chunk in range(3):
                ctx.checkpoint()
                ctx.progress(f"chunk {chunk}", (chunk + 1) / 3)
            return "scanned"

        app.register_handler(ScanVocabulary, scan)
        pane.answered.clear()
        pane.replies.clear()
        seq = app.submit(ScanVocabulary(), reply_to=pane)
        while not (pane.replies and isinstance(pane.replies[-1], Done)):
            await asyncio.wait_for(pane.answered.wait(), SETTLE_TIMEOUT)
            pane.answered.clear()
        assert pane.replies[-1].value == "scanned" and pane.replies[-1].seq == seq
        assert all(isinstance(r, Progress) for r in pane.replies[:-1])


async def test_a_prompt_typed_while_the_model_loads_runs_when_it_is_ready(embedded):
    import threading

    gate = threading.Event()

    def slow_loader(spec, progress=None, **kw):
        progress("pretending to load", 0.5)
        gate.wait(SETTLE_TIMEOUT)
        return embedded

    app = RecordingApp("", loader=slow_loader)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press(*EIFFEL, "enter")
        await pilot.pause()
        assert app.model_info is None and app.shown_result is None
        assert "Loading" in app.grid.hint
        gate.set()
        await settle(app, pilot)
        assert app.shown_result.next_token.text == " Paris"
        assert "␣Paris" in row(app, "L29")
