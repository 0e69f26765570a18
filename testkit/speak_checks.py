"""Speakability checks shared by the tiny-model tests (tests/unit) and their twins on the embedded
model (tests/integration): the readout's arrays and logits read straight from the model's own
modules, a scan's verdicts held to the single check and its certificates re-checked, and the
JSON contract of `lenstui speak`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lenstui.engine.speak.check import as_readout, check_speakable

# The fields of `lenstui speak --json` and their types.
CONTRACT = {
    "id": int,
    "text": str,
    "verdict": str,
    "hard_to_speak": bool,
    "best_match": dict,
    "binding": list,
    "seconds": float,
}


def model_readout_arrays(model):
    """W_U, b_U, final-norm gain/beta/eps read straight from the HF module (not the engine)."""
    bridge = model.bridge
    norm = bridge.ln_final.original_component
    W_U = bridge.W_U.detach().double().numpy()
    b_U = bridge.b_U.detach().double().numpy()
    gain = norm.weight.detach().double().numpy()
    beta = norm.bias.detach().double().numpy() if getattr(norm, "bias", None) is not None else np.zeros(len(gain))
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    return W_U, b_U, gain, beta, eps


def through_module(model, resid):
    """Logits of a residual through the model's own final norm and unembedding (float32)."""
    x = torch.tensor(resid, dtype=torch.float32)[None, None, :]
    with torch.no_grad():
        logits = model.ln_final(x)[0, 0] @ model.W_U
        return (logits if model.b_U is None else logits + model.b_U).double().numpy()


def assert_scan_matches_single_checks(model, result, ids):
    for t in ids:
        single = check_speakable(model, t)
        assert result.verdict(t) == single.verdict, t
        assert result.is_hard_to_speak(t) == single.hard_to_speak, t
        assert int(result.best_match[t]) == single.best_match.id, t


def assert_certificates_recheck(model, result):
    readout = as_readout(model)
    V = readout.V.numpy()
    c = readout.c.numpy()
    for t in result.unspeakable_ids:
        ids, weights = result.certificates[t]
        weights = np.asarray(weights)
        assert t not in ids and (weights >= 0).all() and abs(weights.sum() - 1) < 1e-12
        residual = V[t] - weights @ V[ids]
        bound = np.sqrt(V.shape[1]) * np.linalg.norm(residual) + c[t] - weights @ c[ids]
        assert bound <= result.certificate_tolerance


def check_contract(payload, d_model):
    for key, kind in CONTRACT.items():
        assert isinstance(payload[key], kind), key
    assert payload["verdict"] in ("speakable", "unspeakable", "undetermined")
    assert set(payload["best_match"]) == {"id", "text"}
    assert all(set(b) == {"id", "text"} for b in payload["binding"])
    if payload["verdict"] == "speakable":
        assert isinstance(payload["margin"], float) and payload["margin"] > payload["tolerances"]["speak"]
        assert len(payload["witness_resid"]) == d_model and payload["certificate"] is None
    else:
        assert payload["witness_resid"] is None
    if payload["verdict"] == "unspeakable":
        cert = payload["certificate"]
        assert {"id", "weight"} <= set(cert["combination"][0])
        assert isinstance(cert["residual_norm"], float)
        assert cert["max_lead_bound"] <= payload["tolerances"]["certificate"]


def readout_forward(x, rows, bias, kind, gain=None, beta=None, eps=1e-5):
    """The readout written out from its definition, in float64, independent of the engine."""
    x = np.asarray(x, dtype=np.float64)
    rows = np.asarray(rows, dtype=np.float64)
    d = rows.shape[1]
    gain = np.ones(d) if gain is None else np.asarray(gain, dtype=np.float64)
    beta = np.zeros(d) if beta is None else np.asarray(beta, dtype=np.float64)
    if kind == "LN":
        x = x - x.mean()
    normed = x / math.sqrt(float((x**2).mean()) + eps)
    return rows @ (gain * normed + beta) + (0.0 if bias is None else np.asarray(bias, dtype=np.float64))


def assert_witness(result, rows, bias=None, kind="RMS", gain=None, beta=None, eps=1e-5):
    assert result.verdict == "speakable"
    logits = readout_forward(result.witness_resid, rows, bias, kind, gain, beta, eps)
    others = np.delete(logits, result.id)
    assert int(np.argmax(logits)) == result.id
    assert logits[result.id] - others.max() == pytest.approx(result.margin, rel=1e-9, abs=1e-9)
    assert result.margin > result.speak_tolerance > 0


def assert_certificate(result, rows, bias=None, kind="RMS", gain=None):
    """Convex weights, re-checked here: t's best lead over the ball is <= the bound <= tol."""
    assert result.verdict == "unspeakable"
    cert = result.to_json()["certificate"]
    ids = [e["id"] for e in cert["combination"]]
    weights = np.array([e["weight"] for e in cert["combination"]])
    assert result.id not in ids
    assert (weights >= 0).all() and weights.sum() == pytest.approx(1.0, abs=1e-12)
    rows = np.asarray(rows, dtype=np.float64)
    W = rows * (1.0 if gain is None else np.asarray(gain))
    if kind == "LN":
        W = W - W.mean(axis=1, keepdims=True)
    c = np.zeros(len(rows)) if bias is None else np.asarray(bias, dtype=np.float64)
    residual = W[result.id] - weights @ W[ids]
    bound = math.sqrt(W.shape[1]) * np.linalg.norm(residual) + c[result.id] - weights @ c[ids]
    assert np.linalg.norm(residual) == pytest.approx(cert["residual_norm"], abs=1e-12)
    assert bound == pytest.approx(cert["max_lead_bound"], abs=1e-12)
    assert bound <= result.certificate_tolerance
    return dict(zip(ids, weights))
