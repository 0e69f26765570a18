"""The fused readout against TransformerLens 4's own ``logit_readout`` (the reference)."""

from __future__ import annotations

import pytest
import torch

from lenstui.core.errors import Cancelled
from lenstui.engine.lens.readout import read_out, unembedding
from lenstui.engine.model.caches import ModelCaches
from testkit.readout_reference import check_against_transformer_lens, residual_stack, transformer_lens_readout

PROMPT = "hello world, the city of Paris"


@pytest.mark.parametrize("positions", [1, 3, 8, 11])
def test_kl_of_a_few_positions_either_way_it_is_summed(tiny_llama, positions):
    # Under _MIXED_REFERENCES references (a generation step reads one position) KL's cross
    # term comes from the block's logit differences, from there on from one product with
    # the weight block: both are held to TransformerLens' full-vocabulary readout here.
    from lenstui.engine.lens.readout import _MIXED_REFERENCES

    text = "one two three four five six seven eight nine ten eleven twelve"
    vectors, n_pos = residual_stack(tiny_llama, text)
    assert n_pos >= positions
    rows = vectors.view(-1, n_pos, vectors.shape[-1])[:, n_pos - positions :]  # the last few positions
    picked = rows.reshape(-1, vectors.shape[-1])
    stats = check_against_transformer_lens(tiny_llama, picked, positions, top_k=3, block=97)
    assert torch.all(stats.kl[-positions:] == 0)  # the final row against itself
    assert (positions < _MIXED_REFERENCES) == (positions in (1, 3))  # both paths are taken


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
@pytest.mark.parametrize("block", [97, 4096])  # 97 does not divide the vocabulary
def test_matches_transformer_lens_on_tiny_models(fixture, block, request):
    model = request.getfixturevalue(fixture)
    assert model.d_vocab % 97 != 0
    vectors, n_pos = residual_stack(model, PROMPT)
    stats = check_against_transformer_lens(model, vectors, n_pos, top_k=5, block=block)
    # The final row is the reference itself: KL exactly 0.
    assert torch.all(stats.kl[-n_pos:] == 0)


def test_raw_mode_reads_without_the_final_norm(tiny_gpt2):
    vectors, n_pos = residual_stack(tiny_gpt2, PROMPT)
    check_against_transformer_lens(tiny_gpt2, vectors, n_pos, top_k=4, block=64, apply_ln=False)


def test_final_row_is_the_models_own_distribution(tiny_llama):
    vectors, n_pos = residual_stack(tiny_llama, PROMPT)
    ids = tiny_llama.tokenizer(PROMPT)["input_ids"]
    with torch.no_grad():
        own = torch.log_softmax(tiny_llama.bridge(torch.tensor([ids]))[0].float(), dim=-1)
    unembed = unembedding(tiny_llama)
    stats = read_out(unembed, unembed.normalize(vectors[-n_pos:]), top_k=3, block=50)
    assert torch.equal(stats.top_ids, own.topk(3).indices)
    assert torch.allclose(stats.top_probs, own.topk(3).values.exp(), atol=1e-5)
    assert torch.allclose(stats.entropy, -(own.exp() * own).sum(-1), atol=1e-5)


def test_several_targets_per_vector_and_ties():
    """Tokens whose unembedding rows are identical tie exactly: none counts as above the
    other, exactly like ``(logits > target_logit).sum()``; the top-k holds the whole tie."""
    from testkit.models import tiny_gpt2

    model = tiny_gpt2(seed=3)  # its own copy: its weights are edited below
    vectors, n_pos = residual_stack(model, PROMPT)
    hf = model.bridge.original_model
    with torch.no_grad():
        logits = hf.lm_head(model.bridge.ln_final(vectors[-1:][None])[0])[0]
        top = int(logits.argmax())
        low = int(logits.argmin())
        for twin in (7, 11):  # two more tokens identical to the top-1 ...
            hf.lm_head.weight[twin] = hf.lm_head.weight[top]
        for twin in (13, 17, 19):  # ... and three identical to the bottom-1
            hf.lm_head.weight[twin] = hf.lm_head.weight[low]
    model.caches = ModelCaches()
    unembed = unembedding(model)
    targets = torch.tensor([[top, 7, low, 13, 3]]).repeat(vectors.shape[0], 1)
    stats = read_out(unembed, unembed.normalize(vectors), top_k=5, targets=targets, reference=n_pos, block=37)
    ref = transformer_lens_readout(model, vectors, n_pos, targets)
    assert torch.equal(stats.target_ranks, ref["ranks"])
    last = stats.target_ranks[-1].tolist()
    assert last[0] == last[1] == 0  # tied at the top: nothing strictly above either
    assert last[2] == last[3] == model.d_vocab - 4  # the 4 tied bottom tokens: all others above
    assert set(stats.top_ids[-1, :3].tolist()) == {top, 7, 11}
    assert stats.top_logits[-1, 0] == stats.top_logits[-1, 2]
    check_against_transformer_lens(model, vectors, n_pos, top_k=2, block=37, ties=True)


def test_cancelled_between_vocabulary_blocks(tiny_llama):
    vectors, _ = residual_stack(tiny_llama, PROMPT)
    unembed = unembedding(tiny_llama)
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        read_out(unembed, unembed.normalize(vectors), top_k=2, block=50, should_stop=should_stop)


def test_half_precision_matmul_refines_top_k_and_targets_in_float32(tiny_llama):
    """The GPU path (matmul in the model's half dtype) run on CPU with a bfloat16 copy of
    the readout: ids and logits of the top-k and the targets are those of float32 arithmetic."""
    import dataclasses

    vectors, n_pos = residual_stack(tiny_llama, PROMPT)
    exact = unembedding(tiny_llama)
    half = dataclasses.replace(exact, weight=exact.weight.to(torch.bfloat16), compute_dtype=torch.bfloat16)
    targets = torch.randint(0, tiny_llama.d_vocab, (vectors.shape[0], 2), generator=torch.Generator().manual_seed(1))
    # The reference: the same (bfloat16-valued) weights, all in float32.
    exact = dataclasses.replace(exact, weight=half.weight.float())
    want = read_out(exact, exact.normalize(vectors), top_k=4, targets=targets, reference=n_pos, block=64)
    got = read_out(half, half.normalize(vectors), top_k=4, targets=targets, reference=n_pos, block=64)
    assert torch.equal(got.top_ids, want.top_ids)
    assert torch.allclose(got.top_logits, want.top_logits, atol=1e-5)
    assert torch.allclose(got.target_logits, want.target_logits, atol=1e-5)
    # The normaliser comes from the bfloat16 logits: close, not exact.
    assert torch.allclose(got.lse, want.lse, atol=0.05)
