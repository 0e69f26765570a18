"""The share of directions over a sample of the vocabulary: how it relates to theta.

``share_sample`` measures, for random speakable tokens and the hardest ones by the scan's
certified theta bound, the exact aim (theta, the cap's share: a certified lower bound) and the
share estimate (``speak.share``). Points are kept on disk as they come (per model weights and
sample settings), so a stopped run resumes and the app's plot opens at once the next time.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np

from lenstui.core.callbacks import Progress, StopCheck, check_stop
from lenstui.core.errors import InputError
from lenstui.core.scan_result import SPEAKABLE
from lenstui.core.share_result import SharePoint, ShareSample
from lenstui.engine.speak.check import as_readout

DEFAULT_COUNT = 40
DEFAULT_HARDEST = 8
# Per-level samples for the sample's estimates (fewer than one token's default: many tokens).
SAMPLE_SAMPLES = 64
_FORMAT = 1


def choose_tokens(n_vocab: int, scan, count: int, hardest: int, seed: int) -> list[tuple[int, bool]]:
    """(id, is one of the hardest) for ``hardest`` tokens of smallest theta bound and random
    speakable ones up to ``count`` (without a scan with theta: random ids)."""
    rng = np.random.default_rng(seed)
    chosen: list[tuple[int, bool]] = []
    if scan is not None and len(scan.theta_values()):
        n = scan.n_scanned
        ids = np.nonzero(scan.verdicts[:n] == SPEAKABLE)[0]
        bounds = scan.theta_lower[ids]
        ids, bounds = ids[np.isfinite(bounds)], bounds[np.isfinite(bounds)]
        hard = ids[np.argsort(bounds, kind="stable")[: min(hardest, count)]]
        chosen += [(int(i), True) for i in hard]
        rest = np.setdiff1d(ids, hard)
    else:
        rest = np.arange(n_vocab)
    picks = rng.choice(rest, size=min(len(rest), count - len(chosen)), replace=False)
    chosen += [(int(i), False) for i in picks]
    return chosen


def share_sample(
    model,
    *,
    count: int = DEFAULT_COUNT,
    hardest: int = DEFAULT_HARDEST,
    samples: int = SAMPLE_SAMPLES,
    seed: int = 0,
    cached_only: bool = False,
    cache: bool = True,
    should_stop: Optional[StopCheck] = None,
    progress: Optional[Progress] = None,
) -> Optional[ShareSample]:
    """The sample (None when ``cached_only`` and nothing is kept)."""
    from lenstui.engine.speak.aim import aim
    from lenstui.engine.speak.scan import load_cached_scan
    from lenstui.engine.speak.scan_cache import scan_key
    from lenstui.engine.speak.share import estimate_share

    if count < 1 or hardest < 0:
        raise InputError("A share sample needs at least one token.")
    started = time.perf_counter()
    readout = as_readout(model)
    key = scan_key(readout)
    path = _cache_path(key, count, hardest, samples, seed) if cache else None
    points = _read(path) if path is not None else []
    if cached_only:
        return ShareSample(readout.name, tuple(points), count, samples) if points else None
    tokens = choose_tokens(readout.n_vocab, load_cached_scan(model), count, hardest, seed)
    done = {p.id for p in points}
    for k, (t, hard) in enumerate(tokens):
        if t in done:
            continue
        check_stop(should_stop, "share sample cancelled")
        if progress is not None:
            progress(f"share of token {k + 1}/{len(tokens)}", k / len(tokens))
        measured = aim(readout, t, should_stop=should_stop)
        estimate = estimate_share(readout, t, samples=samples, seed=seed + t, aim_result=measured, should_stop=should_stop)
        if not math.isfinite(estimate.log10):
            continue  # unspeakable: no point on a log scale
        points.append(
            SharePoint(t, readout.decode(t), measured.theta_deg, measured.log10_share_lower,
                       estimate.log10, estimate.log10_lo, estimate.log10_hi, hard)
        )
        if path is not None:
            _write(path, readout.name, points)
    return ShareSample(readout.name, tuple(points), count, samples, time.perf_counter() - started)


def _cache_path(key: str, count: int, hardest: int, samples: int, seed: int) -> Path:
    from lenstui.store.paths import data_dir

    return data_dir() / "share" / f"{key}-n{count}-h{hardest}-s{samples}-seed{seed}.json"


def _read(path: Path) -> list[SharePoint]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("format") != _FORMAT:
            return []
        return [SharePoint(**entry) for entry in payload["points"]]
    except Exception:  # none yet, or damaged: measured again
        return []


def _write(path: Path, model: str, points: list[SharePoint]) -> None:
    from dataclasses import asdict

    from lenstui.store.atomic import write_text_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps({"format": _FORMAT, "model": model, "points": [asdict(p) for p in points]}))
    except OSError:
        pass  # only resumability is lost
