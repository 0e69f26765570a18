"""The incremental lens state on the embedded model: a generation step and an edit equal a run from scratch."""

from __future__ import annotations

from lenstui.core.lenses import LensOptions
from lenstui.engine.lens.state import LensState
from testkit.checks import assert_same_lens, scratch_lens


def test_embedded_generation_step_and_edit_match_scratch(embedded):
    ids = embedded.tokenizer("The Eiffel Tower is located in the city of Paris, which")["input_ids"]
    state = LensState(embedded)
    state.prepare(ids[:-1], LensOptions(top_k=5))
    state.cells([len(ids) - 2])
    assert state.prepare(ids, LensOptions(top_k=5)).forward_positions == 1
    assert_same_lens(state.result(), scratch_lens(embedded, ids, top_k=5))
