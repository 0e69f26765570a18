"""The logit lens on the embedded model: the Eiffel Tower says Paris, the final row is the model's own output, and a prompt longer than its context is refused."""

from __future__ import annotations

import math

import pytest

from lenstui.core.errors import InputError
from lenstui.core.lenses import LensOptions
from lenstui.engine.lens.run import run_lens
from testkit.checks import model_log_probs


def test_embedded_eiffel_tower_says_paris(embedded):
    result = run_lens(embedded, "The Eiffel Tower is located in the city of", LensOptions(top_k=5))
    assert len(result.layers) == 31
    assert result.grid[-1][-1].top[0].text == " Paris"
    assert result.next_token.text == " Paris"
    # The embedding row is far from the answer; the final row is the answer.
    assert result.grid[0][-1].kl_to_final > result.grid[-1][-1].kl_to_final == pytest.approx(0, abs=1e-5)


def test_embedded_final_row_is_the_models_output(embedded):
    prompt = "Sometimes, when people say plasma, they mean a state of matter. Other times, when people say plasma"
    result = run_lens(embedded, prompt, LensOptions(top_k=3))
    lp = model_log_probs(embedded, result.token_ids)
    for pos, cell in enumerate(result.grid[-1]):
        assert cell.top[0].id == int(lp[pos].argmax())
        assert cell.top[0].prob == pytest.approx(lp[pos].max().exp().item(), rel=1e-3)
        assert math.isclose(cell.entropy, -(lp[pos].exp() * lp[pos]).sum().item(), rel_tol=1e-3, abs_tol=1e-4)


def test_embedded_prompt_longer_than_context_is_refused(embedded):
    with pytest.raises(InputError, match=f"reads at most {embedded.n_ctx}"):
        run_lens(embedded, list(range(100, 100 + embedded.n_ctx + 1)))
