"""The speakability LP with constraint generation, and its infeasibility certificates.

Problem for token t (rows V, offsets c, reachable open ball of radius R, see
``speak.geometry``): is there a z with

    gap(z) = min_{j != t} (v_t - v_j) . z + (c_t - c_j)  >  0 ?

LP (HiGHS through scipy): maximize m subject to (v_j - v_t) . z + m <= c_t - c_j for
j in an active set S, z in a box (|z_i| <= 1 when only the direction matters; |z_i| <= R,
which contains the ball, otherwise) and tangent cuts z . u_k <= R of the ball. The LP over
S is a relaxation, so its value bounds the true best gap from above; its solution z*
is checked against the whole vocabulary with one matrix-vector product and the most
violated constraints join S. One LP over every token does not finish in reasonable time
(49k dense constraints); a few hundred to a thousand active ones suffice.

Certificate: the LP duals lambda >= 0 (sum 1) on S give, for every reachable z,

    gap(z) <= sum_j lambda_j [(v_t - v_j) . z + c_t - c_j]
           <= R ||v_t - sum_j lambda_j v_j|| + (c_t - sum_j lambda_j c_j)  =: U(lambda)

(Cauchy-Schwarz on the ball). U is recomputed in float64 from lambda alone, so the
certificate stands on its own whatever the solver's tolerances; an NNLS polish on the
duals' support drives the residual to float64 noise when t is inside the hull.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from scipy.optimize import linprog, nnls

from lenstui.core.callbacks import Progress, StopCheck, check_stop
from lenstui.core.speak_result import Certificate
from lenstui.engine.speak.geometry import Readout

# Competitors in the first LP, and the most violated ones added per round.
INITIAL_COMPETITORS = 192
ADD_PER_ROUND = 256
MAX_ROUNDS = 80
# Dual values below this are treated as zero when reading a certificate's support.
_DUAL_ZERO = 1e-12


@dataclass
class LPOutcome:
    """What the constraint-generation loop established for one token."""

    status: str  # "witness", "certificate" or "undetermined"
    z: Optional[torch.Tensor] = None  # witness (normalized residual), float64
    gap: float = float("-inf")  # exact full-vocabulary gap at z (float64)
    certificate: Optional[Certificate] = None
    binding: list[int] = field(default_factory=list)  # competitors with positive duals
    rounds: int = 0
    constraints: int = 0
    message: str = ""


def check_certificate(readout: Readout, token_id: int, ids: Sequence[int], weights: Sequence[float]) -> Certificate:
    """Recompute U(lambda) in float64 from the weights alone (normalized to sum 1)."""
    ids_t = torch.as_tensor(list(ids), dtype=torch.long, device=readout.V.device)
    lam = torch.as_tensor(np.asarray(weights, dtype=np.float64), device=readout.V.device).clamp_min(0)
    lam = lam / lam.sum()
    residual = readout.V[token_id] - lam @ readout.V[ids_t]
    residual_norm = float(readout.project(residual).norm())
    offset_term = float(readout.c[token_id] - lam @ readout.c[ids_t])
    return Certificate(
        ids=[int(i) for i in ids_t.tolist()],
        weights=[float(w) for w in lam.tolist()],
        residual_norm=residual_norm,
        offset_term=offset_term,
        bound=readout.radius * residual_norm + offset_term,
        radius=readout.radius,
    )


def polish_certificate(readout: Readout, token_id: int, ids: Sequence[int]) -> Optional[Certificate]:
    """Convex weights on ``ids`` that reproduce v_t as exactly as float64 allows (NNLS
    with a heavily weighted sum-to-one row): turns a solver-accurate certificate into
    one whose residual is float64 noise when v_t lies in the hull of those rows."""
    if not ids:
        return None
    V = readout.V
    columns = V[torch.as_tensor(list(ids), device=V.device)].T.cpu().numpy()  # [d, k]
    target = V[token_id].cpu().numpy()
    weight = max(1.0, float(np.abs(columns).max()))
    A = np.vstack([columns, np.full((1, columns.shape[1]), weight)])
    b = np.concatenate([target, [weight]])
    try:
        lam, _ = nnls(A, b, maxiter=50 * A.shape[1])
    except RuntimeError:  # NNLS did not converge: keep the solver's own duals
        return None
    if lam.sum() <= 0:
        return None
    support = lam > 0
    return check_certificate(readout, token_id, np.asarray(ids)[support], lam[support])


def _host_tables(readout: Readout) -> tuple[np.ndarray, np.ndarray]:
    """V and c as numpy arrays for building LPs (a view on CPU; one copy per model on a GPU)."""
    if readout.tables.host_tables is None:
        readout.tables.host_tables = (readout.V.cpu().numpy(), readout.c.cpu().numpy())
    return readout.tables.host_tables


def _initial_set(readout: Readout, token_id: int, seeds: Sequence[torch.Tensor], k: int) -> list[int]:
    chosen: dict[int, None] = {}
    for z in seeds:
        logits = readout.logits64(z)
        logits[token_id] = -torch.inf
        top = torch.topk(logits, min(k, readout.n_vocab - 1)).indices.tolist()
        chosen.update(dict.fromkeys(top))
    return list(chosen)


def solve_speak_lp(
    readout: Readout,
    token_id: int,
    *,
    seeds: Sequence[torch.Tensor] = (),
    all_constraints: bool = False,
    max_rounds: int = MAX_ROUNDS,
    time_limit: Optional[float] = None,
    should_stop: Optional[StopCheck] = None,
    progress: Optional[Progress] = None,
) -> LPOutcome:
    """Constraint generation until a verified witness, a checked certificate, or
    (neither passing its tolerance) an honest ``undetermined``.

    ``seeds``: normalized residuals whose strongest competitors start the active set
    (t's own direction is always one). ``all_constraints``: one LP over the whole
    vocabulary (only for the benchmark's comparison)."""
    started = time.perf_counter()
    V, c = readout.V, readout.c
    n, d = readout.n_vocab, readout.d
    t = int(token_id)
    v_t = V[t]
    direction_only = readout.direction_only
    R = readout.radius
    witness_radius = readout.witness_radius
    cert_tol = readout.certificate_tolerance
    box = 1.0 if direction_only else R
    seeds = [v_t] + list(seeds)

    if all_constraints:
        active = [j for j in range(n) if j != t]
    else:
        active = _initial_set(readout, t, seeds, INITIAL_COMPETITORS)
    in_active = np.zeros(n, dtype=bool)
    in_active[active] = True
    cuts: list[np.ndarray] = []
    V_np, c_np = _host_tables(readout)
    best = LPOutcome(status="undetermined")
    objective = np.zeros(d + 1)
    objective[-1] = -1.0  # maximize m
    bounds = [(-box, box)] * d + [(None, None)]

    for round_no in range(1, max_rounds + 1):
        check_stop(should_stop, "speakability check cancelled")
        if progress is not None:
            progress(f"LP round {round_no}: {len(active)} competitors", min(0.95, round_no / 12))
        idx = np.asarray(active)
        A = np.empty((len(idx) + len(cuts), d + 1))
        A[: len(idx), :d] = V_np[idx] - V_np[t]
        A[: len(idx), d] = 1.0
        rhs = np.empty(len(idx) + len(cuts))
        rhs[: len(idx)] = c_np[t] - c_np[idx]
        for k, u in enumerate(cuts):
            A[len(idx) + k, :d] = u
            A[len(idx) + k, d] = 0.0
            rhs[len(idx) + k] = R
        options = {}
        if time_limit is not None:
            remaining = time_limit - (time.perf_counter() - started)
            if remaining <= 0:
                best.message = f"time limit of {time_limit:.0f} s reached before round {round_no}"
                break
            options["time_limit"] = remaining
        res = linprog(objective, A_ub=A, b_ub=rhs, bounds=bounds, method="highs", options=options)
        best.rounds, best.constraints = round_no, len(idx)
        if res.status != 0 or res.x is None:
            best.message = f"HiGHS stopped: {res.message}"
            break
        z_star = torch.as_tensor(res.x[:d], dtype=torch.float64, device=V.device)
        m_star = float(res.x[d])
        duals = np.clip(-np.asarray(res.ineqlin.marginals[: len(idx)]), 0.0, None)
        support = duals > _DUAL_ZERO
        best.binding = [int(j) for j in idx[support][np.argsort(-duals[support])]]

        if m_star <= cert_tol:
            # Even the relaxation over S leaves t no lead: read the proof from the duals.
            cert = check_certificate(readout, t, idx[support], duals[support]) if support.any() else None
            if cert is None or cert.bound > cert_tol:
                polished = polish_certificate(readout, t, idx[support].tolist())
                if polished is not None and (cert is None or polished.bound < cert.bound):
                    cert = polished
            if cert is not None and cert.bound > cert_tol:
                polished = polish_certificate(readout, t, idx.tolist())
                if polished is not None and polished.bound < cert.bound:
                    cert = polished
            best.certificate = cert
            if cert is not None and cert.bound <= cert_tol:
                best.status = "certificate"
                best.message = "LP infeasible; certificate checked in float64"
            else:
                best.message = (
                    "the LP leaves no lead, but its certificate bound "
                    f"{cert.bound if cert else float('nan'):.3g} exceeds the tolerance {cert_tol:.3g}"
                )
            break

        # The relaxation allows a lead: try z* (brought into the reachable set) as a witness.
        z_proj = readout.project(z_star)
        norm = float(z_proj.norm())
        if norm <= 0.0:
            best.message = "the LP's best point is zero"
            break
        if direction_only:
            candidate = z_proj * (witness_radius / norm)
        else:
            candidate = z_proj * min(1.0, witness_radius / norm)
        logits = readout.logits64(candidate)
        own = float(logits[t])
        logits[t] = -torch.inf
        gap = own - float(logits.max())
        if gap > best.gap:
            best.gap, best.z = gap, candidate
        if gap > readout.speak_tolerance(float(candidate.norm())):
            best.status = "witness"
            best.message = "LP point verified over the whole vocabulary"
            break

        # Not yet a witness: add the constraints z* violates, and a cut if z* left the ball.
        full = V @ z_star
        slack = (full[t] - full).cpu().numpy() + (c_np[t] - c_np)  # gap per competitor at z*
        slack[t] = np.inf
        violated = np.nonzero((slack < m_star - 1e-9 * max(1.0, abs(m_star))) & ~in_active)[0]
        added = 0
        if len(violated):
            worst = violated[np.argsort(slack[violated])[:ADD_PER_ROUND]]
            active.extend(int(j) for j in worst)
            in_active[worst] = True
            added = len(worst)
        new_cut = False
        if not direction_only and norm > R * (1 + 1e-9):
            cuts.append((z_proj / norm).cpu().numpy())
            new_cut = True
        if not added and not new_cut:
            # z* is optimal over the reachable set yet its lead is within tolerance.
            best.message = (
                f"the best lead is {gap:.3g}, not above the tolerance "
                f"{readout.speak_tolerance(float(candidate.norm())):.3g}"
            )
            cert = check_certificate(readout, t, idx[support], duals[support]) if support.any() else None
            best.certificate = cert
            break
    else:
        best.message = f"no verdict after {max_rounds} LP rounds"
    return best
