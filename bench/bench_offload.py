"""The lens on a model whose blocks are offloaded to disk, against its floor measured in
the same run; and a Llama-3.2-1B-shaped random Llama on the CPU against its floors.

**Offloaded** (a random Llama of ~230 MB in float32, saved to a folder, loaded with a CPU
budget that keeps only the embedding, the final norm and the unembedding in memory and
``--offload-dir``: every block is read from the offload folder at every forward):

- floor: the same model's lens in memory, plus reading the offloaded weights once
  (their bytes / the read bandwidth measured now by reading the checkpoint's files, which
  transformers' offload reads in place: warm in the page cache on this machine, so this is
  the cheapest the reads can be);
- the offloaded lens's full grid and a generation step, each against its floor.

**1B shape on the CPU** (``--scale``; ~5 GB of float32 weights, about a minute): the full
grid against its matmul floor (a plain forward plus rows x positions x d_model x vocabulary
at the float32 rate measured now), and a step against a plain one-token forward over the
KV cache.

Medians of ``--repeats``; prints figures, asserts nothing. Run:
``HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_offload.py [--scale] [--tokens N]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from gpu_check import lens_timings, timed  # bench/ is on the path of a script run from it


def median_seconds(fn, repeats: int) -> float:
    return timed(fn, "cpu", repeats)


def read_bandwidth(folder: Path) -> tuple[int, float]:
    """(bytes, bytes per second) reading every file under ``folder`` once, in 4 MiB blocks."""
    total, started = 0, time.perf_counter()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                while block := handle.read(4 << 20):
                    total += len(block)
    return total, total / max(1e-9, time.perf_counter() - started)


def grid_and_step(model, ids: list[int], repeats: int) -> tuple[float, float]:
    got = lens_timings(model, ids, "cpu", repeats)
    return got["grid_s"], got["step_s"]


def offloaded(tokens: int, repeats: int) -> None:
    from lenstui.core.placement import PlacementOptions, format_bytes
    from lenstui.engine.model.load import load_model
    from testkit.saved_models import saved_llama

    with tempfile.TemporaryDirectory(prefix="bench-offload-") as tmp:
        folder = saved_llama(Path(tmp) / "llama", hidden=512, layers=8, intermediate=1536, heads=8, kv_heads=2,
                             vocab=32000, tied=False, initializer_range=0.02)
        whole = load_model(str(folder), device="cpu")
        anchors = sum(p.numel() * 4 for name, p in whole.hf.named_parameters() if "layers." not in name)
        budget = f"cpu={anchors + 4096}B"
        off = load_model(str(folder), placement=PlacementOptions(max_memory=budget, offload_dir=f"{tmp}/offload"))
        on_disk = sum(d.bytes for d in off.plan.devices if d.name == "disk")
        ids = [int(i) for i in torch.randint(1, 32000, (tokens,), generator=torch.Generator().manual_seed(0))]
        mem_grid, mem_step = grid_and_step(whole, ids, repeats)
        # transformers reads offloaded safetensors weights in place (the offload folder's
        # index points into the checkpoint's files): their read bandwidth is the one that counts.
        read_bytes, bandwidth = read_bandwidth(folder)
        read_s = on_disk / bandwidth
        off_grid, off_step = grid_and_step(off, ids, repeats)
        print(f"offloaded: {off.name} {format_bytes(off.plan.bytes)}, {off.placement_summary};"
              f" {format_bytes(on_disk)} on disk, read at {bandwidth / 2**30:.2f} GiB/s ({format_bytes(read_bytes)} read)")
        for what, measured, in_memory in (("full grid", off_grid, mem_grid), ("step", off_step, mem_step)):
            floor = in_memory + read_s
            print(f"  {what:9} {tokens:4d} tokens: offloaded {measured * 1000:8.1f} ms   floor {floor * 1000:8.1f} ms"
                  f" (in memory {in_memory * 1000:7.1f} + reads {read_s * 1000:6.1f})   {measured / floor:5.2f}x")


def scale(tokens: int, repeats: int) -> None:
    from transformers import DynamicCache

    from testkit.models import llama_1b_shape

    model = llama_1b_shape()
    hf = model.hf
    ids = [int(i) for i in torch.randint(1, model.d_vocab, (tokens,), generator=torch.Generator().manual_seed(0))]
    x, w = torch.randn(512, model.d_model), hf.get_output_embeddings().weight
    rate = 2 * 512 * model.d_model * model.d_vocab / median_seconds(lambda: x @ w.T, 2)
    cells = (model.n_layers + 1) * tokens
    tokens_t = torch.tensor([ids])

    def forward():
        with torch.no_grad():
            hf(input_ids=tokens_t)

    cache = DynamicCache()
    with torch.no_grad():
        hf(input_ids=tokens_t[:, :-1], cache=cache, use_cache=True)
    keep = cache.get_seq_length()

    def one_token():
        if cache.get_seq_length() > keep:
            cache.crop(keep - cache.get_seq_length())
        with torch.no_grad():
            hf(input_ids=tokens_t[:, -1:], cache=cache, use_cache=True)

    forward_s, step_forward_s = median_seconds(forward, repeats), median_seconds(one_token, repeats)
    grid_s, step_s = grid_and_step(model, ids, repeats)
    matmul_floor = forward_s + 2 * cells * model.d_model * model.d_vocab / rate
    step_floor = step_forward_s + 2 * (model.n_layers + 1) * model.d_model * model.d_vocab / rate
    print(f"1B shape on the CPU, {tokens} tokens ({cells} cells x {model.d_vocab} tokens), float32 matmul"
          f" {rate / 1e9:.1f} GFLOP/s now:")
    print(f"  full grid {grid_s:7.2f} s   floor (forward {forward_s:5.2f} s + readout matmul) {matmul_floor:7.2f} s"
          f"   {grid_s / matmul_floor:5.2f}x")
    print(f"  step      {step_s * 1000:7.0f} ms  plain one-token forward {step_forward_s * 1000:6.0f} ms"
          f" ({step_s / step_forward_s:5.2f}x; with the column's matmul {step_s / step_floor:5.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", action="store_true", help="also the 1B-shaped model on the CPU (~5 GB)")
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()} (the machine may be shared: ratios, not times)")
    offloaded(args.tokens, args.repeats)
    if args.scale:
        scale(args.tokens, args.repeats)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
