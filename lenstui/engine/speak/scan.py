"""Whole-vocabulary speakability scan: every token a verdict with its proof, cached per model.

Phases (each resumable; partial results are saved to the cache as they come):

1. own direction, batched as float32 matrix products: the hard-to-speak flag and best
   match for every token (argmax_j w_j . w_t + c_j). For a direction-only RMSNorm
   readout the same numbers already are the own-direction witness test.
2. candidate witnesses for the tokens still open (whitened, precision, centred, own
   directions; ``z = 0`` when offsets differ), batched the same way;
3. an exact twin (same effective row, offset at least t's) as a one-token certificate;
4. the LP (``speak_lp``) for whatever is left;
5. (direction-only readouts) a certified lower bound of the aim measure theta for every
   speakable token, around its witness direction (``aim.cap_lower_bounds``). Phases 1-2
   hand it the float32 product they already made (the witness times every row, without
   offsets) and phase 1's own-direction product as the Gram block (rows picked by index,
   never copied out); the last phase fills in whatever is missing (LP witnesses, a cache
   from before theta). Readouts with offsets (GPT-2) have no batched bound: the column
   stays empty.

Float32 screening is made exact, not approximate: a float32 logit differs from the exact
one by at most ``gamma_{d+3} (max|v| |z| + max|c|)`` (``Readout.screen_error_bound``), so
the true runner-up is provably among the float32 top-k whenever the k-th is more than
twice that bound below the first; those k and t are then recomputed in float64 from
the exact tables (otherwise the whole row is). Every reported gap is a float64 gap over
the whole vocabulary.

The chunk-by-vocabulary products live in one ``Scratch`` for the whole scan (by role:
"own product", "family product", "logits"), since a fresh one costs its page faults again
every chunk.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np
import torch

from lenstui.core.callbacks import Progress, StopCheck
from lenstui.core.errors import Cancelled
from lenstui.core.scan_result import METHODS, PENDING, SPEAKABLE, UNDETERMINED, UNSPEAKABLE, ScanResult
from lenstui.core.verdicts import Method
from lenstui.engine.speak.check import CANDIDATE_FAMILIES, as_readout, candidate_directions, find_twin
from lenstui.engine.speak.geometry import Readout
from lenstui.engine.speak.lp import check_certificate, solve_speak_lp
from lenstui.engine.speak.scan_cache import ScanSaver, read_scan, scan_dir, scan_key
from lenstui.engine.speak.scratch import Scratch

# Tokens per batched matrix product (each holds chunk x d_vocab float32 logits).
CHUNK = 512
# Float32 competitors re-checked in float64 per token.
TOP_K = 16


# Bits of ScanResult.tried.
_TRIED = {"own_pass": 1, "whitened": 2, "precision": 4, "centred": 8, "own": 16, "zero": 32, "twin": 64, "lp": 128}


def _empty(readout: Readout) -> ScanResult:
    n = readout.n_vocab
    return ScanResult(
        model=readout.name,
        key=scan_key(readout),
        n_vocab=n,
        verdicts=np.zeros(n, dtype=np.int8),
        hard=np.full(n, -1, dtype=np.int8),
        best_match=np.full(n, -1, dtype=np.int64),
        margin=np.full(n, np.nan),
        method=np.zeros(n, dtype=np.int8),
        tried=np.zeros(n, dtype=np.int16),
        reachable_set=readout.reachable_set_text(),
        speak_tolerance=readout.speak_tolerance(readout.witness_radius),
        certificate_tolerance=readout.certificate_tolerance,
        decode=readout.decode,
    )


def load_cached_scan(model, problems: Optional[list[str]] = None) -> Optional[ScanResult]:
    """The cached scan of this model (possibly partial: see ``complete``), or None (a
    damaged cache is set aside with a sentence in ``problems``)."""
    readout = as_readout(model)
    return read_scan(scan_dir(readout), readout.decode, problems)


# -- screening ------------------------------------------------------------------


def _screen_gaps(
    readout: Readout,
    rows32: torch.Tensor,
    c32: torch.Tensor,
    Z32: torch.Tensor,
    token_ids: torch.Tensor,
    error_bound: torch.Tensor,
    exact: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scratch: Scratch,
    product_role: Optional[str] = None,
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """(exact float64 gap of t over its runner-up, runner-up id, the float32 product
    ``Z32 @ rows32.T`` without offsets, kept in ``scratch`` under ``product_role``, or None
    when no role is given) for each row of Z32.

    ``exact(rows, candidate_ids [b', k])`` gives the exact logits [b', k] of the chunk's
    rows ``rows`` (positions in Z32) for those candidates."""
    b, n = Z32.shape[0], rows32.shape[0]
    device = Z32.device
    arange = torch.arange(b, device=device)
    product, own_entries = None, None
    if product_role is None:
        logits = torch.addmm(c32, Z32, rows32.T, out=scratch.take("logits", (b, n), device))  # [b, n] float32
    else:  # the theta bounds reuse the product itself, so add the offsets apart
        product = torch.mm(Z32, rows32.T, out=scratch.take(product_role, (b, n), device))
        if c32.any():
            logits = torch.add(product, c32, out=scratch.take("logits", (b, n), device))
        else:  # adding zeros changes nothing: screen the product itself, t's entries put back after
            logits, own_entries = product, product[arange, token_ids]
    logits[arange, token_ids] = -torch.inf
    k = min(TOP_K, n - 1)
    vals, ids = torch.topk(logits, k, dim=1)
    if own_entries is not None:
        product[arange, token_ids] = own_entries
    exact_top = exact(arange, ids)  # [b, k]
    own = exact(arange, token_ids[:, None])[:, 0]
    # The exact runner-up is inside the top-k when the k-th float32 value cannot reach
    # the first one's exact value: vals[k-1] + err < vals[0] - err.
    complete = (vals[:, 0] - vals[:, k - 1]).to(torch.float64) > 2 * error_bound
    if k == n - 1:
        complete[:] = True
    best, where = exact_top.max(dim=1)
    runner = ids[arange, where]
    everything = torch.arange(n, device=Z32.device)
    for row in torch.nonzero(~complete).flatten().tolist():
        full = exact(arange[row : row + 1], everything[None, :])[0]
        full[token_ids[row]] = -torch.inf
        best[row], runner[row] = full.max(), int(torch.argmax(full))
    return own - best, runner, product


def scan_vocabulary(
    model,
    *,
    should_stop: Optional[StopCheck] = None,
    progress: Optional[Progress] = None,
    resume: bool = True,
    limit: Optional[int] = None,
    cache: bool = True,
    aim_bounds: bool = True,
) -> ScanResult:
    """Give every token (or the first ``limit`` ids) a verdict; see the module doc.

    Cancelling (``should_stop`` -> Cancelled) or Ctrl-C keeps what is done in the
    cache; with ``resume`` a later call continues from there. Full scans only are cached
    under ``data_dir()/scans/<model>-<hash of the effective unembedding>``. ``aim_bounds=False``
    skips the theta lower bounds (for the benchmark's comparison)."""
    readout = as_readout(model)
    n = readout.n_vocab
    targets = n if limit is None else max(0, min(int(limit), n))
    folder = scan_dir(readout) if cache and targets == n else None
    result = None
    notes: list[str] = []
    if resume and folder is not None:
        result = read_scan(folder, readout.decode, notes)
        if result is not None and result.n_vocab != n:
            result = None
    if result is None:
        result = _empty(readout)
    result.notes = notes
    result.scope = targets if targets < n else 0
    started = time.perf_counter()
    save = ScanSaver(result, folder, started, result.seconds)
    try:
        with torch.no_grad():
            _run_phases(readout, result, targets, save, should_stop, progress, aim_bounds)
    except BaseException:  # Cancelled, Ctrl-C, anything: keep what is done
        save(force=True)
        raise
    save(force=True)
    if progress is not None:
        progress("done", 1.0)
    return result


class _Phase:
    """What every phase shares: the readout, the result it fills, the ids in scope, and
    the save / cancel / progress hooks."""

    def __init__(self, readout, result, targets, save, should_stop, progress):
        self.readout, self.result, self.save = readout, result, save
        self.scope = np.arange(targets)
        self.device = readout.V.device
        self.should_stop, self._progress = should_stop, progress
        # A direction-only RMSNorm readout: the own-direction gap already is a witness test.
        self.own_is_witness = readout.direction_only and readout.kind == "RMS"
        # The aim's batched lower bounds exist for direction-only readouts only.
        self.theta = readout.direction_only
        self.scratch = Scratch()

    def record_theta(self, ids, axes32, product=None, product_rows=None, gram=None, gram_rows=None) -> None:
        """Certified theta lower bounds around ``axes32`` for ``ids``; ``product`` (the
        float32 ``axes32 @ rows32.T``, token i in row ``product_rows[i]``) and ``gram``
        (``rows32[ids] @ rows32.T``, token i in row ``gram_rows[i]``) are reused when given
        (only read). A token that already has a bound keeps the larger (each is a certified
        lower bound of the same theta*)."""
        from lenstui.engine.speak.aim import cap_lower_bounds

        if not len(ids):
            return
        bounds = cap_lower_bounds(
            self.readout,
            ids,
            axes32,
            logits32=product,
            logits_rows=product_rows,
            gram32=gram,
            gram_rows=gram_rows,
            scratch=self.scratch,
        )
        idx = ids.cpu().numpy()
        self.result.theta_lower[idx] = np.fmax(self.result.theta_lower[idx], bounds)

    def record_own_theta(self, ids, axes32, product=None, product_rows=None, gram=None, gram_rows=None) -> None:
        """Own-direction witnesses: the own row is often a poor axis for the cap (the rows
        share a strong common direction), so the whitened direction is tried too and the
        larger bound kept. Its product is made here; the Gram block depends on the tokens
        only, so it serves both axes."""
        self.record_theta(ids, axes32, product, product_rows, gram, gram_rows)
        if len(ids):
            whitened = candidate_directions(self.readout, ids, Method.WHITENED).to(torch.float32)
            self.record_theta(ids, whitened, gram=gram, gram_rows=gram_rows)

    def check(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("vocabulary scan cancelled")

    def report(self, base: float, width: float, done: float, total: int, label: str) -> None:
        if self._progress is not None:
            fraction = base + width * (done / total if total else 1.0)
            self._progress(f"{label} {int(done):,}/{total:,}", min(fraction, 0.999))


def _run_phases(readout, result, targets, save, should_stop, progress, aim_bounds=True) -> None:
    phase = _Phase(readout, result, targets, save, should_stop, progress)
    phase.theta = phase.theta and aim_bounds
    _own_direction_phase(phase)
    if not readout.direction_only:
        _zero_phase(phase)
    _candidate_phase(phase)
    _twin_and_lp_phase(phase)
    if phase.theta:
        _theta_phase(phase)


def _own_direction_phase(phase: _Phase) -> None:
    """Phase 1: own direction (hard-to-speak flag; also a witness test when direction-only)."""
    readout, result, scope, device, save = phase.readout, phase.result, phase.scope, phase.device, phase.save
    check, report, own_is_witness = phase.check, phase.report, phase.own_is_witness
    rows32, c32 = readout.screen_table()
    lit_rows32 = readout.full_rows32()
    todo = scope[(result.tried[scope] & _TRIED["own_pass"]) == 0]
    for k in range(0, len(todo), CHUNK):
        check()
        ids = torch.as_tensor(todo[k : k + CHUNK], device=device)
        Z32 = lit_rows32[ids]
        z_norms = readout.full_row_norms(ids)
        err = readout.screen_error_bound(z_norms, full_rows=True)

        def exact_own(rows, cand, ids=ids):
            return readout.own_logits64_at(ids[rows], cand)

        gap, runner, product = _screen_gaps(
            readout,
            lit_rows32,
            c32,
            Z32,
            ids,
            err,
            exact_own,
            phase.scratch,
            product_role="own product" if own_is_witness and phase.theta else None,
        )
        hard = gap <= 0
        idx = ids.cpu().numpy()
        result.hard[idx] = hard.cpu().numpy().astype(np.int8)
        result.best_match[idx] = torch.where(hard, runner, ids).cpu().numpy()
        result.tried[idx] |= _TRIED["own_pass"]
        if own_is_witness:
            # The same gap, scaled to the witness radius, is the own-direction witness.
            scaled = gap * (readout.witness_radius / z_norms)
            ok = (scaled > readout.speak_tolerance(readout.witness_radius)).cpu().numpy()
            open_ = result.verdicts[idx] == PENDING
            hit = idx[ok & open_]
            result.verdicts[hit] = SPEAKABLE
            result.method[hit] = METHODS.index(Method.OWN)
            result.margin[hit] = scaled.cpu().numpy()[ok & open_]
            result.tried[idx] |= _TRIED["own"]
            if product is not None:
                rows = torch.as_tensor(np.nonzero(ok & open_)[0], device=device)
                # Own direction: the witness is the row itself, so the product is the Gram block
                # too (when the lit rows are the screening rows).
                gram = product if lit_rows32 is rows32 else None
                phase.record_own_theta(ids[rows], Z32[rows], product, rows, gram, rows)
                if lit_rows32 is rows32:
                    # The tokens still open try the first candidate family now, while this
                    # product (their Gram block) is at hand for their theta bounds.
                    family = CANDIDATE_FAMILIES[0]
                    still = (result.verdicts[idx] == PENDING) & ((result.tried[idx] & _TRIED[family]) == 0)
                    rows = torch.as_tensor(np.nonzero(still)[0], device=device)
                    if len(rows):
                        _family_chunk(phase, family, ids[rows], gram=product, gram_rows=rows)
        report(0.0, 0.45, k + len(idx), len(todo), "own direction")
        save()
    save(force=True)


def _zero_phase(phase: _Phase) -> None:
    """z = 0: the offsets alone decide (only run when they differ)."""
    readout, result, scope, device = phase.readout, phase.result, phase.scope, phase.device
    pending = scope[(result.verdicts[scope] == PENDING) & ((result.tried[scope] & _TRIED["zero"]) == 0)]
    if len(pending):
        top2 = torch.topk(readout.c, 2)
        best_other = torch.where(
            torch.arange(readout.n_vocab, device=device) == top2.indices[0], top2.values[1], top2.values[0]
        )
        gap0 = (readout.c - best_other).cpu().numpy()
        ok = gap0[pending] > readout.speak_tolerance(0.0)
        hit = pending[ok]
        result.verdicts[hit] = SPEAKABLE
        result.method[hit] = METHODS.index(Method.ZERO)
        result.margin[hit] = gap0[hit]
        result.tried[pending] |= _TRIED["zero"]


def _candidate_phase(phase: _Phase) -> None:
    """Phase 2: candidate witness directions for the tokens still open."""
    readout, result, scope, device, save = phase.readout, phase.result, phase.scope, phase.device, phase.save
    check, report, own_is_witness = phase.check, phase.report, phase.own_is_witness
    rows32, c32 = readout.screen_table()
    families = [f for f in CANDIDATE_FAMILIES if not (f == Method.OWN and own_is_witness)]
    for f_index, family in enumerate(families):
        bit = _TRIED[family]
        todo = scope[(result.verdicts[scope] == PENDING) & ((result.tried[scope] & bit) == 0)]
        base = 0.45 + 0.4 * f_index / len(families)
        for k in range(0, len(todo), CHUNK):
            check()
            ids = torch.as_tensor(todo[k : k + CHUNK], device=device)
            _family_chunk(phase, family, ids)
            report(base, 0.4 / len(families), k + len(ids), len(todo), f"{family} direction")
            save()
    save(force=True)


def _family_chunk(
    phase: _Phase,
    family: Method,
    ids: torch.Tensor,
    gram: Optional[torch.Tensor] = None,
    gram_rows: Optional[torch.Tensor] = None,
) -> None:
    """One candidate family for a chunk of open tokens; with the theta bounds, those it
    settles get theirs, reusing this pass's product and ``gram`` (float32 ``rows32[ids] @
    rows32.T``, token i in row ``gram_rows[i]``, or row i) when given."""
    readout, result, device = phase.readout, phase.result, phase.device
    rows32, c32 = readout.screen_table()
    Z32 = candidate_directions(readout, ids, family).to(torch.float32)
    Z64 = Z32.to(torch.float64)  # the witness is exactly this float32 vector
    z_norms = Z64.norm(dim=1)
    err = readout.screen_error_bound(z_norms)

    def exact_family(rows, cand):
        return torch.einsum("bkd,bd->bk", readout.V[cand], Z64[rows]) + readout.c[cand]

    # The theta bounds may reuse the product when it is exactly theirs: Z32 is already in
    # the reachable subspace to the last bit.
    reuse = phase.theta and torch.equal(readout.project(Z64).to(torch.float32), Z32)
    role = "family product" if reuse else None
    gap, _, product = _screen_gaps(readout, rows32, c32, Z32, ids, err, exact_family, phase.scratch, product_role=role)
    tol = readout.speak_tolerance(float(z_norms.max()))
    ok = (gap > tol).cpu().numpy()
    if phase.theta:
        rows = torch.as_tensor(np.nonzero(ok)[0], device=device)
        settled_gram_rows = rows if gram_rows is None else gram_rows[rows]
        phase.record_theta(ids[rows], Z32[rows], product, rows, gram, settled_gram_rows)
    idx = ids.cpu().numpy()
    hit = idx[ok]
    result.verdicts[hit] = SPEAKABLE
    result.method[hit] = METHODS.index(family)
    result.margin[hit] = gap.cpu().numpy()[ok]
    result.tried[idx] |= _TRIED[family]


def _twin_and_lp_phase(phase: _Phase) -> None:
    """Phase 3: an exact twin as a one-token certificate, else the LP, for what is left."""
    readout, result, scope, device, save = phase.readout, phase.result, phase.scope, phase.device, phase.save
    check, report = phase.check, phase.report
    todo = scope[(result.verdicts[scope] == PENDING)]
    for k, t in enumerate(todo.tolist()):
        check()
        report(0.85, 0.15, k, len(todo), "LP")
        if not result.tried[t] & _TRIED["twin"]:
            twin = find_twin(readout, t)
            result.tried[t] |= _TRIED["twin"]
            if twin is not None:
                cert = check_certificate(readout, t, [twin], [1.0])
                if cert.bound <= readout.certificate_tolerance:
                    _record_certificate(result, t, cert, Method.TWIN)
                    save()
                    continue
        seeds = [candidate_directions(readout, torch.tensor([t], device=device), f)[0] for f in (Method.WHITENED, Method.CENTRED)]
        outcome = solve_speak_lp(
            readout,
            t,
            seeds=seeds,
            should_stop=phase.should_stop,
            progress=(lambda m, f, k=k: report(0.85, 0.15, k + min(f, 0.99), len(todo), "LP")),
        )
        result.tried[t] |= _TRIED["lp"]
        if outcome.status == "witness":
            result.verdicts[t] = SPEAKABLE
            result.method[t] = METHODS.index(Method.LP)
            result.margin[t] = outcome.gap
            result.lp_witnesses[t] = outcome.z.cpu().numpy()
        elif outcome.status == "certificate":
            _record_certificate(result, t, outcome.certificate, Method.LP)
        else:
            result.verdicts[t] = UNDETERMINED
            result.method[t] = METHODS.index(Method.LP)
            result.margin[t] = outcome.gap
        save(force=True)


def _record_certificate(result: ScanResult, t: int, cert, method: Method) -> None:
    result.verdicts[t] = UNSPEAKABLE
    result.method[t] = METHODS.index(method)
    result.margin[t] = cert.bound
    result.certificates[t] = (list(cert.ids), list(cert.weights))


def _theta_phase(phase: _Phase) -> None:
    """Phase 5: theta lower bounds for the speakable tokens that still lack one (LP
    witnesses, or a cache written before theta existed), around their witness direction."""
    readout, result, scope, device, save = phase.readout, phase.result, phase.scope, phase.device, phase.save
    todo = scope[(result.verdicts[scope] == SPEAKABLE) & ~np.isfinite(result.theta_lower[scope])]
    lp = METHODS.index(Method.LP)
    for method_code in np.unique(result.method[todo]).tolist():
        group = todo[result.method[todo] == method_code]
        method = METHODS[method_code]
        for k in range(0, len(group), CHUNK):
            phase.check()
            chunk = group[k : k + CHUNK]
            ids = torch.as_tensor(chunk, device=device)
            if method_code == lp:
                keep = np.array([t in result.lp_witnesses for t in chunk.tolist()], dtype=bool)
                ids = ids[torch.as_tensor(keep, device=device)]
                if not len(ids):
                    continue
                axes = torch.as_tensor(np.stack([result.lp_witnesses[t] for t in chunk[keep].tolist()]), device=device)
            elif method == Method.OWN and phase.own_is_witness:
                axes = readout.full_rows32()[ids]  # the witness is the lit row itself
            elif method in CANDIDATE_FAMILIES:
                axes = candidate_directions(readout, ids, method).to(torch.float32)
            else:
                continue
            if method == Method.OWN:
                phase.record_own_theta(ids, axes)
            else:
                phase.record_theta(ids, axes)
            phase.report(0.999, 0.0, k + len(chunk), len(group), "aim bounds")
            save()
    save(force=True)
