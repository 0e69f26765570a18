"""How precisely must the model aim to say token t? A certified measure, both ways.

Readout as the speakability check models it (``speak.geometry``): rows ``V`` (effective
unembedding, projected onto the reachable subspace), offsets ``c``, the open ball of radius
``R = sqrt(d_model)``. With ``a_j = v_t - v_j`` and ``b_j = c_t - c_j``, t is the strict
argmax at z exactly when ``a_j . z + b_j > 0`` for every other j.

**Cap measure** (``method="cap"``, all offsets equal, e.g. SmolLM2): only the direction of
z matters. A cap of half-angle theta around a unit axis u lies inside the cone of winning
directions iff ``a_j . u / |a_j| >= sin theta`` for every j, so the widest cap has

    sin theta* = max_{|u|=1} min_j â_j . u = dist(0, conv{â_j})      (â_j = a_j / |a_j|)

(minimax duality): a minimum-norm-point problem. It is solved by constraint generation: the
min-norm point of a working set of â_j (Lawson-Hanson least-distance programming: one NNLS),
then every j is checked with one float64 mat-vec and the most violated join the set.

- **Lower bound** (``theta_deg``): for the axis u, every z of norm r >= the witness radius
  within angle phi of u has ``a_j . z >= r |a_j| sin(alpha_j - phi)`` (alpha_j = asin(â_j . u)),
  so t wins by more than the speakability tolerance ``tol(r)`` (twice the worst float32
  rounding of a logit, ``Readout.speak_tolerance``) whenever
  ``phi < alpha_j - asin(tol(r) / (r |a_j|))`` for every j: **the tolerance costs each
  constraint the angle asin(tol / (r |a_j|))**. ``theta_deg`` is the minimum over the whole
  vocabulary, in float64 from explicit differences ``v_t - v_j``; ``rounding_deg`` is what the
  tolerance cost.
- **Upper bound** (``theta_upper_deg``): convex weights ``w`` on the â_j; no cap wider than
  ``asin |sum_j w_j â_j|`` fits (the point is in the hull), recomputed in float64 from the
  weights (``upper``).
- ``exact``: the geometric lower bound (before the rounding allowance) and the upper bound
  agree to ``EXACT_TOLERANCE_DEG``.
- theta* = 0 exactly when t is unspeakable: the weights then give the speakability
  certificate (``speak_lp.check_certificate`` on ``w_j / |a_j|``), checked with its tolerance.
- ``log10_share_lower``: the cap's share of all directions of the reachable subspace
  (dimension n = d, or d - 1 for LayerNorm), ``0.5 I_{sin^2 theta}((n-1)/2, 1/2)``, a certified
  lower bound on the share of directions that say t (mpmath, no underflow).

**Ball measure** (``method="ball"``, offsets differ, e.g. a LayerNorm bias folded in): the
answer depends on the radius, so the measure is the largest ball ``B(z0, rho)`` inside
``{z in the reachable ball : t wins}``, reported as ``rho / R`` (``radius_fraction``): maximize
rho s.t. ``â_j . z + b_j/|a_j| >= rho`` and ``|z| + rho <= R``, by bisection on rho, each step
a least-distance problem (the smallest centre meeting the constraints, one NNLS on a working
set grown by constraint generation; tangent cuts of the ball converged far too slowly). Lower bound: ``rho_L = min(R - |z0|, min_j (a_j . z0 + b_j - tol(R)) / |a_j|)``
in float64. Upper bound from convex weights w (the Lagrangian dual):
``rho <= (R |p| + beta) / (1 + |p|)`` with ``p = sum w_j â_j``, ``beta = sum w_j b_j / |a_j|``.
For a direction-only readout the largest ball has ``rho / R = sin theta / (1 + sin theta)``, so
``theta_deg`` is reported as that equivalent angle (the two measures then rank tokens the
same); ``log10_share_lower`` is ``n log10(rho / R)``, the ball's share of the reachable ball's
volume.
"""

from __future__ import annotations

import math
import time
from typing import Optional

import numpy as np
import torch
from scipy.optimize import nnls

from lenstui.core.aim_result import AimResult
from lenstui.core.callbacks import StopCheck, check_stop
from lenstui.core.errors import InputError
from lenstui.engine.speak.check import CANDIDATE_FAMILIES, as_readout, candidate_directions
from lenstui.engine.speak.geometry import U32, U64, Readout
from lenstui.engine.speak.lp import check_certificate, polish_certificate
from lenstui.engine.speak.scratch import Scratch

# Geometric lower and upper bounds closer than this are reported as exact.
EXACT_TOLERANCE_DEG = 1e-6
# Stop constraint generation once the working set's min-norm point violates no constraint
# by more than this (in sin theta).
_CONVERGED_SIN = 1e-11
# A rigorous allowance for float64 rounding in a normalised dot product â_j . u.
_FLOAT64_SIN_SLACK = 1e-11
# (|v_t| + |v_j|) / |v_t - v_j| above this: recompute from explicit differences.
_ILL_CONDITIONED = 10.0
# Working-set sizes.
INITIAL_PER_SEED = 48
ADD_PER_ROUND = 24
MAX_ROUNDS = 400
# Rows of the vocabulary converted at a time in full float64 passes.
_CHUNK = 8192
# Upper-bound weights reported at most (the rest are below this fraction of the largest).
_WEIGHT_FLOOR = 1e-12



# -- shared pieces ---------------------------------------------------------------


def reachable_dimension(readout: Readout) -> int:
    """Dimension of the subspace the normalised residual lives in (LN loses the all-ones)."""
    return readout.d - 1 if readout.kind == "LN" else readout.d


def log10_cap_share(theta_rad: float, dimension: int) -> Optional[float]:
    """log10 of the share of the unit sphere in R^dimension within theta of an axis:
    ``0.5 I_{sin^2 theta}((n-1)/2, 1/2)`` for theta <= 90 deg, in arbitrary precision (it is
    far below 1e-300 for small angles in hundreds of dimensions). None when theta <= 0."""
    import mpmath

    if not theta_rad > 0:
        return None
    theta_rad = min(theta_rad, math.pi / 2)
    with mpmath.workdps(40):
        x = mpmath.sin(mpmath.mpf(theta_rad)) ** 2
        share = mpmath.betainc(mpmath.mpf(dimension - 1) / 2, mpmath.mpf(1) / 2, 0, x, regularized=True) / 2
        return float(mpmath.log10(share))


def difference_norms(readout: Readout, t: int) -> torch.Tensor:
    """|v_t - v_j| for every j, float64: ``|v_t|^2 + |v_j|^2 - 2 v_t . v_j`` (one mat-vec),
    except where that cancels badly (``ill_conditioned``), which are recomputed from explicit
    differences. Elsewhere the relative error is below 1e-11 (see ``_ILL_CONDITIONED``)."""
    squares = _squared_row_norms(readout)
    out = (squares[t] + squares - 2 * (readout.V @ readout.V[t])).clamp_min(0).sqrt()
    bad = torch.nonzero(ill_conditioned(readout, t, out)).flatten()
    for start in range(0, len(bad), _CHUNK):
        idx = bad[start : start + _CHUNK]
        out[idx] = (readout.V[t] - readout.V[idx]).norm(dim=1)
    return out


def ill_conditioned(readout: Readout, t: int, lengths: torch.Tensor) -> torch.Tensor:
    """Competitors for which the expansions ``v_t . u - v_j . u`` and ``|v_t|^2 + |v_j|^2 -
    2 v_t . v_j`` may lose more than ~1e-11 relative accuracy: (|v_t| + |v_j|) / |a_j| large.
    Float64 dot products over d terms err by at most gamma_{d+2} |x||y| (gamma ~ 6.4e-14 for
    d = 576), so below the ratio ``_ILL_CONDITIONED`` the error of a normalised dot product is
    under ``_FLOAT64_SIN_SLACK``."""
    norms = _squared_row_norms(readout).sqrt()
    return (norms[t] + norms) > _ILL_CONDITIONED * lengths


def _angle_deg(a: torch.Tensor, b: torch.Tensor) -> Optional[float]:
    na, nb = float(a.norm()), float(b.norm())
    if na == 0 or nb == 0:
        return None
    ua, ub = a / na, b / nb  # 2 atan(|ua - ub| / |ua + ub|): accurate for small angles too
    return math.degrees(2 * math.atan2(float((ua - ub).norm()), float((ua + ub).norm())))


def _resolve(readout: Readout, token_id: int) -> int:
    t = int(token_id)
    if not 0 <= t < readout.n_vocab:
        raise InputError(f"Token id {t} is out of range: {readout.name} has ids 0..{readout.n_vocab - 1}.")
    return t


# -- the cap (direction-only readouts) --------------------------------------------


def min_norm_weights(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Convex weights of the minimum-norm point of conv(rows of ``points`` [k, d]).

    Lawson-Hanson least-distance programming: NNLS on ``[points^T; 1^T] mu ~ e_{d+1}``;
    the normalised mu are the weights (the residual is zero exactly when 0 is in the hull)."""
    k, d = points.shape
    E = np.empty((d + 1, k))
    E[:d] = points.T
    E[d] = 1.0
    f = np.zeros(d + 1)
    f[d] = 1.0
    mu, _ = nnls(E, f, maxiter=max(50 * k, 1000))
    total = mu.sum()
    if total <= 0:
        return np.full(k, 1.0 / k), float(np.linalg.norm(points.mean(axis=0)))
    weights = mu / total
    return weights, float(np.linalg.norm(weights @ points))


def cap_lower_bound(readout: Readout, t: int, axis: torch.Tensor, norms: Optional[torch.Tensor] = None) -> dict:
    """Certified lower bound of the cap around ``axis`` over the whole vocabulary, float64.

    ``a_j . u`` as ``v_t . u - v_j . u`` (one mat-vec), recomputed from explicit differences
    where that cancels badly (``ill_conditioned``); elsewhere its error, and that of |a_j|,
    is covered by ``_FLOAT64_SIN_SLACK``. Returns the robust bound (after the rounding
    allowance, radians), the geometric one, and the binding token."""
    u = readout.project(axis.to(readout.V.device, torch.float64))
    u = u / u.norm()
    r = readout.witness_radius
    tau = readout.speak_tolerance(r) / r  # tol(r) / r; tol(r)/r only falls as r grows
    lengths = (difference_norms(readout, t) if norms is None else norms).clone()
    dots = float(readout.V[t] @ u) - readout.V @ u
    bad = torch.nonzero(ill_conditioned(readout, t, lengths)).flatten()
    for start in range(0, len(bad), _CHUNK):
        idx = bad[start : start + _CHUNK]
        dots[idx] = (readout.V[t] - readout.V[idx]) @ u
    lengths[t] = math.inf  # t itself is no constraint
    sines = torch.where(lengths > 0, dots / lengths, torch.full_like(dots, -1.0))
    alpha = torch.asin((sines - _FLOAT64_SIN_SLACK).clamp(-1.0, 1.0))
    penalty = torch.asin((tau / lengths).clamp(max=1.0))
    margin = alpha - penalty
    margin[t] = alpha[t] = math.inf
    k = int(torch.argmin(margin))
    return {"robust": float(margin[k]), "geometric": float(alpha.min()), "binding": k}


def cap_upper_bound(readout: Readout, t: int, ids, weights, norms: Optional[torch.Tensor] = None) -> float:
    """sin theta_upper = |sum_j w_j â_j| for convex weights w, recomputed in float64 (plus
    a float64 rounding allowance)."""
    idx = torch.as_tensor(list(ids), dtype=torch.long, device=readout.V.device)
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64), device=readout.V.device).clamp_min(0)
    w = w / w.sum()
    A = readout.V[t] - readout.V[idx]
    lengths = A.norm(dim=1) if norms is None else norms[idx]
    p = (w / lengths) @ A
    return min(1.0, float(p.norm()) + _FLOAT64_SIN_SLACK)


def _seed_axes(readout: Readout, t: int) -> list[torch.Tensor]:
    index = torch.tensor([t], device=readout.V.device)
    return [candidate_directions(readout, index, family)[0] for family in ("own",) + CANDIDATE_FAMILIES[:-1]]


def _normalised_slacks(readout: Readout, t: int, u: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """â_j . u for every j (one mat-vec; for choosing constraints, not for certifying)."""
    dots = float(readout.V[t] @ u) - readout.V @ u
    out = dots / norms
    out[t] = math.inf
    return out


def aim_cap(readout: Readout, t: int, *, should_stop: Optional[StopCheck] = None) -> AimResult:
    norms = difference_norms(readout, t)
    norms[t] = math.inf
    base = _base_result(readout, t, "cap")
    twins = torch.nonzero(norms == 0).flatten()  # exact: those are recomputed explicitly
    if len(twins):
        return _unspeakable(readout, t, base, [int(twins[0])], [1.0], norms, "an exact copy of another token's row")

    seeds = _seed_axes(readout, t)
    axes = torch.stack([z / z.norm() for z in seeds], dim=1)  # [d, seeds]
    all_slacks = ((readout.V[t] @ axes)[None, :] - readout.V @ axes) / norms[:, None]
    all_slacks[t] = math.inf
    active: dict[int, None] = {}
    k = min(INITIAL_PER_SEED, readout.n_vocab - 1)
    for column in range(axes.shape[1]):
        active.update(dict.fromkeys(torch.topk(all_slacks[:, column], k, largest=False).indices.tolist()))
    V, v_t = readout.V, readout.V[t]
    rounds, weights, sin_upper, u = 0, None, 1.0, None
    while rounds < MAX_ROUNDS:
        rounds += 1
        check_stop(should_stop, "aim cancelled")
        idx = torch.as_tensor(list(active), device=V.device)
        points = ((v_t - V[idx]) / norms[idx][:, None]).cpu().numpy()
        weights, sin_upper = min_norm_weights(points)
        if sin_upper <= 1e-13:
            break  # 0 is in the hull: unspeakable (checked below)
        p = torch.as_tensor(weights @ points, device=V.device)
        u = p / p.norm()
        slacks = _normalised_slacks(readout, t, u, norms)
        if float(slacks.min()) >= sin_upper - _CONVERGED_SIN:
            break
        slacks[idx] = math.inf
        worst = torch.topk(slacks, min(ADD_PER_ROUND, readout.n_vocab - 1), largest=False)
        new = worst.indices[worst.values < sin_upper - _CONVERGED_SIN].tolist()
        if not new:
            break
        active.update(dict.fromkeys(new))
    ids = np.asarray(list(active))
    support = weights > _WEIGHT_FLOOR * weights.max()
    ids, weights = ids[support], weights[support] / weights[support].sum()
    base.rounds, base.constraints = rounds, len(active)

    sin_upper = cap_upper_bound(readout, t, ids, weights, norms)
    lower = cap_lower_bound(readout, t, u, norms) if u is not None else None
    if lower is None or lower["robust"] <= 0:
        # No certified cap around the min-norm axis; try the witness-style seeds too.
        for z in seeds:
            candidate = cap_lower_bound(readout, t, z, norms)
            if lower is None or candidate["robust"] > lower["robust"]:
                lower, u = candidate, z / z.norm()
    if lower["robust"] <= 0:
        cert_result = _unspeakable(readout, t, base, ids.tolist(), weights.tolist(), norms, "", check_only=True)
        if cert_result is not None:
            return cert_result
    theta_upper = math.asin(sin_upper)
    robust = max(0.0, lower["robust"])
    geometric = max(0.0, lower["geometric"])
    base.verdict = "speakable" if robust > 0 else "undetermined"
    base.theta_deg = math.degrees(robust)
    base.theta_upper_deg = math.degrees(theta_upper)
    base.geometric_lower_deg = math.degrees(geometric)
    base.rounding_deg = math.degrees(geometric - robust)
    base.exact = base.theta_upper_deg - base.geometric_lower_deg <= EXACT_TOLERANCE_DEG
    base.axis = [float(x) for x in u.tolist()]
    base.offset_deg = _angle_deg(u, readout.project(v_t))
    base.log10_share_lower = log10_cap_share(robust, base.dimension)
    base.upper = _weights_json(ids, weights)
    binding = lower["binding"]
    base.tightest = binding if binding >= 0 else None
    base.reason = (
        f"axis checked over the whole vocabulary; tightest competitor {binding} ({readout.decode(binding)!r})"
        if binding >= 0
        else ""
    )
    return base


def _weights_json(ids, weights) -> list[dict]:
    order = np.argsort(-np.asarray(weights), kind="stable")
    return [{"id": int(ids[k]), "weight": float(weights[k])} for k in order]


def _base_result(readout: Readout, t: int, method: str) -> AimResult:
    return AimResult(
        id=t,
        text=readout.decode(t),
        method=method,
        verdict="undetermined",
        theta_deg=0.0,
        theta_upper_deg=90.0,
        exact=False,
        geometric_lower_deg=0.0,
        rounding_deg=0.0,
        offset_deg=None,
        log10_share_lower=None,
        axis=[],
        upper=[],
        dimension=reachable_dimension(readout),
        model=readout.name,
    )


def _unspeakable(readout, t, base, ids, weights, norms, why, check_only=False) -> Optional[AimResult]:
    """theta* = 0 when the weights (on â_j) give the speakability certificate: weights
    w_j / |a_j| on the rows themselves, checked with the certificate tolerance."""
    ids = [int(i) for i in ids]
    lengths = norms[torch.as_tensor(ids, device=norms.device)].cpu().numpy()
    row_weights = np.asarray(weights, dtype=np.float64) / np.where(lengths > 0, lengths, 1.0)
    cert = check_certificate(readout, t, ids, row_weights)
    if cert.bound > readout.certificate_tolerance:
        polished = polish_certificate(readout, t, ids)
        if polished is not None and polished.bound < cert.bound:
            cert = polished
    if cert.bound > readout.certificate_tolerance:
        return None if check_only else base
    base.verdict = "unspeakable"
    base.theta_deg = base.theta_upper_deg = base.geometric_lower_deg = 0.0
    base.exact = True
    base.upper = _weights_json(cert.ids, cert.weights)  # convex weights on the rows v_j
    base.reason = (
        (why + "; " if why else "")
        + f"unspeakable: certificate bound {cert.bound:.3g} <= {readout.certificate_tolerance:.3g} "
        "(upper: weights on the rows v_j, as in `lenstui speak`)"
    )
    if base.method == "ball":
        base.radius_fraction = base.radius_fraction_upper = 0.0
    return base


# -- the ball (readouts with offsets) ------------------------------------------------


def ball_lower_bound(readout: Readout, t: int, centre: torch.Tensor, norms: torch.Tensor) -> dict:
    """rho_L = min(R - |z0|, min_j (a_j . z0 + b_j - tol(R)) / |a_j|), float64 over the
    whole vocabulary (tol is increasing in |z|, so tol(R) covers the whole ball)."""
    z0 = readout.project(centre.to(readout.V.device, torch.float64))
    R = readout.radius
    tol = readout.speak_tolerance(R)
    dots = readout.logits64(z0)
    gaps = dots[t] - dots  # a_j . z0 + b_j  (logits include c)
    gaps = gaps - gaps.abs() * 4 * U64 * readout.d  # float64 rounding allowance
    lengths = norms.clone()
    lengths[t] = math.inf
    zero = lengths == 0
    robust_each = (gaps - tol) / lengths
    geometric_each = gaps / lengths
    inf = torch.full_like(gaps, math.inf)
    robust_each = torch.where(zero, torch.where(gaps > tol, inf, -inf), robust_each)
    geometric_each = torch.where(zero, torch.where(gaps > 0, inf, -inf), geometric_each)
    robust_each[t] = geometric_each[t] = math.inf  # t is no competitor of itself
    room = R - float(z0.norm())
    k = int(torch.argmin(robust_each))
    return {
        "robust": min(room, float(robust_each[k])),
        "geometric": min(room, float(geometric_each.min())),
        "binding": k,
        "centre": z0,
    }


def ball_upper_bound(readout: Readout, t: int, ids, weights, norms: torch.Tensor) -> float:
    """rho_U = (R |p| + beta) / (1 + |p|), p = sum w_j â_j, beta = sum w_j b_j / |a_j|."""
    idx = torch.as_tensor(list(ids), dtype=torch.long, device=readout.V.device)
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64), device=readout.V.device).clamp_min(0)
    w = w / w.sum()
    lengths = norms[idx]
    A = readout.V[t] - readout.V[idx]
    p = float(((w / lengths) @ A).norm())
    beta = float((w * (readout.c[t] - readout.c[idx]) / lengths).sum())
    R = readout.radius
    bound = (R * p + beta) / (1 + p)
    return bound + 1e-12 * R


def least_distance(points: np.ndarray, floors: np.ndarray) -> tuple[Optional[np.ndarray], np.ndarray]:
    """min |z| s.t. points @ z >= floors (Lawson-Hanson LDP: one NNLS). Returns (z or None
    when infeasible, the NNLS multipliers: their normalisation are the dual weights)."""
    k, d = points.shape
    E = np.empty((d + 1, k))
    E[:d] = points.T
    E[d] = floors
    f = np.zeros(d + 1)
    f[d] = 1.0
    mu, _ = nnls(E, f, maxiter=max(50 * k, 1000))
    residual = E @ mu - f
    if abs(residual[d]) < 1e-14:
        return None, mu
    return -residual[:d] / residual[d], mu


def aim_ball(readout: Readout, t: int, *, should_stop: Optional[StopCheck] = None) -> AimResult:
    """Largest ball inside {z in the reachable ball : t wins}: bisection on the radius rho;
    each step is a least-distance problem (the smallest centre with a_j . z + b_j >= rho |a_j|
    for every j), solved by constraint generation; rho is feasible iff |z| <= R - rho.
    Every feasible step gives a centre (lower bound, re-checked over the vocabulary), every
    infeasible one convex weights (upper bound, the dual)."""
    base = _base_result(readout, t, "ball")
    norms = difference_norms(readout, t)
    V, c, R = readout.V, readout.c, readout.radius
    zero = norms == 0
    zero[t] = False
    if bool((zero & (c >= c[t])).any()):
        twin = int(torch.nonzero(zero & (c >= c[t])).flatten()[0])
        return _unspeakable(readout, t, base, [twin], [1.0], norms, "an exact copy of another token's row")
    usable = ~zero
    usable[t] = False
    safe_norms = torch.where(usable, norms, torch.ones_like(norms))
    hats_offsets = ((c[t] - c) / safe_norms).cpu().numpy()

    def normalised_slacks(z: torch.Tensor) -> torch.Tensor:
        logits = readout.logits64(z)
        out = (logits[t] - logits) / safe_norms
        out[~usable] = math.inf
        return out

    seeds = [z * 0.5 for z in _seed_axes(readout, t)] + [torch.zeros(readout.d, dtype=torch.float64, device=V.device)]
    active: dict[int, None] = {}
    for z in seeds:
        k = min(INITIAL_PER_SEED, int(usable.sum()))
        active.update(dict.fromkeys(torch.topk(normalised_slacks(z), k, largest=False).indices.tolist()))

    def hats(idx: np.ndarray) -> np.ndarray:
        i = torch.as_tensor(idx, device=V.device)
        return ((V[t] - V[i]) / safe_norms[i][:, None]).cpu().numpy()

    rounds = 0

    def smallest_centre(rho: float):
        """(centre or None, ids, dual weights) of min |z| s.t. â_j . z + b̂_j >= rho for all j."""
        nonlocal rounds
        while True:
            rounds += 1
            check_stop(should_stop, "aim cancelled")
            idx = np.asarray(list(active))
            z, mu = least_distance(hats(idx), rho - hats_offsets[idx])
            if z is None or rounds > MAX_ROUNDS * 4:
                return z, idx, mu
            slacks = normalised_slacks(torch.as_tensor(z, device=V.device))
            slacks[torch.as_tensor(idx, device=V.device)] = math.inf
            worst = torch.topk(slacks, min(ADD_PER_ROUND, len(slacks)), largest=False)
            new = worst.indices[worst.values < rho - 1e-12 * R].tolist()
            if not new:
                return z, idx, mu
            active.update(dict.fromkeys(new))

    best_lower, best_upper = None, (math.inf, None, None)
    lo, hi = 0.0, R
    for _ in range(80):
        rho = 0.5 * (lo + hi) if best_lower is not None or lo > 0 else 0.0
        z, idx, mu = smallest_centre(rho)
        if mu.sum() > 0:
            weights = mu / mu.sum()
            support = weights > _WEIGHT_FLOOR * weights.max()
            bound = ball_upper_bound(readout, t, idx[support], weights[support], safe_norms)
            if bound < best_upper[0]:
                best_upper = (bound, idx[support], weights[support] / weights[support].sum())
        if z is not None and float(np.linalg.norm(z)) + rho <= R:
            lower = ball_lower_bound(readout, t, torch.as_tensor(z, device=V.device), norms)
            if best_lower is None or lower["robust"] > best_lower["robust"]:
                best_lower = lower
            lo = max(rho, lower["geometric"])
        else:
            hi = rho
            if rho == 0.0:
                break  # no ball at all: t cannot win anywhere reachable
        hi = min(hi, best_upper[0])
        if best_lower is not None and best_upper[0] - best_lower["geometric"] <= 1e-10 * R:
            break
        if hi - lo <= 1e-10 * R:
            break
    base.rounds, base.constraints = rounds, len(active)
    rho_upper, ids, weights = best_upper
    if best_lower is None or best_lower["robust"] <= 0:
        if ids is not None:
            done = _unspeakable(readout, t, base, ids.tolist(), weights.tolist(), norms, "", check_only=True)
            if done is not None:
                return done
    if best_lower is None:
        base.reason = "no reachable point found where t wins"
        base.radius_fraction, base.radius_fraction_upper = 0.0, min(1.0, max(0.0, rho_upper / R))
        base.theta_upper_deg = _equivalent_angle_deg(base.radius_fraction_upper)
        base.upper = _weights_json(ids, weights) if ids is not None else []
        return base
    robust = max(0.0, best_lower["robust"])
    geometric = max(0.0, best_lower["geometric"])
    z0 = best_lower["centre"]
    base.verdict = "speakable" if robust > 0 else "undetermined"
    base.radius_fraction = robust / R
    base.radius_fraction_upper = min(1.0, max(0.0, rho_upper / R))
    base.theta_deg = _equivalent_angle_deg(base.radius_fraction)
    base.theta_upper_deg = _equivalent_angle_deg(base.radius_fraction_upper)
    base.geometric_lower_deg = _equivalent_angle_deg(geometric / R)
    base.rounding_deg = base.geometric_lower_deg - base.theta_deg
    base.exact = base.theta_upper_deg - base.geometric_lower_deg <= EXACT_TOLERANCE_DEG
    base.centre_norm = float(z0.norm())
    direction = z0 / z0.norm() if base.centre_norm > 0 else z0
    base.axis = [float(x) for x in direction.tolist()]
    base.offset_deg = _angle_deg(z0, readout.project(V[t])) if base.centre_norm > 0 else None
    base.log10_share_lower = base.dimension * math.log10(base.radius_fraction) if robust > 0 else None
    base.upper = _weights_json(ids, weights) if ids is not None else []
    base.tightest = best_lower["binding"]
    base.reason = f"ball of radius {robust:.4g} around a centre of norm {base.centre_norm:.4g} (R = {R:.4g})"
    return base


def _equivalent_angle_deg(fraction: float) -> float:
    """The cap half-angle whose largest inscribed ball has radius ``fraction * R``:
    fraction = sin theta / (1 + sin theta), i.e. sin theta = fraction / (1 - fraction)."""
    if fraction <= 0:
        return 0.0
    if fraction >= 0.5:
        return 90.0
    return math.degrees(math.asin(fraction / (1 - fraction)))


# -- entry point ------------------------------------------------------------------


def aim(model, token_id: int, *, should_stop: Optional[StopCheck] = None) -> AimResult:
    """The aim measure of one token (``model``: a LoadedModel or a Readout)."""
    started = time.perf_counter()
    readout = as_readout(model)
    t = _resolve(readout, token_id)
    with torch.no_grad():
        if readout.direction_only:
            result = aim_cap(readout, t, should_stop=should_stop)
        else:
            result = aim_ball(readout, t, should_stop=should_stop)
    result.seconds = time.perf_counter() - started
    return result


# -- batched lower bounds (the vocabulary scan) -----------------------------------------

# Float32 competitors per token recomputed exactly in float64 (the rest are screened). Any
# number gives the same bounds (whatever binds is recomputed, as a candidate or as open);
# the normalised-slack ranking is good enough that 8 leave only a few open per token.
BATCH_TOP_K = 8
# Competitors the screen leaves open are recomputed in float64 this many at a time.
_BATCH_OPEN_CHUNK = 4096
# Relative allowance for float32 rounding of the elementwise |a_j| bound (a few ulps).
_FLOAT32_SLACK = 16 * U32
# Tokens whose bounds are worked out together: a handful of [block, n_vocab] float32 work
# matrices (6 MB each for SmolLM2) that stay in the cache through a dozen passes, where
# whole-chunk ones would stream through memory on every pass.
_BATCH_BLOCK = 32
# Columns per segment in the search for each row's k smallest normalised slacks.
_SEGMENT = 1024


def _squared_row_norms(readout: Readout) -> torch.Tensor:
    """|v_j|^2, float64 (memoized)."""
    if readout.tables.aim_squared_norms is None:
        readout.tables.aim_squared_norms = readout.V.pow(2).sum(dim=1)
    return readout.tables.aim_squared_norms


def cap_lower_bounds(
    readout: Readout,
    token_ids,
    directions: torch.Tensor,
    *,
    logits32: Optional[torch.Tensor] = None,
    logits_rows: Optional[torch.Tensor] = None,
    gram32: Optional[torch.Tensor] = None,
    gram_rows: Optional[torch.Tensor] = None,
    scratch: Optional[Scratch] = None,
) -> np.ndarray:
    """Certified lower bounds (degrees) of the cap measure for a block of tokens, each around
    its own axis ``directions[i]`` (e.g. its witness direction), for a direction-only readout.

    Same bound as ``cap_lower_bound`` (float32 robust: the rounding tolerance costs each
    competitor asin(tol / (r |a_j|))), found the way the scan's candidate pass finds its
    runner-ups, from two batched float32 products made exact:

    - ``L = U V^T`` (``logits32``: the scan's candidate-pass product ``Z32 @ rows32.T`` when it
      has it, without the offsets), within ``Readout.screen_error_bound`` of the exact ``v_j . u``;
    - ``G = V_t V^T`` (``gram32``: the scan's own-direction product minus the constant
      offset), within ``gamma_{d+3} |v_t| |v_j|`` of ``v_t . v_j``, which bounds
      ``|a_j|^2 = |v_t|^2 + |v_j|^2 - 2 v_t . v_j`` from above.

    Token i's rows are ``logits32[logits_rows[i]]`` and ``gram32[gram_rows[i]]`` (row i when
    no rows are given), so a caller hands over the products it has without copying rows out;
    both are only read. A product not given is made here, in ``scratch`` (its rows argument
    is then ignored).

    The float32 top-k competitors are recomputed exactly in float64, giving theta_k; every
    other j is then shown harmless at theta_k from the bounds alone (j cannot bind when
    ``cos theta (a_j . u) - sin theta |a_j| > tol / r``); those the screen cannot clear are
    recomputed in float64 too. A smaller theta only relaxes the screen, so the minimum is
    certified. The tokens are worked through ``_BATCH_BLOCK`` at a time, so that the
    block's work matrices stay in the cache. 0 means no certified cap around that axis."""
    if not readout.direction_only:
        raise InputError("Batched cap bounds need a direction-only readout (all offsets equal).")
    device = readout.V.device
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=device).reshape(-1)
    b, n = len(ids), readout.n_vocab
    scratch = scratch if scratch is not None else Scratch()
    # The axes are exactly the float32 vectors ``axes32`` (any length: the scan's witnesses
    # have the witness radius); a float32 input on an RMSNorm readout is used as it is.
    axes32 = readout.project(directions.to(device, torch.float64)).to(torch.float32)
    U64 = axes32.to(torch.float64)
    unorm = U64.norm(dim=1).clamp_min(1e-300)
    rows32, _ = readout.screen_table()
    everyone = torch.arange(b, device=device)
    if logits32 is None:
        logits32, logits_rows = torch.mm(axes32, rows32.T, out=scratch.take("cap.logits", (b, n), device)), None
    if gram32 is None:
        gram32, gram_rows = torch.mm(rows32[ids], rows32.T, out=scratch.take("cap.gram", (b, n), device)), None
    logits_rows = everyone if logits_rows is None else torch.as_tensor(logits_rows, device=device)
    gram_rows = everyone if gram_rows is None else torch.as_tensor(gram_rows, device=device)
    err = readout.screen_error_bound(unorm)  # [b]: |L_j - v_j . u| <= err
    r = readout.witness_radius
    tau = readout.speak_tolerance(r) / r
    V = readout.V
    v_t = V[ids]  # [b, d]
    own = (v_t * U64).sum(dim=1)  # float64

    # N_j >= |a_j|: |v_t|^2 + |v_j|^2 - 2 (G_j - e_j), e_j = gamma |v_t| |v_j| the product's
    # error, plus a relative allowance for this float32 arithmetic; then the square root.
    squares = _squared_row_norms(readout)
    norms = squares.sqrt()
    gamma = (readout.d + 3) * U32 / (1 - (readout.d + 3) * U32) * 1.01
    max_square = float(squares.max())
    column_squares32 = squares.to(torch.float32)
    column_norms32 = norms.to(torch.float32)
    row_squares32 = (squares[ids] + _FLOAT32_SLACK * (squares[ids] + 3 * max_square)).to(torch.float32)
    row_error32 = (2 * gamma * norms[ids]).to(torch.float32)
    own32 = own.to(torch.float32)
    # float32 rounding of D and of the screen: a few ulps of the magnitudes involved
    # (|L_j| <= max|v| |u| + err, N_j <= 2 max|v| + allowance).
    max_norm = float(norms.max())
    k = min(BATCH_TOP_K, n - 1)
    theta = torch.empty(b, dtype=torch.float64, device=device)
    for start in range(0, b, _BATCH_BLOCK):
        block = slice(start, min(start + _BATCH_BLOCK, b))
        rows = everyone[block]
        m = len(rows)
        local = torch.arange(m, device=device)
        N = torch.index_select(gram32, 0, gram_rows[block], out=scratch.take("cap.norms", (m, n), device))
        torch.add(column_squares32[None, :], N, alpha=-2.0, out=N)  # -2 G_j is exact: one rounding, as in two steps
        N.add_(row_squares32[block, None])
        N.addr_(row_error32[block], column_norms32)
        N.clamp_(min=0.0).sqrt_()
        # D_j = own - L_j ~ a_j . u (within err, plus float32 rounding of own - L_j).
        D = torch.index_select(logits32, 0, logits_rows[block], out=scratch.take("cap.slacks", (m, n), device))
        torch.sub(own32[block, None], D, out=D)
        D[local, ids[block]] = torch.inf
        # The k smallest approximate normalised slacks D_j / N_j are recomputed exactly.
        ratios = torch.div(D, N, out=scratch.take("cap.ratios", (m, n), device))
        cand = _smallest_columns(ratios, k)
        block_theta = _exact_margins(V, v_t, U64, unorm, ids, tau, rows, cand).clamp_min(0.0)
        D[local[:, None], cand] = torch.inf

        # Screen: j cannot bind at theta when cos(theta) (D_j - err) - |u| sin(theta) N_j > |u| tau,
        # i.e. D_j - |u| tan(theta) N_j > err + |u| tau / cos(theta).
        slope = unorm[block] * torch.tan(block_theta)
        floor = err[block] + unorm[block] * tau / torch.cos(block_theta)
        D.addcmul_((-slope).to(torch.float32)[:, None], N)
        magnitude = own[block].abs() + max_norm * unorm[block] + err[block] + slope * 2.1 * max_norm
        slack = 8 * U32 * (magnitude + floor)
        threshold = (floor + slack).to(torch.float32)
        # Only rows whose smallest D_j is under the threshold have open j (most have none, and a
        # row minimum is far cheaper than a mask); a row without a cap has nothing to recompute.
        busy = torch.nonzero(~(D.amin(dim=1) > threshold) & (block_theta > 0)).flatten()
        open_rows, open_cols = torch.nonzero(D[busy] <= threshold[busy, None], as_tuple=True)
        open_rows = busy[open_rows]
        for first in range(0, len(open_rows), _BATCH_OPEN_CHUNK):
            r_chunk = open_rows[first : first + _BATCH_OPEN_CHUNK]
            c_chunk = open_cols[first : first + _BATCH_OPEN_CHUNK]
            margins = _exact_margins(V, v_t, U64, unorm, ids, tau, rows[r_chunk], c_chunk[:, None])
            block_theta.scatter_reduce_(0, r_chunk, margins.clamp_min(0.0), reduce="amin")
        theta[block] = block_theta
    return np.degrees(theta.cpu().numpy())


def _smallest_columns(x: torch.Tensor, k: int) -> torch.Tensor:
    """Column ids of the k smallest entries of each row of ``x`` [m, n] (ties broken either
    way), as ``topk(largest=False)`` finds them, faster. A row's k smallest lie in the k of
    its ``_SEGMENT``-column segments with the smallest minima: every entry of another segment
    is at or above its minimum, itself at or above those k minima. So one minimum pass over
    the row (cheap) picks the segments and topk searches only those."""
    m, n = x.shape
    whole = n // _SEGMENT
    if whole <= k:
        return torch.topk(x, k, dim=1, largest=False).indices
    segments = x[:, : whole * _SEGMENT].unflatten(1, (whole, _SEGMENT))  # a view
    best = torch.topk(segments.amin(dim=2), k, dim=1, largest=False).indices  # [m, k]
    rows = torch.arange(m, device=x.device)[:, None]
    pool = segments[rows, best].flatten(1)  # [m, k * _SEGMENT]
    columns = (best[:, :, None] * _SEGMENT + torch.arange(_SEGMENT, device=x.device)).flatten(1)
    if whole * _SEGMENT < n:  # the last, partial segment is always searched
        pool = torch.cat([pool, x[:, whole * _SEGMENT :]], dim=1)
        tail = torch.arange(whole * _SEGMENT, n, device=x.device).expand(m, -1)
        columns = torch.cat([columns, tail], dim=1)
    return columns.gather(1, torch.topk(pool, k, dim=1, largest=False).indices)


def _exact_margins(V, v_t, U64, unorm, ids, tau, rows: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """For each of ``rows``, min over its competitors ``cand`` [rows, k] of
    alpha_j - asin(tau / |a_j|), in float64 from explicit differences (radians)."""
    A = v_t[rows][:, None, :] - V[cand]  # [b', k, d]
    lengths = A.norm(dim=2)
    dots = torch.einsum("bkd,bd->bk", A, U64[rows]) / unorm[rows][:, None]
    sines = torch.where(lengths > 0, dots / lengths.clamp_min(1e-300), torch.full_like(dots, -1.0))
    alpha = torch.asin((sines - _FLOAT64_SIN_SLACK).clamp(-1.0, 1.0))
    penalty = torch.asin((tau / lengths.clamp_min(1e-300)).clamp(max=1.0))
    margin = alpha - penalty
    margin[cand == ids[rows][:, None]] = math.inf
    return margin.min(dim=1).values


# -- the aim as `lenstui speak` reports it ---------------------------------------------

# The keys of a SpeakResult's "aim" (a subset of AimResult.to_json, plus "reason").
SPEAK_AIM_KEYS = ("theta_deg", "theta_upper_deg", "offset_deg", "log10_share_lower", "axis", "upper", "method")


def speak_aim_json(result: AimResult) -> dict:
    """The ``"aim"`` field of ``lenstui speak --json``: enough to re-check both bounds."""
    payload = {key: result.to_json()[key] for key in SPEAK_AIM_KEYS}
    payload["exact"] = result.exact
    payload["reason"] = result.reason if result.verdict != "speakable" else ""
    return payload


def speak_aim(model, speak_result, *, should_stop: Optional[StopCheck] = None) -> Optional[dict]:
    """The aim field for a SpeakResult (also stored on it): None for an unspeakable token
    (theta* = 0, the certificate says so), else the measure, or all-None values with a
    ``reason`` when it could not be computed. Cancellation propagates."""
    from lenstui.core.errors import LenstuiError
    from lenstui.core.verdicts import Verdict

    if speak_result.verdict == Verdict.UNSPEAKABLE:
        speak_result.aim = None
        return None
    try:
        measured = aim(model, speak_result.id, should_stop=should_stop)
        payload = speak_aim_json(measured)
    except LenstuiError as error:
        payload = dict.fromkeys(SPEAK_AIM_KEYS)
        payload["axis"], payload["upper"], payload["exact"] = [], [], False
        payload["reason"] = str(error)
    speak_result.aim = payload
    return payload
