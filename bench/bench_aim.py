"""The aim measure on the embedded model: single-token time, and the batched lower bounds'
cost against the vocabulary scan's candidate pass on the same blocks.

Single: median ``aim`` over a sample of tokens (goal <= 1 s), after one warm-up call.
Batched: for blocks of ``scan.CHUNK`` tokens, the scan's candidate pass (whitened
directions: one float32 product, top-k, float64 re-check, as ``scan._run_phases`` does) vs
``cap_lower_bounds`` on the same directions (a) alone (both products), (b) given the candidate
pass's product (only the Gram product added), (c) given both products (fused with the scan's
own-direction pass). Goal: the scan's lower bounds add <= 50%.
``--full FILE.npy`` also runs the batched bound over the whole vocabulary (whitened and own
axes, the larger of the two per token) and saves it.
Run: .venv/bin/python bench/bench_aim.py [--sample N] [--blocks N] [--full theta.npy]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np
import torch

from lenstui.engine.model.load import load_model
from lenstui.engine.speak.aim import aim, cap_lower_bounds
from lenstui.engine.speak.check import as_readout, candidate_directions
from lenstui.engine.speak.scan import CHUNK, _screen_gaps


def candidate_pass(readout, ids, Z32):
    """The scan's phase-2 work for one block (see scan._run_phases)."""
    rows32, c32 = readout.screen_table()
    Z64 = Z32.to(torch.float64)
    err = readout.screen_error_bound(Z64.norm(dim=1))

    def exact(rows, cand):
        return torch.einsum("bkd,bd->bk", readout.V[cand], Z64[rows]) + readout.c[cand]

    return _screen_gaps(readout, rows32, c32, Z32, ids, err, exact)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sample", type=int, default=20)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--full", default=None, metavar="FILE.npy")
    args = parser.parse_args()

    model = load_model(device="cpu")
    readout = as_readout(model)
    print(f"model {model.name}, torch threads {torch.get_num_threads()}, vocab {readout.n_vocab}")
    started = time.perf_counter()
    aim(model, 100)
    print(f"first aim (builds float64 tables, whitening): {time.perf_counter() - started:.2f} s")
    rng = random.Random(0)
    sample = [15107] + rng.sample(range(readout.n_vocab), args.sample - 1)
    times, exact = [], 0
    for token in sample:
        result = aim(model, token)
        times.append(result.seconds)
        exact += result.exact
    print(
        f"single aim: {len(sample)} tokens, median {statistics.median(times):.3f} s, "
        f"max {max(times):.3f} s (goal <= 1 s); exact {exact}/{len(sample)}"
    )

    rows32, _ = readout.screen_table()
    cap_lower_bounds(readout, torch.arange(0, 8), candidate_directions(readout, torch.arange(0, 8), "whitened"))
    scan = alone = given_l = given_both = 0.0
    for block in range(args.blocks):
        start = (block * 9973) % (readout.n_vocab - CHUNK)
        ids = torch.arange(start, start + CHUNK)
        Z32 = candidate_directions(readout, ids, "whitened").to(torch.float32)
        t0 = time.perf_counter()
        candidate_pass(readout, ids, Z32)
        scan += time.perf_counter() - t0
        t0 = time.perf_counter()
        cap_lower_bounds(readout, ids, Z32)
        alone += time.perf_counter() - t0
        L = Z32 @ rows32.T
        t0 = time.perf_counter()
        cap_lower_bounds(readout, ids, Z32, logits32=L)
        given_l += time.perf_counter() - t0
        L = Z32 @ rows32.T
        G = rows32[ids] @ rows32.T
        t0 = time.perf_counter()
        cap_lower_bounds(readout, ids, Z32, logits32=L, gram32=G)
        given_both += time.perf_counter() - t0
    n = args.blocks
    print(f"per block of {CHUNK} tokens (mean of {n}): scan candidate pass {scan / n:.2f} s")
    for label, value in (("alone", alone), ("given the pass's product", given_l), ("given both products", given_both)):
        print(f"  aim lower bounds {label}: {value / n:.2f} s = +{100 * value / scan:.0f}% of the candidate pass")

    if args.full:
        n_vocab = readout.n_vocab
        best = np.zeros(n_vocab)
        t0 = time.perf_counter()
        for family in ("whitened", "own"):
            for start in range(0, n_vocab, CHUNK):
                ids = torch.arange(start, min(start + CHUNK, n_vocab))
                theta = cap_lower_bounds(readout, ids, candidate_directions(readout, ids, family).to(torch.float32))
                best[start : start + len(ids)] = np.maximum(best[start : start + len(ids)], theta)
        np.save(args.full, best)
        q = np.quantile(best, [0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0])
        print(f"whole vocabulary ({time.perf_counter() - t0:.0f} s): theta lower bound quantiles 0/1/10/50/90/99/100%:", np.round(q, 3))


if __name__ == "__main__":
    main()
