"""Patched runs on the embedded model: what reusing the clean run saves.

For the plasma prompt (20 tokens) it times, interleaved (round-robin, so load drift hits
every variant alike), medians in ms:
- a full forward of the bridge with the patch hook (``run_with_hooks``, every position,
  every block): what a patched run costs without reuse;
- the engine's patched forward (``ForwardCost``): the clean KV cache below P, blocks from
  the patched one only ("resume"), at the last position after L0, L15 and L28, and at
  position 5 after L15;
- the whole patch (forward + the readout of the patched columns + effects) the app gets;
- a 31-point layer sweep (one batched readout) and a steered generation step.
Run: .venv/bin/python bench/bench_patching.py  (the machine's load makes it indicative)
"""

from __future__ import annotations

import statistics
import time

import torch

from lenstui.core.lenses import LensOptions
from lenstui.core.patch_result import PatchSite, SteerSetting
from lenstui.engine import causal
from lenstui.engine.causal.interventions import PatchEdit, run_intervened
from lenstui.engine.lens.state import lens_state
from lenstui.engine.model.forward import Site
from lenstui.engine.model.load import load_model
from lenstui.engine.model.vocab import resolve_token

A = "Sometimes, when people say plasma, they mean a state of matter. Other times, when people say"
B = A.replace("say plasma,", "say blood,")
ROUNDS = 7


def main() -> None:
    model = load_model(device="cpu")
    print(f"model {model.name} on {model.device}, torch threads {torch.get_num_threads()}")
    ids_a = list(model.tokenizer(A)["input_ids"])
    ids_b = list(model.tokenizer(B)["input_ids"])
    n = len(ids_a)
    causal.patch(model, ids_a, PatchSite(layer="L0"), source_prompt=ids_b, options=LensOptions(top_k=10))  # both slots warm, clean cells read
    state_a, state_b = lens_state(model, "a"), lens_state(model, "b")
    tokens = torch.tensor([ids_a])

    last = Site("resid", model.n_layers - 1)
    variants = {}
    for layer, position in ((0, n - 1), (15, n - 1), (28, n - 1), (15, 5)):
        value = state_b.residual(layer + 1)[position]
        edit = PatchEdit("resid", layer, position, value)

        def full(edit=edit):
            with torch.no_grad():
                model.bridge.run_with_hooks(
                    tokens, return_type="logits", fwd_hooks=[(f"blocks.{layer}.hook_resid_post", fn) for _, fn in edit.edits(0, n)]
                )

        def resumed(edit=edit, position=position):
            return run_intervened(model, state_a, position, edit, [last])

        def whole(layer=layer, position=position):
            causal.patch(model, ids_a, PatchSite(layer=layer, position=position), source_prompt=ids_b, options=LensOptions(top_k=10))

        variants[f"full forward, patch L{layer}@{position}"] = full
        variants[f"resumed forward, patch L{layer}@{position}"] = resumed
        variants[f"whole patch (grid + effects), L{layer}@{position}"] = whole
    variants["layer sweep, 31 points"] = lambda: causal.sweep(model, ids_a, source_prompt=ids_b)
    sea = resolve_token(model, " sea")
    variants["steer + 1 generated step, L15"] = lambda: causal.steer(model, ids_a, SteerSetting(toward=sea, layer="L15", alpha=0.5), steps=1, clean_steps=False, options=LensOptions(top_k=10))
    times = {name: [] for name in variants}
    for fn in variants.values():
        fn()  # warm-up
    for _ in range(ROUNDS):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    width = max(len(name) for name in times)
    for name, values in times.items():
        print(f"{name:<{width}}  median {statistics.median(values):7.1f} ms  (min {min(values):6.1f})")
    path = run_intervened(model, state_a, n - 1, PatchEdit("resid", 15, n - 1, None), [last]).cost
    print(f"path on this model: {path.path} ({path.positions} position(s) x {path.blocks} block(s) for L15@{n - 1})")


if __name__ == "__main__":
    main()
