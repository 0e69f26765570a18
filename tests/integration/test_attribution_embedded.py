"""Direct logit attribution on the embedded model, checked against its dequantized weights loaded
again as a plain Hugging Face model (testkit/attribution_reference.py): the parts add up at
two rows, and a contrast token."""

from __future__ import annotations

import pytest
import torch

from testkit.attribution_reference import Reference, check_sum_and_parts

PLASMA = (
    "Sometimes, when people say plasma, they mean a state of matter. "
    "Other times, when people say plasma"
)


@pytest.fixture(scope="module")
def embedded_reference(embedded):
    """The embedded model's dequantized weights, loaded again without the bridge."""
    from transformers import AutoModelForCausalLM

    from lenstui.engine.model.load import embedded_gguf_path, file_sha256
    from lenstui.store.paths import cache_root

    folder = cache_root() / "gguf" / file_sha256(embedded_gguf_path())[:32]
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return Reference(hf, "llama")


@pytest.mark.parametrize("row", [12, 30])
def test_embedded_parts_add_up(embedded, embedded_reference, row):
    ids = embedded.tokenizer(PLASMA)["input_ids"]
    say = [i for i, t in enumerate(ids) if embedded.decode(t) == " say"][1]
    result, _ = check_sum_and_parts(embedded, embedded_reference, ids, row, position=say, token=" plasma")
    assert result.token.text == " plasma"
    assert [c.name for c in result.components][:3] == ["embed", "L0.attn", "L0.mlp"]
    assert len(result.components) == 1 + 2 * row  # no pos_embed, no biases in SmolLM2


def test_embedded_contrast(embedded, embedded_reference):
    ids = embedded.tokenizer(PLASMA)["input_ids"]
    check_sum_and_parts(embedded, embedded_reference, ids, 30, position=len(ids) - 1, token=",", contrast=" is")
