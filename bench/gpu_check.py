"""The lens on a GPU, against its floor measured in the same run: one prepared script for
a device machine (under 8 minutes on one H100), printing figures and asserting nothing.

For Llama-3.2-1B- and Llama-3.1-8B-shaped random Llamas in bfloat16 (random weights: the
timings do not depend on them; the tiny test tokenizer, whose ids past its own are named by
number):

- **full grid**: a fresh lens over a ``--tokens`` prompt (every row x position read out:
  top-k, entropy, KL, ranks), against its floor: a plain forward of the model (its own
  logits) plus the readout's matrix product (rows x positions x d_model x vocabulary) in
  the model's dtype;
- **step**: one generated token through the lens (a one-position forward over the KV cache
  and the new column's readout), against a plain one-token forward over the same cache
  plus the new column's matrix product;
- **peak GPU memory** during the full grid, beside the weights' and the memory plan's bytes;
- **a 4-bit load** (bitsandbytes NF4) of the 1B shape from a saved folder through
  ``load_model(..., placement=PlacementOptions(quantize="4bit"))``: its load time, its
  memory against the plan's, whether its last lens row's top-1 is the model's own argmax,
  and its full grid against the floor.

``--cpu-smoke`` runs the same code at tiny sizes on the CPU in float32 (seconds), so the
script is exercised where no GPU is lent. Figures go to stdout, one JSON object per line
after the table, and to ``$OUT/gpu_check.json`` when ``$OUT`` is set.

Run on a device machine: ``python bench/gpu_check.py``; here: ``python bench/gpu_check.py --cpu-smoke``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {
    # Llama-3.2-1B and Llama-3.1-8B's shapes (vocabulary 128,256).
    "1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True),
    "8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
}
SMOKE_SHAPES = {
    "1b": dict(vocab_size=2048, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "8b": dict(vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=6,
               num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False),
}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> float:
    """The median seconds of ``repeats`` calls, after one warm-up."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def random_model(shape: dict, device: str, dtype: torch.dtype, seed: int = 0):
    """A random Llama of ``shape`` built on ``device`` in ``dtype``, wrapped for the engine."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lenstui.engine.model.load import wrap_model
    from testkit.models import tiny_tokenizer

    config = LlamaConfig(**shape, max_position_embeddings=4096, rope_theta=500000.0, bos_token_id=0,
                         eos_token_id=0, initializer_range=0.02)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in its dtype: an 8B in float32 first would take 32 GB
    try:
        with torch.device(device):
            hf = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)
    for module in hf.modules():  # rotary frequencies in float32, as from_pretrained leaves them
        for name in ("inv_freq", "original_inv_freq"):
            value = getattr(module, name, None)
            if isinstance(value, torch.Tensor) and value.dtype != torch.float32:
                setattr(module, name, value.float())
    tokenizer = named_by_id(tiny_tokenizer())
    name = {torch.bfloat16: "bfloat16", torch.float32: "float32"}[dtype]
    return wrap_model(hf, tokenizer, name="random-llama", device=device, dtype=name), config, tokenizer


def named_by_id(tokenizer):
    tokenizer.decode = lambda ids, **kw: f"<{int(ids[0])}>"
    tokenizer.convert_ids_to_tokens = lambda i, **kw: f"<{int(i)}>"
    return tokenizer


def floors(model, ids: list[int], device: str, repeats: int) -> dict:
    """The plain forward (its own logits), the readout's product for every cell, and the
    one-token versions of both over a KV cache."""
    from transformers import DynamicCache

    hf = model.hf
    tokens = torch.tensor([ids], device=model.input_device)
    rows = model.n_layers + 1
    weight = hf.get_output_embeddings().weight  # [vocab, d], the model's dtype
    cells = torch.randn(rows * len(ids), model.d_model, device=weight.device, dtype=weight.dtype)
    column = cells[:rows]

    def forward():
        with torch.no_grad():
            hf(input_ids=tokens)

    cache = DynamicCache()
    with torch.no_grad():
        hf(input_ids=tokens[:, :-1], cache=cache, use_cache=True)
    keep = cache.get_seq_length()

    def step_forward():
        if cache.get_seq_length() > keep:
            cache.crop(keep - cache.get_seq_length())  # (negative: the tokens to drop)
        with torch.no_grad():
            hf(input_ids=tokens[:, -1:], cache=cache, use_cache=True)

    return {
        "forward_s": timed(forward, device, repeats),
        "readout_matmul_s": timed(lambda: cells @ weight.T, device, repeats),
        "step_forward_s": timed(step_forward, device, repeats),
        "step_matmul_s": timed(lambda: column @ weight.T, device, repeats),
    }


def lens_timings(model, ids: list[int], device: str, repeats: int) -> dict:
    from lenstui.core.lenses import LensOptions
    from lenstui.engine.lens.state import LensState

    options = LensOptions(top_k=10)

    def full_grid():
        state = LensState(model)
        state.prepare(ids, options)
        state.result()

    base = LensState(model)
    base.prepare(ids[:-1], options)
    base.result()

    def step():
        base.prepare(ids[:-1], options)  # an undo: free (a prefix of what the state holds)
        base.prepare(ids, options)
        base.result()

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    grid_s = timed(full_grid, device, repeats)
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    return {"grid_s": grid_s, "step_s": timed(step, device, repeats), "peak_bytes": peak}


def check_shape(label: str, shape: dict, device: str, dtype: torch.dtype, tokens: int, repeats: int) -> dict:
    from lenstui.engine.model.plan import plan_for_config

    started = time.perf_counter()
    model, config, _ = random_model(shape, device, dtype)
    built = time.perf_counter() - started
    weights = sum(p.numel() * p.element_size() for p in model.hf.parameters())
    plan = plan_for_config(config, name=label, device=device, dtype=str(dtype).split(".")[-1], prompt_tokens=tokens)
    ids = [int(i) for i in torch.randint(1, model.d_vocab, (tokens,), generator=torch.Generator().manual_seed(1))]
    floor = floors(model, ids, device, repeats)
    lens = lens_timings(model, ids, device, repeats)
    grid_floor = floor["forward_s"] + floor["readout_matmul_s"]
    step_floor = floor["step_forward_s"] + floor["step_matmul_s"]
    out = {
        "shape": label, "device": device, "dtype": str(dtype), "tokens": tokens, "rows": model.n_layers + 1,
        "vocab": model.d_vocab, "build_s": built, "weights_bytes": weights, "plan_bytes": plan.bytes,
        "plan_working_bytes": plan.working_bytes, **floor, **lens,
        "grid_vs_floor": lens["grid_s"] / grid_floor, "step_vs_floor": lens["step_s"] / step_floor,
    }
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def check_4bit(shape: dict, device: str, tokens: int, repeats: int, folder: Path) -> dict:
    """Save the shape (bfloat16 on a GPU, float32 on the CPU), load it 4-bit, read it."""
    from lenstui.core.lenses import LensOptions
    from lenstui.core.placement import PlacementOptions
    from lenstui.engine.lens.run import run_lens
    from lenstui.engine.model.load import load_model, plan_model
    from lenstui.engine.model.plan import bitsandbytes_problem

    problem = bitsandbytes_problem()
    if problem:
        return {"shape": "1b-4bit", "skipped": problem}
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model, _, tokenizer = random_model(shape, device, dtype)
    model.hf.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    placement = PlacementOptions(quantize="4bit")
    plan = plan_model(str(folder), device=device, placement=placement, prompt_tokens=tokens)
    started = time.perf_counter()
    quantized = load_model(str(folder), device=device, placement=placement)
    load_s = time.perf_counter() - started
    named_by_id(quantized.tokenizer)
    resident = torch.cuda.memory_allocated() - before if device.startswith("cuda") else quantized.hf.get_memory_footprint()
    ids = [int(i) for i in torch.randint(1, quantized.d_vocab, (tokens,), generator=torch.Generator().manual_seed(1))]
    result = run_lens(quantized, ids, LensOptions(top_k=5))
    with torch.no_grad():
        own = quantized.hf(torch.tensor([ids], device=quantized.input_device)).logits[0].argmax(-1).tolist()
    agree = sum(cell.top[0].id == top for cell, top in zip(result.grid[-1], own)) / len(ids)
    floor = floors(quantized, ids, device, repeats)
    lens = lens_timings(quantized, ids, device, repeats)
    return {
        "shape": "1b-4bit", "device": device, "load_s": load_s, "plan_bytes": plan.bytes, "resident_bytes": resident,
        "plan_vs_resident": plan.bytes / max(1, resident), "last_row_top1_is_own_argmax": agree,
        "placement": quantized.placement_summary, **floor, **lens,
        "grid_vs_floor": lens["grid_s"] / (floor["forward_s"] + floor["readout_matmul_s"]),
        "step_vs_floor": lens["step_s"] / (floor["step_forward_s"] + floor["step_matmul_s"]),
    }


def gib(n) -> str:
    return "-" if n is None else f"{n / 2**30:6.2f} GiB"


def report(rows: list[dict]) -> None:
    for row in rows:
        if "skipped" in row:
            print(f"{row['shape']:>8}: skipped ({row['skipped']})")
            continue
        print(
            f"{row['shape']:>8} on {row['device']}: full grid {row['grid_s'] * 1000:8.1f} ms vs floor "
            f"{(row['forward_s'] + row['readout_matmul_s']) * 1000:8.1f} ms ({row['grid_vs_floor']:.2f}x) · step "
            f"{row['step_s'] * 1000:7.1f} ms vs floor {(row['step_forward_s'] + row['step_matmul_s']) * 1000:7.1f} ms "
            f"({row['step_vs_floor']:.2f}x) · peak {gib(row.get('peak_bytes'))}"
            + (f" · weights {gib(row['weights_bytes'])} (plan {gib(row['plan_bytes'])})" if "weights_bytes" in row else "")
            + (f" · load {row['load_s']:.1f} s, resident {gib(row['resident_bytes'])} (plan {gib(row['plan_bytes'])}),"
               f" last row top-1 = own argmax at {row['last_row_top1_is_own_argmax']:.0%} of positions"
               if "load_s" in row else "")
        )
    for row in rows:
        print(json.dumps(row))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU in float32 (seconds)")
    parser.add_argument("--tokens", type=int, default=None, help="prompt length (default 256; 32 with --cpu-smoke)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per figure (default 5; 2 smoke)")
    parser.add_argument("--shapes", default="1b,8b", help="which shapes, comma-separated (1b, 8b)")
    parser.add_argument("--skip-4bit", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here; run with --cpu-smoke for the tiny CPU run.", file=sys.stderr)
        return 2
    device = "cpu" if smoke else "cuda:0"
    dtype = torch.float32 if smoke else torch.bfloat16
    tokens = args.tokens or (32 if smoke else 256)
    repeats = args.repeats or (2 if smoke else 5)
    shapes = SMOKE_SHAPES if smoke else SHAPES
    name = "CPU (smoke)" if smoke else torch.cuda.get_device_name(0)
    print(f"gpu_check on {name}, torch {torch.__version__}, {tokens} tokens, median of {repeats}")
    started = time.perf_counter()
    rows = [check_shape(label, shapes[label], device, dtype, tokens, repeats) for label in args.shapes.split(",")]
    if not args.skip_4bit:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
            rows.append(check_4bit(shapes["1b"], device, tokens, repeats, Path(folder)))
    report(rows)
    print(f"total {time.perf_counter() - started:.0f} s")
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_check.json").write_text(json.dumps({"device": name, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
