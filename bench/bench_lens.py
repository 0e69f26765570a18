"""Lens latency on the embedded model for 32- and 256-token prompts, and its ratio to
a plain forward pass of the same model (the lens' overhead).
Run: .venv/bin/python bench/bench_lens.py
"""

from __future__ import annotations

import statistics
import time

import torch

from lenstui.core.lenses import LensOptions
from lenstui.engine.lens.run import run_lens
from lenstui.engine.model.load import load_model

TEXT = (
    "Sometimes, when people say plasma, they mean a state of matter. Other times, when "
    "people say plasma, they mean the liquid part of blood. The Eiffel Tower is located "
    "in the city of Paris, and the seahorse emoji does not exist. "
)


def prompt_ids(model, n_tokens: int) -> list[int]:
    ids = model.tokenizer(TEXT * 40)["input_ids"]
    return ids[:n_tokens]


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
    for n, repeats in ((32, 5), (256, 3)):
        ids = prompt_ids(model, n)
        tokens = torch.tensor([ids])

        def forward():
            with torch.no_grad():
                model.bridge(tokens)

        fwd = median_seconds(forward, repeats)
        lens = median_seconds(lambda: run_lens(model, ids, LensOptions(top_k=10)), repeats)
        print(f"{n:4d} tokens: forward {fwd * 1000:8.1f} ms   lens {lens * 1000:8.1f} ms   lens/forward {lens / fwd:5.1f}x")


if __name__ == "__main__":
    main()
