"""The aim measure on the embedded model: its caps re-checked through its real final norm and
W_U at the cap's edge, an exact twin, the batched bounds against the exact cap, and `lenstui speak --aim`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lenstui.engine.speak.aim import aim, cap_lower_bound, cap_lower_bounds
from lenstui.engine.speak.check import check_speakable
from testkit.checks import real_logits


def _rotate(axis: np.ndarray, away: np.ndarray, angle: float) -> np.ndarray:
    """The unit vector at ``angle`` from ``axis``, in the plane of ``axis`` and ``away``."""
    w = away - (away @ axis) * axis
    w /= np.linalg.norm(w)
    return math.cos(angle) * axis + math.sin(angle) * w


@pytest.mark.parametrize("token", [15107, 657, 100])
def test_embedded_caps_hold_at_their_edge_through_the_real_modules(embedded, token):
    bridge = embedded.bridge
    result = aim(embedded, token)
    assert result.verdict == "speakable" and result.method == "cap" and result.exact
    assert 0 < result.theta_deg <= result.theta_upper_deg
    d = embedded.d_model
    W = (bridge.W_U.detach().to(torch.float64) * bridge.ln_final.weight.detach().to(torch.float64)[:, None]).T.numpy()
    hats = W[token] - W
    lengths = np.linalg.norm(hats, axis=1)
    lengths[token] = np.inf
    hats = hats / lengths[:, None]
    axis = np.array(result.axis)
    theta_l = math.radians(result.theta_deg)
    # Lower bound: at 0.99 theta_L, towards each of the tightest competitors (the worst way
    # to leave the axis) and a few random ways, t stays the argmax of the real model.
    sines = hats @ axis
    sines[token] = np.inf
    tightest = np.argsort(sines)[:6]
    rng = np.random.default_rng(token)
    aways = [-hats[j] for j in tightest] + [rng.standard_normal(d) for _ in range(4)]
    for away in aways:
        z = _rotate(axis, away, 0.99 * theta_l)
        logits = real_logits(bridge, torch.as_tensor(z * math.sqrt(d)))
        assert int(torch.argmax(logits)) == token
    # Upper bound: around ANY axis, the weights force a competitor j with â_j . axis <=
    # sin theta_U; turning just past asin(â_j . axis) (<= theta_U) away from it makes j beat t.
    ids = [e["id"] for e in result.upper]
    weights = np.array([e["weight"] for e in result.upper])
    sin_upper = float(np.linalg.norm(weights @ hats[ids]))
    assert math.degrees(math.asin(sin_upper)) == pytest.approx(result.theta_upper_deg, abs=1e-7)
    own = W[token] / np.linalg.norm(W[token])
    for probe in (axis, own, rng.standard_normal(d)):
        probe = probe / np.linalg.norm(probe)
        j = ids[int(np.argmin(hats[ids] @ probe))]
        angle = math.asin(max(-1.0, float(hats[j] @ probe)))
        assert angle <= math.asin(sin_upper) + 1e-12
        z = _rotate(probe, -hats[j], angle + math.radians(0.05))
        if float(hats[j] @ probe) <= 0:
            z = probe  # t already loses to j along this axis
        logits = real_logits(bridge, torch.as_tensor(z * math.sqrt(d)))
        assert int(torch.argmax(logits)) != token
        assert logits[j] > logits[token]


def test_embedded_twin_is_unspeakable_with_no_cap(embedded):
    result = aim(embedded, 5)  # <file_sep>: its row is an exact copy of another token's
    assert result.verdict == "unspeakable" == check_speakable(embedded, 5).verdict
    assert result.theta_deg == result.theta_upper_deg == 0.0


def test_embedded_batched_bounds_are_certified_and_below_the_exact_cap(embedded):
    from lenstui.engine.speak.check import as_readout, candidate_directions

    readout = as_readout(embedded)
    ids = torch.tensor([15107, 657, 100, 1069, 30000, 4, 12345, 40000])
    axes = candidate_directions(readout, ids, "whitened")
    batched = cap_lower_bounds(readout, ids, axes)
    axes32 = axes.to(torch.float32).to(torch.float64)  # the axes the batched pass uses
    for i, t in enumerate(ids.tolist()):
        single = math.degrees(max(0.0, cap_lower_bound(readout, t, axes32[i])["robust"]))
        assert batched[i] == pytest.approx(single, abs=1e-9)
        assert batched[i] <= aim(readout, t).theta_upper_deg


def test_cli_aim_json_and_bad_input(embedded, capsys):
    from lenstui.cli import main

    assert main(["aim", "--id", "657", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    for key in ("theta_deg", "theta_upper_deg", "offset_deg", "log10_share_lower", "axis", "upper", "method"):
        assert key in payload
    assert len(payload["axis"]) == embedded.d_model and payload["method"] == "cap"
    assert main(["aim", "--id", "99999999"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["aim"]) == 2
