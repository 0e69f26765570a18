"""Direct logit attribution, checked against the Hugging Face models themselves.

The references here never go through TransformerLens: hidden states, attention patterns
and the inputs of each output projection come from an unwrapped copy of the same
weights (the bridge rewires the modules it wraps), and the final norm, head outputs and
unembedding are redone in numpy float64.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lenstui.core.lenses import LensOptions
from lenstui.core.errors import Cancelled, InputError
from lenstui.engine.attribution import attribute, attribution_hook_names
from lenstui.engine.lens.run import run_lens
from lenstui.engine.model.load import wrap_model

PROMPT = "Sometimes, when people say plasma, they mean a state of matter."
PLASMA = (
    "Sometimes, when people say plasma, they mean a state of matter. "
    "Other times, when people say plasma"
)


class Reference:
    """An unwrapped float64 copy of a model plus how to reach its parts."""

    def __init__(self, hf, family: str):
        self.hf = copy.deepcopy(hf).double().eval()
        self.hf.set_attn_implementation("eager")  # so output_attentions returns the weights
        self.family = family
        if family == "gpt2":
            self.norm = self.hf.transformer.ln_f
            self.blocks = [b.attn.c_proj for b in self.hf.transformer.h]
            self.eps = self.norm.eps
            self.n_heads = self.hf.config.n_head
        else:
            self.norm = self.hf.model.norm
            self.blocks = [layer.self_attn.o_proj for layer in self.hf.model.layers]
            self.eps = self.norm.variance_epsilon
            self.n_heads = self.hf.config.num_attention_heads
        self.w_u = self.hf.lm_head.weight.detach().numpy().T  # [d_model, d_vocab]
        bias = getattr(self.hf.lm_head, "bias", None)
        self.b_u = None if bias is None else bias.detach().numpy()
        self.w = self.norm.weight.detach().numpy()
        norm_bias = getattr(self.norm, "bias", None)
        self.b = None if norm_bias is None else norm_bias.detach().numpy()

    def run(self, ids, row, position):
        """Pre-norm residual at the row, the per-block inputs of W_O, attention rows."""
        captured = {}
        handles = [
            proj.register_forward_pre_hook(lambda m, args, i=i: captured.__setitem__(i, args[0][0]))
            for i, proj in enumerate(self.blocks)
        ]
        handles.append(self.norm.register_forward_pre_hook(lambda m, args: captured.__setitem__("final", args[0][0])))
        with torch.no_grad():
            out = self.hf(torch.tensor([ids]), output_hidden_states=True, output_attentions=True)
        for handle in handles:
            handle.remove()
        n_layers = len(self.blocks)
        resid = captured["final"] if row == n_layers else out.hidden_states[row][0]
        return {
            "resid": resid[position].numpy(),
            "z": {b: captured[b][position].numpy() for b in range(n_layers)},
            "attentions": [a[0, :, position, : position + 1].numpy() for a in out.attentions],
            "final_logits": out.logits[0, position].numpy(),
        }

    def centered(self, x):
        return x - x.mean(axis=-1, keepdims=True) if self.family == "gpt2" else x

    def scale(self, resid):
        x = self.centered(resid)
        return np.sqrt((x * x).mean() + self.eps)

    def logits(self, resid):
        normed = self.centered(resid) / self.scale(resid) * self.w
        if self.b is not None:
            normed = normed + self.b
        logits = normed @ self.w_u
        return logits if self.b_u is None else logits + self.b_u

    def direction(self, token, contrast):
        base = self.w_u.mean(axis=1) if contrast is None else self.w_u[:, contrast]
        return self.w_u[:, token] - base

    def readout(self, vector, resid, token, contrast):
        """A component's direct contribution: frozen scale, final norm weight, unembedding."""
        return float(self.centered(vector) / self.scale(resid) * self.w @ self.direction(token, contrast))

    def head_output(self, block, head, z):
        d_head = z.shape[-1] // self.n_heads
        part = z[head * d_head : (head + 1) * d_head]
        weight = self.blocks[block].weight.detach().numpy()
        # GPT-2's Conv1D stores [d_in, d_out]; Linear stores [d_out, d_in].
        rows = weight[head * d_head : (head + 1) * d_head] if self.family == "gpt2" else weight[:, head * d_head : (head + 1) * d_head].T
        return part @ rows

    def o_bias(self, block):
        bias = self.blocks[block].bias
        return None if bias is None else bias.detach().numpy()


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


@pytest.fixture(scope="module")
def embedded_reference(embedded):
    """The embedded model's dequantized weights, loaded again without the bridge."""
    from transformers import AutoModelForCausalLM

    from lenstui.engine.model.load import embedded_gguf_path, file_sha256
    from lenstui.store.paths import cache_root

    folder = cache_root() / "gguf" / file_sha256(embedded_gguf_path())[:32]
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return Reference(hf, "llama")


def _check_sum_and_parts(model, reference, ids, row, position, token=None, contrast=None, tol=1e-4):
    result = attribute(model, ids, position=position, layer=row, token=token, contrast=contrast, heads=5)
    ref = reference.run(ids, row, position)
    logits = reference.logits(ref["resid"])
    if row == model.n_layers:  # the reference's own readout is the model's output
        # (HF's RMSNorm computes in float32 even in a float64 model: 1e-8 apart)
        np.testing.assert_allclose(logits, ref["final_logits"], rtol=1e-6, atol=1e-6)
    t = result.token.id
    if token is None:
        assert t == int(np.argmax(logits))
    c = None if contrast is None else result.contrast.id
    expected = logits[t] - (logits.mean() if c is None else logits[c])
    spread = max(1.0, float(np.abs(logits).max()))
    assert result.total == pytest.approx(expected, abs=tol * spread)
    # The parts add up to the row's logit (difference): the frozen scale makes it exact.
    assert result.component_sum == pytest.approx(expected, abs=tol * spread)
    assert abs(result.unexplained) < tol * spread
    assert result.norm_scale == pytest.approx(reference.scale(ref["resid"]), rel=1e-4)

    parts = {component.name: component.contribution for component in result.components}
    # The token embedding alone, read independently.
    embed = reference.hf.get_input_embeddings().weight[ids[position]].detach().numpy()
    assert parts["embed"] == pytest.approx(reference.readout(embed, ref["resid"], t, c), abs=tol * spread)
    # Every head, from the input of its block's output projection.
    for block in range(row):
        for head in range(reference.n_heads):
            output = reference.head_output(block, head, ref["z"][block])
            assert result.head_grid[block][head] == pytest.approx(
                reference.readout(output, ref["resid"], t, c), abs=tol * spread
            )
        # Heads + the output bias = the attention output's contribution.
        bias = reference.o_bias(block)
        expected_bias = 0.0 if bias is None else reference.readout(bias, ref["resid"], t, c)
        assert result.attn_bias[block] == pytest.approx(expected_bias, abs=tol * spread)
        assert sum(result.head_grid[block]) + result.attn_bias[block] == pytest.approx(
            parts[f"L{block}.attn"], abs=tol * spread
        )
    # Top heads: ordered by |contribution|, their attention rows are HF's own.
    magnitudes = [abs(h.contribution) for h in result.heads]
    assert magnitudes == sorted(magnitudes, reverse=True)
    all_heads = sorted((abs(v) for blk in result.head_grid for v in blk), reverse=True)
    assert magnitudes == pytest.approx(all_heads[: len(magnitudes)])
    for head in result.heads:
        weights = np.array(head.pattern)
        assert weights.sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(weights, ref["attentions"][head.layer][head.head], atol=1e-5)
        assert head.attends_to[0].weight == pytest.approx(weights.max())
        assert head.attends_to[0].token.id == ids[head.attends_to[0].position]
    return result, expected


@pytest.mark.parametrize("row", [0, 1, 2, 3])
def test_parts_add_up_to_the_rows_logit_on_tiny_models(tiny, row):
    model, reference = tiny
    ids = model.tokenizer(PROMPT)["input_ids"]
    result, _ = _check_sum_and_parts(model, reference, ids, row, position=7)
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
    result, expected = _check_sum_and_parts(
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


@pytest.mark.integration
@pytest.mark.parametrize("row", [12, 30])
def test_embedded_parts_add_up(embedded, embedded_reference, row):
    ids = embedded.tokenizer(PLASMA)["input_ids"]
    say = [i for i, t in enumerate(ids) if embedded.decode(t) == " say"][1]
    result, _ = _check_sum_and_parts(embedded, embedded_reference, ids, row, position=say, token=" plasma")
    assert result.token.text == " plasma"
    assert [c.name for c in result.components][:3] == ["embed", "L0.attn", "L0.mlp"]
    assert len(result.components) == 1 + 2 * row  # no pos_embed, no biases in SmolLM2


@pytest.mark.integration
def test_embedded_contrast(embedded, embedded_reference):
    ids = embedded.tokenizer(PLASMA)["input_ids"]
    _check_sum_and_parts(embedded, embedded_reference, ids, 30, position=len(ids) - 1, token=",", contrast=" is")
