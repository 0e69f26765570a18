"""Incremental lens runs equal from-scratch runs, and compute only what changed."""

from __future__ import annotations

import pytest

from lenstui.core.lenses import LensOptions
from lenstui.core.errors import InputError
from lenstui.engine.lens.state import LensState

PROMPT = "hello world, the city of Paris is"


def _scratch(model, ids, **settings):
    """A from-scratch run: a fresh state that has seen nothing before."""
    state = LensState(model)
    state.prepare(ids, LensOptions(**settings))
    return state.result()


def _assert_same(got, want):
    assert got.layers == want.layers and got.token_ids == want.token_ids
    assert [t.id for t in got.targets] == [t.id for t in want.targets]
    for row_got, row_want in zip(got.grid, want.grid, strict=True):
        for a, b in zip(row_got, row_want, strict=True):
            assert [t.id for t in a.top] == [t.id for t in b.top]
            assert [t.prob for t in a.top] == pytest.approx([t.prob for t in b.top], abs=1e-5)
            assert a.entropy == pytest.approx(b.entropy, abs=5e-5, rel=1e-5)
            assert a.kl_to_final == pytest.approx(b.kl_to_final, abs=5e-5, rel=1e-5)
            assert a.target_rank == b.target_rank
            assert a.target_prob == pytest.approx(b.target_prob, abs=1e-5)


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
    _assert_same(state.result(), _scratch(model, ids))


def test_typed_suffix_runs_the_typed_positions(model):
    ids = _ids(model)
    state = LensState(model)
    state.prepare(ids[:4])
    state.result()
    plan = state.prepare(ids)
    assert plan.forward_positions == len(ids) - 4
    _assert_same(state.result(), _scratch(model, ids))


def test_middle_edit_recomputes_from_the_first_changed_token(model):
    ids = _ids(model)
    edited = list(ids)
    edited[3] = ids[5]
    state = LensState(model)
    state.prepare(ids)
    state.result()
    plan = state.prepare(edited)
    assert plan.forward_positions == len(ids) - 3 and plan.reused_positions == 3
    _assert_same(state.result(), _scratch(model, edited))


def test_undo_of_a_step_is_free(model):
    ids = _ids(model)
    state = LensState(model)
    state.prepare(ids)
    state.result()
    forwards = state.forward_count
    plan = state.prepare(ids[:-1])
    assert plan.forward_positions == 0 and state.forward_count == forwards
    _assert_same(state.result(), _scratch(model, ids[:-1]))
    # ... and the step again runs one position on the cropped cache.
    assert state.prepare(ids).forward_positions == 1
    _assert_same(state.result(), _scratch(model, ids))


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
    _assert_same(got, _scratch(model, ids, **settings))


@pytest.mark.parametrize("settings", [{"incl_mid": True}, {"lens": "extended", "extended_blocks": 1}])
def test_mid_rows_and_extended_lens_stay_correct_across_steps(model, settings):
    ids = _ids(model)
    state = LensState(model)
    state.prepare(ids[:-2], LensOptions(**settings))
    state.result()
    assert state.prepare(ids, LensOptions(**settings)).forward_positions == 2
    _assert_same(state.result(), _scratch(model, ids, **settings))
    edited = list(ids)
    edited[2] = ids[4]
    state.prepare(edited, LensOptions(**settings))
    _assert_same(state.result(), _scratch(model, edited, **settings))


def test_turning_mid_rows_on_late_adds_them(model):
    ids = _ids(model)
    state = LensState(model)
    state.prepare(ids)
    state.result()
    state.prepare(ids[:-1], LensOptions(incl_mid=True))
    _assert_same(state.result(), _scratch(model, ids[:-1], incl_mid=True))


def test_chosen_positions_first_then_the_rest(model):
    ids = _ids(model)
    state = LensState(model)
    state.prepare(ids, LensOptions(top_k=4))
    visible = state.cells([len(ids) - 1, 2])
    assert visible.positions == [len(ids) - 1, 2]
    full = _scratch(model, ids, top_k=4)
    for row, cells in enumerate(visible.cells):
        assert [c.top[0].id for c in cells] == [full.grid[row][-1].top[0].id, full.grid[row][2].top[0].id]
    assert [t.id for t in visible.targets] == [full.targets[-1].id, full.targets[2].id]
    _assert_same(state.result(), full)
    with pytest.raises(InputError, match="outside the prompt"):
        state.cells([len(ids)])


@pytest.mark.integration
def test_embedded_generation_step_and_edit_match_scratch(embedded):
    ids = embedded.tokenizer("The Eiffel Tower is located in the city of Paris, which")["input_ids"]
    state = LensState(embedded)
    state.prepare(ids[:-1], LensOptions(top_k=5))
    state.cells([len(ids) - 2])
    assert state.prepare(ids, LensOptions(top_k=5)).forward_positions == 1
    _assert_same(state.result(), _scratch(embedded, ids, top_k=5))
