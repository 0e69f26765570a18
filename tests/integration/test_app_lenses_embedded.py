"""Learned lenses in the explorer on the embedded model: a lens fitted earlier is found on start
and plotted, and a tuned lens is read from a folder."""

from __future__ import annotations

import torch

from lenstui.engine.lens import learned
from lenstui.tui.screens.lens_eval import EvalPlot, LensEvalScreen, eval_lines
from lenstui.tui.screens.path_prompt import PathPrompt
from testkit.apphelpers import EIFFEL, palette_command, settle, status_text, until


def _noise_lens(model, folder, scale=0.02):
    """A tuned lens for ``model`` near the identity (no fitting: a test needs files fast)."""
    torch.manual_seed(3)
    n, d = model.n_layers, model.d_model
    matrices = torch.eye(d).repeat(n, 1, 1) + scale * torch.randn(n, d, d) / d**0.5
    return learned.save_tuned(folder, model, matrices, torch.zeros(n, d), sidecar={"tokens": 1234})


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
        assert "tuned lens · " in status_text(app) and "lenses/SmolLM2-135M-Instruct-" in status_text(app)
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


async def test_a_tuned_lens_read_from_a_folder(make_app, embedded, tmp_path):
    folder = tmp_path / "mine"
    _noise_lens(embedded, folder, scale=0.05)
    app = make_app(EIFFEL)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        palette_command(app, "lens: read the tuned lens from a folder…")()
        await pilot.pause()
        assert isinstance(app.screen, PathPrompt)
        app.screen.query_one("#path-input").value = str(folder)
        await pilot.press("enter")
        await settle(app, pilot)
        assert app.session.lens_kind == "tuned" and app.session.lens_paths == {"tuned": str(folder)}
        assert app.shown_result.lens_file.path == str(folder.resolve())
        assert f"tuned lens · {folder.resolve()}" in status_text(app)
        app.session.lens_paths["tuned"] = str(tmp_path / "nothing")  # a folder that is no lens
        app.rerun_lens()
        await settle(app, pilot)
        assert any("No tuned lens at" in t for t in app.notice_texts)
        assert app.shown_result.lens_file.path == str(folder.resolve())  # the grid keeps its lens
