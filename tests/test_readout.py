"""The fused readout against TransformerLens 4's own ``logit_readout`` (the reference)."""

from __future__ import annotations

import pytest
import torch

from lenstui.core.errors import Cancelled
from lenstui.engine.lens.readout import (
    log_prob_error_bound,
    logit_error_bound,
    prob_error_bound,
    read_out,
    unembedding,
)
from lenstui.engine.speak.geometry import float32_gamma
from lenstui.engine.model.caches import ModelCaches

PROMPT = "hello world, the city of Paris"


def _residuals(model, text=PROMPT):
    """The real residual stack of a prompt: [rows * positions, d] row-major, and positions."""
    from transformer_lens.tools.analysis import logit_lens

    ids = model.tokenizer(text)["input_ids"]
    names = [f"blocks.{i}.hook_resid_pre" for i in range(model.n_layers)]
    names.append(f"blocks.{model.n_layers - 1}.hook_resid_post")
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(torch.tensor([ids]), names_filter=names)
    stack = cache.accumulated_resid(layer=None, apply_ln=False)[:, 0]  # [rows, pos, d]
    assert logit_lens  # the reference module is importable
    return stack.reshape(-1, stack.shape[-1]).float(), len(ids)


def _reference(model, vectors, n_pos, targets, apply_ln=True):
    """Everything the readout reports, computed from TL's full [vectors, vocab] logits."""
    from transformer_lens.tools.analysis import logit_readout

    full = logit_readout(model.bridge, vectors, apply_ln=apply_ln, return_type="logits").values.float()
    final = logit_readout(model.bridge, vectors[-n_pos:], return_type="logits").values.float()
    lp = torch.log_softmax(full, dim=-1)
    final_lp = torch.log_softmax(final, dim=-1).repeat(vectors.shape[0] // n_pos, 1)
    target_logits = full.gather(1, targets)
    return {
        "logits": full,
        "entropy": -(lp.exp() * lp).sum(-1),
        "kl": (final_lp.exp() * (final_lp - lp)).sum(-1),
        "ranks": (full[:, None, :] > target_logits[:, :, None]).sum(-1),
        "target_logits": target_logits,
        "log_probs": lp,
    }


def _exact_logits(unembed, normed):
    """The logits of the (float32) normalised vectors in float64: exact to ~1e-16, so the
    reference both float32 readouts are held to, each within its own error bound."""
    weight = unembed.weight.double()
    logits = normed.double() @ weight.T
    if unembed.bias is not None:
        logits = logits + unembed.bias.double()
    assert unembed.transform is None  # (the models here have no softcap)
    return logits


def _assert_near_exact(name, ids, probs, exact_logits, logit_error, log_prob_error):
    """Float32 top-k ``ids``/``probs`` against float64: each id is the exact top-k's at its
    rank up to a near tie (the logit bounds of both tokens), each probability within the
    bound derived from the float32 error analysis (``readout.prob_error_bound``)."""
    k = ids.shape[1]
    exact_top = exact_logits.topk(k, dim=1)
    chosen = exact_logits.gather(1, ids)
    slack = logit_error.gather(1, ids) + logit_error.gather(1, exact_top.indices)
    assert torch.all((chosen - exact_top.values).abs() <= slack), f"{name}: top ids beyond a near tie"
    exact_probs = torch.log_softmax(exact_logits, dim=1).gather(1, ids).exp()
    bound = prob_error_bound(exact_probs, log_prob_error.gather(1, ids))
    error = (probs.double() - exact_probs).abs()
    worst = float((error / bound).max())
    assert torch.all(error <= bound), f"{name}: a probability off by {worst:.2f}x its float32 bound"
    return worst


def _check_against_tl(model, vectors, n_pos, *, top_k, block, apply_ln=True, ties=False):
    from transformer_lens.tools.analysis import logit_readout

    gen = torch.Generator().manual_seed(0)
    targets = torch.randint(0, model.d_vocab, (vectors.shape[0], 3), generator=gen)
    unembed = unembedding(model)
    final_normed = unembed.normalize(vectors[-n_pos:])
    stats = read_out(
        unembed,
        unembed.normalize(vectors, apply_norm=apply_ln),
        top_k=top_k,
        targets=targets,
        reference=n_pos if apply_ln else final_normed,
        block=block,
    )
    tl_top = logit_readout(model.bridge, vectors, apply_ln=apply_ln, top_k=top_k, return_type="probs")
    ref = _reference(model, vectors, n_pos, targets, apply_ln=apply_ln)
    # Same ids, except that among exactly tied logits either may come first.
    differ = stats.top_ids != tl_top.top_ids
    assert torch.equal(ref["logits"].gather(1, stats.top_ids)[differ], ref["logits"].gather(1, tl_top.top_ids)[differ])
    if not ties:
        assert torch.equal(stats.top_ids, tl_top.top_ids)
    # Both float32 readouts against float64 on the same normalised vectors, each within its
    # own rounding bound (not each other's rounding: two float32 sums in different orders
    # differ in the last bits, 2.8653e-02 vs 2.8654e-02 on the embedded model).
    normed = unembed.normalize(vectors, apply_norm=apply_ln)
    exact = _exact_logits(unembed, normed)
    eps = logit_error_bound(unembed, normed)
    ours = log_prob_error_bound(eps, exact, block)
    # TransformerLens normalises on its own (same module, maybe another kernel) and takes
    # one softmax over the whole vocabulary.
    eps_tl = logit_error_bound(unembed, normed, input_error=float32_gamma(normed.shape[1] + 8))
    theirs = log_prob_error_bound(eps_tl, exact, block=model.d_vocab)
    _assert_near_exact("lenstui", stats.top_ids, stats.top_probs, exact, eps, ours)
    _assert_near_exact("TransformerLens", tl_top.top_ids, tl_top.values, exact, eps_tl, theirs)
    assert torch.all((stats.top_logits.double() - exact.gather(1, stats.top_ids)).abs() <= eps.gather(1, stats.top_ids))
    # Entropy and KL are differences of float32 sums over logits as large as ~200 on the
    # embedded model, where one float32 ulp is 1.5e-5: the tolerance scales with them
    # (the reference itself is that far from a float64 computation).
    atol = 2e-5 * max(1.0, float(ref["logits"].abs().max()) / 20)
    assert torch.allclose(stats.entropy, tl_top.entropy.float(), atol=atol, rtol=1e-5)
    assert torch.allclose(stats.kl, ref["kl"], atol=atol, rtol=1e-5)
    assert torch.equal(stats.target_ranks, ref["ranks"])
    assert torch.all((stats.target_logits.double() - exact.gather(1, targets)).abs() <= eps.gather(1, targets))
    exact_lp = torch.log_softmax(exact, dim=1).gather(1, targets)
    target_bound = ours.gather(1, targets)
    assert torch.all((stats.log_probs(stats.target_logits).double() - exact_lp).abs() <= target_bound)
    assert torch.all((stats.target_probs.double() - exact_lp.exp()).abs() <= prob_error_bound(exact_lp.exp(), target_bound))
    return stats


@pytest.mark.parametrize("positions", [1, 3, 8, 11])
def test_kl_of_a_few_positions_either_way_it_is_summed(tiny_llama, positions):
    # Under _MIXED_REFERENCES references (a generation step reads one position) KL's cross
    # term comes from the block's logit differences, from there on from one product with
    # the weight block: both are held to TransformerLens' full-vocabulary readout here.
    from lenstui.engine.lens.readout import _MIXED_REFERENCES

    text = "one two three four five six seven eight nine ten eleven twelve"
    vectors, n_pos = _residuals(tiny_llama, text)
    assert n_pos >= positions
    rows = vectors.view(-1, n_pos, vectors.shape[-1])[:, n_pos - positions :]  # the last few positions
    picked = rows.reshape(-1, vectors.shape[-1])
    stats = _check_against_tl(tiny_llama, picked, positions, top_k=3, block=97)
    assert torch.all(stats.kl[-positions:] == 0)  # the final row against itself
    assert (positions < _MIXED_REFERENCES) == (positions in (1, 3))  # both paths are taken


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
@pytest.mark.parametrize("block", [97, 4096])  # 97 does not divide the vocabulary
def test_matches_transformer_lens_on_tiny_models(fixture, block, request):
    model = request.getfixturevalue(fixture)
    assert model.d_vocab % 97 != 0
    vectors, n_pos = _residuals(model)
    stats = _check_against_tl(model, vectors, n_pos, top_k=5, block=block)
    # The final row is the reference itself: KL exactly 0.
    assert torch.all(stats.kl[-n_pos:] == 0)


def test_raw_mode_reads_without_the_final_norm(tiny_gpt2):
    vectors, n_pos = _residuals(tiny_gpt2)
    _check_against_tl(tiny_gpt2, vectors, n_pos, top_k=4, block=64, apply_ln=False)


def test_final_row_is_the_models_own_distribution(tiny_llama):
    vectors, n_pos = _residuals(tiny_llama)
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
    vectors, n_pos = _residuals(model)
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
    ref = _reference(model, vectors, n_pos, targets)
    assert torch.equal(stats.target_ranks, ref["ranks"])
    last = stats.target_ranks[-1].tolist()
    assert last[0] == last[1] == 0  # tied at the top: nothing strictly above either
    assert last[2] == last[3] == model.d_vocab - 4  # the 4 tied bottom tokens: all others above
    assert set(stats.top_ids[-1, :3].tolist()) == {top, 7, 11}
    assert stats.top_logits[-1, 0] == stats.top_logits[-1, 2]
    _check_against_tl(model, vectors, n_pos, top_k=2, block=37, ties=True)


def test_cancelled_between_vocabulary_blocks(tiny_llama):
    vectors, _ = _residuals(tiny_llama)
    unembed = unembedding(tiny_llama)
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        read_out(unembed, unembed.normalize(vectors), top_k=2, block=50, should_stop=should_stop)


@pytest.mark.integration
def test_matches_transformer_lens_on_the_embedded_model(embedded):
    vectors, n_pos = _residuals(embedded, "The Eiffel Tower is located in the city of")
    assert embedded.d_vocab % 4000 != 0
    rows = vectors.view(-1, n_pos, vectors.shape[-1])[::6].reshape(-1, vectors.shape[-1])  # a few rows
    rows = torch.cat([rows, vectors[-n_pos:]])  # ... and the final row last (the KL reference)
    stats = _check_against_tl(embedded, rows, n_pos, top_k=10, block=4000)
    assert torch.all(stats.kl[-n_pos:] == 0)


def test_half_precision_matmul_refines_top_k_and_targets_in_float32(tiny_llama):
    """The GPU path (matmul in the model's half dtype) run on CPU with a bfloat16 copy of
    the readout: ids and logits of the top-k and the targets are those of float32 arithmetic."""
    import dataclasses

    vectors, n_pos = _residuals(tiny_llama)
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
