"""Snapshot tests at the sizes people use: 80x24 (SSH) and 120x40.

The real embedded model on a fixed prompt; the app hides timings and the cache state
(``show_timings=False``) so the screen is the same on every run. Regenerate after a
deliberate UI change with ``pytest tests/integration/test_snapshots.py --snapshot-update`` and
look at the SVGs in tests/integration/__snapshots__/ before committing them.
"""

from __future__ import annotations

import pytest

from lenstui.tui.app import LenstuiApp

EIFFEL = "The Eiffel Tower is located in the city of"


@pytest.fixture
def explorer(embedded):
    def make(**kwargs) -> LenstuiApp:
        app = LenstuiApp(EIFFEL, loader=lambda spec, **kw: embedded, show_timings=False, **kwargs)
        app.worker_stop_timeout = 120  # never leave a worker running on the shared model
        return app

    return make


async def until_settled(pilot) -> None:
    app = pilot.app
    app.prompt_pane.input.cursor_blink = False  # a blinking cursor makes two screens differ
    await app.model_settled.wait()
    await app.lens_settled.wait()
    # The grid's cursor sends the panes a TokenFocused; each asks the worker for its
    # report: wait until those answers have landed too (two rounds: ask, then answer).
    for _ in range(2):
        await pilot.pause()
        while app.worker.busy_kinds():
            await pilot.pause(0.05)
    await pilot.pause()


def keys_then_settle(*keys):
    async def run_before(pilot) -> None:
        await until_settled(pilot)
        for key in keys:
            await pilot.press(key)
            await until_settled(pilot)

    return run_before


def test_positions_view_80x24(snap_compare, explorer):
    assert snap_compare(explorer(), terminal_size=(80, 24), run_before=keys_then_settle())


def test_topk_view_80x24(snap_compare, explorer):
    assert snap_compare(explorer(), terminal_size=(80, 24), run_before=keys_then_settle("escape", "v"))


def test_positions_view_120x40(snap_compare, explorer):
    assert snap_compare(explorer(), terminal_size=(120, 40), run_before=keys_then_settle("escape", "k", "h"))


def test_topk_view_contrast_theme_120x40(snap_compare, explorer):
    app = explorer(theme="lenstui-contrast")
    assert snap_compare(app, terminal_size=(120, 40), run_before=keys_then_settle("escape", "v"))


# Issue 9: three pinned tokens in the trajectory view (the target " Paris" is pinned too).
def _pinned(app):
    app.session.pins = [" Paris", " London", 15107]
    return app


def test_trajectory_view_80x24(snap_compare, explorer):
    assert snap_compare(_pinned(explorer()), terminal_size=(80, 24), run_before=keys_then_settle("escape", "T"))


def test_trajectory_view_120x40(snap_compare, explorer):
    assert snap_compare(_pinned(explorer()), terminal_size=(120, 40), run_before=keys_then_settle("escape", "T"))


def test_trajectory_rank_view_contrast_theme_120x40(snap_compare, explorer):
    app = _pinned(explorer(theme="lenstui-contrast"))
    assert snap_compare(app, terminal_size=(120, 40), run_before=keys_then_settle("escape", "T", "r"))


# Issue 21: a patched run (the plasma prompts, B's residual after L23 at the last " say")
# in the top-k view at the patched position: the cone's rows shaded, the heading. (The
# positions view scrolled to the prompt's end is left out: its horizontal offset lands one
# cell off a column now and then, when the vertical scrollbar appears after the first
# scroll; test_positions_view_120x40 shows the same, also on main.)
PLASMA_A = "Sometimes, when people say plasma, they mean a state of matter. Other times, when people say"
PLASMA_B = PLASMA_A.replace("say plasma,", "say blood,")


def _patched(ids_b, *keys):
    async def run_before(pilot) -> None:
        from lenstui.tui.state.causal import PatchSource

        app = pilot.app
        await until_settled(pilot)
        await pilot.press("escape")
        app.causal.source = PatchSource(tuple(ids_b), 19, " blood", "L23")  # as `m` marks it (no notice)
        app.grid.place_cursor("L23", 19)
        for key in keys:
            await pilot.press(key)
            await until_settled(pilot)
        while app.causal.shown is None:
            await pilot.pause(0.05)
        await until_settled(pilot)
        await pilot.press("v")  # the top-k view at the patched position: its rows in the cone
        await until_settled(pilot)

    return run_before


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_patched_grid(snap_compare, explorer, embedded, size):
    app = explorer()
    app.initial_prompt = PLASMA_A
    ids_b = embedded.tokenizer(PLASMA_B)["input_ids"]
    assert snap_compare(app, terminal_size=size, run_before=_patched(ids_b, "p"))
