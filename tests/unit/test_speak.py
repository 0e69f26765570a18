"""The certified speakability check: constructed unembeddings with known answers, the tiny
models, and the pane (the embedded model's witnesses: tests/integration/test_speak_embedded.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lenstui.core.errors import Cancelled
from lenstui.engine.speak.check import check_speakable
from lenstui.engine.speak.geometry import readout_from_arrays
from lenstui.engine.speak.lp import solve_speak_lp
from testkit.speak_checks import assert_certificate, assert_witness, model_readout_arrays, through_module

# ---------------------------------------------------------------- constructed cases

SIMPLEX = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, -1]]
INSIDE = [0.3, 0.2, 0.1]  # = 0.4 e1 + 0.3 e2 + 0.2 e3 + 0.1 (-1,-1,-1)


def test_hull_vertices_are_speakable_and_a_point_inside_is_not():
    rows = SIMPLEX + [INSIDE]
    readout = readout_from_arrays(rows, kind="RMS")
    for t in range(4):
        assert_witness(check_speakable(readout, t), rows)
    inside = check_speakable(readout, 4)
    weights = assert_certificate(inside, rows)
    # Four affinely independent points: the barycentric weights are unique.
    assert weights == pytest.approx({0: 0.4, 1: 0.3, 2: 0.2, 3: 0.1}, abs=1e-9)
    assert inside.to_json()["certificate"]["residual_norm"] < 1e-12
    assert inside.hard_to_speak and inside.best_match.id == 0  # e1 . p = 0.3 > p . p = 0.14


def test_hard_to_speak_yet_speakable_reports_the_winner():
    # (1.5, 2) beats (1, 0) along (1, 0), but (1, 0) is outside the others' hull.
    rows = [[1, 0], [1.5, 2], [-1, 0], [0, -1]]
    result = check_speakable(readout_from_arrays(rows, kind="RMS"), 0)
    assert result.hard_to_speak and result.best_match.id == 1
    assert_witness(result, rows)
    payload = result.to_json()
    assert payload["best_match"] == {"id": 1, "text": "#1"}
    assert len(payload["witness_resid"]) == 2 and payload["certificate"] is None


@pytest.mark.parametrize("angle", [0.0, math.pi / 4])
def test_an_offset_makes_a_vertex_unspeakable_only_beyond_the_ball(angle):
    # gap(z) = min(2 z1, z1 - z2, z1 + z2) - delta in the rotated frame: its maximum over
    # ||z|| <= sqrt(2) is sqrt(2) - delta. At 45 degrees the box |z_i| <= sqrt(2) reaches
    # further (2 - delta), so the ball's tangent cuts are what decide delta = 1.6.
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    rows = (np.array([[1, 0], [-1, 0], [0, 1], [0, -1]], dtype=float) @ rot.T).tolist()
    for delta, expected in ((0.0, "speakable"), (1.3, "speakable"), (1.5, "unspeakable"), (1.6, "unspeakable"), (10.0, "unspeakable")):
        bias = [-delta, 0.0, 0.0, 0.0]
        result = check_speakable(readout_from_arrays(rows, bias, kind="RMS"), 0)
        assert result.verdict == expected, (delta, result.reason)
        if expected == "speakable":
            assert_witness(result, rows, bias)
            if delta:
                assert result.margin <= math.sqrt(2) - delta + 1e-9  # never more than the true maximum
        else:
            assert_certificate(result, rows, bias)
            # An upper bound on the true best lead, sqrt(2) - delta (tight or not).
            assert result.certificate.bound >= math.sqrt(2) - delta - 1e-9


def test_an_offset_can_make_an_inside_point_speakable_with_a_zero_residual():
    rows = SIMPLEX + [INSIDE]
    bias = [0, 0, 0, 0, 1.0]
    result = check_speakable(readout_from_arrays(rows, bias, kind="RMS"), 4)
    assert_witness(result, rows, bias)
    assert result.method == "zero" and not any(result.witness_resid)


def test_layernorm_removes_the_all_ones_direction():
    rows = [[1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]]
    rms = check_speakable(readout_from_arrays(rows, kind="RMS"), 0)
    assert_witness(rms, rows)
    ln = check_speakable(readout_from_arrays(rows, kind="LN"), 0)
    weights = assert_certificate(ln, rows, kind="LN")
    assert weights == pytest.approx({1: 1 / 3, 2: 1 / 3, 3: 1 / 3}, abs=1e-9)
    assert "orthogonal to the all-ones" in ln.reachable_set
    # The others stay speakable under LayerNorm, through a residual with its own mean.
    for t in (1, 2, 3):
        assert_witness(check_speakable(readout_from_arrays(rows, kind="LN"), t), rows, kind="LN")


def test_layernorm_gain_and_bias_are_folded_in():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(40, 6))
    gain = rng.uniform(0.5, 2.0, size=6)
    beta = rng.normal(size=6)
    bias = rng.normal(size=40) * 0.1
    readout = readout_from_arrays(rows, bias, kind="LN", gain=gain, beta=beta)
    for t in range(40):
        result = check_speakable(readout, t)
        if result.verdict == "speakable":
            assert_witness(result, rows, bias, kind="LN", gain=gain, beta=beta)
        else:
            c = bias + rows @ beta
            assert_certificate(result, rows, c, kind="LN", gain=gain)


def test_an_exact_twin_is_a_one_token_certificate():
    rows = SIMPLEX + [[1, 0, 0]]
    result = check_speakable(readout_from_arrays(rows, kind="RMS"), 4)
    assert assert_certificate(result, rows) == {0: 1.0}
    assert result.method == "twin"
    # With a higher offset the copy wins every tie and the original cannot be said.
    bias = [0, 0, 0, 0, 0.5]
    assert check_speakable(readout_from_arrays(rows, bias, kind="RMS"), 4).verdict == "speakable"
    assert check_speakable(readout_from_arrays(rows, bias, kind="RMS"), 0).verdict == "unspeakable"


def test_a_lead_below_the_tolerances_is_undetermined_not_a_verdict():
    # (1 + 1e-6, 0) is a vertex by a hair: its best lead (~1.4e-6) is below the float32
    # witness tolerance, yet far above the certificate tolerance.
    rows = [[1 + 1e-6, 0], [1, 1], [1, -1], [-1, 0]]
    result = check_speakable(readout_from_arrays(rows, kind="RMS"), 0)
    assert result.verdict == "undetermined"
    assert result.margin is None and result.witness_resid is None
    assert 0 < result.best_gap_found <= result.speak_tolerance
    assert result.certificate is None or result.certificate.bound > result.certificate_tolerance
    # On the segment exactly: a tie at best, so unspeakable with a zero residual.
    rows[0] = [1, 0]
    assert_certificate(check_speakable(readout_from_arrays(rows, kind="RMS"), 0), rows)


def test_random_clouds_agree_with_an_independent_hull_test():
    """Points of a Gaussian cloud: the verdict matches scipy's own LP membership test."""
    from scipy.optimize import linprog

    rng = np.random.default_rng(1)
    rows = rng.normal(size=(60, 4))
    readout = readout_from_arrays(rows, kind="RMS")
    for t in range(60):
        others = np.delete(rows, t, axis=0)
        # Is rows[t] a convex combination of the others? (feasibility LP)
        A_eq = np.vstack([others.T, np.ones(len(others))])
        inside = linprog(np.zeros(len(others)), A_eq=A_eq, b_eq=np.append(rows[t], 1.0), bounds=(0, None)).status == 0
        result = check_speakable(readout, t)
        assert result.verdict == ("unspeakable" if inside else "speakable"), t
        if inside:
            assert_certificate(result, rows)
        else:
            assert_witness(result, rows)


def test_lp_uses_few_constraints_and_matches_the_full_lp():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(3000, 8))
    rows = base + 3.0 * np.ones(8)  # a strong shared direction, as in real unembeddings
    readout = readout_from_arrays(rows, kind="RMS")
    t = int(np.argmin(np.linalg.norm(base, axis=1)))  # deep inside the cloud
    generated = solve_speak_lp(readout, t)
    full = solve_speak_lp(readout, t, all_constraints=True)
    assert generated.status == full.status == "certificate"
    assert generated.constraints < len(rows) - 1 == full.constraints
    assert generated.certificate.bound <= readout.certificate_tolerance


def test_cancel_and_progress():
    rows = SIMPLEX + [INSIDE]
    seen = []
    check_speakable(readout_from_arrays(rows), 4, progress=lambda m, f: seen.append(f))
    assert seen[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in seen)
    with pytest.raises(Cancelled):
        check_speakable(readout_from_arrays(rows), 4, should_stop=lambda: True)


def test_token_out_of_range_is_a_clear_error():
    from lenstui.core.errors import InputError

    with pytest.raises(InputError, match="out of range"):
        check_speakable(readout_from_arrays(SIMPLEX), 9)


# ---------------------------------------------------------------- tiny models


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_tiny_models_witnesses_through_their_own_modules(which, request):
    model = request.getfixturevalue(which)
    W_U, b_U, gain, beta, eps = model_readout_arrays(model)
    kind = "LN" if which == "tiny_gpt2" else "RMS"
    for t in (1, 7, 100, model.d_vocab - 1):
        result = check_speakable(model, t)
        assert result.text == model.decode(t)
        if result.verdict != "speakable":
            continue
        assert_witness(result, W_U.T, b_U, kind, gain, beta, eps)
        logits = through_module(model, result.witness_resid)
        assert int(np.argmax(logits)) == t
        assert logits[t] - np.delete(logits, t).max() == pytest.approx(result.module_margin, abs=1e-9)


def test_tiny_llama_zero_padding_row_is_unspeakable(tiny_llama):
    # Llama initialises the padding token's embedding (id 0, tied) to zeros: a zero
    # effective vector lies inside the others' hull.
    W_U, b_U, gain, _, _ = model_readout_arrays(tiny_llama)
    assert not W_U[:, 0].any()
    result = check_speakable(tiny_llama, 0)
    assert_certificate(result, W_U.T, b_U, "RMS", gain)


def test_tiny_gpt2_with_a_final_norm_bias(tiny_gpt2):
    """LayerNorm beta folds into per-token offsets c = W_U^T beta: the ball matters."""
    from testkit.models import tiny_gpt2 as build

    model = build(seed=5)
    with torch.no_grad():
        norm = model.bridge.ln_final.original_component
        torch.manual_seed(5)
        norm.bias.copy_(torch.randn_like(norm.bias) * 0.5)
        norm.weight.copy_(1.0 + 0.3 * torch.randn_like(norm.weight))
    W_U, b_U, gain, beta, eps = model_readout_arrays(model)
    c = b_U + W_U.T @ beta
    verdicts = set()
    for t in range(0, model.d_vocab, 11):
        result = check_speakable(model, t)
        verdicts.add(result.verdict)
        if result.verdict == "speakable":
            assert_witness(result, W_U.T, b_U, "LN", gain, beta, eps)
            logits = through_module(model, result.witness_resid)
            assert int(np.argmax(logits)) == t
        elif result.verdict == "unspeakable":
            assert_certificate(result, W_U.T, c, "LN", gain)
    assert "speakable" in verdicts


# ---------------------------------------------------------------- the embedded model


# ---------------------------------------------------------------- the pane


async def test_speak_pane_renders_results_progress_and_cancel():
    from textual.app import App

    from lenstui.tui.panes.speak import SpeakPane

    rows = SIMPLEX + [INSIDE]
    readout = readout_from_arrays(rows, decode=lambda i: ["alpha", "beta", "gamma", "delta", "inner"][i])
    speakable = check_speakable(readout, 0)
    unspeakable = check_speakable(readout, 4)

    class Host(App):
        def compose(self):
            yield SpeakPane(id="pane", show_timings=False)

    async with Host().run_test(size=(80, 24)) as pilot:
        pane = pilot.app.query_one(SpeakPane)

        def text(selector: str) -> str:
            return str(pane.query_one(selector).render())

        pane.show_running(4, "inner")
        pane.show_progress("LP round 2: 12 competitors", 0.4)
        await pilot.pause()
        assert pane.has_class("-running")
        assert "press x to cancel" in text("#speak-hint")
        assert "LP round 2" in text("#speak-body")
        pane.show_cancelled()
        await pilot.pause()
        assert not pane.has_class("-running") and "cancelled" in text("#speak-body")

        pane.show_result(unspeakable)
        await pilot.pause()
        body = text("#speak-body")
        assert pane.verdict == "unspeakable" and "unspeakable" in body
        assert "convex combination of 4 tokens" in body and "alpha #0" in body
        assert "inner #4" in text("#speak-title")

        pane.show_result(speakable)
        await pilot.pause()
        body = text("#speak-body")
        assert "speakable" in body and "gap" in body
        assert not body.rstrip().endswith(" s")  # show_timings=False: no duration to churn snapshots
        pane.show_error("the model is not loaded")
        await pilot.pause()
        assert pane.has_class("-error") and "not loaded" in text("#speak-body")
