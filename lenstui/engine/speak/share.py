"""The share of directions that say token t: the seed's last open question, estimated.

The seed asks for "the (n-1)-dimensional surface area of the portion of the unit sphere in
the feasible region". For a direction-only readout (all offsets equal, SmolLM2) that region is
the polyhedral cone ``C = {x : a_j . x > 0 for every j != t}`` (``a_j = v_t - v_j``, see
``speak.aim``), and its share of the sphere is exactly the probability that a standard
Gaussian ``x ~ N(0, I)`` lands in it (the Gaussian is rotation-invariant, the cone
scale-invariant). ``aim`` certifies a *lower* bound (the widest cap inside C); the share itself
is a Gaussian integral under ~49k linear constraints, as small as 1e-200 and below.

**Method.** Nested domains with elliptical slice sampling, after Gessner, Kanjilal & Hennig,
"Integrals over Gaussians under Linear Domain Constraints" (AISTATS 2020; their code is
``alpiges/LinConGauss``, numpy, one chain, unmaintained, not installable here — this is our
own implementation of the published algorithm, in torch, batched over chains):

- the domains ``D_gamma = {x : min_j â_j . x >= -gamma}`` (``â_j = a_j / |a_j|``: rows
  normalised, so gamma is a distance in every constraint's units) shrink from all of R^n
  (gamma = inf) to the cone (gamma = 0);
- **subset simulation** (Au & Beck 2001, as LIN-ESS uses it to find the nesting): from N samples
  of the current domain, the next gamma is the one that keeps a fraction ``LEVEL_FRACTION`` of
  them; those are the seeds of Markov chains that refill the population inside the new domain;
  the probability is the product of the levels' fractions;
- the chains move by **LIN-ESS**: elliptical slice sampling (Murray, Adams & MacKay 2010) whose
  slice is computed exactly, since each linear constraint cuts the ellipse
  ``x cos th + nu sin th`` in closed form (``p cos th + q sin th >= -gamma`` fails on one arc).
  The move samples the arc of feasible angles around th = 0 (the connected piece of the slice
  that holds the current point: the same set seen from every point of it, so the move is
  reversible), which needs only a min and a max over the constraints, no sort;
- the 95% interval is the subset-simulation coefficient of variation (Au & Beck 2001, eq. 29-30:
  each level's binomial variance inflated by the correlation along its chains), added over the
  levels, on the log scale.

Every constraint is evaluated at every step: the fresh ``nu`` of all chains for a level are drawn
together and multiplied by the whole (float32) vocabulary in one matrix product (the chains'
constraint values are then updated in place, ``p cos th + q sin th``), so a step costs a
product row and a few element-wise passes over the vocabulary.

**Readouts with offsets** (``method="ball"``, as ``aim``): the share of the reachable ball's
volume where t wins. A uniform point of the n-ball is ``R y / |g|`` for a Gaussian
``g = (y, s) in R^(n+2)`` (the first n coordinates of a uniform point on the sphere S^(n+1)), and
``{g : t wins at R y / |g|}`` is again a cone, so the same nested domains apply, with
``f_j = (a_j . z + b_j) / |a_j|`` at ``z = R y / |g|``; its constraints are not linear in g, so
the chains use plain elliptical slice sampling with bracket shrinkage (Murray et al. 2010).

The estimate is exactly 0 (log10 = -inf) for a certified-unspeakable token (the aim's
certificate says so; nothing is sampled), and its interval never reaches below the certified
lower bound (the widest cap's, or ball's, share).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Optional

import numpy as np
import torch

from lenstui.core.callbacks import Progress, StopCheck, check_stop
from lenstui.core.errors import InputError
from lenstui.core.share_result import ShareResult
from lenstui.engine.speak.check import as_readout
from lenstui.engine.speak.geometry import Readout

# Samples per level (the population of subset simulation).
DEFAULT_SAMPLES = 128
# The fraction of the population kept as seeds at each level (p0 of subset simulation).
LEVEL_FRACTION = 0.125
# Levels at most (each divides the share by about 1 / LEVEL_FRACTION: 5000 levels ~ 1e-4500).
MAX_LEVELS = 5000
# LIN-ESS moves each seed makes before its chain starts recording: they loosen the tie
# between a level's population and the previous one's top (see ``_subset_simulation``).
BURN_IN = 6
# Moves between two kept samples of a chain. In a cone with many equally binding facets (the
# orthant is the extreme) one move goes a short way, and a population kept after every move
# is too close to its seeds: subset simulation then comes out biased low (the 64-dimensional
# orthant, share 2^-64: by -4.7 decades with 1 move, -2.3 with 2, -0.4 with 3, over 8 seeds).
MOVES_PER_SAMPLE = 3
# The ball's chains move by bracket shrinkage (shorter moves): this many times the burn-in.
BALL_BURN_FACTOR = 3
# Every this many levels the chains' constraint values are recomputed from their states
# (the in-place updates drift by float32 rounding).
REFRESH_EVERY = 8
# The interval's z (two-sided 95%).
Z95 = 1.959963984540054
_TWO_PI = 2 * math.pi


def _constraint_rows(domain, readout: Readout, t: int, norms: torch.Tensor) -> None:
    """What both measures' constraints read: the float32 rows, t's row, and 1 / |a_j| (0 for
    t itself, which is no constraint)."""
    domain.t, domain.d = t, readout.d
    domain.rows32, _ = readout.screen_table()
    domain.v_t = domain.rows32[t].clone()
    inv = torch.where(norms > 0, 1.0 / norms.clamp_min(1e-300), torch.zeros_like(norms))
    inv[t] = 0.0
    domain.inv = inv.to(torch.float32)


class _Cone:
    """The cap measure's constraints: normalised slacks ``â_j . x`` for a batch of x."""

    burn_factor = 1  # LIN-ESS moves go anywhere on the slice

    def __init__(self, readout: Readout, t: int, norms: torch.Tensor):
        _constraint_rows(self, readout, t, norms)

    def values(self, x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[m, n] normalised slacks (into ``out`` when given); column t is +inf (no constraint)."""
        out = torch.mm(x, self.rows32.T, out=out)
        torch.sub((x @ self.v_t)[:, None], out, out=out)
        out.mul_(self.inv)
        out[:, self.t] = math.inf
        return out

    def initial(self, m: int, gen: torch.Generator):
        x = torch.randn(m, self.d, generator=gen)
        return x, self.values(x)

    def level(self, state) -> torch.Tensor:
        return state[1].amin(dim=1)

    def refresh(self, state):
        return state[0], self.values(state[0])

    def advance(self, seeds, gamma: float, length: int, gen: torch.Generator):
        """Each seed grows a chain of ``length`` samples inside ``D_gamma`` by LIN-ESS moves.
        The fresh directions of every move are drawn first and multiplied by the vocabulary
        in one product (they do not depend on the states)."""
        x0, P0 = seeds
        chains, n = P0.shape
        nus = torch.randn(length - 1, chains, self.d, generator=gen)
        Qs = self.values(nus.flatten(0, 1)).view(length - 1, chains, n)
        uniforms = torch.rand(length - 1, chains, generator=gen)
        X = torch.empty(chains, length, self.d)
        P = torch.empty(chains, length, n)
        X[:, 0], P[:, 0] = x0, P0
        with _threads(1):
            self._chain_moves(X, P, nus, Qs, uniforms, gamma)
        return X.flatten(0, 1), P.flatten(0, 1)

    def _chain_moves(self, X, P, nus, Qs, uniforms, gamma) -> None:
        for k in range(1, X.shape[1]):
            Q = Qs[k - 1]
            Q[:, self.t] = 0.0
            current = P[:, k - 1]
            current[:, self.t] = 0.0
            theta = _feasible_angle(current, Q, gamma, uniforms[k - 1])
            current[:, self.t] = math.inf
            cos, sin = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
            X[:, k] = X[:, k - 1] * cos + nus[k - 1] * sin
            nxt = P[:, k]
            torch.mul(current, cos, out=nxt)
            nxt.addcmul_(Q, sin)
            nxt[:, self.t] = math.inf


def _feasible_angle(P: torch.Tensor, Q: torch.Tensor, gamma: float, uniform: torch.Tensor) -> torch.Tensor:
    """LIN-ESS's slice, exactly: for each chain (row) the arc of angles th around 0 where
    every ``P_j cos th + Q_j sin th >= -gamma``, and a uniform angle on it.

    With t = tan(th / 2) (th in (-pi, pi] <-> t on the real line closed at infinity) the
    constraint's slack times (1 + t^2) is the quadratic ``(gamma - P) t^2 + 2 Q t + (gamma + P)``,
    non-negative at t = 0; its roots are where the constraint is crossed. The arc runs from
    t = 0 to the nearest root on either side, through t = infinity when one side has none.
    The roots are kept as reciprocals u = 1 / t (no division by a vanishing leading term):
    the nearest positive root is the largest positive u. th = 2 atan(t) is monotone, so only
    the chosen roots become angles (no arctangent or arccosine per constraint)."""
    disc = torch.mul(P, P).addcmul_(Q, Q).sub_(gamma * gamma)  # r^2 - gamma^2
    no_crossing = disc <= 0  # the constraint holds all round the ellipse
    q = disc.clamp_(min=0.0).sqrt_().copysign_(Q).add_(Q).neg_()  # -(Q + sign(Q) sqrt(disc)), stable
    u1 = torch.neg(P).add_(gamma).div_(q)  # 1 / (q / a), a = gamma - P
    u2 = q.div_(P.add(gamma))  # 1 / (c / q), c = gamma + P >= 0
    u1.masked_fill_(no_crossing, 0.0)
    u2.masked_fill_(no_crossing, 0.0)
    u1 = torch.nan_to_num_(u1, nan=0.0)
    u2 = torch.nan_to_num_(u2, nan=0.0)
    pos = torch.maximum(u1.amax(dim=1), u2.amax(dim=1))  # > 0: the nearest root ahead is 1 / pos
    neg = torch.minimum(u1.amin(dim=1), u2.amin(dim=1))  # < 0: the nearest root behind is 1 / neg
    upper = 2 * torch.atan(1.0 / pos.clamp(min=1e-300))
    lower = 2 * torch.atan(1.0 / neg.clamp(max=-1e-300))
    for row in torch.nonzero((pos <= 0) | (neg >= 0)).flatten().tolist():
        # One side has no root: the arc passes through th = pi and ends at the root nearest to
        # infinity on the other side (the whole circle when there is none).
        roots = torch.cat([u1[row], u2[row]])
        if pos[row] <= 0 and neg[row] >= 0:
            upper[row], lower[row] = math.pi, -math.pi
        elif pos[row] <= 0:  # nothing ahead: on past pi to the most negative root
            upper[row] = 2 * math.atan(1.0 / float(roots[roots < 0].max())) + _TWO_PI
        else:  # nothing behind: back past -pi to the largest positive root
            lower[row] = 2 * math.atan(1.0 / float(roots[roots > 0].min())) - _TWO_PI
    return lower + uniform * (upper - lower)


class _Ball:
    """The ball measure's constraints: ``(a_j . z + b_j) / |a_j|`` at ``z = R y / |g|`` for
    Gaussian ``g = (y, s)`` in R^(d+2) (y in the reachable subspace)."""

    # Bracket shrinkage ends on short moves when the domain is small: more of them per seed.
    burn_factor = BALL_BURN_FACTOR

    def __init__(self, readout: Readout, t: int, norms: torch.Tensor):
        _constraint_rows(self, readout, t, norms)
        self.readout = readout
        self.offsets = (readout.c[t] - readout.c).to(torch.float32)
        self.R = readout.radius

    def _gauss(self, m: int, gen: torch.Generator) -> torch.Tensor:
        g = torch.randn(m, self.d + 2, generator=gen)
        if self.readout.kind == "LN":
            g[:, : self.d] -= g[:, : self.d].mean(dim=1, keepdim=True)
        return g

    def products(self, g: torch.Tensor) -> torch.Tensor:
        y = g[:, : self.d]
        out = torch.mm(y, self.rows32.T)
        torch.sub((y @ self.v_t)[:, None], out, out=out)
        return out

    def slacks(self, p: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        out = p * (self.R / norm)[:, None]
        out.add_(self.offsets).mul_(self.inv)
        out[:, self.t] = math.inf
        return out

    def initial(self, m: int, gen: torch.Generator):
        g = self._gauss(m, gen)
        p = self.products(g)
        return g, p, self.slacks(p, g.norm(dim=1))

    def level(self, state) -> torch.Tensor:
        return state[2].amin(dim=1)

    def refresh(self, state):
        g = state[0]
        p = self.products(g)
        return g, p, self.slacks(p, g.norm(dim=1))

    def advance(self, seeds, gamma: float, length: int, gen: torch.Generator):
        population = [seeds]
        current = seeds
        for _ in range(length - 1):
            current = self.step(tuple(part.clone() for part in current), gamma, gen)
            population.append(current)
        return tuple(torch.stack([s[i] for s in population], dim=1).flatten(0, 1) for i in range(len(seeds)))

    def step(self, state, gamma: float, gen: torch.Generator):
        """One elliptical slice sampling move (bracket shrinkage) of every chain in D_gamma."""
        g, p, F = state
        m = g.shape[0]
        nu = self._gauss(m, gen)
        q = self.products(nu)
        gg, nn, gn = (g * g).sum(1), (nu * nu).sum(1), (g * nu).sum(1)
        theta = torch.rand(m, generator=gen) * _TWO_PI
        lo, hi = theta - _TWO_PI, theta.clone()
        pending = torch.arange(m)
        for _ in range(200):
            th = theta[pending]
            c, s = torch.cos(th), torch.sin(th)
            norm = (gg[pending] * c * c + nn[pending] * s * s + 2 * gn[pending] * s * c).clamp_min(1e-30).sqrt()
            trial = p[pending] * c[:, None] + q[pending] * s[:, None]
            ok = self.slacks(trial, norm).amin(dim=1) >= -gamma
            done = pending[ok]
            if len(done):
                cd, sd = torch.cos(theta[done])[:, None], torch.sin(theta[done])[:, None]
                g[done] = g[done] * cd + nu[done] * sd
                p[done] = p[done] * cd + q[done] * sd
                F[done] = self.slacks(p[done], g[done].norm(dim=1))
            pending = pending[~ok]
            if not len(pending):
                break
            th = theta[pending]
            below = th < 0
            lo[pending] = torch.where(below, th, lo[pending])
            hi[pending] = torch.where(below, hi[pending], th)
            theta[pending] = lo[pending] + torch.rand(len(pending), generator=gen) * (hi[pending] - lo[pending])
        return g, p, F


@contextmanager
def _threads(count: int):
    """Run the chains' element-wise passes on one thread: over a few MB each they are faster
    so than split across cores (and far faster when the cores are shared: 0.04 ms against 11 ms
    for one pass on 2 busy cores); the vocabulary products keep every thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _correlation_factor(inside: np.ndarray, chains: Optional[tuple[int, int]]) -> float:
    """Au & Beck (2001) eq. 29: gamma = 2 sum_k (1 - k N_c / N) rho_k, the inflation of a
    level's binomial variance by the correlation of its indicator along the chains
    (``inside`` [N], chain-major; None: independent samples)."""
    if chains is None:
        return 0.0
    n_chains, length = chains
    ind = inside.reshape(n_chains, length).astype(np.float64)
    p = ind.mean()
    r0 = p * (1 - p)
    if r0 <= 0:
        return 0.0
    total = 0.0
    n = ind.size
    for k in range(1, length):
        rk = (ind[:, :-k] * ind[:, k:]).sum() / (n - k * n_chains) - p * p
        total += (1 - k * n_chains / n) * rk / r0
    return max(0.0, 2 * total)


def estimate_share(
    model,
    token_id: int,
    *,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    aim_result=None,
    should_stop: Optional[StopCheck] = None,
    progress: Optional[Progress] = None,
) -> ShareResult:
    """log10 of the share of directions (cap) or of the reachable ball (ball) that make
    ``token_id`` the argmax, with a 95% interval. ``aim_result``: the token's AimResult when
    the caller has it (else it is measured here): it gives the certified lower bound and says
    whether the share is exactly 0."""
    from lenstui.engine.speak.aim import aim, difference_norms

    started = time.perf_counter()
    readout = as_readout(model)
    t = int(token_id)
    if not 0 <= t < readout.n_vocab:
        raise InputError(f"Token id {t} is out of range: {readout.name} has ids 0..{readout.n_vocab - 1}.")
    if samples < 16:
        raise InputError("--samples must be at least 16 (the estimate needs a population to split).")
    measured = aim_result if aim_result is not None else aim(readout, t, should_stop=should_stop)
    measure = measured.method
    base = ShareResult(
        id=t,
        text=readout.decode(t),
        measure=measure,
        log10=math.nan,
        log10_lo=math.nan,
        log10_hi=math.nan,
        samples=0,
        method="lin-ess subset simulation" if measure == "cap" else "ess subset simulation",
        log10_certified_lower=measured.log10_share_lower,
        theta_deg=measured.theta_deg,
        seed=seed,
        model=readout.name,
    )
    if measured.verdict == "unspeakable":
        base.log10 = base.log10_lo = base.log10_hi = -math.inf
        base.method = "certificate"
        base.reason = "certified unspeakable: no direction says it, the share is exactly 0"
        base.seconds = time.perf_counter() - started
        return base

    with torch.no_grad():
        norms = difference_norms(readout, t)
        domain = _Cone(readout, t, norms) if measure == "cap" else _Ball(readout, t, norms)
        log_levels, cov2 = _subset_simulation(domain, samples, seed, should_stop, progress)
    base.samples = _population(samples)[0] * _population(samples)[1]
    base.levels = len(log_levels)
    base.level_log10 = [v / math.log(10) for v in log_levels]
    log_p = float(sum(log_levels))
    spread = Z95 * math.sqrt(cov2)
    base.log10 = log_p / math.log(10)
    base.log10_lo = (log_p - spread) / math.log(10)
    base.log10_hi = min((log_p + spread) / math.log(10), math.log10(0.5) if measure == "cap" else 0.0)
    floor = measured.log10_share_lower
    if floor is not None and math.isfinite(floor):
        # A certified fact: the share is at least the widest cap's (ball's).
        base.log10_lo = max(base.log10_lo, floor)
        base.log10 = max(base.log10, floor)
        base.log10_hi = max(base.log10_hi, floor)
    base.seconds = time.perf_counter() - started
    return base


def _thinned(state, n_chains: int):
    """Every MOVES_PER_SAMPLE-th state of each chain (chain-major in, chain-major out)."""
    if MOVES_PER_SAMPLE == 1:
        return state
    return tuple(part.view(n_chains, -1, *part.shape[1:])[:, ::MOVES_PER_SAMPLE].flatten(0, 1) for part in state)


def _population(samples: int) -> tuple[int, int]:
    """(chains, chain length) with chains * length ~ samples and chains / total ~ LEVEL_FRACTION."""
    chains = max(2, int(round(samples * LEVEL_FRACTION)))
    length = max(2, int(round(samples / chains)))
    return chains, length


def _subset_simulation(domain, samples: int, seed: int, should_stop, progress) -> tuple[list[float], float]:
    """(log of each level's conditional probability, the squared coefficient of variation of
    the product). The population is ``chains x length``, chain-major."""
    n_chains, length = _population(samples)
    total = n_chains * length
    gen = torch.Generator().manual_seed(int(seed))
    state = domain.initial(total, gen)
    f = domain.level(state)
    chains = None
    log_levels: list[float] = []
    cov2 = 0.0
    for level in range(MAX_LEVELS):
        check_stop(should_stop, "share estimate cancelled")
        values = f.numpy().astype(np.float64)
        inside = values >= 0
        if inside.sum() >= n_chains:
            p = inside.mean()
            log_levels.append(math.log(p))
            if p < 1:
                cov2 += (1 - p) / (total * p) * (1 + _correlation_factor(inside, chains))
            return log_levels, cov2
        order = np.argsort(-values, kind="stable")
        # gamma between the seeds' worst and the next sample: exactly n_chains inside.
        gamma = -0.5 * (values[order[n_chains - 1]] + values[order[n_chains]])
        inside = values >= -gamma
        p = inside.mean()
        log_levels.append(math.log(p))
        cov2 += (1 - p) / (total * p) * (1 + _correlation_factor(inside, chains))
        if progress is not None:
            progress(f"level {level + 1}: share below 10^{sum(log_levels) / math.log(10):.1f}", None)
        seeds = torch.as_tensor(order[:n_chains].copy())
        current = tuple(part[seeds].clone() for part in state)
        if (level + 1) % REFRESH_EVERY == 0:
            current = domain.refresh(current)
        burn = BURN_IN * domain.burn_factor
        if burn:
            burnt = domain.advance(current, gamma, burn + 1, gen)
            current = tuple(part.view(n_chains, burn + 1, *part.shape[1:])[:, -1].clone() for part in burnt)
        state = _thinned(domain.advance(current, gamma, (length - 1) * MOVES_PER_SAMPLE + 1, gen), n_chains)
        f = domain.level(state)
        chains = (n_chains, length)
    raise InputError(f"The share is below 10^{sum(log_levels) / math.log(10):.0f}: more than {MAX_LEVELS} levels.")
