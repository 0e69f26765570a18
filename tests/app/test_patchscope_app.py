"""The Patchscope in the explorer (Pilot, the tiny random Llama): F5 reaches it with its
cost said up front, the grid on screen is the hooked reference's patch, the palette sets
the target (the status line names it), its progress shows while it streams, and every
view works under it: top-k, pins, trajectories, compare, the lens evaluation."""

from __future__ import annotations

from testkit.apphelpers import LensGate, settle, until

from lenstui.core.lenses import DEFAULT_PATCHSCOPE_TARGET
from lenstui.jobs.protocol import RunLens
from lenstui.tui.screens.compare import CompareScreen
from lenstui.tui.screens.lens_eval import LensEvalScreen
from lenstui.tui.screens.target_prompt import TargetPrompt
from lenstui.tui.screens.trajectory import TrajectoryScreen
from lenstui.tui.widgets.status import StatusBar
from testkit.models import CORPUS
from testkit.patchscope_reference import hooked_patchscope

PROMPT = CORPUS[0]


def _palette(app) -> dict:
    """The palette's entries now, by title."""
    return {command.title: command.callback for command in app.get_system_commands(app.screen)}


def _status(app) -> str:
    return str(app.query_one(StatusBar).render())


async def test_f5_reaches_the_patchscope_and_the_grid_is_the_hooked_patch(make_tiny_app, tiny_llama):
    app = make_tiny_app(PROMPT)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        for _ in range(3):  # logit -> extended -> raw -> (no tuned, no J-lens) -> patchscope
            await pilot.press("f5")
            await settle(app, pilot)
        assert app.session.lens_kind == "patchscope"
        assert any("runs the model once per cell" in t and "the status line shows its progress" in t for t in app.notice_texts)
        result = app.shown_result
        assert result.lens == "patchscope" and result.patchscope_target == DEFAULT_PATCHSCOPE_TARGET
        target = tiny_llama.tokenizer(DEFAULT_PATCHSCOPE_TARGET)["input_ids"]
        reference = hooked_patchscope(tiny_llama.hf, list(result.token_ids), target)
        for row in range(len(result.layers)):
            for pos in range(len(result.tokens)):
                assert result.grid[row][pos].top[0].id == int(reference[(row, pos)].argmax()), (row, pos)
        assert "patchscope · target cat -> cat\\n1135" in _status(app)
        assert "patchscope" in app.grid.border_title

        await pilot.press("f4")  # the top-k view
        await pilot.pause()
        assert app.grid.view == "topk"
        await pilot.press("f4")

        await pilot.press("escape", "P")  # pin the cursor's token: tracked in every cell
        await settle(app, pilot)
        assert len(app.shown_result.tracked) == 1 and app.shown_result.lens == "patchscope"
        pinned = app.shown_result.tracked[0].id
        cell = app.shown_result.grid[1][-1]
        ref = reference[(1, len(result.tokens) - 1)]
        assert abs(cell.tracked[0].prob - float(ref[pinned])) <= 1e-4

        await pilot.press("T")  # the trajectories of the pinned token, under the Patchscope
        await pilot.pause()
        assert isinstance(app.screen, TrajectoryScreen)
        await pilot.press("escape")
        await pilot.pause()

        await pilot.press("C")  # compare: both prompts through the Patchscope
        await until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.comparison is not None, "the comparison")
        assert app.screen.comparison.a.lens == "patchscope" and app.screen.comparison.b.patchscope_target == DEFAULT_PATCHSCOPE_TARGET
        await pilot.press("escape")
        await pilot.pause()

        await pilot.press("E")  # the lens evaluation: logit beside the Patchscope
        await until(pilot, lambda: isinstance(app.screen, LensEvalScreen) and app.screen.result is not None, "the evaluation")
        assert list(app.screen.result.lenses) == ["logit", "patchscope"]
        await pilot.press("escape")


async def test_the_palette_sets_the_target_and_the_status_line_names_it(make_tiny_app):
    app = make_tiny_app(PROMPT)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        _palette(app)["lens: Patchscope target…"]()
        await pilot.pause()
        assert isinstance(app.screen, TargetPrompt)
        field = app.screen.query_one("#target-input")
        assert field.value == "cat -> cat\\n1135 -> 1135\\nhello -> hello\\n?"
        field.value = "~ hello -> hello\\n~ world ->"
        await pilot.press("enter")
        await settle(app, pilot)
        assert app.session.lens_kind == "patchscope"
        assert app.shown_result.patchscope_target == "~ hello -> hello\n~ world ->"  # ~ kept, \n a line break
        assert "patchscope · target ~ hello -> hello\\n~ world ->" in _status(app)
        _palette(app)["lens: Patchscope default target"]()
        await settle(app, pilot)
        assert app.shown_result.patchscope_target == DEFAULT_PATCHSCOPE_TARGET
        await pilot.press("f5")  # patchscope -> logit: the status line drops the target
        await settle(app, pilot)
        assert app.session.lens_kind == "logit" and "patchscope ·" not in _status(app)


async def test_the_status_line_shows_the_patchscopes_progress_while_it_streams(make_tiny_app, tiny_llama):
    tiny_llama.caches.lens_states.clear()  # (cells the other tests computed would be shown at once)
    app = make_tiny_app("")
    gate = LensGate()
    async with app.run_test(size=(120, 40)) as pilot:
        app.register_handler(RunLens, gate.handler)
        await settle(app, pilot)
        app.session.set_lens("patchscope")
        gate.hold()
        app.prompt_pane.set_text(PROMPT)
        app.lens.run_text(PROMPT, immediate=True)  # what Enter in the prompt pane does
        await until(pilot, lambda: gate.holding.is_set(), "the first part")
        await until(pilot, lambda: "patchscope: 0/" in _status(app), "the progress")
        assert "running the lens…" in _status(app) and "columns" in _status(app)
        gate.release()
        await settle(app, pilot)
        assert "running the lens" not in _status(app) and app.shown_result.lens == "patchscope"
