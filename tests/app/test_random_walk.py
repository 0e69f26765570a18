"""The random walk of the whole explorer (``testkit/walk.py``): Hypothesis picks sequences of
keys, typed text, palette commands, model switches, resizes and pauses; after every step
nothing was caught by the safety net, the cursor is inside the shown result and the prompt
line is what was typed, and once idle the grid is a fresh ``run_lens`` of that prompt.

Two profiles of the same machine:

- ``test_random_walk_on_tiny_models``: the tiny random Llama and GPT-2 (switching between
  them, and to a model that cannot be opened), the lens paced so keys land while it
  streams (a few ms between partials of 4 positions): hundreds of steps in about a minute;
- ``test_random_walk_on_the_embedded_model`` (tests/integration/test_random_walk_embedded.py): SmolLM2-135M with its chat
  template, a bounded number of shorter examples.

Both are derandomized (the same examples every run, so ``make test`` is stable). For a
longer exploration with fresh examples: ``LENSTUI_WALK_EXAMPLES=300 LENSTUI_WALK_RANDOM=1
pytest tests/app/test_random_walk.py -k tiny``; failures found are kept below as plain tests
replaying the steps Hypothesis printed.
"""

from __future__ import annotations

import time

from hypothesis.stateful import run_state_machine_as_test

from lenstui.talks.format import load_talk
from testkit.apphelpers import RecordingPresenter
from testkit.walk import PresenterWalk, report_walk, walk_machine, walk_settings

# A talk for the tiny models: scenes that show, and scenes that cannot (a token the
# vocabulary lacks, steps past the context, a view that does not exist).
TINY_TALK = '''title = "a tiny talk"

[[scene]]
title = "Eiffel, top-k"
prompt = "The Eiffel Tower is located in the city of"
view = "topk"
cursor = { layer = "L1", position = -1 }
pinned = [" city", "#7"]

[[scene]]
title = "Two steps on"
prompt = "hello world, hello"
steps = 2
cursor = { layer = "L2", position = 2 }
target = "#9"

[[scene]]
title = "Ids, attributed"
prompt_ids = [5, 30, 60, 90, 120]
view = "attribution"
cursor = { layer = "L0", position = -1 }

[[scene]]
title = "A token the model lacks"
prompt = "hello"
target = "#999999"

[[scene]]
title = "Raw lens, light"
prompt = "Sometimes, when people say plasma"
lens = "raw"
theme = "lenstui-light"

[[scene]]
title = "Past the context"
prompt = "hello world"
steps = 100

[[scene]]
title = "A view that does not exist"
prompt = "hello bytes"
view = "sideways"
'''


class WalkPresenter(RecordingPresenter):
    """Counts the scenes it puts on screen (the walk takes each one's prompt line)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.scenes_applied = 0

    def _apply(self, scene, render) -> None:
        super()._apply(scene, render)
        self.scenes_applied += 1


def test_random_walk_on_tiny_models(walk_setup, tiny_llama, tiny_gpt2):
    machine, walk_settings = walk_machine({"tiny-gpt2": tiny_gpt2}, tiny_llama, examples=16, steps=30)
    started = time.perf_counter()
    run_state_machine_as_test(machine, settings=walk_settings, _min_steps=10)
    report_walk("random walk, tiny models", machine, started)
    assert machine.stats["steps"] >= walk_settings.max_examples


def _presenter_walk(tmp_path, model):
    """A present-mode machine: each example its own copy of the talk file (saving appends to it)."""
    copies = iter(range(10**6))

    def make_app(prompt: str):
        path = tmp_path / f"talk-{next(copies)}.toml"
        path.write_text(TINY_TALK, encoding="utf-8")
        return WalkPresenter(load_talk(path), loader=lambda spec, **kw: model, show_timings=False)

    return type(
        "PresenterWalk",
        (PresenterWalk,),
        dict(make_app=staticmethod(make_app), models={model.name: model}, stats={}),
    )


def test_random_walk_in_present_mode(walk_setup, tmp_path, tiny_llama):
    """The walk on ``lenstui present``: scenes move, jump, save (``w``) and apply their
    prompt, steps, cursor, target, pins, lens, view and theme."""
    machine = _presenter_walk(tmp_path, tiny_llama)
    started = time.perf_counter()
    run_state_machine_as_test(machine, settings=walk_settings(6, 25), _min_steps=10)
    report_walk("random walk, present mode", machine, started)


# ---------------------------------------------------------------- examples a long walk found


def test_present_mode_settles_after_scene_jumps_over_a_stream(walk_setup, tmp_path, tiny_llama):
    """The steps of a long walk (LENSTUI_WALK_EXAMPLES=200) that never settled: typing in
    the prompt, then scene keys before the debounce ran out (the deterministic form of it is
    tests/app/test_never_crashes.py's test_a_scene_shown_while_a_typed_prompt_waits_for_its_debounce_settles)."""
    state = _presenter_walk(tmp_path, tiny_llama)()
    steps = [
        ("start", dict(size=(120, 40))),
        ("palette_by_keys", dict(escape=True, query="pin: unpin all")),
        ("burst", dict(keys=["pagedown", "A", "n", "i", "f", "pagedown", "v", "escape"])),
        ("scene_keys", dict(keys=["home", "2", "2"], pause=0.05)),
        ("scene_keys", dict(keys=["2", "enter", "enter", "2"], pause=0.2)),
        ("palette_by_keys", dict(escape=False, query="grid: switch view")),
        ("scene_keys", dict(keys=["g"], pause=0.01)),
        ("burst", dict(keys=["s", "left", "up", "left", "down", "t", "]", "w"])),
        ("palette_by_keys", dict(escape=True, query="grid: switch view")),
        ("typing_burst", dict(keys=["a", "end"])),
        ("check_idle", {}),
        ("burst", dict(keys=["ctrl+n", "q", "f2", "escape", "end", "f4", "f4"])),
        ("palette_by_keys", dict(escape=False, query="pin: unpin all")),
        ("scene_keys", dict(keys=["pagedown", "4"], pause=0.2)),
        ("burst", dict(keys=["q", "l", "}", "down", "down"])),
        ("palette_by_keys", dict(escape=False, query="grid: switch view")),
        ("scene_keys", dict(keys=["backspace", "2", "escape", "pageup"], pause=0.0)),
        ("scene_keys", dict(keys=["2", "3"], pause=0.0)),
        ("scene_keys", dict(keys=["pagedown"], pause=0.0)),
        ("check_idle", {}),
    ]
    try:
        for name, arguments in steps:
            getattr(state, name)(**arguments)
            state.nothing_went_wrong()
    finally:
        state.teardown()
