"""The aim measure: constructed readouts with closed-form answers, the share formula against
numerical integration, the batched bounds against the single-token pass, and the ball
measure on a tiny GPT-2 whose LayerNorm bias gives every token an offset. The embedded
model's caps: tests/integration/test_aim_embedded.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lenstui.engine.speak.aim import aim, cap_lower_bound, cap_lower_bounds, log10_cap_share
from lenstui.engine.speak.check import candidate_directions, check_speakable
from lenstui.engine.speak.geometry import readout_from_arrays
from testkit.checks import real_logits

# ---------------------------------------------------------------- helpers


def regular_simplex(n: int) -> np.ndarray:
    """n + 1 unit vectors in R^n with pairwise dot products -1/n."""
    points = np.eye(n + 1) - 1.0 / (n + 1)  # centred standard simplex in R^{n+1}
    basis = np.linalg.svd(points)[2][:n]  # an orthonormal basis of its span
    coords = points @ basis.T
    return coords / np.linalg.norm(coords, axis=1, keepdims=True)


def random_rotation(n: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q


def unit_hats(rows: np.ndarray, t: int) -> np.ndarray:
    """â_j = (v_t - v_j) / |v_t - v_j| for j != t, computed here in numpy."""
    others = np.delete(rows, t, axis=0)
    diffs = rows[t] - others
    return diffs / np.linalg.norm(diffs, axis=1, keepdims=True)


def check_upper_weights(result, rows: np.ndarray) -> float:
    """sin theta_upper recomputed from the reported weights alone."""
    ids = [e["id"] for e in result.upper]
    weights = np.array([e["weight"] for e in result.upper])
    assert (weights >= 0).all() and weights.sum() == pytest.approx(1.0, abs=1e-12)
    diffs = rows[result.id] - rows[ids]
    point = weights @ (diffs / np.linalg.norm(diffs, axis=1, keepdims=True))
    return float(np.linalg.norm(point))


# ---------------------------------------------------------------- constructed cases


@pytest.mark.parametrize("n", [3, 5, 8])
def test_regular_simplex_has_the_closed_form_cap(n):
    """Vertex t of a regular simplex: by symmetry the min-norm point of the â_j is their
    centroid, parallel to v_t, and sin theta* = sqrt((n + 1) / (2n))."""
    rows = regular_simplex(n) @ random_rotation(n, n) * 2.5  # rotated and scaled: same angles
    expected = math.degrees(math.asin(math.sqrt((n + 1) / (2 * n))))
    readout = readout_from_arrays(rows, kind="RMS")
    for t in range(n + 1):
        result = aim(readout, t)
        assert result.method == "cap" and result.verdict == "speakable"
        assert result.theta_deg <= expected <= result.theta_upper_deg
        assert result.theta_upper_deg - result.theta_deg < 1e-4
        assert result.exact
        assert math.degrees(math.asin(check_upper_weights(result, rows))) == pytest.approx(
            result.theta_upper_deg, abs=1e-9
        )
        assert result.offset_deg == pytest.approx(0.0, abs=1e-6)  # the axis is v_t itself
        axis = np.array(result.axis)
        assert np.linalg.norm(axis) == pytest.approx(1.0)
        assert np.min(unit_hats(rows, t) @ axis) >= math.sin(math.radians(result.theta_deg))


def test_token_alone_on_one_side():
    """t = e1 against two tokens at -e1 +/- s e2: â = (2, -/+s, 0)/sqrt(4 + s^2), whose
    min-norm point is their midpoint, so sin theta* = 2 / sqrt(4 + s^2)."""
    s = 1.5
    rows = np.array([[1.0, 0, 0], [-1.0, s, 0], [-1.0, -s, 0]])
    result = aim(readout_from_arrays(rows, kind="RMS"), 0)
    expected = math.degrees(math.asin(2 / math.sqrt(4 + s * s)))
    assert result.theta_deg <= expected <= result.theta_upper_deg
    assert result.theta_upper_deg - expected < 1e-9
    assert expected - result.theta_deg < 1e-4
    assert result.exact
    assert sorted(e["id"] for e in result.upper) == [1, 2]
    assert [e["weight"] for e in result.upper] == pytest.approx([0.5, 0.5], abs=1e-9)


def test_token_inside_the_hull_has_no_cap_and_agrees_with_the_certificate():
    rows = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, -1], [0.3, 0.2, 0.1]])
    readout = readout_from_arrays(rows, kind="RMS")
    result = aim(readout, 4)
    assert result.verdict == "unspeakable" == check_speakable(readout, 4).verdict
    assert result.theta_deg == result.theta_upper_deg == 0.0
    assert result.log10_share_lower is None
    # The weights are on the rows themselves here: they reproduce v_t.
    weights = {e["id"]: e["weight"] for e in result.upper}
    assert weights == pytest.approx({0: 0.4, 1: 0.3, 2: 0.2, 3: 0.1}, abs=1e-9)
    for t in range(4):  # the vertices are speakable, with a cap
        vertex = aim(readout, t)
        assert vertex.verdict == "speakable" == check_speakable(readout, t).verdict
        assert vertex.theta_deg > 0


def test_random_readouts_bounds_agree_and_the_axis_certifies():
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((300, 12)) + 2.0 * rng.standard_normal(12)  # a shared direction
    readout = readout_from_arrays(rows, kind="RMS")
    for t in (0, 7, 99):
        result = aim(readout, t)
        assert result.verdict == "speakable"
        assert result.exact and result.theta_deg <= result.theta_upper_deg
        sin_upper = check_upper_weights(result, rows)
        assert math.degrees(math.asin(sin_upper)) == pytest.approx(result.theta_upper_deg, abs=1e-9)
        worst = np.min(unit_hats(rows, t) @ np.array(result.axis))
        assert math.degrees(math.asin(worst)) == pytest.approx(result.geometric_lower_deg, abs=1e-8)
        assert result.geometric_lower_deg >= result.theta_deg


def test_share_matches_numerical_integration():
    from scipy.integrate import quad

    for n in (3, 5, 10, 40):
        total = quad(lambda phi: math.sin(phi) ** (n - 2), 0, math.pi)[0]
        for degrees in (0.5, 10.0, 45.0, 80.0):
            theta = math.radians(degrees)
            cap = quad(lambda phi: math.sin(phi) ** (n - 2), 0, theta)[0]
            assert log10_cap_share(theta, n) == pytest.approx(math.log10(cap / total), rel=1e-7)
    assert log10_cap_share(math.radians(30), 3) == pytest.approx(math.log10((1 - math.cos(math.radians(30))) / 2))


def test_share_does_not_underflow_in_hundreds_of_dimensions():
    import mpmath

    theta = math.radians(0.4)
    value = log10_cap_share(theta, 576)
    assert value < -1000  # far below float64's range, still finite
    with mpmath.workdps(30):  # independent: quadrature of sin^(n-2) against the full integral
        n = 576
        # the integrand is sharply peaked at theta: many panels
        cap = mpmath.quad(lambda phi: mpmath.sin(phi) ** (n - 2), mpmath.linspace(0, theta, 400))
        total = mpmath.sqrt(mpmath.pi) * mpmath.gamma((n - 1) / mpmath.mpf(2)) / mpmath.gamma(n / mpmath.mpf(2))
        assert value == pytest.approx(float(mpmath.log10(cap / total)), rel=1e-9)
    assert log10_cap_share(theta * 2, 576) > value
    assert log10_cap_share(0.0, 576) is None


def test_batched_bounds_equal_the_single_pass_on_the_same_axes():
    rng = np.random.default_rng(5)
    rows = rng.standard_normal((600, 24)).astype(np.float32) + 1.5
    readout = readout_from_arrays(rows, kind="RMS")
    ids = torch.arange(0, 64)
    whitened = candidate_directions(readout, ids, "whitened")
    axes = whitened / whitened.norm(dim=1, keepdim=True) + 0.05 * torch.as_tensor(rng.standard_normal((64, 24)))
    axes32 = axes.to(torch.float32).to(torch.float64)  # the axes the batched pass uses
    batched = cap_lower_bounds(readout, ids, axes)
    single = [math.degrees(max(0.0, cap_lower_bound(readout, int(t), axes32[i])["robust"])) for i, t in enumerate(ids)]
    assert (batched > 0).sum() > 10
    assert batched == pytest.approx(np.array(single), abs=1e-9)


def test_batched_bounds_read_the_products_rows_by_index_and_leave_them_alone(monkeypatch):
    """The scan hands over its products with the tokens' rows among others (never copied
    out): the bounds read them by index, a block at a time, write nothing into them, and
    equal the single-token float64 pass."""
    from lenstui.engine.speak import aim as aim_module

    monkeypatch.setattr(aim_module, "_BATCH_BLOCK", 6)  # blocks that do not divide the 40 tokens
    monkeypatch.setattr(aim_module, "_SEGMENT", 64)  # the segment search, on a 600-token vocabulary
    rng = np.random.default_rng(11)
    rows = rng.standard_normal((600, 24)).astype(np.float32) + 1.5
    readout = readout_from_arrays(rows, kind="RMS")
    ids = torch.arange(100, 140)
    axes32 = candidate_directions(readout, ids, "whitened").to(torch.float32)
    rows32, _ = readout.screen_table()
    logits_rows = torch.as_tensor(rng.permutation(70)[:40])
    gram_rows = torch.as_tensor(rng.permutation(55)[:40])
    logits = torch.full((70, 600), math.nan)  # rows not handed over poison any misread
    logits[logits_rows] = axes32 @ rows32.T
    gram = torch.full((55, 600), math.nan)
    gram[gram_rows] = rows32[ids] @ rows32.T
    untouched = [torch.nan_to_num(x, nan=7.0) for x in (logits, gram)]
    scattered = cap_lower_bounds(
        readout, ids, axes32, logits32=logits, logits_rows=logits_rows, gram32=gram, gram_rows=gram_rows
    )
    assert torch.equal(torch.nan_to_num(logits, nan=7.0), untouched[0])
    assert torch.equal(torch.nan_to_num(gram, nan=7.0), untouched[1])
    assert np.array_equal(scattered, cap_lower_bounds(readout, ids, axes32))
    single = [
        math.degrees(max(0.0, cap_lower_bound(readout, int(t), axes32[i].to(torch.float64))["robust"]))
        for i, t in enumerate(ids)
    ]
    assert (scattered > 0).sum() > 10
    assert scattered == pytest.approx(np.array(single), abs=1e-9)


def test_the_k_smallest_by_segments_are_topks(monkeypatch):
    from lenstui.engine.speak import aim as aim_module

    monkeypatch.setattr(aim_module, "_SEGMENT", 16)  # 300 columns: 18 whole segments and a partial one
    x = torch.as_tensor(np.random.default_rng(2).standard_normal((5, 300)), dtype=torch.float32)
    x[0, :50] = math.inf  # as t itself and the candidates already taken are
    x[1, 290:] -= 10.0  # the smallest all in the partial segment
    x[2, 32:44] -= 10.0  # the smallest all in one whole segment
    x[3, ::40] -= 10.0  # one in each of several segments
    for k in (1, 3, 8, 20):  # 20: more than the whole segments, plain topk
        found = aim_module._smallest_columns(x, k)
        expected = torch.topk(x, k, dim=1, largest=False).indices
        assert torch.equal(found.sort(dim=1).values, expected.sort(dim=1).values), k


# ---------------------------------------------------------------- offsets: the ball measure


@pytest.fixture(scope="module")
def biased_gpt2():
    """A tiny GPT-2 whose final LayerNorm has a random bias: offsets c = W_U beta differ."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from lenstui.engine.model.load import wrap_model
    from testkit.models import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    torch.manual_seed(11)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=4,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        model.transformer.ln_f.bias.normal_(0.0, 0.5)
        model.transformer.ln_f.weight.uniform_(0.5, 1.5)
        model.lm_head.weight.normal_(0.0, 1.0)
    return wrap_model(model, tokenizer, name="tiny-gpt2-biased", device="cpu")


def _ln_residual(z: np.ndarray, eps: float) -> torch.Tensor:
    """x with LayerNorm's n(x) = z (z mean-free, |z| < sqrt(d)): x = s z."""
    d = len(z)
    scale = math.sqrt(eps / (1 - float(z @ z) / d))
    return torch.as_tensor(z * scale)


def test_ball_measure_with_offsets_through_the_real_modules(biased_gpt2):
    from lenstui.engine.speak.check import as_readout

    bridge = biased_gpt2.bridge
    readout = as_readout(biased_gpt2)
    assert not readout.direction_only and readout.kind == "LN"
    d, R, eps = readout.d, math.sqrt(readout.d), readout.eps
    gain = bridge.ln_final.weight.detach().to(torch.float64).numpy()
    beta = bridge.ln_final.bias.detach().to(torch.float64).numpy()
    W_U = bridge.W_U.detach().to(torch.float64).numpy()
    W = (W_U * gain[:, None]).T
    W = W - W.mean(axis=1, keepdims=True)  # the reachable subspace is 1-perp
    c = beta @ W_U
    rng = np.random.default_rng(0)
    checked = 0
    for token in range(0, readout.n_vocab, 37):
        result = aim(biased_gpt2, token)
        assert result.method == "ball"
        assert result.dimension == d - 1
        if result.verdict != "speakable":
            assert check_speakable(biased_gpt2, token).verdict != "speakable" or result.verdict == "undetermined"
            continue
        checked += 1
        rho_l, rho_u = result.radius_fraction * R, result.radius_fraction_upper * R
        assert 0 < rho_l <= rho_u + 1e-12
        assert rho_u - rho_l < 1e-3 * R
        # Upper bound recomputed from the weights alone: (R |p| + beta) / (1 + |p|).
        ids = [e["id"] for e in result.upper]
        weights = np.array([e["weight"] for e in result.upper])
        diffs = W[token] - W[ids]
        lengths = np.linalg.norm(diffs, axis=1)
        p = np.linalg.norm(weights @ (diffs / lengths[:, None]))
        offset = weights @ ((c[token] - c[ids]) / lengths)
        assert (R * p + offset) / (1 + p) == pytest.approx(rho_u, abs=1e-9)
        # Lower bound: points of the ball at 0.99 rho_L, through the real norm and W_U.
        centre = np.array(result.axis) * result.centre_norm
        assert abs(centre.sum()) < 1e-9 and result.centre_norm + rho_l <= R * (1 + 1e-12)
        hats = W[token] - W
        norms = np.linalg.norm(hats, axis=1)
        norms[token] = np.inf
        hats = hats / norms[:, None]
        slack = hats @ centre + (c[token] - c) / norms
        slack[token] = np.inf
        aways = [-hats[j] for j in np.argsort(slack)[:3]] + [rng.standard_normal(d) for _ in range(3)]
        for away in aways:
            away = away - away.mean()
            z = centre + 0.99 * rho_l * away / np.linalg.norm(away)
            logits = real_logits(bridge, _ln_residual(z, eps))
            assert int(torch.argmax(logits)) == token
        # Beyond the upper bound: a ball of radius 1.01 rho_U around ANY centre either leaves
        # the reachable ball or holds a point where a weighted competitor beats t (the dual:
        # sum_j w_j slack_j(centre) <= |p| |centre| + offset < radius). Probed at a few centres.
        radius = rho_u * 1.01 + 1e-9
        noise = rng.standard_normal(d)
        probes = [centre, 0.7 * centre, centre * 0.8 + 0.3 * (noise - noise.mean())]
        inside = 0
        for probe in probes:
            if np.linalg.norm(probe) + radius >= R:
                continue  # that ball is not reachable
            inside += 1
            probe_slack = hats[ids] @ probe + (c[token] - c[ids]) / norms[ids]
            j = ids[int(np.argmin(probe_slack))]
            assert probe_slack.min() < radius
            z = probe - hats[j] * (0.5 * (probe_slack.min() + radius))
            logits = real_logits(bridge, _ln_residual(z, eps))
            assert logits[j] > logits[token]
        assert inside >= 1
    assert checked >= 3


def test_layernorm_without_bias_is_a_cap_in_one_dimension_less(tiny_gpt2):
    result = aim(tiny_gpt2, 42)
    assert result.method == "cap"
    assert result.dimension == tiny_gpt2.d_model - 1
    assert abs(sum(result.axis)) < 1e-9  # the axis lies in the reachable hyperplane
    assert result.exact and result.theta_deg <= result.theta_upper_deg
