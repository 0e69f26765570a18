"""Unembedding neighbours on the embedded model: the fish-head token's report, and its own best match against float64."""

from __future__ import annotations

import numpy as np

from lenstui.engine.inspect.neighbors import inspect_token
from testkit.neighbors_reference import assert_matches_reference, float64_numpy, reference_geometry, reference_report


def test_embedded_fish_head_report(embedded):
    hf = embedded.bridge.original_model
    W, c = reference_geometry(
        float64_numpy(hf.lm_head.weight), float64_numpy(hf.model.norm.weight), np.zeros(embedded.d_model), np.zeros(embedded.d_vocab), layer_norm=False
    )
    report = inspect_token(embedded, "ĠðŁ", n_neighbors=10)
    assert report.id == 15107 and report.piece == "ĠðŁ" and report.bytes_hex == "20 f0 9f"
    assert not report.complete_utf8
    assert report.utf8_description == "space, then the first 2 of 4 bytes of a 4-byte character"
    assert report.tied_embedding and report.norm_kind == "RMS"
    assert_matches_reference(report, *reference_report(W, c, 15107, 10))
    # Its nearest readout neighbours are other emoji-prefix pieces.
    assert {"ĠðŁĺ", "ðŁ"} <= {n.piece for n in report.neighbors[:3]}


def test_embedded_own_best_match_against_float64(embedded):
    hf = embedded.bridge.original_model
    W, c = reference_geometry(
        float64_numpy(hf.lm_head.weight), float64_numpy(hf.model.norm.weight), np.zeros(embedded.d_model), np.zeros(embedded.d_vocab), layer_norm=False
    )
    for token_id in (234, 250, 1000, 30000):
        report = inspect_token(embedded, token_id, n_neighbors=3)
        assert_matches_reference(report, *reference_report(W, c, token_id, 3))
