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

The computation that fills a ScanResult is ``lenstui.engine.speak.scan``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from lenstui.core.scan_result import ScanResult
from lenstui.engine.speak.geometry import Readout
from lenstui.store.atomic import atomic_file

SCAN_FORMAT = 2
# Cache formats read_scan understands (1: before theta_lower).
READABLE_FORMATS = (1, 2)
# Seconds between saves of a partial scan.
SAVE_EVERY = 5.0


def scan_key(readout: Readout) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", readout.name).strip("-")[:60] or "model"
    return f"{slug}-{readout.fingerprint()[:20]}"


def scan_dir(readout: Readout) -> Path:
    # Under the data dir, not the cache: a scan is minutes of work a user asked for.
    from lenstui.store.paths import data_dir

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
    with atomic_file(folder / "scan.npz") as handle:
        np.savez(
            handle,
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
