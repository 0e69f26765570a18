"""Effective unembedding and nearest neighbours, checked against numpy float64 on the
Hugging Face weights (never through TransformerLens or lenstui's own code)."""

from __future__ import annotations

import dataclasses

import json

import numpy as np
import pytest
import torch

from lenstui.core.errors import InputError
from lenstui.engine.inspect.geometry import effective_unembedding, final_norm_affine
from lenstui.engine.inspect.neighbors import inspect_token
from testkit.neighbors_reference import assert_matches_reference, float64_numpy, reference_geometry, reference_report


def perturbed_gpt2():
    """A private tiny GPT-2 whose final LayerNorm has a non-trivial gain and bias."""
    from testkit.models import tiny_gpt2

    model = tiny_gpt2(seed=1)
    ln_f = model.bridge.original_model.transformer.ln_f
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        ln_f.weight.copy_(torch.rand(ln_f.weight.shape, generator=generator) * 1.5 + 0.25)
        ln_f.bias.copy_(torch.randn(ln_f.bias.shape, generator=generator) * 0.5)
    return model


def tiny_gemma():
    """Gemma's RMSNorm multiplies by (1 + weight): the convention most easily got wrong."""
    from transformers import GemmaConfig, GemmaForCausalLM

    from lenstui.engine.model.load import wrap_model
    from testkit.models import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    torch.manual_seed(3)
    config = GemmaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    hf = GemmaForCausalLM(config)
    with torch.no_grad():
        hf.model.norm.weight.uniform_(-0.6, 0.6)
    return wrap_model(hf, tokenizer, name="tiny-gemma", device="cpu")


@pytest.fixture(scope="module")
def gpt2_ln():
    return perturbed_gpt2()


# ----------------------------------------------------------------- readout geometry


def test_effective_unembedding_reproduces_gpt2_logits(gpt2_ln):
    hf = gpt2_ln.bridge.original_model
    W_eff, c = effective_unembedding(gpt2_ln)
    assert effective_unembedding(gpt2_ln)[0] is W_eff  # memoized
    assert W_eff.shape == (gpt2_ln.d_vocab, gpt2_ln.d_model) and W_eff.dtype == torch.float32
    assert final_norm_affine(gpt2_ln).kind == "LN"
    assert bool(c.abs().max() > 0.01)  # the LayerNorm bias lands in c

    x = torch.randn(6, gpt2_ln.d_model, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        expected = float64_numpy(hf.lm_head(hf.transformer.ln_f(x)))
    xs = float64_numpy(x)
    centred = xs - xs.mean(axis=1, keepdims=True)
    normalized = centred / np.sqrt((centred**2).mean(axis=1, keepdims=True) + hf.config.layer_norm_epsilon)
    np.testing.assert_allclose(normalized @ float64_numpy(W_eff).T + float64_numpy(c), expected, atol=2e-5)


def test_effective_unembedding_rmsnorm_tied(tiny_llama):
    hf = tiny_llama.bridge.original_model
    W_eff, c = effective_unembedding(tiny_llama)
    expected = float64_numpy(hf.lm_head.weight) * float64_numpy(hf.model.norm.weight)
    np.testing.assert_allclose(float64_numpy(W_eff), expected, atol=1e-6)
    assert not bool(c.any())


def test_gemma_offset_gain_and_the_probe_fallback():
    gemma = tiny_gemma()
    hf = gemma.bridge.original_model
    expected = float64_numpy(hf.lm_head.weight) * (1.0 + float64_numpy(hf.model.norm.weight))
    np.testing.assert_allclose(float64_numpy(effective_unembedding(gemma)[0]), expected, atol=1e-6)
    assert final_norm_affine(gemma).source == "weights"

    # A config that forgets the (1 + weight) convention: the probe notices and measures.
    forgetful = tiny_gemma()
    forgetful.caches.anatomy = dataclasses.replace(forgetful.anatomy, norm_offset=False)
    assert final_norm_affine(forgetful).source == "probe"
    np.testing.assert_allclose(float64_numpy(effective_unembedding(forgetful)[0]), expected, atol=1e-4)


# ----------------------------------------------------------------- neighbours


def test_layernorm_neighbours_against_float64(gpt2_ln):
    hf = gpt2_ln.bridge.original_model
    ln_f = hf.transformer.ln_f
    W, c = reference_geometry(
        float64_numpy(hf.lm_head.weight), float64_numpy(ln_f.weight), float64_numpy(ln_f.bias), np.zeros(gpt2_ln.d_vocab), layer_norm=True
    )
    for token_id in (0, 5, 77, 200, gpt2_ln.d_vocab - 1):
        report = inspect_token(gpt2_ln, token_id, n_neighbors=8)
        assert_matches_reference(report, *reference_report(W, c, token_id, 8))
        assert report.unembed_norm == pytest.approx(np.linalg.norm(float64_numpy(hf.lm_head.weight)[token_id]), rel=1e-5)
        assert report.effective_norm == pytest.approx(np.linalg.norm(W[token_id]), rel=1e-5)
        assert report.readout_offset == pytest.approx(c[token_id], abs=1e-5)
        assert report.unembed_bias is None  # GPT-2's lm_head has no bias


def test_untied_model_also_gets_embedding_neighbours(gpt2_ln):
    hf = gpt2_ln.bridge.original_model
    E = float64_numpy(hf.transformer.wte.weight)
    unit = E / np.linalg.norm(E, axis=1, keepdims=True)
    report = inspect_token(gpt2_ln, 42, n_neighbors=5)
    assert not report.tied_embedding and report.embedding_neighbors is not None
    cos = unit @ unit[42]
    expected = [j for j in np.argsort(-cos) if j != 42][:5]
    np.testing.assert_allclose([n.cosine for n in report.embedding_neighbors], cos[expected], atol=2e-5)
    assert report.embed_norm == pytest.approx(np.linalg.norm(E[42]), rel=1e-5)


def test_tied_model_has_no_separate_embedding_neighbours(tiny_llama):
    report = inspect_token(tiny_llama, 10, n_neighbors=3)
    assert report.tied_embedding and report.embedding_neighbors is None
    assert report.readout_offset is None and report.unembed_bias is None


def test_report_json_shape(tiny_llama):
    report = inspect_token(tiny_llama, 10, n_neighbors=4)
    payload = json.loads(json.dumps(report.to_json(), ensure_ascii=False))
    assert {"id", "text", "bytes_hex", "complete_utf8", "neighbors"} <= set(payload)
    assert payload["id"] == 10 and payload["text"] == tiny_llama.piece(10)
    assert payload["bytes_hex"] == report.bytes_hex
    assert len(payload["neighbors"]) == 4
    for n in payload["neighbors"]:
        assert {"id", "text", "cosine"} <= set(n) and isinstance(n["cosine"], float)
    assert inspect_token(tiny_llama, 10, n_neighbors=0).neighbors == ()


def test_bad_requests_raise_input_errors(tiny_llama):
    with pytest.raises(InputError, match="out of range"):
        inspect_token(tiny_llama, tiny_llama.d_vocab)
    with pytest.raises(InputError, match="tokens"):
        inspect_token(tiny_llama, "Sometimes, when people say plasma")
    with pytest.raises(InputError, match="neighbors"):
        inspect_token(tiny_llama, 3, n_neighbors=-1)


# ----------------------------------------------------------------- the embedded model
