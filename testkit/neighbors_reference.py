"""Unembedding neighbours' independent reference in numpy float64, straight from the definitions
(tests/unit/test_neighbors.py, tests/integration/test_neighbors_embedded.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch


def float64_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def reference_geometry(W_rows, gain, beta, bias, layer_norm: bool):
    """(readout directions, offset c) in float64, straight from the definitions."""
    W = W_rows * gain
    c = bias + W_rows @ beta
    if layer_norm:
        W = W - W.mean(axis=1, keepdims=True)
    return W, c


def reference_report(W, c, token_id: int, n: int):
    norms = np.linalg.norm(W, axis=1)
    unit = W / np.maximum(norms, 1e-300)[:, None]
    cos = unit @ unit[token_id]
    order = [j for j in np.argsort(-cos, kind="stable") if j != token_id][:n]
    logits = W @ (math.sqrt(W.shape[1]) * unit[token_id]) + c
    others = np.delete(logits, token_id)
    return cos, order, int(np.argmax(logits)), float(logits[token_id] - others.max())


def assert_matches_reference(report, cos, order, best, margin):
    reported = [n.cosine for n in report.neighbors]
    assert reported == sorted(reported, reverse=True)
    assert report.id not in [n.id for n in report.neighbors]
    np.testing.assert_allclose(reported, cos[order], rtol=0, atol=2e-5)
    for n in report.neighbors:  # ids may only differ where cosines tie
        assert abs(cos[n.id] - n.cosine) < 2e-5
    assert report.best_match.id == best and report.own_best_match == (best == report.id)
    assert report.self_margin == pytest.approx(margin, rel=1e-4, abs=1e-4)
