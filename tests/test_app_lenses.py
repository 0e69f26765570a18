"""Learned lenses in the explorer: fitting one from the palette (progress in the status
line, stoppable), the grid, status line and attribution under it, a lens found on the
next start, a lens read from a folder, and the evaluation plot."""

from __future__ import annotations

import pytest
import torch
from apphelpers import EIFFEL, RecordingApp, settle, until

from lenstui.engine.lens import learned
from lenstui.jobs.protocol import FitLens
from lenstui.tui.screens.lens_eval import EvalPlot, LensEvalScreen, eval_lines
from lenstui.tui.screens.path_prompt import PathPrompt
from lenstui.tui.state import lenses
from lenstui.tui.widgets.status import StatusBar
from testkit.models import CORPUS, tiny_llama


def _command(app, title: str):
    for command in app.get_system_commands(app.screen):
        if command.title == title:
            return command.callback
    raise AssertionError(f"no palette entry {title!r}")


def _status(app) -> str:
    return app.query_one(StatusBar).render().plain


async def test_fit_a_tuned_lens_from_the_palette_then_read_the_grid_with_it():
    model = tiny_llama(seed=11, initializer_range=0.3, name="tiny-app")
    app = RecordingApp(CORPUS[1], loader=lambda spec, **kw: model)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        assert app.session.learned_available == frozenset()
        app.set_lens("tuned")  # no file yet: a sentence, and the lens stays
        assert app.session.lens_kind == "logit"
        assert any("No tuned lens for this model yet" in text for text in app.notice_texts)

        _command(app, "lens: fit a tuned lens for this model")()
        # the status names the fit as it starts (a tiny fit can end before the next frame)
        assert "tuned lens fit" in app.query_one(StatusBar).job_info
        await until(pilot, lambda: any("Tuned lens saved in" in t for t in app.notice_texts), "the fit")
        await settle(app, pilot)
        assert app.session.lens_kind == "tuned" and "tuned" in app.session.learned_available
        result = app.shown_result
        assert result.lens == "tuned" and result.lens_file.path == str(learned.cached_path(model, "tuned"))
        status = _status(app)
        assert "tuned lens · " in status and "tuned lens fit" not in status
        assert "tuned lens" in app.grid.border_title
        assert (learned.cached_path(model, "tuned") / "params.pt").is_file()

        await pilot.press("escape", "a")  # attribution says what it decomposes
        await pilot.pause()
        assert any("attribution decomposes the logit lens" in t for t in app.notice_texts)
        await pilot.press("escape")

        await pilot.press("f5")  # tuned -> (no J-lens) -> patchscope, the cycle's last
        await settle(app, pilot)
        assert app.session.lens_kind == "patchscope" and app.shown_result.lens_file is None
        assert "tuned lens · " not in _status(app) and "patchscope · target" in _status(app)
        await pilot.press("f5")  # patchscope -> logit
        await settle(app, pilot)
        assert app.session.lens_kind == "logit" and app.shown_result.lens_file is None
        assert "tuned lens · " not in _status(app)


async def test_a_fit_can_be_stopped_and_saves_nothing():
    model = tiny_llama(seed=12, initializer_range=0.3, name="tiny-stop")
    app = RecordingApp(CORPUS[0], loader=lambda spec, **kw: model)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        lenses.fit(app, tokens=10_000_000)
        await until(pilot, lambda: "sampling" in _status(app), "the fit's progress")
        _command(app, "lens: stop fitting")()
        await until(pilot, lambda: any("Lens fit stopped" in t for t in app.notice_texts), "the stop")
        assert "lens fit" not in _status(app)
        assert not learned.cached_path(model, "tuned").exists()
        assert FitLens not in app.worker.busy_kinds()
        _command(app, "lens: stop fitting")()
        assert app.notice_texts[-1] == "No lens fit is running."


def _noise_lens(model, folder, scale=0.02):
    """A tuned lens for ``model`` near the identity (no fitting: a test needs files fast)."""
    torch.manual_seed(3)
    n, d = model.n_layers, model.d_model
    matrices = torch.eye(d).repeat(n, 1, 1) + scale * torch.randn(n, d, d) / d**0.5
    return learned.save_tuned(folder, model, matrices, torch.zeros(n, d), sidecar={"tokens": 1234})


@pytest.mark.integration
async def test_a_lens_fitted_earlier_is_found_on_start_and_plotted(make_app, embedded):
    _noise_lens(embedded, learned.cached_path(embedded, "tuned"))
    app = make_app(EIFFEL)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        assert app.session.learned_available == frozenset({"tuned"})
        assert any("Learned lens found for SmolLM2-135M-Instruct: tuned (fitted by lenstui on 1,234" in t
                   for t in app.notice_texts)
        for _ in range(3):  # logit -> extended -> raw -> tuned
            await pilot.press("f5")
            await settle(app, pilot)
        assert app.session.lens_kind == "tuned" and app.shown_result.lens == "tuned"
        assert "tuned lens · " in _status(app) and "lenses/SmolLM2-135M-Instruct-" in _status(app)
        logit_last = app.shown_result.grid[-1][-1].top  # the last row is the model's own
        assert logit_last[0].text == " Paris"

        await pilot.press("escape", "E")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, LensEvalScreen)
        assert screen.request.lenses == ("logit", "tuned")
        assert screen.request.prompt_ids == tuple(app.shown_result.token_ids)
        await until(pilot, lambda: screen.settled, "the evaluation")
        result = screen.result
        assert list(result.lenses) == ["logit", "tuned"] and result.tokens == len(app.shown_result.tokens) - 1
        assert [line.lens for line in eval_lines(result, "kl")] == ["logit", "tuned"]
        info = str(screen.query_one("#lens-eval-info").render())
        assert "mean KL over embed..L28: logit" in info and "tuned" in info
        plot = screen.query_one(EvalPlot).plt.build()
        assert "logit" in plot and "tuned" in plot
        await pilot.press("m")
        assert screen.measure == "top1_agree"
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.base_screen


@pytest.mark.integration
async def test_a_tuned_lens_read_from_a_folder(make_app, embedded, tmp_path):
    folder = tmp_path / "mine"
    _noise_lens(embedded, folder, scale=0.05)
    app = make_app(EIFFEL)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        _command(app, "lens: read the tuned lens from a folder…")()
        await pilot.pause()
        assert isinstance(app.screen, PathPrompt)
        app.screen.query_one("#path-input").value = str(folder)
        await pilot.press("enter")
        await settle(app, pilot)
        assert app.session.lens_kind == "tuned" and app.session.lens_paths == {"tuned": str(folder)}
        assert app.shown_result.lens_file.path == str(folder.resolve())
        assert f"tuned lens · {folder.resolve()}" in _status(app)
        app.session.lens_paths["tuned"] = str(tmp_path / "nothing")  # a folder that is no lens
        app.rerun_lens()
        await settle(app, pilot)
        assert any("No tuned lens at" in t for t in app.notice_texts)
        assert app.shown_result.lens_file.path == str(folder.resolve())  # the grid keeps its lens
