"""Incremental lens runs equal from-scratch runs, and compute only what changed."""

from __future__ import annotations

import pytest

from lenstui.core.lenses import LensOptions
from lenstui.core.errors import InputError
from lenstui.engine.lens.state import LensState
from testkit.checks import assert_same_lens, scratch_lens

PROMPT = "hello world, the city of Paris is"


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])
def model(request):
    return request.getfixturevalue(request.param)


def _ids(model):
    return model.tokenizer(PROMPT)["input_ids"]


def test_generation_step_runs_one_position(model):
    ids = _ids(model)
    state = LensState(model)
    state.prepare(ids[:-1])
    state.result()
    plan = state.prepare(ids)
    assert plan.forward_positions == 1 and plan.reused_positions == len(ids) - 1
    assert_same_lens(state.result(), scratch_lens(model, ids))


def test_typed_suffix_runs_the_typed_positions(model):
    ids = _ids(model)
    state = LensState(model)
    state.prepare(ids[:4])
    state.result()
    plan = state.prepare(ids)
    assert plan.forward_positions == len(ids) - 4
    assert_same_lens(state.result(), scratch_lens(model, ids))


def test_middle_edit_recomputes_from_the_first_changed_token(model):
    ids = _ids(model)
    edited = list(ids)
    edited[3] = ids[5]
    state = LensState(model)
    state.prepare(ids)
    state.result()
    plan = state.prepare(edited)
    assert plan.forward_positions == len(ids) - 3 and plan.reused_positions == 3
    assert_same_lens(state.result(), scratch_lens(model, edited))


def test_undo_of_a_step_is_free(model):
    ids = _ids(model)
    state = LensState(model)
    state.prepare(ids)
    state.result()
    forwards = state.forward_count
    plan = state.prepare(ids[:-1])
    assert plan.forward_positions == 0 and state.forward_count == forwards
    assert_same_lens(state.result(), scratch_lens(model, ids[:-1]))
    # ... and the step again runs one position on the cropped cache.
    assert state.prepare(ids).forward_positions == 1
    assert_same_lens(state.result(), scratch_lens(model, ids))


@pytest.mark.parametrize(
    "settings",
    [
        {"top_k": 3},
        {"target": " Paris"},
        {"lens": "raw"},
        {"lens": "extended", "extended_blocks": 2},
        {"incl_mid": True, "top_k": 2},
    ],
)
def test_changed_settings_reuse_the_forward(model, settings):
    ids = _ids(model)
    state = LensState(model)
    state.prepare(ids, LensOptions(incl_mid=settings.get("incl_mid", False)))
    state.result()
    forwards = state.forward_count
    state.prepare(ids, LensOptions(**settings))
    got = state.result()
    assert state.forward_count == forwards  # readout only (the extended lens reruns its blocks)
    assert_same_lens(got, scratch_lens(model, ids, **settings))


@pytest.mark.parametrize("settings", [{"incl_mid": True}, {"lens": "extended", "extended_blocks": 1}])
def test_mid_rows_and_extended_lens_stay_correct_across_steps(model, settings):
    ids = _ids(model)
    state = LensState(model)
    state.prepare(ids[:-2], LensOptions(**settings))
    state.result()
    assert state.prepare(ids, LensOptions(**settings)).forward_positions == 2
    assert_same_lens(state.result(), scratch_lens(model, ids, **settings))
    edited = list(ids)
    edited[2] = ids[4]
    state.prepare(edited, LensOptions(**settings))
    assert_same_lens(state.result(), scratch_lens(model, edited, **settings))


def test_turning_mid_rows_on_late_adds_them(model):
    ids = _ids(model)
    state = LensState(model)
    state.prepare(ids)
    state.result()
    state.prepare(ids[:-1], LensOptions(incl_mid=True))
    assert_same_lens(state.result(), scratch_lens(model, ids[:-1], incl_mid=True))


def test_chosen_positions_first_then_the_rest(model):
    ids = _ids(model)
    state = LensState(model)
    state.prepare(ids, LensOptions(top_k=4))
    visible = state.cells([len(ids) - 1, 2])
    assert visible.positions == [len(ids) - 1, 2]
    full = scratch_lens(model, ids, top_k=4)
    for row, cells in enumerate(visible.cells):
        assert [c.top[0].id for c in cells] == [full.grid[row][-1].top[0].id, full.grid[row][2].top[0].id]
    assert [t.id for t in visible.targets] == [full.targets[-1].id, full.targets[2].id]
    assert_same_lens(state.result(), full)
    with pytest.raises(InputError, match="outside the prompt"):
        state.cells([len(ids)])
