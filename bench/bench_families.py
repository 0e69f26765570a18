"""A lens step, native against TransformerLens' bridge, on three families that used to need the bridge.

For each family (Gemma 2: offset norms and a soft-cap; GPT-NeoX/Pythia: parallel attention;
OLMo 2: norms after the sublayers), a random-weight model of a modest size (d_model 512,
8 blocks, a 16k vocabulary) is read two ways over the very same weights:

- **native**: the plain transformers model with hooks on the modules the anatomy found
  (``engine/model/anatomy.py``: what every load now takes for these families);
- **bridge**: TransformerLens' bridge over a twin of the model (the path they took before);

beside a **floor**: the plain model's own one-token forward with its KV cache and hidden
states, no lens at all. A step is what Ctrl+N costs: one more token through the lens state's
forward and the readout of the new column (top-10, entropy, KL, ranks). The three are run
interleaved, step by step, so a noisy neighbour costs all of them alike; medians, ratios to the
floor and native/bridge. Prints figures, asserts nothing.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_families.py [--steps N]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from lenstui.core.lenses import LensOptions

FAMILIES = ("Gemma 2 (soft-capped)", "GPT-NeoX (Pythia)", "OLMo 2")
SIZE = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=8,
            num_key_value_heads=8, head_dim=64, vocab_size=16384, max_position_embeddings=512)
PROMPT_TOKENS = 48


def build(name: str):
    from testkit.families import by_name, build_model, _accepts
    from testkit.models import tiny_tokenizer

    import transformers

    family = by_name(name)
    accepted = _accepts(getattr(transformers, family.config))
    sized = {k: v for k, v in SIZE.items() if k in accepted}
    family = dataclasses.replace(family, overrides={**family.overrides, **sized})
    return build_model(family), tiny_tokenizer()


def median_steps(name: str, steps: int) -> tuple[float, float, float]:
    from transformers import DynamicCache

    from lenstui.engine.lens.state import LensState
    from lenstui.engine.model.load import wrap_model

    hf, tokenizer = build(name)
    hf.config.architectures = [type(hf).__name__]  # as a checkpoint's config says (TransformerLens reads it)
    native = wrap_model(hf, tokenizer, name=name, device="cpu")
    bridge = wrap_model(hf, tokenizer, name=name, device="cpu")
    bridge.caches.anatomy, bridge.caches.anatomy_known = None, True
    assert native.anatomy is not None
    ids = [int(i) for i in torch.randint(1, 400, (PROMPT_TOKENS,), generator=torch.Generator().manual_seed(0))]
    states = {"native": LensState(native), "bridge": LensState(bridge)}
    results = {}
    for key, state in states.items():
        state.prepare(ids, LensOptions(top_k=10))
        results[key] = state.result()
    cache = DynamicCache()
    with torch.no_grad():
        out = hf(input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
    token = int(out.logits[0, -1].argmax())
    times: dict[str, list[float]] = {"floor": [], "native": [], "bridge": []}
    for _ in range(steps + 2):
        start = time.perf_counter()
        with torch.no_grad():
            out = hf(input_ids=torch.tensor([[token]]), cache=cache, use_cache=True, output_hidden_states=True)
        torch.stack([h[0, -1] for h in out.hidden_states]).matmul(native.W_U).amax(dim=1)
        times["floor"].append(time.perf_counter() - start)
        token = int(out.logits[0, -1].argmax())
        for key, state in states.items():
            grown = list(results[key].token_ids) + [results[key].next_token.id]
            start = time.perf_counter()
            state.prepare(grown, LensOptions(top_k=10))
            results[key] = state.result()
            times[key].append(time.perf_counter() - start)
    assert results["native"].token_ids == results["bridge"].token_ids  # the two read the same model
    return tuple(statistics.median(times[key][2:]) for key in ("floor", "native", "bridge"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'family':24s} {'floor':>9s} {'native':>9s} {'bridge':>9s} {'native/floor':>13s} "
          f"{'bridge/floor':>13s} {'bridge/native':>14s}")
    for name in FAMILIES:
        floor, native, bridge = median_steps(name, args.steps)
        print(f"{name:24s} {floor * 1e3:7.1f}ms {native * 1e3:7.1f}ms {bridge * 1e3:7.1f}ms "
              f"{native / floor:12.2f}x {bridge / floor:12.2f}x {bridge / native:13.2f}x", flush=True)


if __name__ == "__main__":
    main()
