"""Learned lenses in the explorer: fitting one from the palette (progress in the status
line, stoppable), the grid, status line and attribution under it (a lens found on the next
start, a lens read from a folder and the evaluation plot, on the embedded model:
tests/integration/test_app_lenses_embedded.py)."""

from __future__ import annotations

from lenstui.engine.lens import learned
from lenstui.jobs.protocol import FitLens
from lenstui.tui.state import lenses
from lenstui.tui.widgets.status import StatusBar
from testkit.apphelpers import RecordingApp, palette_command, settle, status_text, until
from testkit.models import CORPUS, tiny_llama


async def test_fit_a_tuned_lens_from_the_palette_then_read_the_grid_with_it():
    model = tiny_llama(seed=11, initializer_range=0.3, name="tiny-app")
    app = RecordingApp(CORPUS[1], loader=lambda spec, **kw: model)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        assert app.session.learned_available == frozenset()
        app.set_lens("tuned")  # no file yet: a sentence, and the lens stays
        assert app.session.lens_kind == "logit"
        assert any("No tuned lens for this model yet" in text for text in app.notice_texts)

        palette_command(app, "lens: fit a tuned lens for this model")()
        # the status names the fit as it starts (a tiny fit can end before the next frame)
        assert "tuned lens fit" in app.query_one(StatusBar).job_info
        await until(pilot, lambda: any("Tuned lens saved in" in t for t in app.notice_texts), "the fit")
        await settle(app, pilot)
        assert app.session.lens_kind == "tuned" and "tuned" in app.session.learned_available
        result = app.shown_result
        assert result.lens == "tuned" and result.lens_file.path == str(learned.cached_path(model, "tuned"))
        status = status_text(app)
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
        assert "tuned lens · " not in status_text(app) and "patchscope · target" in status_text(app)
        await pilot.press("f5")  # patchscope -> logit
        await settle(app, pilot)
        assert app.session.lens_kind == "logit" and app.shown_result.lens_file is None
        assert "tuned lens · " not in status_text(app)


async def test_a_fit_can_be_stopped_and_saves_nothing():
    model = tiny_llama(seed=12, initializer_range=0.3, name="tiny-stop")
    app = RecordingApp(CORPUS[0], loader=lambda spec, **kw: model)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        lenses.fit(app, tokens=10_000_000)
        await until(pilot, lambda: "sampling" in status_text(app), "the fit's progress")
        palette_command(app, "lens: stop fitting")()
        await until(pilot, lambda: any("Lens fit stopped" in t for t in app.notice_texts), "the stop")
        assert "lens fit" not in status_text(app)
        assert not learned.cached_path(model, "tuned").exists()
        assert FitLens not in app.worker.busy_kinds()
        palette_command(app, "lens: stop fitting")()
        assert app.notice_texts[-1] == "No lens fit is running."
