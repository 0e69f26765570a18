"""Direct logit attribution, checked against the Hugging Face models themselves.

The references here never go through TransformerLens: hidden states, attention patterns
and the inputs of each output projection come from an unwrapped copy of the same
weights (the bridge rewires the modules it wraps), and the final norm, head outputs and
unembedding are redone in numpy float64.
"""

from __future__ import annotations

import pytest
import torch

from lenstui.core.errors import Cancelled, InputError
from lenstui.engine.attribution import attribute, attribution_hook_names
from lenstui.engine.lens.run import run_lens
from lenstui.engine.model.load import wrap_model
from testkit.attribution_reference import Reference, check_sum_and_parts
from lenstui.core.lenses import LensOptions

PROMPT = "Sometimes, when people say plasma, they mean a state of matter."


def _biased_gpt2():
    """A tiny GPT-2 whose biases and norm weights are all non-zero and non-trivial."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from testkit.models import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    torch.manual_seed(3)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=3, n_head=4,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
    )
    hf = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.2)
            elif name.endswith("ln_f.weight") or ".ln_" in name and name.endswith("weight"):
                param.normal_(1.0, 0.3)
    return hf, tokenizer


def _tiny_llama():
    from testkit.models import tiny_llama_hf

    hf, tokenizer = tiny_llama_hf(seed=5)
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if "norm" in name:
                param.normal_(1.0, 0.3)
    return hf, tokenizer


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def tiny(request):
    """(loaded model, float64 reference) for a tiny GPT-2 (LayerNorm, biases, learned
    positions, untied) and a tiny Llama (RMSNorm, no biases, GQA, tied)."""
    hf, tokenizer = _biased_gpt2() if request.param == "gpt2" else _tiny_llama()
    reference = Reference(hf, request.param)
    return wrap_model(hf, tokenizer, name=f"tiny-{request.param}", device="cpu"), reference


@pytest.mark.parametrize("row", [0, 1, 2, 3])
def test_parts_add_up_to_the_rows_logit_on_tiny_models(tiny, row):
    model, reference = tiny
    ids = model.tokenizer(PROMPT)["input_ids"]
    result, _ = check_sum_and_parts(model, reference, ids, row, position=7)
    names = [c.name for c in result.components]
    blocks = [f"L{b}.{kind}" for b in range(row) for kind in ("attn", "mlp")]
    if reference.family == "gpt2":
        # Learned positions are their own part; the final norm's bias is the explicit bias.
        assert names == ["embed", "pos_embed", *blocks, "bias"]
        bias = reference.b @ reference.direction(result.token.id, None)
        assert result.components[-1].contribution == pytest.approx(bias, abs=1e-6)
    else:
        assert names == ["embed", *blocks]


def test_contrast_token_on_tiny_models(tiny):
    model, reference = tiny
    ids = model.tokenizer(PROMPT)["input_ids"]
    top = run_lens(model, ids, LensOptions(top_k=2)).grid[2][5].top
    result, expected = check_sum_and_parts(
        model, reference, ids, 2, position=5, token=top[0].id, contrast=top[1].id
    )
    assert result.contrast is not None and result.contrast.id == top[1].id
    # The top-1 beats the runner-up, so the difference is positive.
    assert expected > 0 and result.total > 0


def test_default_token_is_the_lens_cells_top_1(tiny):
    model, _ = tiny
    ids = model.tokenizer(PROMPT)["input_ids"]
    lens = run_lens(model, ids, LensOptions(top_k=1))
    for row in range(model.n_layers + 1):
        result = attribute(model, ids, position=4, layer=row)
        assert result.token.id == lens.grid[row][4].top[0].id
        assert result.row_label == lens.layers[row]


def test_a_cache_from_a_full_run_gives_the_same_answer(tiny):
    model, _ = tiny
    ids = model.tokenizer(PROMPT)["input_ids"]
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(
            torch.tensor([ids]), names_filter=attribution_hook_names(model)
        )
    keys = set(cache.keys())
    fresh = attribute(model, ids, position=6, layer=2, heads=4)
    reused = attribute(model, ids, position=6, layer=2, heads=4, cache=cache)
    assert set(cache.keys()) == keys  # read, never added to
    assert [c.contribution for c in reused.components] == pytest.approx(
        [c.contribution for c in fresh.components], abs=1e-6
    )
    assert [(h.layer, h.head) for h in reused.heads] == [(h.layer, h.head) for h in fresh.heads]
    assert [h.pattern for h in reused.heads] == [pytest.approx(h.pattern, abs=1e-6) for h in fresh.heads]


def test_bad_input_is_one_sentence(tiny_llama):
    ids = tiny_llama.tokenizer(PROMPT)["input_ids"]
    cases = [
        (dict(position=len(ids)), f"Position {len(ids)} is outside the prompt"),
        (dict(position=-len(ids) - 1), "outside the prompt"),
        (dict(layer=tiny_llama.n_layers + 1), f"Layer {tiny_llama.n_layers + 1} is out of range"),
        (dict(token="plasma matter"), "not one"),
        (dict(token=10**6), "out of range"),
        (dict(token=" the", contrast=" the"), "the same"),
        (dict(heads=-1), "between 0 and"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message) as caught:
            attribute(tiny_llama, ids, **kwargs)
        text = str(caught.value)
        assert text.endswith(".") and "\n" not in text


def test_cancelled_before_any_result(tiny_llama):
    with pytest.raises(Cancelled):
        attribute(tiny_llama, PROMPT, should_stop=lambda: True)
