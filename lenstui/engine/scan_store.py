"""Where a vocabulary scan lives: its result type, its on-disk cache, and its export files.

- ``ScanResult``: per-token int8 verdict and method codes (positions in ``VERDICT_CODES``
  and ``METHODS``), hard-to-speak flags, margins and proofs; ``counts()`` and
  ``token_record()`` are what the CLI and the app print;
- the cache: ``scan_dir(readout)`` under the data dir, keyed by the model's name and a hash
  of its effective unembedding; ``save_scan`` writes it atomically, ``read_scan`` loads it
  (a damaged entry is ignored); ``ScanSaver`` saves a running scan every few seconds;
- exports: ``ScanResult.write`` to .csv or .json (``check_out_path`` checks the name first).

Format 2 added ``theta_lower`` (certified lower bounds of the aim measure, degrees; NaN where
not computed). A format-1 cache is read with every bound missing, and the next
``scan_vocabulary`` on it computes only those (its last phase); older code, which reads
format 1 only, ignores a format-2 cache and starts over rather than misreading it.

The computation that fills a ScanResult is ``lenstui.engine.scan``.
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

from lenstui.engine.errors import InputError
from lenstui.engine.speak_readout import Readout
from lenstui.engine.verdicts import Method, Verdict

# The int8 codes stored per token (and on disk) are positions in these tuples.
VERDICT_CODES = tuple(Verdict)
PENDING, SPEAKABLE, UNSPEAKABLE, UNDETERMINED = (
    VERDICT_CODES.index(v) for v in (Verdict.PENDING, Verdict.SPEAKABLE, Verdict.UNSPEAKABLE, Verdict.UNDETERMINED)
)
METHODS = tuple(Method)
SCAN_FORMAT = 2
# Cache formats read_scan understands (1: before theta_lower).
READABLE_FORMATS = (1, 2)
# The grid's hard-to-speak mark, once a scan has theta bounds: the hardest share of the
# speakable tokens by that bound.
HARDEST_SHARE = 0.01
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
    # Certified lower bound of the aim measure theta (degrees) around each speakable token's
    # witness direction (``aim.cap_lower_bounds``); NaN where not computed (offset readouts,
    # unspeakable and undetermined tokens, or not yet).
    theta_lower: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        if self.theta_lower is None:
            self.theta_lower = np.full(self.n_vocab, np.nan)

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

    def theta_values(self) -> np.ndarray:
        """The theta lower bounds computed within scope (speakable tokens only)."""
        n = self.n_scanned
        values = self.theta_lower[:n]
        return values[np.isfinite(values) & (self.verdicts[:n] == SPEAKABLE)]

    def theta_quantiles(self, levels=(0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0)) -> Optional[dict[float, float]]:
        values = self.theta_values()
        if not len(values):
            return None
        return {q: float(v) for q, v in zip(levels, np.quantile(values, levels))}

    @property
    def has_theta(self) -> bool:
        """Every speakable token in scope has its theta bound."""
        n = self.n_scanned
        speakable = self.verdicts[:n] == SPEAKABLE
        return bool(speakable.any() and np.isfinite(self.theta_lower[:n][speakable]).all())

    def hardest_by_theta(self, share: float = HARDEST_SHARE) -> Optional[tuple[frozenset[int], float]]:
        """(the ``share`` of speakable tokens with the smallest theta lower bound, the
        largest bound among them) when every speakable token has one, else None."""
        if not self.has_theta:
            return None
        n = self.n_scanned
        ids = np.nonzero((self.verdicts[:n] == SPEAKABLE))[0]
        values = self.theta_lower[ids]
        count = max(1, int(math.ceil(share * len(ids))))
        order = np.argsort(values, kind="stable")[:count]
        return frozenset(ids[order].tolist()), float(values[order].max())

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
            "theta_lower_deg": float(self.theta_lower[i]) if math.isfinite(self.theta_lower[i]) else None,
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
                writer.writerow(columns + ["certificate", "theta_lower_deg"])
                for i in range(self.n_scanned):
                    record = self.token_record(i)
                    cert = record.get("certificate")
                    cert_text = (
                        " ".join(f"{e['id']}:{e['weight']!r}" for e in cert["combination"]) if cert else ""
                    )
                    theta = record["theta_lower_deg"]
                    writer.writerow(
                        [record[c] if record[c] is not None else "" for c in columns]
                        + [cert_text, repr(theta) if theta is not None else ""]
                    )


OUT_SUFFIXES = (".csv", ".json")


def check_out_path(path: Path) -> Path:
    """``path`` if ScanResult.write can write it (by its suffix), else InputError."""
    if Path(path).suffix.lower() not in OUT_SUFFIXES:
        raise InputError(f"Cannot write {Path(path).name}: use a .csv or .json file name.")
    return Path(path)


def scan_key(readout: Readout) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", readout.name).strip("-")[:60] or "model"
    return f"{slug}-{readout.fingerprint()[:20]}"


def scan_dir(readout: Readout) -> Path:
    # Under the data dir, not the cache: a scan is minutes of work a user asked for.
    from lenstui.paths import data_dir

    return data_dir() / "scans" / scan_key(readout)


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
            theta_lower=result.theta_lower,
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
            if meta.get("format") not in READABLE_FORMATS:
                return None
            n = len(data["verdicts"])
            # Format 1 has no theta bounds: all missing, the next scan computes them.
            theta = data["theta_lower"].copy() if "theta_lower" in data.files else np.full(n, np.nan)
            if theta.shape != (n,):
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
                n_vocab=n,
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
                theta_lower=theta,
            )
    except (OSError, ValueError, KeyError):  # a damaged cache entry is ignored, never fatal
        return None


class ScanSaver:
    """Saves a running scan into its cache folder at most every SAVE_EVERY seconds
    (``force`` saves now); an unwritable folder only costs resumability."""

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
