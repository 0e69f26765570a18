"""Families in the explorer: a model whose blocks have no mid residual says so when the
mid-row toggle is pressed (and the toggle stays off), and a load whose wiring check failed
says so on the status line, in its own sentence."""

from __future__ import annotations

import torch
from testkit.apphelpers import EIFFEL, RecordingApp, settle

from lenstui.engine.model.load import load_model, wrap_model
from lenstui.engine.model.wiring import check_wiring
from lenstui.tui.widgets.status import StatusBar
from testkit.families import build, by_name


def _status(app) -> str:
    return app.query_one(StatusBar).render().plain


async def test_the_mid_row_toggle_on_a_parallel_attention_family_says_why_and_stays_off(tmp_path):
    model = load_model(str(build(by_name("GPT-J"), tmp_path)))
    app = RecordingApp(EIFFEL, loader=lambda spec, **kw: model)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        assert app.model_info.mid_rows and "parallel" in app.model_info.mid_rows
        app.action_toggle_mid()
        await pilot.pause()
        assert app.session.incl_mid is False
        assert app.model_info.mid_rows in app.notice_texts
        assert "⚠" not in _status(app)  # the wiring check passed: nothing on the status line


async def test_a_failed_wiring_check_is_on_the_status_line(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build(by_name("Falcon-40B style (new decoder)"), tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = wrap_model(hf, AutoTokenizer.from_pretrained(folder), name="falcon-40b-style", device="cpu")
    model.caches.anatomy, model.caches.anatomy_known = None, True  # read through the bridge (its QKV split)
    model.wiring = check_wiring(model)
    assert not model.wiring.ok
    app = RecordingApp(EIFFEL, loader=lambda spec, **kw: model)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        assert _status(app).startswith("⚠ The lens does not read falcon-40b-style")
        assert model.wiring.sentence in app.notice_texts
