"""The palette's model picker: switch to a tiny local model folder and back, and a
spec that fails to load leaves the old model in use. Pilot on the real embedded model
(handed in through the app's loader; any other spec goes to load_model)."""

from __future__ import annotations

import asyncio

import pytest

from lenstui.core.lenses import LensOptions
from lenstui.engine.lens.run import run_lens
from lenstui.engine.model.load import load_model
from lenstui.tui.app import LenstuiApp
from lenstui.tui.commands import ModelChosen
from testkit.apphelpers import RecordingApp

EIFFEL = "The Eiffel Tower is located in the city of"
TIMEOUT = 120


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from testkit.models import tiny_llama_hf

    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    hf_model, tokenizer = tiny_llama_hf()
    hf_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


async def switch(app: LenstuiApp, pilot, spec: str, label: str) -> None:
    app.post_message(ModelChosen(spec, label))
    await pilot.pause()
    await asyncio.wait_for(app.model_settled.wait(), TIMEOUT)
    await asyncio.wait_for(app.lens_settled.wait(), TIMEOUT)
    await pilot.pause()


async def test_switch_to_a_local_model_and_back_and_a_failed_spec_keeps_the_old(embedded, tiny_dir):
    tiny = load_model(str(tiny_dir))
    tiny_direct = run_lens(tiny, EIFFEL, LensOptions(top_k=10))  # references, before the app's worker runs
    embedded_direct = run_lens(embedded, EIFFEL, LensOptions(top_k=10))
    loads: list = []

    def loader(spec, **kw):
        loads.append(spec)
        return embedded if spec is None else load_model(spec, **kw)

    app = RecordingApp(EIFFEL, loader=loader)
    async with app.run_test(size=(120, 40)) as pilot:
        await switch(app, pilot, "", "")  # settle the start-up load (and a no-op reload)
        assert app.grid.result.layers[-1] == "L29"
        app.set_target(embedded_direct.grid[-1][-1].top[1].id)  # a target of the old vocabulary
        await asyncio.wait_for(app.lens_settled.wait(), TIMEOUT)

        await switch(app, pilot, str(tiny_dir), "tiny-llama")
        assert loads[-1] == str(tiny_dir) and app.model_info.n_layers == tiny.n_layers
        shown = app.grid.result
        assert shown.layers[-1] == f"L{tiny.n_layers - 1}" and shown.token_ids == tiny_direct.token_ids
        assert [c.top[0].id for c in shown.grid[-1]] == [c.top[0].id for c in tiny_direct.grid[-1]]
        assert app.session.target is None and shown.target_is_default  # the old id meant nothing here
        assert app.prompt_pane.input.value == EIFFEL  # the prompt stays
        report = app.inspector_pane.report  # dropped, then filled again for the new grid's cursor
        assert app.scan_marks is None and (report is None or report.model == tiny.name)

        await switch(app, pilot, "", "the embedded model")
        assert loads[-1] is None and app.grid.result.layers[-1] == "L29"
        assert app.grid.result.token_ids == embedded_direct.token_ids
        assert app.grid.result.next_token.text == " Paris"

        await switch(app, pilot, "/no/such/model.gguf", "/no/such/model.gguf")
        assert any("Could not open /no/such/model.gguf; still using" in n for n in app.notice_texts)
        assert app.model_info.n_layers == 30 and app.grid.result.layers[-1] == "L29"
        assert "not loaded" not in str(app.status.render())
        # ... and the old model still serves: a new prompt runs on it.
        app.prompt_pane.set_text("The capital of France is")
        app.lens.run_text("The capital of France is", immediate=True)
        await asyncio.wait_for(app.lens_settled.wait(), TIMEOUT)
        await pilot.pause()
        assert app.grid.result.layers[-1] == "L29" and app.grid.result.tokens[-1].text == " is"
