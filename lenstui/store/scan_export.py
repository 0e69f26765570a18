"""A vocabulary scan's export files: ``lenstui scan --out FILE`` (.csv or .json).

``check_out_path(path)`` runs before the scan starts (minutes of work): the name must
end in .csv or .json and its folder must take a new file there (a file is created and
removed to find out), else one sentence. ``write_scan(result, path)`` writes the whole
file atomically through the store's one writer, so a full disk leaves the old file (or
nothing), never a 0-byte or half file; a failure is one sentence too.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Union

from lenstui.core.errors import InputError, LenstuiError
from lenstui.store.atomic import target_of, write_text_atomic

OUT_SUFFIXES = (".csv", ".json")
CSV_COLUMNS = ["id", "text", "verdict", "hard_to_speak", "best_match", "best_match_text", "margin", "method"]
# Added after theta_lower_deg when an under-trained run is kept for the model
# (``lenstui undertrained``): the round-trip class, the Magikarp indicator, whether the token
# is a candidate, and its verification (empty when not verified).
UNDERTRAINED_COLUMNS = ["category", "indicator", "undertrained_candidate", "max_prob", "undertrained_verified"]


def _reason(err: OSError) -> str:
    return err.strerror or str(err) or type(err).__name__


def check_out_path(path: Union[str, Path]) -> Path:
    """``path`` if a scan can be written there (by its suffix, and its folder taking a
    new file), else InputError saying what is wrong."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in OUT_SUFFIXES:
        raise InputError(f"Cannot write {path.name}: use a .csv or .json file name.")
    target = target_of(path)
    if target.is_dir():
        raise InputError(f"Cannot write {path}: it is a folder; give a file name ending in .csv or .json.")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"Cannot write {path}: there is no folder {folder}; create it first.")
    try:  # what the atomic writer will do: a new file in that folder (os.access lies to root)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".check")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise InputError(f"Cannot write {path} ({_reason(err)}): pick another --out.") from None
    if target.exists() and not os.access(target, os.W_OK) and os.geteuid() != 0:
        raise InputError(f"Cannot write {path}: the file is read-only; pick another --out.")
    return path


def _undertrained_values(undertrained, i: int) -> list:
    record = undertrained.token_record(i)
    return [
        record["category"],
        repr(record["indicator"]) if record["indicator"] is not None else "",
        record["candidate"],
        repr(record["max_prob"]) if record["max_prob"] is not None else "",
        record["verified"] if record["verified"] is not None else "",
    ]


def scan_json(result, undertrained=None) -> str:
    tokens = [result.token_record(i) for i in range(result.n_scanned)]
    if undertrained is not None:
        for i, token in enumerate(tokens):
            token["undertrained"] = undertrained.token_record(i)
    payload = {
        "model": result.model,
        "key": result.key,
        "complete": result.complete,
        "reachable_set": result.reachable_set,
        "tolerances": {"speak": result.speak_tolerance, "certificate": result.certificate_tolerance},
        "counts": result.counts(),
        "seconds": result.seconds,
        "tokens": tokens,
    }
    if undertrained is not None:
        payload["undertrained"] = {
            "reference": undertrained.reference_ids,
            "reference_why": undertrained.reference_why,
            "share": undertrained.candidate_share,
            "threshold": undertrained.threshold,
            "indicator": undertrained.indicator_name,
            "complete": undertrained.complete,
        }
    return json.dumps(payload, ensure_ascii=False) + "\n"


def scan_csv(result, undertrained=None) -> str:
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    extra = UNDERTRAINED_COLUMNS if undertrained is not None else []
    writer.writerow(CSV_COLUMNS + ["certificate", "theta_lower_deg"] + extra)
    for i in range(result.n_scanned):
        record = result.token_record(i)
        cert = record.get("certificate")
        cert_text = " ".join(f"{e['id']}:{e['weight']!r}" for e in cert["combination"]) if cert else ""
        theta = record["theta_lower_deg"]
        writer.writerow(
            [record[c] if record[c] is not None else "" for c in CSV_COLUMNS]
            + [cert_text, repr(theta) if theta is not None else ""]
            + (_undertrained_values(undertrained, i) if undertrained is not None else [])
        )
    return out.getvalue()


def write_scan(result, path: Union[str, Path], undertrained=None) -> Path:
    """Write a ScanResult to ``path`` (CSV or JSON by its extension), atomically;
    LenstuiError (one sentence) when it cannot be written. ``undertrained``: an
    UndertrainedResult whose columns join each token's row."""
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in OUT_SUFFIXES:
        raise InputError(f"Cannot write {path.name}: use a .csv or .json file name.")
    text = scan_json(result, undertrained) if suffix == ".json" else scan_csv(result, undertrained)
    try:
        write_text_atomic(path, text)
    except OSError as err:
        raise LenstuiError(
            f"Cannot write {path} ({_reason(err)}); the scan itself is kept in its cache, "
            "so the same command with another --out writes it without scanning again."
        ) from None
    return path
