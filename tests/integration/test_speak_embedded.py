"""Speakability on the embedded model: witnesses through its real final norm, a hard-to-speak token and duplicate rows."""

from __future__ import annotations

import numpy as np
import pytest

from lenstui.engine.speak.check import check_speakable
from testkit.speak_checks import assert_witness, model_readout_arrays, through_module


@pytest.mark.parametrize("token_id", [3427, 20000, 657, 4, 190])
def test_embedded_witnesses_through_the_real_final_norm(embedded, token_id):
    result = check_speakable(embedded, token_id)
    assert result.verdict == "speakable"
    assert len(result.witness_resid) == embedded.d_model == 576
    # float32, through the bridge's own RMSNorm module and W_U
    logits32 = through_module(embedded, result.witness_resid)
    assert int(np.argmax(logits32)) == token_id
    # float64, from the HF module's parameters and the definition of RMSNorm
    W_U, b_U, gain, beta, eps = model_readout_arrays(embedded)
    assert_witness(result, W_U.T, b_U, "RMS", gain, beta, eps)
    assert abs(logits32[token_id] - np.delete(logits32, token_id).max() - result.margin) < 1e-3


def test_embedded_hard_to_speak_token_and_duplicate_rows(embedded):
    it = check_speakable(embedded, 657)  # " It": its own direction says another token
    assert it.hard_to_speak and it.best_match.id != 657 and it.verdict == "speakable"
    dup = check_speakable(embedded, 5)  # "<file_sep>" shares its unembedding row with others
    assert dup.verdict == "unspeakable" and dup.hard_to_speak
    W = embedded.bridge.W_U.detach().T.double().numpy()
    twin = dup.certificate.ids[0]
    assert twin != 5 and np.array_equal(W[twin], W[5]) and dup.certificate.bound == 0.0
