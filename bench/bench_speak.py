"""Single-token speakability checks on the embedded model vs one LP over the whole
vocabulary (the approach that does not finish), with their ratio.

Sample: random tokens (most of the embedded vocabulary is hard to speak), plus tokens
that need the LP, and tokens with duplicated rows (unspeakable). The full LP gets a time
cap per token; a capped run is reported as "> cap", and the ratio as a lower bound.
Run: .venv/bin/python bench/bench_speak.py [--sample N] [--full-lp-tokens N] [--cap SECONDS]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections import Counter

import torch

from lenstui.engine.model.load import load_model
from lenstui.engine.speak.check import as_readout, check_speakable
from lenstui.engine.speak.lp import solve_speak_lp

# Tokens the candidate directions do not settle (LP) and duplicated special-token rows.
LP_TOKENS = [4, 190, 657, 1069, 4311, 10366, 39121, 45514]
TWIN_TOKENS = [5, 36743]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sample", type=int, default=60, help="random tokens checked")
    parser.add_argument("--full-lp-tokens", type=int, default=3, help="tokens given the full LP")
    parser.add_argument("--cap", type=float, default=60.0, help="seconds per full LP")
    args = parser.parse_args()

    model = load_model(device="cpu")
    print(f"model {model.name} on {model.device}, torch threads {torch.get_num_threads()}, vocab {model.d_vocab}")
    start = time.perf_counter()
    check_speakable(model, 100)
    print(f"first check (builds the float64 tables and whitening once per model): {time.perf_counter() - start:.2f} s")

    rng = random.Random(0)
    sample = rng.sample(range(model.d_vocab), args.sample) + LP_TOKENS + TWIN_TOKENS
    times, verdicts, methods, hard = [], Counter(), Counter(), 0
    for token in sample:
        result = check_speakable(model, token)
        times.append(result.seconds)
        verdicts[result.verdict] += 1
        methods[result.method] += 1
        hard += result.hard_to_speak
    times.sort()
    median = statistics.median(times)
    print(
        f"single checks: {len(sample)} tokens ({hard} hard to speak): median {median * 1000:.0f} ms, "
        f"p90 {times[int(0.9 * (len(times) - 1))] * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms"
    )
    print(f"  verdicts {dict(verdicts)}; methods {dict(methods)}")
    lp_times = [check_speakable(model, t).seconds for t in LP_TOKENS]
    print(f"  tokens that need the LP: median {statistics.median(lp_times) * 1000:.0f} ms, max {max(lp_times) * 1000:.0f} ms")

    readout = as_readout(model)
    full_times = []
    for token in LP_TOKENS[: args.full_lp_tokens]:
        start = time.perf_counter()
        outcome = solve_speak_lp(readout, token, all_constraints=True, max_rounds=1, time_limit=args.cap)
        elapsed = time.perf_counter() - start
        finished = outcome.status != "undetermined"
        full_times.append((elapsed, finished))
        shown = f"{elapsed:.1f} s" if finished else f"> {args.cap:.0f} s ({outcome.message})"
        generated = check_speakable(model, token)
        print(
            f"full LP, token {token}: {shown}, status {outcome.status}; "
            f"constraint generation: {generated.seconds:.2f} s ({generated.lp_constraints} constraints, {generated.verdict})"
        )
    if full_times:
        full_median = statistics.median(t for t, _ in full_times)
        bound = "" if all(f for _, f in full_times) else ">= "
        print(
            f"ratio full LP / median single check: {bound}{full_median / median:.0f}x "
            f"(full LP median {'>= ' if bound else ''}{full_median:.1f} s, single check median {median * 1000:.0f} ms)"
        )


if __name__ == "__main__":
    main()
