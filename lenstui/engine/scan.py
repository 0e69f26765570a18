"""Whole-vocabulary speakability scan: every token a verdict with its proof, cached per model.

Phases (each resumable; partial results are saved to the cache as they come):

1. own direction, batched as float32 matrix products: the hard-to-speak flag and best
   match for every token (argmax_j w_j . w_t + c_j). For a direction-only RMSNorm
   readout the same numbers already are the own-direction witness test.
2. candidate witnesses for the tokens still open (whitened, precision, centred, own
   directions; ``z = 0`` when offsets differ), batched the same way;
3. an exact twin (same effective row, offset at least t's) as a one-token certificate;
4. the LP (``speak_lp``) for whatever is left.

Float32 screening is made exact, not approximate: a float32 logit differs from the exact
one by at most ``gamma_{d+3} (max|v| |z| + max|c|)`` (``Readout.screen_error_bound``), so
the true runner-up is provably among the float32 top-k whenever the k-th is more than
twice that bound below the first; those k and t are then recomputed in float64 from
the exact tables (otherwise the whole row is). Every reported gap is a float64 gap over
the whole vocabulary.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from lenstui.engine.callbacks import Progress, StopCheck
from lenstui.engine.errors import Cancelled, InputError
from lenstui.engine.speak import CANDIDATE_FAMILIES, as_readout, candidate_directions, find_twin
from lenstui.engine.speak_lp import check_certificate, solve_speak_lp
from lenstui.engine.speak_readout import Readout
from lenstui.engine.verdicts import Method, Verdict

# The int8 codes stored per token (and on disk) are positions in these tuples.
VERDICT_CODES = tuple(Verdict)
PENDING, SPEAKABLE, UNSPEAKABLE, UNDETERMINED = (
    VERDICT_CODES.index(v) for v in (Verdict.PENDING, Verdict.SPEAKABLE, Verdict.UNSPEAKABLE, Verdict.UNDETERMINED)
)
METHODS = tuple(Method)
SCAN_FORMAT = 1
# Tokens per batched matrix product (each holds chunk x d_vocab float32 logits).
CHUNK = 512
# Float32 competitors re-checked in float64 per token.
TOP_K = 16
# Seconds between saves of a partial scan.
SAVE_EVERY = 5.0



@dataclass
class ScanResult:
    """Per-token verdicts for a whole vocabulary (``complete`` once every token has one)."""

    model: str
    key: str
    n_vocab: int
    verdicts: np.ndarray  # int8 codes into VERDICT_CODES
    hard: np.ndarray  # int8: 1 hard to speak, 0 not, -1 not computed yet
    best_match: np.ndarray  # int64: argmax_j w_j . w_t + c_j
    margin: np.ndarray  # float64: witness gap (speakable), certificate bound (unspeakable), best gap (undetermined)
    method: np.ndarray  # int8 codes into METHODS
    tried: np.ndarray  # int16 bitmask: phases done per token (see _TRIED)
    certificates: dict[int, tuple[list[int], list[float]]] = field(default_factory=dict)
    lp_witnesses: dict[int, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    scope: int = 0  # tokens 0..scope-1 are scanned (``--limit``); 0 means the whole vocabulary
    reachable_set: str = ""
    speak_tolerance: float = 0.0
    certificate_tolerance: float = 0.0
    decode: Optional[Callable[[int], str]] = field(default=None, repr=False)

    @property
    def n_scanned(self) -> int:
        return self.scope or self.n_vocab

    @property
    def complete(self) -> bool:
        """Every token in scope has a verdict and a hard-to-speak flag."""
        n = self.n_scanned
        return bool((self.verdicts[:n] != PENDING).all() and (self.hard[:n] >= 0).all())

    def verdict(self, token_id: int) -> str:
        return VERDICT_CODES[int(self.verdicts[token_id])]

    def is_hard_to_speak(self, token_id: int) -> Optional[bool]:
        value = int(self.hard[token_id])
        return None if value < 0 else bool(value)

    @property
    def unspeakable_ids(self) -> frozenset[int]:
        return frozenset(np.nonzero(self.verdicts == UNSPEAKABLE)[0].tolist())

    @property
    def undetermined_ids(self) -> frozenset[int]:
        return frozenset(np.nonzero(self.verdicts == UNDETERMINED)[0].tolist())

    @property
    def hard_to_speak_ids(self) -> frozenset[int]:
        return frozenset(np.nonzero(self.hard == 1)[0].tolist())

    def counts(self) -> dict[str, int]:
        """Tokens per verdict (within scope), and how many are hard to speak."""
        n = self.n_scanned
        verdicts, hard = self.verdicts[:n], self.hard[:n]
        out = {name: int((verdicts == code).sum()) for code, name in enumerate(VERDICT_CODES)}
        out["hard_to_speak"] = int((hard == 1).sum())
        out["hard_to_speak_but_speakable"] = int(((hard == 1) & (verdicts == SPEAKABLE)).sum())
        return out

    def token_record(self, token_id: int) -> dict:
        decode = self.decode or (lambda i: f"#{i}")
        i = int(token_id)
        record = {
            "id": i,
            "text": decode(i),
            "verdict": self.verdict(i),
            "hard_to_speak": self.is_hard_to_speak(i),
            "best_match": int(self.best_match[i]),
            "best_match_text": decode(int(self.best_match[i])) if self.hard[i] >= 0 else None,
            "margin": float(self.margin[i]) if math.isfinite(self.margin[i]) else None,
            "method": METHODS[int(self.method[i])],
        }
        if i in self.certificates:
            ids, weights = self.certificates[i]
            record["certificate"] = {
                "combination": [{"id": a, "weight": w} for a, w in zip(ids, weights)],
                "max_lead_bound": float(self.margin[i]),
            }
        return record

    def write(self, path: Path) -> None:
        """CSV or JSON by the file's extension."""
        path = check_out_path(Path(path))
        suffix = path.suffix.lower()
        if suffix == ".json":
            payload = {
                "model": self.model,
                "key": self.key,
                "complete": self.complete,
                "reachable_set": self.reachable_set,
                "tolerances": {"speak": self.speak_tolerance, "certificate": self.certificate_tolerance},
                "counts": self.counts(),
                "seconds": self.seconds,
                "tokens": [self.token_record(i) for i in range(self.n_scanned)],
            }
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(payload, handle, ensure_ascii=False)
                handle.write("\n")
        elif suffix == ".csv":
            columns = ["id", "text", "verdict", "hard_to_speak", "best_match", "best_match_text", "margin", "method"]
            with open(path, "w", encoding="utf-8", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(columns + ["certificate"])
                for i in range(self.n_scanned):
                    record = self.token_record(i)
                    cert = record.get("certificate")
                    cert_text = (
                        " ".join(f"{e['id']}:{e['weight']!r}" for e in cert["combination"]) if cert else ""
                    )
                    writer.writerow([record[c] if record[c] is not None else "" for c in columns] + [cert_text])


OUT_SUFFIXES = (".csv", ".json")


def check_out_path(path: Path) -> Path:
    """``path`` if ScanResult.write can write it (by its suffix), else InputError."""
    if Path(path).suffix.lower() not in OUT_SUFFIXES:
        raise InputError(f"Cannot write {Path(path).name}: use a .csv or .json file name.")
    return Path(path)


# Bits of ScanResult.tried.
_TRIED = {"own_pass": 1, "whitened": 2, "precision": 4, "centred": 8, "own": 16, "zero": 32, "twin": 64, "lp": 128}


def scan_key(readout: Readout) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", readout.name).strip("-")[:60] or "model"
    return f"{slug}-{readout.fingerprint()[:20]}"


def scan_dir(readout: Readout) -> Path:
    # Under the data dir, not the cache: a scan is minutes of work a user asked for.
    from lenstui.paths import data_dir

    return data_dir() / "scans" / scan_key(readout)


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


def save_scan(result: ScanResult, folder: Path) -> None:
    """Atomically write the scan (arrays + proofs) into ``folder/scan.npz``."""
    folder.mkdir(parents=True, exist_ok=True)
    cert_ids = sorted(result.certificates)
    cert_offsets = np.cumsum([0] + [len(result.certificates[i][0]) for i in cert_ids])
    cert_members = np.array([a for i in cert_ids for a in result.certificates[i][0]], dtype=np.int64)
    cert_weights = np.array([w for i in cert_ids for w in result.certificates[i][1]], dtype=np.float64)
    lp_ids = sorted(result.lp_witnesses)
    lp_z = (
        np.stack([result.lp_witnesses[i] for i in lp_ids])
        if lp_ids
        else np.zeros((0, 0), dtype=np.float64)
    )
    meta = {
        "format": SCAN_FORMAT,
        "model": result.model,
        "key": result.key,
        "seconds": result.seconds,
        "reachable_set": result.reachable_set,
        "speak_tolerance": result.speak_tolerance,
        "certificate_tolerance": result.certificate_tolerance,
    }
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".scan-", suffix=".npz")
    os.close(fd)
    try:
        np.savez(
            tmp,
            meta=np.array(json.dumps(meta)),
            verdicts=result.verdicts,
            hard=result.hard,
            best_match=result.best_match,
            margin=result.margin,
            method=result.method,
            tried=result.tried,
            cert_ids=np.array(cert_ids, dtype=np.int64),
            cert_offsets=cert_offsets.astype(np.int64),
            cert_members=cert_members,
            cert_weights=cert_weights,
            lp_ids=np.array(lp_ids, dtype=np.int64),
            lp_z=lp_z,
        )
        os.replace(tmp, folder / "scan.npz")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_scan(folder: Path, decode: Optional[Callable[[int], str]] = None) -> Optional[ScanResult]:
    path = folder / "scan.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != SCAN_FORMAT:
                return None
            offsets = data["cert_offsets"]
            members, weights = data["cert_members"], data["cert_weights"]
            certificates = {
                int(i): (
                    members[offsets[k] : offsets[k + 1]].tolist(),
                    weights[offsets[k] : offsets[k + 1]].tolist(),
                )
                for k, i in enumerate(data["cert_ids"])
            }
            lp_witnesses = {int(i): data["lp_z"][k].copy() for k, i in enumerate(data["lp_ids"])}
            return ScanResult(
                model=meta["model"],
                key=meta["key"],
                n_vocab=len(data["verdicts"]),
                verdicts=data["verdicts"].copy(),
                hard=data["hard"].copy(),
                best_match=data["best_match"].copy(),
                margin=data["margin"].copy(),
                method=data["method"].copy(),
                tried=data["tried"].copy(),
                certificates=certificates,
                lp_witnesses=lp_witnesses,
                seconds=float(meta.get("seconds", 0.0)),
                reachable_set=meta.get("reachable_set", ""),
                speak_tolerance=float(meta.get("speak_tolerance", 0.0)),
                certificate_tolerance=float(meta.get("certificate_tolerance", 0.0)),
                decode=decode,
            )
    except (OSError, ValueError, KeyError):  # a damaged cache entry is ignored, never fatal
        return None


def load_cached_scan(model) -> Optional[ScanResult]:
    """The cached scan of this model (possibly partial: see ``complete``), or None."""
    readout = as_readout(model)
    return read_scan(scan_dir(readout), readout.decode)


# -- screening ------------------------------------------------------------------


def _screen_gaps(
    readout: Readout,
    rows32: torch.Tensor,
    c32: torch.Tensor,
    Z32: torch.Tensor,
    token_ids: torch.Tensor,
    error_bound: torch.Tensor,
    exact: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(exact float64 gap of t over its runner-up, runner-up id) for each row of Z32.

    ``exact(rows, candidate_ids [b', k])`` gives the exact logits [b', k] of the chunk's
    rows ``rows`` (positions in Z32) for those candidates."""
    b, n = Z32.shape[0], rows32.shape[0]
    arange = torch.arange(b, device=Z32.device)
    logits = torch.addmm(c32, Z32, rows32.T)  # [b, n] float32
    logits[arange, token_ids] = -torch.inf
    k = min(TOP_K, n - 1)
    vals, ids = torch.topk(logits, k, dim=1)
    del logits
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
    return own - best, runner


class _Saver:
    def __init__(self, result: ScanResult, folder: Optional[Path], started: float, base_seconds: float):
        self.result, self.folder = result, folder
        self.started, self.base = started, base_seconds
        self.last = time.perf_counter()

    def __call__(self, force: bool = False) -> None:
        now = time.perf_counter()
        self.result.seconds = self.base + (now - self.started)
        if self.folder is not None and (force or now - self.last >= SAVE_EVERY):
            try:
                save_scan(self.result, self.folder)
            except OSError:
                self.folder = None  # an unwritable cache only costs resumability
            self.last = now


def scan_vocabulary(
    model,
    *,
    should_stop: Optional[StopCheck] = None,
    progress: Optional[Progress] = None,
    resume: bool = True,
    limit: Optional[int] = None,
    cache: bool = True,
) -> ScanResult:
    """Give every token (or the first ``limit`` ids) a verdict; see the module doc.

    Cancelling (``should_stop`` -> Cancelled) or Ctrl-C keeps what is done in the
    cache; with ``resume`` a later call continues from there. Full scans only are cached
    under ``data_dir()/scans/<model>-<hash of the effective unembedding>``."""
    readout = as_readout(model)
    n = readout.n_vocab
    targets = n if limit is None else max(0, min(int(limit), n))
    folder = scan_dir(readout) if cache and targets == n else None
    result = None
    if resume and folder is not None:
        result = read_scan(folder, readout.decode)
        if result is not None and result.n_vocab != n:
            result = None
    if result is None:
        result = _empty(readout)
    result.scope = targets if targets < n else 0
    started = time.perf_counter()
    save = _Saver(result, folder, started, result.seconds)
    try:
        with torch.no_grad():
            _run_phases(readout, result, targets, save, should_stop, progress)
    except BaseException:  # Cancelled, Ctrl-C, anything: keep what is done
        save(force=True)
        raise
    save(force=True)
    if progress is not None:
        progress("done", 1.0)
    return result


def _run_phases(readout, result, targets, save, should_stop, progress) -> None:
    device = readout.V.device
    scope = np.arange(targets)

    def check() -> None:
        if should_stop is not None and should_stop():
            raise Cancelled("vocabulary scan cancelled")

    def report(base: float, width: float, done: float, total: int, label: str) -> None:
        if progress is not None:
            fraction = base + width * (done / total if total else 1.0)
            progress(f"{label} {int(done):,}/{total:,}", min(fraction, 0.999))

    # Phase 1: own direction (hard-to-speak flag; also a witness test when direction-only).
    rows32, c32 = readout.screen_table()
    lit_rows32 = readout.full_rows32()
    todo = scope[(result.tried[scope] & _TRIED["own_pass"]) == 0]
    own_is_witness = readout.direction_only and readout.kind == "RMS"
    for k in range(0, len(todo), CHUNK):
        check()
        ids = torch.as_tensor(todo[k : k + CHUNK], device=device)
        Z32 = lit_rows32[ids]
        z_norms = readout.full_row_norms(ids)
        err = readout.screen_error_bound(z_norms, full_rows=True)

        def exact_own(rows, cand, ids=ids):
            return readout.own_logits64_at(ids[rows], cand)

        gap, runner = _screen_gaps(readout, lit_rows32, c32, Z32, ids, err, exact_own)
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
        report(0.0, 0.45, k + len(idx), len(todo), "own direction")
        save()
    save(force=True)

    # z = 0: the offsets alone (only when they differ).
    if not readout.direction_only:
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

    # Phase 2: candidate directions for the tokens still open.
    families = [f for f in CANDIDATE_FAMILIES if not (f == Method.OWN and own_is_witness)]
    for f_index, family in enumerate(families):
        bit = _TRIED[family]
        todo = scope[(result.verdicts[scope] == PENDING) & ((result.tried[scope] & bit) == 0)]
        base = 0.45 + 0.4 * f_index / len(families)
        for k in range(0, len(todo), CHUNK):
            check()
            ids = torch.as_tensor(todo[k : k + CHUNK], device=device)
            Z32 = candidate_directions(readout, ids, family).to(torch.float32)
            Z64 = Z32.to(torch.float64)  # the witness is exactly this float32 vector
            z_norms = Z64.norm(dim=1)
            err = readout.screen_error_bound(z_norms)

            def exact_family(rows, cand, Z64=Z64):
                return torch.einsum("bkd,bd->bk", readout.V[cand], Z64[rows]) + readout.c[cand]

            gap, _ = _screen_gaps(readout, rows32, c32, Z32, ids, err, exact_family)
            tol = readout.speak_tolerance(float(z_norms.max()))
            ok = (gap > tol).cpu().numpy()
            idx = ids.cpu().numpy()
            hit = idx[ok]
            result.verdicts[hit] = SPEAKABLE
            result.method[hit] = METHODS.index(family)
            result.margin[hit] = gap.cpu().numpy()[ok]
            result.tried[idx] |= bit
            report(base, 0.4 / len(families), k + len(idx), len(todo), f"{family} direction")
            save()
    save(force=True)

    # Phase 3: twins, then the LP for what is left.
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
            should_stop=should_stop,
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
