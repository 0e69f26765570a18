"""The nnsight backend against the native engine, and what the remote path sends.

1. Time, on the embedded model, same run: the native engine's whole grid (a fresh lens
   state each time: the forward plus the readout) and the nnsight backend's (one trace,
   reduced inside it), and one generation step each. Printed as medians and ratios to the
   native time (the machine is shared: ratios, not seconds, are the figure).
2. Bytes per grid and per step on the embedded model, measured: each trace serialized
   exactly as nnsight's RemoteBackend sends it to NDIF (compressed as its config says) and
   the result packed as NDIF's model actor packs it (``torch.save`` + zstd level 3),
   against the bytes of the residual stack the same grid would ship (float32, and the
   model's dtype).
3. The same request for meta-llama/Llama-3.3-70B-Instruct's shape (its config's numbers,
   built on the meta device: no weights, no download): the request's bytes, serialized by
   nnsight without running; the result's bytes from the shapes the reduction returns
   (uncompressed torch.save: an upper bound), against the hidden states in bfloat16.

Run: .venv/bin/python bench/bench_nnsight.py [--repeats N] [--prompt TEXT]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import torch

from lenstui.core.lenses import LensOptions
from lenstui.engine.backends.nnsight.model import wrap_local
from lenstui.engine.backends.nnsight.state import NnsightLensState
from lenstui.engine.backends.nnsight.transport import Transport
from lenstui.engine.lens.state import LensState
from lenstui.engine.model.load import load_model

SEAHORSE = "Is there a seahorse emoji?"


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def timing(model, prompt: str, repeats: int) -> None:
    options = LensOptions(top_k=10)
    nnsight = wrap_local(model, Transport.local())
    ids = model.tokenizer(prompt)["input_ids"]

    def grid(make_state):
        state = make_state()
        state.prepare(ids, options)
        return state.result()

    def step(make_state) -> float:
        """One generation step after a grid: the prompt grown by its own next token."""
        state = make_state()
        state.prepare(ids, options)
        state.result()
        started = time.perf_counter()
        state.prepare(ids + [state.next_token_id()], options)
        state.result()
        return time.perf_counter() - started

    def native():
        return LensState(model)

    def traced():
        return NnsightLensState(nnsight)

    grid_native = median_seconds(lambda: grid(native), repeats)
    grid_nnsight = median_seconds(lambda: grid(traced), repeats)
    step_native = statistics.median(step(native) for _ in range(repeats))
    step_nnsight = statistics.median(step(traced) for _ in range(repeats))
    print(f"{model.name}, {len(ids)} tokens, {model.n_layers + 1} rows, top-10, torch threads {torch.get_num_threads()}")
    print(f"  grid: native {grid_native:.3f} s, nnsight (local) {grid_nnsight:.3f} s: {grid_nnsight / grid_native:.2f}x native")
    print(f"  step: native {step_native:.3f} s, nnsight (local) {step_nnsight:.3f} s: {step_nnsight / step_native:.2f}x native")


def wire(model, prompt: str) -> None:
    options = LensOptions(top_k=10)
    simulated = wrap_local(model, Transport.simulated())
    ids = model.tokenizer(prompt)["input_ids"]
    state = NnsightLensState(simulated)
    state.prepare(ids, options)
    result = state.result()
    state.prepare(ids + [state.next_token_id()], options)
    state.result()
    grid, step = simulated.transport.traffic[-2:]
    rows, positions = len(result.layers), len(result.tokens)
    hidden32 = rows * positions * model.d_model * 4
    hidden_dtype = rows * positions * model.d_model * model.hf.dtype.itemsize
    print(f"{model.name}: {rows} rows x {positions} positions, top-10")
    print(f"  grid: request {grid.request_bytes:,} B, result {grid.response_bytes:,} B "
          f"({grid.response_bytes / (rows * positions):.0f} B per cell)")
    print(f"  step: request {step.request_bytes:,} B, result {step.response_bytes:,} B (one column)")
    print(f"  the residual stack instead: {hidden32:,} B float32 ({hidden32 / grid.response_bytes:.0f}x the grid's "
          f"result), {hidden_dtype:,} B in {model.dtype}")


def llama_70b(positions: int) -> None:
    """The request for Llama-3.3-70B's shape, built the way ``--remote`` builds it (nnsight's
    meta model from a config and tokenizer in the hub cache: here its config's numbers and
    a stand-in tokenizer, in a temporary cache) and serialized by nnsight without running."""
    import tempfile

    import huggingface_hub.constants as constants
    from nnsight.tracing.backend import Backend
    from transformers import LlamaConfig

    from lenstui.engine.backends.nnsight import trace
    from lenstui.engine.backends.nnsight.model import open_remote
    from lenstui.engine.backends.nnsight.transport import serialized_request
    from testkit.hub_cache import REVISION
    from testkit.models import tiny_tokenizer

    repo = "meta-llama/Llama-3.3-70B-Instruct"
    config = LlamaConfig(  # its config.json
        hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_theta=500000.0, tie_word_embeddings=False, torch_dtype="bfloat16", architectures=["LlamaForCausalLM"],
    )
    cache = Path(tempfile.mkdtemp(prefix="lenstui-bench-hub-"))
    root = cache / "models--meta-llama--Llama-3.3-70B-Instruct"
    config.save_pretrained(root / "snapshots" / REVISION)
    tiny_tokenizer().save_pretrained(root / "snapshots" / REVISION)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(REVISION)
    constants.HF_HUB_CACHE = str(cache)
    sent: list[int] = []

    class SerializeOnly(Backend):
        def __call__(self, tracer):
            sent.append(len(serialized_request(tracer)))

    class Only:
        remote = False
        endpoint = None

        def backend(self, *args, **kwargs):
            return SerializeOnly()

    model = open_remote(repo, Only())
    ids = list(range(1000, 1000 + positions))
    try:
        trace.grid(model, ids, list(range(positions)), top_k=10)
    except Exception:  # nothing was run, so nothing was saved: only the request counts
        pass
    try:
        trace.grid(model, ids + [7], [positions], top_k=10)
    except Exception:
        pass
    rows = config.num_hidden_layers + 1

    def result_bytes(n: int) -> int:
        """``torch.save`` of what ``reduce.read_rows`` returns for n positions (zeros)."""
        cells = {
            "top_ids": torch.zeros(rows, n, 10, dtype=torch.int32), "top_logits": torch.zeros(rows, n, 10),
            "log_z": torch.zeros(rows, n), "entropy": torch.zeros(rows, n), "kl": torch.zeros(rows, n),
            "target_logits": torch.zeros(rows, n, 2), "target_ranks": torch.zeros(rows, n, 2, dtype=torch.int32),
            "final_top1": torch.zeros(n, dtype=torch.int64), "depth": torch.zeros(2, n, dtype=torch.int64),
        }
        buffer = io.BytesIO()
        torch.save({"out": cells}, buffer)
        return len(buffer.getvalue())

    hidden = rows * positions * config.hidden_size * 2
    print(f"{repo} ({rows} rows, d_model {config.hidden_size}, vocab {config.vocab_size}), "
          f"{positions} positions, top-10:")
    print(f"  request, measured: grid {sent[0]:,} B, step {sent[1]:,} B")
    print(f"  result from its shapes (torch.save, before zstd): grid {result_bytes(positions):,} B, "
          f"step {result_bytes(1):,} B")
    print(f"  the hidden states instead: {hidden:,} B in bfloat16 ({hidden / result_bytes(positions):.0f}x)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompt", default=None, help="default: the seahorse question in the chat template")
    parser.add_argument("--positions-70b", type=int, default=40)
    args = parser.parse_args()
    model = load_model(device="cpu")
    if args.prompt is None:
        prompt = model.tokenizer.apply_chat_template([{"role": "user", "content": SEAHORSE}], add_generation_prompt=True,
                                                     tokenize=False)
    else:
        prompt = args.prompt
    timing(model, prompt, args.repeats)
    wire(model, prompt)
    llama_70b(args.positions_70b)


if __name__ == "__main__":
    main()
