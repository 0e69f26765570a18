"""Effective unembedding and nearest neighbours, checked against numpy float64 on the
Hugging Face weights (never through TransformerLens or lenstui's own code)."""

from __future__ import annotations

import dataclasses

import json
import math

import numpy as np
import pytest
import torch

from lenstui.core.errors import InputError
from lenstui.engine.inspect.geometry import effective_unembedding, final_norm_affine
from lenstui.engine.inspect.neighbors import inspect_token


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


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


def reference_geometry(W_rows, gain, beta, bias, layer_norm: bool):
    """(readout directions, offset c) in float64, straight from the definitions."""
    W = W_rows * gain
    c = bias + W_rows @ beta
    if layer_norm:
        W = W - W.mean(axis=1, keepdims=True)
    return W, c


def reference_report(W, c, token_id: int, n: int):
    norms = np.linalg.norm(W, axis=1)
    unit = W / np.maximum(norms, 1e-300)[:, None]
    cos = unit @ unit[token_id]
    order = [j for j in np.argsort(-cos, kind="stable") if j != token_id][:n]
    logits = W @ (math.sqrt(W.shape[1]) * unit[token_id]) + c
    others = np.delete(logits, token_id)
    return cos, order, int(np.argmax(logits)), float(logits[token_id] - others.max())


def assert_matches_reference(report, cos, order, best, margin):
    reported = [n.cosine for n in report.neighbors]
    assert reported == sorted(reported, reverse=True)
    assert report.id not in [n.id for n in report.neighbors]
    np.testing.assert_allclose(reported, cos[order], rtol=0, atol=2e-5)
    for n in report.neighbors:  # ids may only differ where cosines tie
        assert abs(cos[n.id] - n.cosine) < 2e-5
    assert report.best_match.id == best and report.own_best_match == (best == report.id)
    assert report.self_margin == pytest.approx(margin, rel=1e-4, abs=1e-4)


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
        expected = _np(hf.lm_head(hf.transformer.ln_f(x)))
    xs = _np(x)
    centred = xs - xs.mean(axis=1, keepdims=True)
    normalized = centred / np.sqrt((centred**2).mean(axis=1, keepdims=True) + hf.config.layer_norm_epsilon)
    np.testing.assert_allclose(normalized @ _np(W_eff).T + _np(c), expected, atol=2e-5)


def test_effective_unembedding_rmsnorm_tied(tiny_llama):
    hf = tiny_llama.bridge.original_model
    W_eff, c = effective_unembedding(tiny_llama)
    expected = _np(hf.lm_head.weight) * _np(hf.model.norm.weight)
    np.testing.assert_allclose(_np(W_eff), expected, atol=1e-6)
    assert not bool(c.any())


def test_gemma_offset_gain_and_the_probe_fallback():
    gemma = tiny_gemma()
    hf = gemma.bridge.original_model
    expected = _np(hf.lm_head.weight) * (1.0 + _np(hf.model.norm.weight))
    np.testing.assert_allclose(_np(effective_unembedding(gemma)[0]), expected, atol=1e-6)
    assert final_norm_affine(gemma).source == "weights"

    # A config that forgets the (1 + weight) convention: the probe notices and measures.
    forgetful = tiny_gemma()
    forgetful.caches.anatomy = dataclasses.replace(forgetful.anatomy, norm_offset=False)
    assert final_norm_affine(forgetful).source == "probe"
    np.testing.assert_allclose(_np(effective_unembedding(forgetful)[0]), expected, atol=1e-4)


# ----------------------------------------------------------------- neighbours


def test_layernorm_neighbours_against_float64(gpt2_ln):
    hf = gpt2_ln.bridge.original_model
    ln_f = hf.transformer.ln_f
    W, c = reference_geometry(
        _np(hf.lm_head.weight), _np(ln_f.weight), _np(ln_f.bias), np.zeros(gpt2_ln.d_vocab), layer_norm=True
    )
    for token_id in (0, 5, 77, 200, gpt2_ln.d_vocab - 1):
        report = inspect_token(gpt2_ln, token_id, n_neighbors=8)
        assert_matches_reference(report, *reference_report(W, c, token_id, 8))
        assert report.unembed_norm == pytest.approx(np.linalg.norm(_np(hf.lm_head.weight)[token_id]), rel=1e-5)
        assert report.effective_norm == pytest.approx(np.linalg.norm(W[token_id]), rel=1e-5)
        assert report.readout_offset == pytest.approx(c[token_id], abs=1e-5)
        assert report.unembed_bias is None  # GPT-2's lm_head has no bias


def test_untied_model_also_gets_embedding_neighbours(gpt2_ln):
    hf = gpt2_ln.bridge.original_model
    E = _np(hf.transformer.wte.weight)
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


@pytest.mark.integration
def test_embedded_fish_head_report(embedded):
    hf = embedded.bridge.original_model
    W, c = reference_geometry(
        _np(hf.lm_head.weight), _np(hf.model.norm.weight), np.zeros(embedded.d_model), np.zeros(embedded.d_vocab), layer_norm=False
    )
    report = inspect_token(embedded, "ĠðŁ", n_neighbors=10)
    assert report.id == 15107 and report.piece == "ĠðŁ" and report.bytes_hex == "20 f0 9f"
    assert not report.complete_utf8
    assert report.utf8_description == "space, then the first 2 of 4 bytes of a 4-byte character"
    assert report.tied_embedding and report.norm_kind == "RMS"
    assert_matches_reference(report, *reference_report(W, c, 15107, 10))
    # Its nearest readout neighbours are other emoji-prefix pieces.
    assert {"ĠðŁĺ", "ðŁ"} <= {n.piece for n in report.neighbors[:3]}


@pytest.mark.integration
def test_embedded_own_best_match_against_float64(embedded):
    hf = embedded.bridge.original_model
    W, c = reference_geometry(
        _np(hf.lm_head.weight), _np(hf.model.norm.weight), np.zeros(embedded.d_model), np.zeros(embedded.d_vocab), layer_norm=False
    )
    for token_id in (234, 250, 1000, 30000):
        report = inspect_token(embedded, token_id, n_neighbors=3)
        assert_matches_reference(report, *reference_report(W, c, token_id, 3))
