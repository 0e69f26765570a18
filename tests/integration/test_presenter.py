"""`lenstui present`: the explorer walking a talk file, driven by Pilot on the real
embedded model (handed to the app through its ``loader``; the worker thread still runs
every request). Tests await ``app.scene_settled`` / ``model_settled`` instead of
sleeping; the timeouts only keep a broken build from hanging the suite."""

from __future__ import annotations

import asyncio

import pytest
from textual.widgets import Footer

from lenstui.core.lenses import LensOptions
from lenstui.engine.lens.run import run_lens
from lenstui.jobs.protocol import RunLens
from lenstui.talks.format import load_talk
from lenstui.tui.presenter import PresenterApp, SceneBanner, SceneMessage
from lenstui.tui.screens.attribution import AttributionScreen
from testkit.apphelpers import RecordingPresenter

TIMEOUT = 120
EIFFEL = "The Eiffel Tower is located in the city of"
FRANCE = "The capital of France is"

TALK = f'''title = "test talk"
theme = "lenstui-contrast"

[[scene]]
title = "Eiffel"
prompt = "{EIFFEL}"
view = "topk"
cursor = {{ layer = "L20", position = -1 }}
target = " Paris"
pinned = [" Rome"]

[[scene]]
title = "France, two steps on"
prompt = "{FRANCE}"
steps = 2
cursor = {{ layer = "L29", position = 2 }}

[[scene]]
title = "A token the model lacks"
prompt = "Hello"
target = "#999999"

[[scene]]
title = "A view that does not exist"
prompt = "Hello"
view = "sideways"

[[scene]]
title = "Attribution"
prompt = "{EIFFEL}"
view = "attribution"
'''


@pytest.fixture
def talk_path(tmp_path):
    path = tmp_path / "talk.toml"
    path.write_text(TALK, encoding="utf-8")
    return path


@pytest.fixture
def make_presenter(embedded, talk_path):
    def make(**kwargs) -> RecordingPresenter:
        kwargs.setdefault("loader", lambda spec, **kw: embedded)
        return RecordingPresenter(load_talk(talk_path), **kwargs)

    return make


async def scene_shown(app: PresenterApp, pilot) -> None:
    await pilot.pause()
    await asyncio.wait_for(app.scene_settled.wait(), TIMEOUT)
    await pilot.pause()


async def until(pilot, condition) -> None:
    async def wait() -> None:
        while not condition():
            await pilot.pause(0.05)

    await asyncio.wait_for(wait(), TIMEOUT)


def banner(app: PresenterApp) -> str:
    return str(app.query_one(SceneBanner).render())


def message_shown(app: PresenterApp) -> bool:
    return app.query_one("#body").has_class("-scene-message") and app.query_one(SceneMessage).display


async def test_scenes_move_jump_and_broken_ones_do_not_stop_the_talk(make_presenter, embedded):
    # The references, computed before the app's worker uses the model (one thread at a time).
    paris = embedded.tokenizer.encode(" Paris")[-1]
    rome = embedded.tokenizer.encode(" Rome")[-1]
    direct = run_lens(embedded, EIFFEL, LensOptions(top_k=10, target=paris))
    ids = run_lens(embedded, FRANCE, LensOptions(top_k=1)).token_ids
    for _ in range(2):  # two greedy steps: the lens's own next token, run by run
        ids = ids + [run_lens(embedded, ids, LensOptions(top_k=1)).next_token.id]
    app = make_presenter()
    async with app.run_test(size=(120, 40)) as pilot:
        await scene_shown(app, pilot)
        assert banner(app) == "1/5 · Eiffel" and app.theme == "lenstui-contrast"
        # Scene 1 as the engine computes it directly: target, view, cursor, pinned.
        assert app.session.top_k == 10
        shown = app.grid.result
        assert shown.token_ids == direct.token_ids and shown.targets[-1].id == paris
        assert [c.top[0].id for c in shown.grid[-1]] == [c.top[0].id for c in direct.grid[-1]]
        assert app.grid.view == "topk" and app.grid.current_cell.layer == "L20"
        assert app.grid.cursor_pos == len(direct.tokens) - 1
        assert app.session.target == paris and app.session.pins == [rome]

        # Scene 2 is computed in the background: moving to it submits no lens run.
        await until(pilot, lambda: 2 in app.renders)
        lens_runs = app.worker.latest_seq(RunLens)
        await pilot.press("space")
        assert app.scene_settled.is_set()  # shown at once, nothing to wait for
        await pilot.pause()
        assert app.worker.latest_seq(RunLens) == lens_runs
        assert banner(app) == "2/5 · France, two steps on" and not message_shown(app)
        assert app.grid.result.token_ids == ids and len(app.session.steps) == 2
        assert app.grid.view == "positions" and app.grid.cursor_pos == 2

        await pilot.press("space")  # a token the model lacks: its sentence, not the grid
        await scene_shown(app, pilot)
        assert message_shown(app) and not app.grid.display
        assert "Scene 3 cannot be shown" in str(app.query_one(SceneMessage).render())
        assert "999999" in str(app.query_one(SceneMessage).render())
        await pilot.press("pagedown")  # the file's own problem: shown the same way
        await scene_shown(app, pilot)
        assert banner(app).startswith("4/5") and "sideways" in str(app.query_one(SceneMessage).render())
        await pilot.press("space")  # the attribution view: the cursor's cell, attributed
        await scene_shown(app, pilot)
        assert banner(app).startswith("5/5") and not message_shown(app) and app.grid.result is not None
        assert isinstance(app.screen, AttributionScreen)
        assert not any("not available" in notice for notice in app.notice_texts)
        await pilot.press("space")
        assert "That was the last scene." in app.notice_texts

        await pilot.press("backspace")
        await scene_shown(app, pilot)
        assert banner(app).startswith("4/5") and not isinstance(app.screen, AttributionScreen)
        await pilot.press("pageup", "pageup")
        await scene_shown(app, pilot)
        assert banner(app).startswith("2/5")
        await pilot.press("1", "enter")  # digits + Enter jump
        await scene_shown(app, pilot)
        assert banner(app) == "1/5 · Eiffel" and app.grid.view == "topk"
        await pilot.press("g", "2")
        assert "go to scene: 2_" in banner(app)
        await pilot.press("enter")
        await scene_shown(app, pilot)
        assert banner(app).startswith("2/5")
        await pilot.press("9", "enter")
        assert "No scene 9: the talk has scenes 1 to 5." in app.notice_texts and banner(app).startswith("2/5")


async def test_save_appends_the_current_state_as_a_new_scene(make_presenter, talk_path):
    app = make_presenter()
    before = talk_path.read_bytes()
    async with app.run_test(size=(120, 40)) as pilot:
        await scene_shown(app, pilot)
        await pilot.press("space")
        await scene_shown(app, pilot)
        await pilot.press("right")  # move the cursor: the saved scene keeps it
        await pilot.pause()
        cell = app.grid.current_cell
        await pilot.press("w")
        await pilot.pause()
    after = talk_path.read_bytes()
    assert after.startswith(before) and len(after) > len(before)
    talk = load_talk(talk_path)
    assert len(talk.scenes) == 6
    saved = talk.scenes[-1]
    assert saved.ok and saved.prompt == FRANCE and saved.steps == 2 and saved.view == "positions"
    assert saved.cursor.layer == cell.layer and saved.cursor.position in (cell.position, -1)
    assert saved.theme == "lenstui-contrast"
    assert app.talk.scenes[-1].title == saved.title


async def test_stage_layout_hides_the_panes_and_toggles(make_presenter):
    app = make_presenter()
    async with app.run_test(size=(120, 40)) as pilot:
        await scene_shown(app, pilot)
        hidden = lambda: [not app.query_one(s).display for s in ("#side", "#prompt", Footer)]  # noqa: E731
        assert app.screen.has_class("-stage") and hidden() == [True, True, True]
        assert app.query_one(SceneBanner).display
        assert app.grid.region.width == 120  # the grid has the whole width
        await pilot.press("f")
        await pilot.pause()
        assert not app.screen.has_class("-stage") and hidden() == [False, False, False]
        # The scene keys are off while the prompt is focused: Space types a space.
        app.prompt_pane.input.focus()
        await pilot.press("space")
        await pilot.pause()
        assert banner(app).startswith("1/5") and app.prompt_pane.input.value.endswith(" ")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from testkit.models import tiny_llama_hf

    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    hf_model, tokenizer = tiny_llama_hf()
    hf_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


async def test_another_model_recomputes_the_scenes(make_presenter, embedded, tiny_dir):
    from lenstui.engine.model.load import load_model
    from lenstui.tui.commands import ModelChosen

    app = make_presenter(loader=lambda spec, **kw: embedded if spec is None else load_model(spec, **kw))
    async with app.run_test(size=(120, 40)) as pilot:
        await scene_shown(app, pilot)
        assert app.grid.result.layers[-1] == "L29"
        app.post_message(ModelChosen(str(tiny_dir), "tiny-llama"))
        await pilot.pause()
        await asyncio.wait_for(app.model_settled.wait(), TIMEOUT)
        await scene_shown(app, pilot)
        # The tiny model has 3 layers: scene 1's cursor row L20 is not there, said as a sentence.
        assert app.model_info.n_layers == 3 and message_shown(app)
        assert "cursor layer L20 does not exist" in str(app.query_one(SceneMessage).render())
        await until(pilot, lambda: 2 in app.renders)
        await pilot.press("space")  # scene 2's cursor row L29 is not there either
        await scene_shown(app, pilot)
        assert "cursor layer L29 does not exist" in str(app.query_one(SceneMessage).render())
        await pilot.press("space", "space", "space")  # scene 5: no cursor, shown on the tiny model
        await scene_shown(app, pilot)
        assert banner(app).startswith("5/5") and not message_shown(app)
        assert app.grid.result.layers[-1] == "L2" and app.grid.result.model == app.model_info.name
        app.post_message(ModelChosen("", "the embedded model"))
        await pilot.pause()
        await asyncio.wait_for(app.model_settled.wait(), TIMEOUT)
        await scene_shown(app, pilot)
        assert banner(app).startswith("5/5") and app.grid.result.layers[-1] == "L29"
