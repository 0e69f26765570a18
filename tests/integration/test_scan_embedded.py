"""The vocabulary scan on the embedded model: a prefix of its vocabulary, and its theta bounds equal the single-token float64 bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lenstui.engine.speak import scan as scan_module
from lenstui.engine.speak.check import as_readout
from lenstui.engine.speak.scan import scan_vocabulary
from testkit.speak_checks import assert_certificates_recheck, assert_scan_matches_single_checks


def test_embedded_prefix_of_the_vocabulary(embedded, tmp_path, monkeypatch):
    monkeypatch.setenv("LENSTUI_CACHE_DIR", str(tmp_path / "cache"))  # model already loaded
    result = scan_vocabulary(embedded, limit=700)
    assert result.complete and result.n_scanned == 700
    assert (result.verdicts[700:] == scan_module.PENDING).all()
    # ids 5 and 7..16 are special tokens sharing one unembedding row: ties, never argmax
    assert result.unspeakable_ids == {5, *range(7, 17)}
    assert not result.undetermined_ids
    assert 657 in result.hard_to_speak_ids and result.counts()["hard_to_speak"] > 100
    assert_scan_matches_single_checks(embedded, result, [0, 4, 5, 100, 190, 657, 699])
    assert_certificates_recheck(embedded, result)
    assert not (tmp_path / "cache").exists()  # a --limit scan is never cached


def test_embedded_scan_theta_bounds_equal_the_single_token_float64_bound(embedded, monkeypatch):
    """Every theta bound of a scan equals the single-token float64 bound (``cap_lower_bound``,
    no float32 screen) around the same witness axis: the larger of the own and the whitened
    axes for a token said by its own direction. Several chunks, each with tokens said by their
    own direction and tokens still open (their rows of the chunk's products handed over by
    index), and blocks of the batched bounds that divide neither."""
    from lenstui.core.scan_result import METHODS
    from lenstui.core.verdicts import Method
    from lenstui.engine.speak import aim as aim_module
    from lenstui.engine.speak.aim import cap_lower_bound, difference_norms
    from lenstui.engine.speak.check import candidate_directions

    monkeypatch.setattr(scan_module, "CHUNK", 80)
    monkeypatch.setattr(aim_module, "_BATCH_BLOCK", 7)
    result = scan_vocabulary(embedded, limit=240, cache=False)
    readout = as_readout(embedded)
    seen = {}
    for t in np.nonzero(result.verdicts[:240] == scan_module.SPEAKABLE)[0].tolist():
        method = METHODS[result.method[t]]
        index = torch.tensor([t])
        seen[method] = seen.get(method, 0) + 1
        if method == Method.OWN and seen[method] % 3:
            continue  # one in three: two single passes each, and most of the 240 are these
        if method == Method.OWN:
            axes = [readout.full_rows32()[t], candidate_directions(readout, index, Method.WHITENED)[0]]
        elif method == Method.LP:
            axes = [torch.as_tensor(result.lp_witnesses[t])]
        else:
            axes = [candidate_directions(readout, index, method)[0]]
        norms = difference_norms(readout, t)
        # The batched pass's axes are exactly the float32 vectors.
        singles = [cap_lower_bound(readout, t, a.to(torch.float32).to(torch.float64), norms)["robust"] for a in axes]
        expected = math.degrees(max(0.0, *singles))
        assert result.theta_lower[t] == pytest.approx(expected, abs=1e-9), (t, method)
    # Phase 1's own-direction hits and open tokens, phase 2's later families, phase 5's LP.
    assert seen.get(Method.OWN, 0) > 120 and seen.get(Method.WHITENED, 0) > 40, seen
    assert seen.get(Method.PRECISION, 0) and seen.get(Method.LP, 0), seen
