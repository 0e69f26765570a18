"""One attribution on the embedded model with a 40-token prompt, beside a plain forward
pass of the same model (goal: <= 0.5 s after the lens has run).

Three figures: the forward pass; an attribution that runs the model itself (one
run_with_cache of only the hooks it reads, at one position); and one that reuses a
full-position cache (what a worker holding the lens run's activations could pass).
Run: .venv/bin/python bench/bench_attribution.py
"""

from __future__ import annotations

import statistics
import time

import torch

from lenstui.core.lenses import LensOptions
from lenstui.engine.attribution import attribute, attribution_hook_names
from lenstui.engine.lens.run import run_lens
from lenstui.engine.model.load import load_model

TEXT = (
    "Sometimes, when people say plasma, they mean a state of matter. Other times, when "
    "people say plasma, they mean the liquid part of blood. The Eiffel Tower is located "
    "in the city of Paris, and the seahorse emoji does not exist. "
)
N_TOKENS = 40
GOAL_SECONDS = 0.5


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    model = load_model(device="cpu")
    print(f"model {model.name} on {model.device}, torch threads {torch.get_num_threads()}")
    ids = model.tokenizer(TEXT * 2)["input_ids"][:N_TOKENS]
    tokens = torch.tensor([ids])
    position = N_TOKENS - 1

    def forward():
        with torch.no_grad():
            model.bridge(tokens)

    def full_cache():
        with torch.no_grad():
            return model.bridge.run_with_cache(tokens, names_filter=attribution_hook_names(model))[1]

    repeats = 5
    fwd = median_seconds(forward, repeats)
    lens = median_seconds(lambda: run_lens(model, ids, LensOptions(top_k=10)), 3)
    fresh = median_seconds(lambda: attribute(model, ids, position=position, layer=-1), repeats)
    cache = full_cache()
    reused = median_seconds(lambda: attribute(model, ids, position=position, layer=-1, cache=cache), repeats)
    cached_run = median_seconds(full_cache, 3)
    print(f"{N_TOKENS} tokens, position {position}, last row, top-1 token, 8 heads:")
    print(f"  forward pass                      {fwd * 1000:8.1f} ms")
    print(f"  lens (top-10, for scale)          {lens * 1000:8.1f} ms")
    verdict = "met" if fresh <= GOAL_SECONDS else "MISSED"
    print(
        f"  attribution, runs the model       {fresh * 1000:8.1f} ms   {fresh / fwd:5.2f}x forward"
        f"   goal {GOAL_SECONDS * 1000:.0f} ms: {verdict}"
    )
    print(f"  attribution, reusing a cache      {reused * 1000:8.1f} ms   {reused / fwd:5.2f}x forward")
    print(f"  (that full-position cache run     {cached_run * 1000:8.1f} ms   {cached_run / fwd:5.2f}x forward)")


if __name__ == "__main__":
    main()
