"""The instant lens: figures beside a floor or reference measured in the same run.

- full grid at 32 and 256 tokens: seconds / the matmul floor (rows x positions x d_model x
  vocab x 2 FLOPs at the rate of a plain torch matmul of a [512, d] x [d, vocab] block,
  measured here) and / TransformerLens 4's ``logit_lens`` on the same ids;
- the readout's vocabulary block size (the sweep that picked DEFAULT_BLOCK);
- a generation step on a 45-token chat prompt (engine side: prepare + the whole grid);
- a character typed at the end of a 256-token prompt, to its visible cells (7 columns);
- a 2,000-token prompt to its first visible cells, beside a plain forward pass;
- peak RSS during the lens (VmHWM reset after the load; also the process' ru_maxrss), each
  size in a fresh process, for 256, 1,024 and 2,048 tokens;
- scale: a randomly initialised Llama with Llama-3.2-1B's shape, 128 tokens (fresh process).

Never asserts. Run: .venv/bin/python bench/bench_instant.py [--skip-scale | --rss-only | --scale-only]
(the thread count is torch's default unless OMP_NUM_THREADS says otherwise).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch

from lenstui.core.lenses import LensOptions

TEXT = (
    "Sometimes, when people say plasma, they mean a state of matter. Other times, when "
    "people say plasma, they mean the liquid part of blood. The Eiffel Tower is located "
    "in the city of Paris, and the seahorse emoji does not exist. "
)
VISIBLE_COLUMNS = 7


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_rate(d_model: int, vocab: int, rows: int = 512) -> float:
    """FLOP/s of a plain float32 torch matmul of the readout's block shape."""
    x = torch.randn(rows, d_model)
    w = torch.randn(d_model, vocab)
    seconds = best_of(lambda: x @ w, 3)
    return 2 * rows * d_model * vocab / seconds


def prompt_ids(model, n_tokens: int) -> list[int]:
    ids = model.tokenizer(TEXT * (1 + n_tokens // 40))["input_ids"]
    return ids[:n_tokens]


def full_grid(model, rate: float) -> None:
    from transformer_lens.tools.analysis import logit_lens

    from lenstui.engine.lens.state import LensState

    rows = model.n_layers + 1
    for n, repeats in ((32, 3), (256, 2)):
        ids = prompt_ids(model, n)

        def ours():
            state = LensState(model)  # from scratch: forward + the whole readout
            state.prepare(ids, LensOptions(top_k=10))
            state.result()

        def tl():
            logit_lens(model.bridge, torch.tensor([ids]), positions=None, top_k=10)

        ours()
        lens_s = best_of(ours, repeats)
        tl_s = best_of(tl, 1)
        floor = 2 * rows * n * model.d_model * model.d_vocab / rate
        print(
            f"full grid {n:4d} tokens: lens {lens_s:7.2f} s   floor {floor:6.2f} s   lens/floor {lens_s / floor:5.2f}x"
            f"   TL4 logit_lens {tl_s:7.2f} s   lens/TL4 {lens_s / tl_s:5.2f}x"
        )


def block_sweep(model, rate: float) -> None:
    from lenstui.engine.lens.readout import read_out, unembedding

    unembed = unembedding(model)
    x = torch.randn(512, model.d_model)
    targets = torch.randint(0, model.d_vocab, (512, 1))
    floor = 2 * 512 * model.d_model * model.d_vocab / rate
    parts = []
    for block in (1024, 2048, 4096, 8192, 16384):
        seconds = best_of(lambda: read_out(unembed, x, top_k=10, targets=targets, reference=16, block=block), 2)
        parts.append(f"{block}: {seconds / floor:4.2f}x")
    print("readout of 512 vectors / matmul floor, by vocabulary block: " + "   ".join(parts))


def generation_step(model) -> None:
    from lenstui.engine.lens.state import LensState
    from lenstui.engine.model.chat import chat_prompt_ids

    ids = chat_prompt_ids(model, "Is there a seahorse emoji? Answer in one short sentence, please.")
    ids = (ids * 2)[:45] if len(ids) < 45 else ids[:45]
    state = LensState(model)
    state.prepare(ids[:-1], LensOptions(top_k=10))
    state.result()
    start = time.perf_counter()
    state.prepare(ids, LensOptions(top_k=10))
    state.result()
    step = time.perf_counter() - start
    scratch = best_of(lambda: (s := LensState(model), s.prepare(ids, LensOptions(top_k=10)), s.result()), 1)
    print(
        f"generation step, 45-token chat prompt: {step * 1000:7.1f} ms (from scratch {scratch * 1000:7.1f} ms,"
        f" {scratch / step:4.1f}x)"
    )


def typed_character(model) -> None:
    from lenstui.engine.lens.state import LensState

    ids = prompt_ids(model, 256)
    text = model.tokenizer.decode(ids)
    state = LensState(model)
    state.prepare(text, LensOptions(top_k=10))
    state.result()
    start = time.perf_counter()
    plan = state.prepare(text + "x", LensOptions(top_k=10))
    n = plan.n_positions
    state.cells(range(n - VISIBLE_COLUMNS, n))
    typed = time.perf_counter() - start
    print(
        f"character typed at the end of a 256-token prompt -> {VISIBLE_COLUMNS} visible columns:"
        f" {typed * 1000:7.1f} ms ({plan.forward_positions} position(s) through the forward)"
    )


def long_prompt(model) -> None:
    from lenstui.engine.lens.state import LensState

    ids = prompt_ids(model, 2000)
    tokens = torch.tensor([ids])

    def forward():
        with torch.no_grad():
            model.bridge(tokens)

    fwd = best_of(forward, 1)
    state = LensState(model)
    start = time.perf_counter()
    state.prepare(ids, LensOptions(top_k=10))
    state.cells(range(len(ids) - VISIBLE_COLUMNS, len(ids)))
    first = time.perf_counter() - start
    print(
        f"2,000-token prompt -> first {VISIBLE_COLUMNS} visible columns: {first:6.2f} s"
        f"   plain forward {fwd:6.2f} s   difference {first - fwd:+6.2f} s"
    )


RSS_CHILD = r"""
import json, resource, sys, torch
from lenstui.core.lenses import LensOptions
from lenstui.engine.model.load import load_model
from lenstui.engine.lens.run import run_lens
n = int(sys.argv[1])
model = load_model(device="cpu")
text = "Sometimes, when people say plasma, they mean a state of matter. " * (1 + n // 12)
ids = model.tokenizer(text)["input_ids"][:n]
def status_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
loaded = status_kb("VmRSS")
try:  # reset the high-water mark so the peak below is the lens' own (Linux >= 4.0)
    open("/proc/self/clear_refs", "w").write("5")
except OSError:
    pass
run_lens(model, ids, LensOptions(top_k=10))
peak = status_kb("VmHWM")
print(json.dumps({"loaded_mb": loaded / 1024, "peak_mb": peak / 1024,
                  "process_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peak_rss() -> None:
    for n in (256, 1024, 2048):
        out = subprocess.run([sys.executable, "-c", RSS_CHILD, str(n)], capture_output=True, text=True)
        if out.returncode:
            print(f"peak RSS {n} tokens: failed ({out.stderr.strip().splitlines()[-1:]})")
            continue
        got = json.loads(out.stdout.strip().splitlines()[-1])
        grid = 31 * n * 49152 * 4 / 2**20
        print(
            f"peak RSS {n:5d} tokens: during the lens {got['peak_mb']:7.0f} MB (RSS after load {got['loaded_mb']:6.0f} MB,"
            f" lens +{got['peak_mb'] - got['loaded_mb']:5.0f} MB; process ru_maxrss {got['process_peak_mb']:6.0f} MB;"
            f" a rows x positions x vocab float32 tensor would be {grid:7.0f} MB)"
        )


SCALE_CHILD = r"""
import json, resource, time, torch
from testkit.models import llama_1b_shape
from lenstui.core.lenses import LensOptions
from lenstui.engine.lens.state import LensState
model = llama_1b_shape()
ids = [int(i) for i in torch.randint(1, model.d_vocab, (128,))]
x = torch.randn(512, 2048); w = torch.randn(2048, 128256)
x @ w; t = time.perf_counter(); x @ w; rate = 2 * 512 * 2048 * 128256 / (time.perf_counter() - t)
del w
state = LensState(model)
t = time.perf_counter(); state.prepare(ids, LensOptions(top_k=10)); state.result(); lens = time.perf_counter() - t
floor = 2 * 17 * 128 * 2048 * 128256 / rate
print(json.dumps({"lens": lens, "floor": floor, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def scale() -> None:
    out = subprocess.run([sys.executable, "-c", SCALE_CHILD], capture_output=True, text=True)
    if out.returncode:
        print(f"scale (Llama-3.2-1B shape): failed ({out.stderr.strip().splitlines()[-1:]})")
        return
    got = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"scale, Llama-3.2-1B shape (random), 128 tokens: lens {got['lens']:6.1f} s   floor {got['floor']:6.1f} s"
        f"   lens/floor {got['lens'] / got['floor']:4.2f}x   peak RSS {got['peak_mb']:6.0f} MB"
    )


def main() -> None:
    from lenstui.engine.model.load import load_model

    if "--rss-only" in sys.argv:
        peak_rss()
        return
    if "--scale-only" in sys.argv:
        scale()
        return

    model = load_model(device="cpu")
    rate = matmul_rate(model.d_model, model.d_vocab)
    print(
        f"model {model.name} on {model.device}, torch threads {torch.get_num_threads()},"
        f" matmul rate {rate / 1e9:5.1f} GFLOP/s (float32, measured now; the machine may be shared)"
    )
    full_grid(model, rate)
    block_sweep(model, rate)
    generation_step(model)
    typed_character(model)
    long_prompt(model)
    peak_rss()
    if "--skip-scale" not in sys.argv:
        scale()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
