"""The share of directions (``lenstui aim --share``) on the embedded model: seconds per token,
and the same against a floor measured in the same run, so that figures taken on a busy
machine still compare.

Floor: one level's worth of vocabulary products, timed alone: the float32 product of the
moves' fresh directions (``chains x moves`` rows) with the whole vocabulary — the part of a
level no implementation of the method avoids. Each token's time is printed with its levels
and the ratio seconds / (levels x floor): the element-wise passes and the bookkeeping on top.
Goal: under 10 s per token (the typical token has 4-7 levels).

``--orthant D`` also estimates the D-dimensional orthant behind 49,151 redundant competitors
(exact share 2^-D: D = 576 gives 10^-173.4, D = 664 gives 10^-199.9), the closed form the
estimate is checked against at depths no plain count reaches.
Run: .venv/bin/python bench/bench_share.py [--samples 128] [--tokens 15107,1000,30000,0,43858] [--orthant 576]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import numpy as np
import torch

from lenstui.engine.model.load import load_model
from lenstui.engine.speak import share as S
from lenstui.engine.speak.aim import aim
from lenstui.engine.speak.check import as_readout
from lenstui.engine.speak.geometry import readout_from_arrays


def level_floor(readout, samples: int, repeats: int = 3) -> float:
    """Seconds of one level's vocabulary product (the fresh directions of every move)."""
    chains, length = S._population(samples)
    moves = S.BURN_IN + (length - 1) * S.MOVES_PER_SAMPLE
    rows32, _ = readout.screen_table()
    x = torch.randn(chains * moves, readout.d)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(x, rows32.T)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def orthant(d: int, competitors: int, samples: int) -> None:
    rng = np.random.default_rng(0)
    top = np.full(d, 0.5)
    rows = np.empty((1 + competitors, d), dtype=np.float32)
    rows[0] = top
    rows[1 : d + 1] = top - np.eye(d)
    rows[d + 1 :] = top - np.abs(rng.standard_normal((competitors - d, d))) - 0.1
    readout = readout_from_arrays(rows, kind="RMS")
    started = time.perf_counter()
    estimate = S.estimate_share(readout, 0, samples=samples)
    exact = -d * math.log10(2)
    print(
        f"orthant d={d}, {competitors:,} competitors: exact 10^{exact:.1f}, estimate 10^{estimate.log10:.1f} "
        f"(95%: 10^{estimate.log10_lo:.1f} … 10^{estimate.log10_hi:.1f}), {estimate.levels} levels, "
        f"{time.perf_counter() - started:.1f} s; certified cap 10^{estimate.log10_certified_lower:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=S.DEFAULT_SAMPLES)
    parser.add_argument("--tokens", default="15107,1000,30000,0,43858")
    parser.add_argument("--orthant", type=int, default=None, metavar="D")
    args = parser.parse_args()

    model = load_model(device="cpu")
    readout = as_readout(model)
    print(
        f"model {model.name}, torch threads {torch.get_num_threads()}, vocab {readout.n_vocab}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    aim(model, 100)  # float64 tables, whitening
    floor = level_floor(readout, args.samples)
    print(f"floor: one level's vocabulary product {floor:.3f} s")
    for token in [int(t) for t in args.tokens.split(",")]:
        measured = aim(model, token)
        started = time.perf_counter()
        estimate = S.estimate_share(model, token, samples=args.samples, aim_result=measured)
        seconds = time.perf_counter() - started
        ratio = seconds / (max(estimate.levels, 1) * floor)
        print(
            f"{token:>6} {readout.decode(token)!r:<18} θ {measured.theta_deg:6.2f}°  share 10^{estimate.log10:7.2f} "
            f"[{estimate.log10_lo:7.2f}, {estimate.log10_hi:7.2f}]  cap 10^{measured.log10_share_lower:7.1f}  "
            f"{estimate.levels:3d} levels  {seconds:6.1f} s  ({ratio:.1f} x floor per level)"
        )
    print(f"load average now {os.getloadavg()[0]:.1f}")
    if args.orthant:
        orthant(args.orthant, readout.n_vocab - 1, args.samples)


if __name__ == "__main__":
    main()
