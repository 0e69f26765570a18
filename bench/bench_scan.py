"""A whole-vocabulary speakability scan of the embedded model, from scratch: time,
verdict counts, and how each verdict was reached (which candidate direction, twin, LP);
then the same scan without the aim's theta lower bounds, and the ratio, and the theta
quantiles. The goals (for the whole vocabulary, on 2 CPU cores): the bounds add at most
30% (ratio <= 1.30) and the scan with them takes at most 180 s.
Neither reads nor writes the scan cache (pass --save to cache the result).
A --limit scan covers a prefix of the ids, which is not a fair sample: the first few
thousand ids hold the special tokens (LP work, the same in both scans) and far more tokens
said by their own direction (each needs one more product for its theta bound) than the
rest of the vocabulary.
Run: .venv/bin/python bench/bench_scan.py [--save] [--no-compare] [--limit N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

import torch

from lenstui.core.scan_result import METHODS
from lenstui.engine.model.load import load_model
from lenstui.engine.speak.scan import scan_vocabulary

# The goals for a whole-vocabulary scan (see the docstring).
GOAL_RATIO = 1.30
GOAL_SECONDS = 180.0


def timed_scan(model, *, aim_bounds: bool, save: bool, limit):
    phases: dict[str, float] = {}
    started = time.perf_counter()

    def progress(message: str, fraction: float) -> None:
        phase = message.rsplit(" ", 1)[0]
        if phase not in phases:
            phases[phase] = time.perf_counter() - started
            print(f"  {phases[phase]:6.1f} s  {phase}", file=sys.stderr, flush=True)

    result = scan_vocabulary(
        model, progress=progress, resume=save, cache=save, limit=limit, aim_bounds=aim_bounds
    )
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--save", action="store_true", help="cache the result (resumable)")
    parser.add_argument("--no-compare", action="store_true", help="skip the scan without theta bounds")
    parser.add_argument("--limit", type=int, default=None, help="scan ids 0..N-1 only")
    args = parser.parse_args()
    model = load_model(device="cpu")
    print(f"model {model.name} on {model.device}, torch threads {torch.get_num_threads()}, vocab {model.d_vocab}")
    result, wall = timed_scan(model, aim_bounds=True, save=args.save, limit=args.limit)
    counts = result.counts()
    methods = Counter(METHODS[m] for m in result.method[: result.n_scanned].tolist())
    print(f"full scan with theta bounds: {wall:.1f} s for {result.n_scanned} tokens ({result.n_scanned / wall:.0f} tokens/s)")
    if args.limit is None:
        print(f"  goal: <= {GOAL_SECONDS:.0f} s ({'met' if wall <= GOAL_SECONDS else 'not met'})")
    print(
        f"  speakable {counts['speakable']}, unspeakable {counts['unspeakable']}, "
        f"undetermined {counts['undetermined']}, hard to speak {counts['hard_to_speak']} "
        f"(of which speakable {counts['hard_to_speak_but_speakable']})"
    )
    print(f"  by method: {dict(methods)}")
    print(f"  unspeakable ids: {sorted(result.unspeakable_ids)}")
    quantiles = result.theta_quantiles()
    if quantiles:
        shown = ", ".join(f"{q * 100:g}%: {v:.2f}" for q, v in quantiles.items())
        print(f"  theta lower bounds ({len(result.theta_values())} speakable tokens), degrees: {shown}")
        hardest = result.hardest_by_theta()
        if hardest:
            print(f"  grid mark: hardest 1% = {len(hardest[0])} tokens, theta lower bound <= {hardest[1]:.2f}")
    if not args.no_compare:
        _, plain = timed_scan(model, aim_bounds=False, save=False, limit=args.limit)
        print(f"same scan without theta bounds: {plain:.1f} s")
        scope = "" if args.limit is None else f"; a prefix of {result.n_scanned} ids, not a fair sample"
        ratio = wall / plain
        print(f"theta bounds add {100 * (ratio - 1):.0f}% (ratio {ratio:.2f}; goal <= {GOAL_RATIO:.2f}{scope})")


if __name__ == "__main__":
    main()
