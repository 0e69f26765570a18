"""Where a vocabulary scan lives: its result type, its on-disk cache, and its export files.

- ``ScanResult``: per-token int8 verdict and method codes (positions in ``VERDICT_CODES``
  and ``METHODS``), hard-to-speak flags, margins and proofs; ``counts()`` and
  ``token_record()`` are what the CLI and the app print;
- the cache: ``scan_dir(readout)`` under the data dir, keyed by the model's name and a hash
  of its effective unembedding; ``save_scan`` writes it atomically (synced to disk, whole
  whichever of two lenstui processes saves last), ``read_scan`` loads it. A damaged entry
  (a truncated or bit-flipped npz, an empty file, arrays of the wrong shape, codes out of
  range) is never fatal: it is renamed ``scan.npz.damaged``, a sentence saying so goes to
  ``problems``, and the scan starts over; ``ScanSaver`` saves a running scan every few
  seconds;
- exports (``scan --out``): ``lenstui.store.scan_export``.

Format 2 added ``theta_lower`` (certified lower bounds of the aim measure, degrees; NaN where
not computed). A format-1 cache is read with every bound missing, and the next
``scan_vocabulary`` on it computes only those (its last phase); older code, which reads
format 1 only, ignores a format-2 cache and starts over rather than misreading it.

The computation that fills a ScanResult is ``lenstui.engine.speak.scan``.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from lenstui.core.scan_result import METHODS, VERDICT_CODES, ScanResult
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


class DamagedScan(ValueError):
    """A cache file that is not a scan this code wrote; str() says what is wrong."""


def read_scan(
    folder: Path, decode: Optional[Callable[[int], str]] = None, problems: Optional[list[str]] = None
) -> Optional[ScanResult]:
    """The scan cached in ``folder``, or None: nothing there, a format this code does
    not read, or a damaged file (set aside as ``scan.npz.damaged``, with a sentence
    appended to ``problems``)."""
    path = folder / "scan.npz"
    if not path.is_file():
        return None
    try:
        return _read(path, decode)
    except _Unreadable:
        return None  # another format: left alone for the code that wrote it
    except Exception as err:  # BadZipFile, EOFError, zlib/struct errors, bad shapes or codes, ...
        why = str(err) if isinstance(err, DamagedScan) else f"{type(err).__name__}: {err}"
        aside = path.with_name("scan.npz.damaged")
        try:
            os.replace(path, aside)
            where = f"it was moved to {aside.name}"
        except OSError:
            where = "it was left where it is"
        if problems is not None:
            problems.append(
                f"The cached vocabulary scan in {folder} is damaged ({why[:160]}); {where}, and the "
                "next scan rebuilds it from the start."
            )
        return None


class _Unreadable(Exception):
    """A cache of a format this code does not read (newer, or unknown)."""


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise DamagedScan(what)


def _read(path: Path, decode: Optional[Callable[[int], str]]) -> ScanResult:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        _check(isinstance(meta, dict), "its metadata is not a table")
        if meta.get("format") not in READABLE_FORMATS:
            raise _Unreadable()
        verdicts = data["verdicts"]
        n = len(verdicts)
        arrays = {name: data[name] for name in ("verdicts", "hard", "best_match", "margin", "method", "tried")}
        for name, array in arrays.items():
            _check(array.shape == (n,), f"{name} has shape {array.shape}, not ({n},)")
            kinds = "f" if name == "margin" else "iu"
            _check(array.dtype.kind in kinds, f"{name} has the wrong type ({array.dtype})")
        _check(bool(((verdicts >= 0) & (verdicts < len(VERDICT_CODES))).all()), "a verdict code is out of range")
        method = arrays["method"]
        _check(bool(((method >= 0) & (method < len(METHODS))).all()), "a method code is out of range")
        _check(bool(np.isin(arrays["hard"], (-1, 0, 1)).all()), "a hard-to-speak flag is not -1, 0 or 1")
        best = arrays["best_match"]
        _check(bool(((best >= -1) & (best < n)).all()), "a best match is not a token id")
        # Format 1 has no theta bounds: all missing, the next scan computes them.
        theta = data["theta_lower"].copy() if "theta_lower" in data.files else np.full(n, np.nan)
        _check(theta.shape == (n,), f"theta_lower has shape {theta.shape}, not ({n},)")
        offsets, ids = data["cert_offsets"], data["cert_ids"]
        members, weights = data["cert_members"], data["cert_weights"]
        _check(offsets.shape == (len(ids) + 1,) and members.shape == weights.shape, "the certificates do not add up")
        ends_ok = not len(offsets) or (offsets[0] == 0 and offsets[-1] == len(members))
        _check(bool((np.diff(offsets) >= 0).all()) and ends_ok, "the certificate offsets do not add up")
        _check(bool(((ids >= 0) & (ids < n)).all() and ((members >= 0) & (members < n)).all()),
               "a certificate names a token id out of range")
        certificates = {
            int(i): (
                members[offsets[k] : offsets[k + 1]].tolist(),
                weights[offsets[k] : offsets[k + 1]].tolist(),
            )
            for k, i in enumerate(ids)
        }
        lp_ids, lp_z = data["lp_ids"], data["lp_z"]
        _check(bool(((lp_ids >= 0) & (lp_ids < n)).all()) and (not len(lp_ids) or lp_z.shape[0] == len(lp_ids)),
               "the LP witnesses do not add up")
        lp_witnesses = {int(i): lp_z[k].copy() for k, i in enumerate(lp_ids)}
        return ScanResult(
            model=str(meta["model"]),
            key=str(meta["key"]),
            n_vocab=n,
            verdicts=verdicts.astype(np.int8),
            hard=arrays["hard"].astype(np.int8),
            best_match=best.astype(np.int64),
            margin=arrays["margin"].astype(np.float64),
            method=method.astype(np.int8),
            tried=arrays["tried"].astype(np.int16),
            certificates=certificates,
            lp_witnesses=lp_witnesses,
            seconds=float(meta.get("seconds", 0.0)),
            reachable_set=str(meta.get("reachable_set", "")),
            speak_tolerance=float(meta.get("speak_tolerance", 0.0)),
            certificate_tolerance=float(meta.get("certificate_tolerance", 0.0)),
            decode=decode,
            theta_lower=theta,
        )


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
