"""A whole-vocabulary speakability scan of the embedded model, from scratch: time,
verdict counts, and how each verdict was reached (which candidate direction, twin, LP).
Neither reads nor writes the scan cache (pass --save to cache the result).
Run: .venv/bin/python bench/bench_scan.py [--save]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

import torch

from lenstui.engine.models import load_model
from lenstui.engine.scan import METHODS, scan_vocabulary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--save", action="store_true", help="cache the result (resumable)")
    args = parser.parse_args()
    model = load_model(device="cpu")
    print(f"model {model.name} on {model.device}, torch threads {torch.get_num_threads()}, vocab {model.d_vocab}")
    phases: dict[str, float] = {}
    started = time.perf_counter()

    def progress(message: str, fraction: float) -> None:
        phase = message.rsplit(" ", 1)[0]
        if phase not in phases:
            phases[phase] = time.perf_counter() - started
            print(f"  {phases[phase]:6.1f} s  {phase}", file=sys.stderr, flush=True)

    result = scan_vocabulary(model, progress=progress, resume=args.save, cache=args.save)
    wall = time.perf_counter() - started
    counts = result.counts()
    methods = Counter(METHODS[m] for m in result.method.tolist())
    print(f"full scan: {wall:.1f} s for {result.n_scanned} tokens ({result.n_scanned / wall:.0f} tokens/s)")
    print(
        f"  speakable {counts['speakable']}, unspeakable {counts['unspeakable']}, "
        f"undetermined {counts['undetermined']}, hard to speak {counts['hard_to_speak']} "
        f"(of which speakable {counts['hard_to_speak_but_speakable']})"
    )
    print(f"  by method: {dict(methods)}")
    print(f"  unspeakable ids: {sorted(result.unspeakable_ids)}")


if __name__ == "__main__":
    main()
