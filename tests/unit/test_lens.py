"""The lens engine on tiny local models (the embedded model: tests/integration/test_lens_embedded.py)."""

from __future__ import annotations

import pytest
import torch

from lenstui.core.lenses import LensOptions
from lenstui.core.errors import Cancelled, InputError
from lenstui.engine.lens.run import run_lens
from testkit.checks import model_log_probs

PROMPT = "hello world, the city of Paris"


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_final_row_reproduces_the_models_own_distribution(fixture, request):
    model = request.getfixturevalue(fixture)
    result = run_lens(model, PROMPT, LensOptions(top_k=5))
    ids = result.token_ids
    log_probs = model_log_probs(model, ids)
    final = result.grid[-1]
    for pos, cell in enumerate(final):
        expected = torch.topk(log_probs[pos], 5)
        assert [t.id for t in cell.top] == expected.indices.tolist()
        assert [t.prob for t in cell.top] == pytest.approx(expected.values.exp().tolist(), rel=1e-4, abs=1e-6)
        entropy = -(log_probs[pos].exp() * log_probs[pos]).sum().item()
        assert cell.entropy == pytest.approx(entropy, rel=1e-4, abs=1e-5)
        assert cell.kl_to_final == pytest.approx(0.0, abs=1e-5)
        assert cell.target_rank == 0  # default target: the model's own top-1


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_grid_shape_labels_and_probabilities(fixture, request):
    model = request.getfixturevalue(fixture)
    result = run_lens(model, PROMPT, LensOptions(top_k=4))
    n_layers = model.n_layers
    assert result.layers == ["embed"] + [f"L{i}" for i in range(n_layers)]
    assert len(result.grid) == n_layers + 1
    assert all(len(row) == len(result.tokens) for row in result.grid)
    for row in result.grid:
        for cell in row:
            probs = [t.prob for t in cell.top]
            assert probs == sorted(probs, reverse=True)
            assert all(0.0 <= p <= 1.0 for p in probs)
            assert cell.entropy >= 0 and cell.kl_to_final >= 0
            assert 0 <= cell.target_rank < model.d_vocab
    # The tokens are the tokenizer's own encoding of the prompt.
    assert result.token_ids == model.tokenizer(PROMPT)["input_ids"]
    assert "".join(t.text for t in result.tokens) == PROMPT


def test_intermediate_row_matches_an_independent_readout(tiny_gpt2):
    """Row L0 = ln_final(resid after block 0) @ W_U + b_U, computed here from HF's own
    hidden states and weights, not through TransformerLens."""
    hf = tiny_gpt2.bridge.original_model
    ids = tiny_gpt2.tokenizer(PROMPT)["input_ids"]
    result = run_lens(tiny_gpt2, ids, LensOptions(top_k=3))
    with torch.no_grad():
        hidden = hf(torch.tensor([ids]), output_hidden_states=True).hidden_states[1][0]
        ln = hf.transformer.ln_f
        normed = torch.nn.functional.layer_norm(hidden, (hidden.shape[-1],), ln.weight, ln.bias, ln.eps)
        logits = normed @ hf.lm_head.weight.T
    lp = torch.log_softmax(logits, dim=-1)
    for pos, cell in enumerate(result.grid[1]):
        assert cell.top[0].id == int(lp[pos].argmax())
        assert cell.top[0].prob == pytest.approx(lp[pos].max().exp().item(), rel=1e-4)
        kl = (result_final := model_log_probs(tiny_gpt2, ids))[pos].exp() @ (result_final[pos] - lp[pos])
        assert cell.kl_to_final == pytest.approx(kl.item(), rel=1e-3, abs=1e-5)


def test_mid_rows_are_interleaved(tiny_llama):
    result = run_lens(tiny_llama, PROMPT, LensOptions(incl_mid=True))
    assert result.layers == ["embed", "L0.attn", "L0", "L1.attn", "L1", "L2.attn", "L2"]
    plain = run_lens(tiny_llama, PROMPT)
    assert [c.top[0].id for c in result.grid[-1]] == [c.top[0].id for c in plain.grid[-1]]


def test_raw_lens_skips_the_final_norm(tiny_gpt2):
    ids = tiny_gpt2.tokenizer(PROMPT)["input_ids"]
    raw = run_lens(tiny_gpt2, ids, LensOptions(lens="raw", top_k=1))
    hf = tiny_gpt2.bridge.original_model
    with torch.no_grad():
        hidden = hf(torch.tensor([ids]), output_hidden_states=True).hidden_states[1][0]
        logits = hidden @ hf.lm_head.weight.T
    assert [c.top[0].id for c in raw.grid[1]] == logits.argmax(-1).tolist()
    assert [c.top[0].logit for c in raw.grid[1]] == pytest.approx(logits.max(-1).values.tolist(), rel=1e-4)


def test_extended_lens_runs_rows_through_the_last_blocks(tiny_llama):
    """With 2 decoder blocks (cut at block 1), the embedding row is read as if block 0
    were skipped: checked against HF with block 0 replaced by the identity."""
    ids = tiny_llama.tokenizer(PROMPT)["input_ids"]
    result = run_lens(tiny_llama, ids, LensOptions(lens="extended", extended_blocks=2, top_k=3))
    assert result.extended_blocks == 2
    from testkit.models import tiny_llama_hf

    hf, _ = tiny_llama_hf()  # same seed: same weights, unwrapped
    skip = hf.model.layers[0].register_forward_hook(
        lambda module, args, kwargs, output: args[0] if args else kwargs["hidden_states"],
        with_kwargs=True,
    )
    with torch.no_grad():
        expected = torch.log_softmax(hf(torch.tensor([ids])).logits[0], dim=-1)
    skip.remove()
    for pos, cell in enumerate(result.grid[0]):
        assert cell.top[0].id == int(expected[pos].argmax())
        assert cell.top[0].prob == pytest.approx(expected[pos].max().exp().item(), rel=1e-3)
    # Rows at or past the cut are already inside the decoder: they read as the output.
    final_ids = [c.top[0].id for c in result.grid[-1]]
    for row in result.grid[2:]:
        assert [c.top[0].id for c in row] == final_ids
        assert all(c.kl_to_final == pytest.approx(0.0, abs=1e-5) for c in row)


def test_custom_target_is_ranked_everywhere(tiny_llama):
    target_id = tiny_llama.tokenizer.encode(" Paris", add_special_tokens=False)
    assert len(target_id) == 1
    result = run_lens(tiny_llama, PROMPT, LensOptions(target=" Paris"))
    assert not result.target_is_default
    assert {t.id for t in result.targets} == set(target_id)
    lp = model_log_probs(tiny_llama, result.token_ids)
    for pos, cell in enumerate(result.grid[-1]):
        assert cell.target_rank == int((lp[pos] > lp[pos, target_id[0]]).sum())
        assert cell.target_prob == pytest.approx(lp[pos, target_id[0]].exp().item(), rel=1e-4)


def test_token_id_prompts_work_and_next_token_is_greedy(tiny_llama):
    ids = tiny_llama.tokenizer(PROMPT)["input_ids"]
    result = run_lens(tiny_llama, ids)
    assert result.token_ids == ids
    assert result.next_token.id == int(model_log_probs(tiny_llama, ids)[-1].argmax())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": ""}, "The prompt is empty"),
        ({"prompt": "x " * 200}, "reads at most 64"),
        ({"prompt": [10**6]}, "outside the vocabulary"),
        ({"prompt": "hi", "lens": "nope"}, "Unknown lens"),
        ({"prompt": "hi", "top_k": 0}, "top-k must be between"),
        ({"prompt": "hi", "lens": "extended", "extended_blocks": 3}, "needs 1..2 decoder blocks"),
        ({"prompt": "hi", "target": "the city of Paris"}, "not one"),
    ],
)
def test_bad_input_gets_a_clear_message(tiny_llama, kwargs, message):
    prompt = kwargs.pop("prompt")
    with pytest.raises(InputError, match=message):
        run_lens(tiny_llama, prompt, LensOptions(**kwargs))


def test_cancellation_between_rows(tiny_llama):
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(Cancelled):
        run_lens(tiny_llama, PROMPT, should_stop=should_stop)


def test_json_shape(tiny_gpt2):
    payload = run_lens(tiny_gpt2, PROMPT, LensOptions(top_k=2)).to_json()
    assert payload["model"] == "tiny-gpt2" and payload["lens"] == "logit"
    assert [t["id"] for t in payload["tokens"]] == tiny_gpt2.tokenizer(PROMPT)["input_ids"]
    assert payload["layers"][0] == "embed" and len(payload["grid"]) == len(payload["layers"])
    cell = payload["grid"][-1][-1]
    assert set(cell) >= {"top", "entropy", "kl_to_final"}
    assert set(cell["top"][0]) >= {"id", "text", "prob"}
    assert all(isinstance(t["prob"], float) for t in cell["top"])
