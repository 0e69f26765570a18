"""The causal lens in the explorer, on the real model (Pilot): the compare view's `m`
marks prompt B as the patch source, `p` patches A and the grid shows the patched run
with its cone and heading, Esc puts the clean run back from the cache; `w` sweeps and
plots; the palette steers toward the selected token, `+`/`-` change alpha, Ctrl+N
generates under the steer, Esc clears it. Every number shown is the engine's."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable

from lenstui.core.patch_result import PatchResult, SteerResult
from lenstui.core.lenses import LensOptions
from lenstui.core.patch_result import PatchSite, SteerSetting
from lenstui.engine import causal as engine_causal
from lenstui.engine.model.vocab import resolve_token
from lenstui.engine.lens.state import lens_state
from lenstui.jobs.protocol import RunLens
from lenstui.tui.commands import explorer_commands
from lenstui.tui.screens.compare import CompareScreen
from lenstui.tui.screens.sweep import SweepPlot, SweepScreen, sweep_series, sweep_summary
from lenstui.tui.state import causal
from testkit.apphelpers import settle, until

PLASMA_A = "Sometimes, when people say plasma, they mean a state of matter. Other times, when people say"
PLASMA_B = PLASMA_A.replace("say plasma,", "say blood,")
SAY = 19


async def open_compare(app, pilot):
    await settle(app, pilot)
    app.session.prompt_b = PLASMA_B
    await pilot.press("escape", "C")
    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, CompareScreen)
    await until(pilot, lambda: screen.comparison is not None and screen.settled, "the comparison")
    table = screen.query_one("#compare-table", DataTable)
    table.focus()
    await pilot.pause()
    return screen, table


async def test_mark_patch_shows_the_cone_and_esc_restores_from_the_cache(make_app, embedded):
    app = make_app(PLASMA_A)
    async with app.run_test(size=(120, 40)) as pilot:
        screen, table = await open_compare(app, pilot)
        table.move_cursor(row=screen.comparison.a.layers.index("L23"))
        await pilot.press("m")
        assert app.causal.source is not None and app.causal.source.position == SAY
        assert any("Patch source: B@19" in text for text in app.notice_texts)
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.causal.shown, PatchResult), "the patched run")
        await pilot.pause()
        assert app.screen is app.base_screen
        shown: PatchResult = app.causal.shown
        grid = app.grid
        assert grid.result is shown.patched
        assert grid.border_title.startswith("patched: B@19 L23 -> A@19")
        assert "patched: B@19 L23 -> A@19" in str(app.status.render())
        # The engine's own answer, and the cone in the grid: row L23 at the last position on.
        ids_a, ids_b = app.shown_result.token_ids, screen.comparison.b.token_ids
        expected = engine_causal.patch(embedded, ids_a, PatchSite(layer="L23", position=SAY), source_prompt=ids_b, options=LensOptions(top_k=app.session.top_k))
        assert shown.patched.grid[-1][-1].top[0].text == " blood"
        assert [t.prob for t in shown.patched.grid[-1][-1].top] == pytest.approx(
            [t.prob for t in expected.patched.grid[-1][-1].top], abs=1e-6
        )
        l23 = shown.patched.layers.index("L23")
        assert grid.in_cone(l23, SAY) and grid.in_cone(len(shown.patched.layers) - 1, SAY)
        assert not grid.in_cone(l23 - 1, SAY) and not grid.in_cone(l23, SAY - 1)
        assert grid.current_cell.position == SAY and grid.current_cell.layer == "L23"

        # Esc: the clean run back, with nothing run again.
        state = lens_state(embedded, "a")
        forwards = state.forward_count
        grid.focus()
        await pilot.press("escape")
        await pilot.pause()
        assert grid.result is app.shown_result and app.causal.shown is None
        assert not grid.border_title.startswith("patched")
        assert "patched" not in str(app.status.render())
        assert state.forward_count == forwards and RunLens not in app.worker.busy_kinds()
        assert not grid.in_cone(l23, SAY)

        # With the source marked, `p` on the grid patches the cursor's cell (here L15).
        grid.place_cursor("L15", SAY)
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.causal.shown, PatchResult), "the second patch")
        assert app.causal.shown.spec.label == "B@19 L15 -> A@19"
        assert app.causal.shown.patched.grid[-1][-1].top[0].text == " plasma"  # too early to flip


async def test_p_inspects_the_prompt_token_until_a_source_is_marked(make_app):
    app = make_app(PLASMA_A)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("escape")
        assert causal.check_action(app, "patch_cell") is False
        await pilot.press("p")
        await pilot.pause()
        assert app.causal.shown is None and app.inspector_pane is not None
        assert causal.check_action(app, "restore_clean") is False  # Esc still only focuses the grid


async def test_ablation_from_the_palette_and_a_new_prompt_drops_the_patch(make_app, embedded):
    app = make_app(PLASMA_A)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("escape")
        app.grid.place_cursor("L24", SAY)
        titles = [c.title for c in explorer_commands(app)]
        for title in ("patch: zero-ablate the cursor's cell", "steer: toward the selected token", "patch: component attn"):
            assert title in titles
        causal.set_component(app, "attn")
        causal.patch_cursor(app, "zero")
        await until(pilot, lambda: isinstance(app.causal.shown, PatchResult), "the ablation")
        shown = app.causal.shown
        assert shown.spec.label == "zero L24.attn -> A@19"
        # The research's copy-suppression head: without block 24's attention P(plasma) rises.
        assert shown.target_after[-1][-1] > shown.target_before[-1][-1] + 0.3
        # A new run of the lens (here: the chat toggle) replaces the patched grid.
        app.action_toggle_chat()
        await settle(app, pilot)
        assert app.causal.shown is None and app.grid.result is app.shown_result


async def test_sweep_from_the_compare_view_plots_the_target_per_layer(make_app, embedded):
    app = make_app(PLASMA_A)
    async with app.run_test(size=(120, 40)) as pilot:
        screen, table = await open_compare(app, pilot)
        await pilot.press("w")
        await until(pilot, lambda: isinstance(app.screen, SweepScreen), "the sweep plot")
        await pilot.pause()
        result = app.screen.result
        assert [p.label for p in result.points][:2] == ["embed", "L0"] and len(result.points) == 31
        series = sweep_series(result)
        assert series[0].label == "P(␣plasma)" and series[1].label == "P(␣blood)"
        expected = engine_causal.sweep(embedded, app.shown_result.token_ids, source_prompt=screen.comparison.b.token_ids)
        assert series[0].probs == pytest.approx([p.target_prob for p in expected.points], abs=1e-6)
        summary = sweep_summary(result)
        assert "top-1 becomes ␣blood at L23" in summary
        assert "top-1 becomes ␣blood at L23" in str(app.screen.query_one("#sweep-info").render())
        plot = app.screen.query_one(SweepPlot).plt.build()
        assert "plasma" in plot and "blood" in plot
        await pilot.press("l")
        assert app.screen.log_scale
        await pilot.press("escape")
        assert isinstance(app.screen, CompareScreen)


async def test_steer_from_the_palette_alpha_keys_steps_and_clear(make_app, embedded):
    prompt = "My favourite place to spend a summer day is"
    app = make_app(prompt)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("escape")
        clean = app.shown_result
        sea = resolve_token(embedded, " sea")
        # The selected token: " sea" pinned in the top-k view would do; here the cell is set directly.
        app.grid.place_cursor("L15", len(clean.tokens) - 1)
        cell = app.grid.current_cell  # the palette's command steers toward this cell's token
        causal.steer_selected(app)
        await until(pilot, lambda: isinstance(app.causal.shown, SteerResult), "the steered run")
        assert app.causal.steer.toward == cell.token_id and app.causal.steer.layer == "L15"
        assert "steer" in str(app.status.render()) and "×0.25 at L15" in str(app.status.render())
        assert app.grid.result is app.causal.shown.steered
        assert app.grid.border_title.startswith(f"steer {app.causal.steer.label[6:]}")

        # Steer toward " sea" instead, as the palette would with that cell selected.
        app.causal.steer = causal.Steer(sea, " sea", "L24", 0.1)
        causal.change_alpha(app, 0)  # resubmit
        await until(pilot, lambda: isinstance(app.causal.shown, SteerResult) and app.causal.shown.spec.toward.id == sea, "steer toward sea")
        await pilot.press("plus")
        await until(pilot, lambda: app.causal.shown.spec.alpha == 0.15, "alpha 0.15")
        await pilot.press("plus", "plus", "minus")
        await until(pilot, lambda: app.causal.shown.spec.alpha == 0.2, "alpha 0.2")
        steered = app.causal.shown
        expected = engine_causal.steer(embedded, clean.token_ids, SteerSetting(toward=sea, layer="L24", alpha=0.2), steps=2, options=LensOptions(top_k=app.session.top_k))
        assert steered.steered.grid[-1][-1].top[0].id == expected.generated[0].id

        # Ctrl+N twice: both tokens from the steered run.
        await pilot.press("ctrl+n", "ctrl+n")
        await until(
            pilot,
            lambda: len(app.session.steps) == 2
            and isinstance(app.causal.shown, SteerResult)
            and len(app.causal.shown.steered.tokens) == len(clean.tokens) + 2,
            "two steered steps",
        )
        assert [s.ids[-1] for s in app.session.steps] == [t.id for t in expected.generated]

        # Esc clears the steer: the clean run of the same tokens, the status line plain.
        app.grid.focus()
        await pilot.press("escape")
        await pilot.pause()
        assert app.causal.steer is None and app.grid.result is app.shown_result
        assert "steer" not in str(app.status.render())
        await pilot.press("plus")  # rests again
        await settle(app, pilot)
        assert app.causal.shown is None


async def test_two_steps_under_a_steer_in_one_frame_wait_for_each_other(make_app, embedded):
    """Two ^n faster than the lens answers: the second waits for the first one's clean
    and steered runs, and appends the next steered token, never the same one twice."""
    app = make_app("My favourite place to spend a summer day is")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("escape")
        clean = app.shown_result
        app.grid.place_cursor("L24", len(clean.tokens) - 1)
        causal.steer_selected(app)
        await until(pilot, lambda: isinstance(app.causal.shown, SteerResult), "the steered run")
        app.action_step()
        app.action_step()  # before the first step's runs can have answered
        await until(
            pilot,
            lambda: isinstance(app.causal.shown, SteerResult)
            and len(app.causal.shown.steered.tokens) == len(clean.tokens) + 2,
            "two steered steps",
        )
        await settle(app, pilot)
        assert [len(step.ids) for step in app.session.steps] == [len(clean.tokens) + 1, len(clean.tokens) + 2]
        assert all(step.steered for step in app.session.steps)
        # Each step is the steered run's next token on the prompt before it.
        setting = SteerSetting(toward=app.causal.steer.toward, layer="L24", alpha=causal.DEFAULT_ALPHA)
        expected = engine_causal.steer(embedded, clean.token_ids, setting, steps=2, options=LensOptions(top_k=app.session.top_k))
        assert [step.ids[-1] for step in app.session.steps] == [t.id for t in expected.generated]
