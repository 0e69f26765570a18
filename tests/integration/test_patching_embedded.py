"""Activation patching and steering on the embedded model, against PyTorch forward hooks on its
dequantized weights loaded again as a plain Hugging Face model (testkit/patch_reference.py):
the plasma layer sweep, single patches, and steering."""

from __future__ import annotations

import pytest
import torch

from lenstui.core.lenses import LensOptions
from lenstui.core.patch_result import PatchSite, SteerSetting
from lenstui.engine import causal
from lenstui.engine.model.vocab import resolve_token
from testkit.patch_reference import (
    TOL,
    Plain,
    assert_final_rows_match,
    check_cone,
    reference_intervention,
    reference_steer,
)

PLASMA_A = "Sometimes, when people say plasma, they mean a state of matter. Other times, when people say"
PLASMA_B = PLASMA_A.replace("say plasma,", "say blood,")


@pytest.fixture(scope="module")
def smol_reference():
    """SmolLM2's dequantized weights (the loader's cache) in a plain transformers model."""
    from transformers import AutoModelForCausalLM

    from lenstui.engine.model.load import embedded_gguf_path, gguf_digest
    from lenstui.store.paths import cache_root

    folder = cache_root() / "gguf" / gguf_digest(embedded_gguf_path())[:32]
    if not (folder / "model.safetensors").is_file():
        pytest.skip("the dequantized SmolLM2 is not cached yet (load the embedded model once)")
    return Plain(AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32))


def test_plasma_layer_sweep_on_the_embedded_model(embedded, smol_reference):
    ids_a = list(embedded.tokenizer(PLASMA_A)["input_ids"])
    ids_b = list(embedded.tokenizer(PLASMA_B)["input_ids"])
    plasma, blood = ids_a[5], ids_b[5]
    result = causal.sweep(embedded, ids_a, source_prompt=ids_b, mode="layers", target=plasma)
    assert result.source_answer.id == blood and result.cost.path == "resume"
    _, rec_b = smol_reference.run(ids_b)
    worst = 0.0
    for point in result.points:
        iv = {"kind": "resid", "layer": point.layer, "pos": 19, "value": rec_b["stack"][point.layer + 1][19]}
        probs = smol_reference.probs(ids_a, [iv])[-1]
        worst = max(worst, abs(point.target_prob - float(probs[plasma])), abs(point.tracked[0].prob - float(probs[blood])))
    assert worst < TOL
    by_layer = {p.layer: p for p in result.points}
    # The research's numbers: nothing up to L13, the flip at L23.
    assert result.clean_target_prob == pytest.approx(0.4244, abs=5e-4)
    assert all(abs(by_layer[layer].target_prob - result.clean_target_prob) < 0.02 for layer in range(-1, 14))
    assert by_layer[22].top.id == plasma and by_layer[23].top.id == blood
    assert by_layer[23].target_prob == pytest.approx(0.0136, abs=5e-4)
    assert by_layer[29].tracked[0].prob == pytest.approx(result.source_answer_prob, abs=1e-5)


SMOL_CASES = [
    ("resid", "L15", 19, "prompt"),
    ("resid", "L5", 5, "prompt"),
    ("attn", "L23", 19, "prompt"),
    ("mlp", "L0", 5, "prompt"),
    ("head", "L24", 19, "prompt"),
    ("attn", "L24", 19, "zero"),
    ("head", "L23", 19, "mean"),
    ("mlp", "L29", 19, "mean"),
]


@pytest.mark.parametrize("component,layer,position,source", SMOL_CASES)
def test_patches_on_the_embedded_model_match_the_reference(embedded, smol_reference, component, layer, position, source):
    ids_a = list(embedded.tokenizer(PLASMA_A)["input_ids"])
    ids_b = list(embedded.tokenizer(PLASMA_B)["input_ids"])
    site = PatchSite(layer, position, component, 4 if component == "head" else None)
    options = LensOptions(top_k=10, target=ids_a[5], track=(ids_b[5],))
    if source == "prompt":
        result = causal.patch(embedded, ids_a, site, source_prompt=ids_b, options=options)
    else:
        result = causal.patch(embedded, ids_a, site, ablate=source, options=options)
    _, rec_a = smol_reference.run(ids_a)
    _, rec_b = smol_reference.run(ids_b)
    iv = reference_intervention(smol_reference, rec_b, rec_a, result.spec, len(ids_a))
    logits, rec_patched = smol_reference.run(ids_a, [iv])
    assert_final_rows_match(result.patched, torch.softmax(logits, dim=-1), result.spec.position)
    if (component, source) == ("resid", "prompt"):
        check_cone(result, smol_reference, rec_a, rec_patched)


def test_steering_the_embedded_model_matches_adding_it_by_hand(embedded, smol_reference):
    prompt = "My favourite place to spend a summer day is"
    ids = list(embedded.tokenizer(prompt)["input_ids"])
    sea = resolve_token(embedded, " sea")
    result = causal.steer(embedded, ids, SteerSetting(toward=sea, layer="L15", alpha=4.0), steps=6, options=LensOptions(top_k=5))
    iv, scale = reference_steer(smol_reference, ids, sea, 15, 4.0, 0)
    assert result.spec.scale == pytest.approx(scale, rel=1e-5)
    expected = smol_reference.greedy(ids, 6, [iv])
    assert [t.id for t in result.generated] == expected
    assert result.generated != result.clean_generated  # the steer does something
    probs = smol_reference.probs(ids + expected, [iv])
    assert_final_rows_match(result.steered, probs)
