"""The presenter's stage layout at 80x24 and 120x40 (see test_snapshots.py for how
snapshots are made and regenerated): the real embedded model, timings hidden."""

from __future__ import annotations

import pytest

from lenstui.talks.format import parse_talk
from lenstui.tui.presenter import PresenterApp

TALK = '''title = "snapshot talk"
theme = "lenstui-contrast"

[[scene]]
title = "Where is the Eiffel Tower?"
prompt = "The Eiffel Tower is located in the city of"
view = "topk"
cursor = { layer = "L20", position = -1 }
target = " Paris"
'''


@pytest.fixture
def presenter(embedded, tmp_path):
    def make() -> PresenterApp:
        talk = parse_talk(TALK, tmp_path / "talk.toml")
        app = PresenterApp(talk, loader=lambda spec, **kw: embedded, show_timings=False)
        app.worker_stop_timeout = 120
        return app

    return make


async def until_scene_shown(pilot) -> None:
    app = pilot.app
    app.prompt_pane.input.cursor_blink = False
    await app.model_settled.wait()
    await app.scene_settled.wait()
    for _ in range(2):  # the panes' own lookups for the cursor's token
        await pilot.pause()
        while app.worker.busy_kinds():
            await pilot.pause(0.05)
    await pilot.pause()


def test_stage_layout_80x24(snap_compare, presenter):
    assert snap_compare(presenter(), terminal_size=(80, 24), run_before=until_scene_shown)


def test_stage_layout_120x40(snap_compare, presenter):
    assert snap_compare(presenter(), terminal_size=(120, 40), run_before=until_scene_shown)
