"""Token inspector latency on the embedded model: the first lookup (builds the normalized
tables) against repeated lookups (two vector products over the 49k vocabulary).

Prints milliseconds and the ratio; asserts nothing.
Run: .venv/bin/python bench/bench_inspector.py [--repeats N] [--device cpu]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from lenstui.engine.inspect.neighbors import inspect_token
from lenstui.engine.model.load import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", default=None)
    parser.add_argument("--neighbors", type=int, default=10)
    args = parser.parse_args()

    model = load_model(device=args.device)
    started = time.perf_counter()
    inspect_token(model, 15107, args.neighbors)
    first = time.perf_counter() - started

    rng = random.Random(0)
    ids = [rng.randrange(model.d_vocab) for _ in range(args.repeats)]
    times = []
    for token_id in ids:
        started = time.perf_counter()
        inspect_token(model, token_id, args.neighbors)
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    print(f"model                  : {model.name} on {model.device}, {model.d_vocab} tokens x {model.d_model}")
    print(f"first lookup           : {first * 1000:.1f} ms  (builds the effective-unembedding tables)")
    print(f"repeated lookup median : {median * 1000:.1f} ms  (p90 {sorted(times)[int(0.9 * len(times))] * 1000:.1f} ms, {len(times)} random ids)")
    print(f"first / repeated       : {first / median:.1f}x")


if __name__ == "__main__":
    main()
