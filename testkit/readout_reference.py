"""The fused readout's references: a prompt's real residual stack from TransformerLens' own cache,
TransformerLens' own readout of it, exact float64 logits, and the check that holds lenstui's
readout to them within its error bounds (tests/unit/test_readout.py,
tests/integration/test_readout_embedded.py)."""

from __future__ import annotations

import torch

from lenstui.engine.lens.readout import (
    log_prob_error_bound,
    logit_error_bound,
    prob_error_bound,
    read_out,
    unembedding,
)
from lenstui.engine.speak.geometry import float32_gamma


def residual_stack(model, text: str):
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


def transformer_lens_readout(model, vectors, n_pos, targets, apply_ln=True):
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


def exact_logits(unembed, normed):
    """The logits of the (float32) normalised vectors in float64: exact to ~1e-16, so the
    reference both float32 readouts are held to, each within its own error bound."""
    weight = unembed.weight.double()
    logits = normed.double() @ weight.T
    if unembed.bias is not None:
        logits = logits + unembed.bias.double()
    assert unembed.transform is None  # (the models here have no softcap)
    return logits


def assert_near_exact(name, ids, probs, exact_logits, logit_error, log_prob_error):
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


def check_against_transformer_lens(model, vectors, n_pos, *, top_k, block, apply_ln=True, ties=False):
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
    ref = transformer_lens_readout(model, vectors, n_pos, targets, apply_ln=apply_ln)
    # Same ids, except that among exactly tied logits either may come first.
    differ = stats.top_ids != tl_top.top_ids
    assert torch.equal(ref["logits"].gather(1, stats.top_ids)[differ], ref["logits"].gather(1, tl_top.top_ids)[differ])
    if not ties:
        assert torch.equal(stats.top_ids, tl_top.top_ids)
    # Both float32 readouts against float64 on the same normalised vectors, each within its
    # own rounding bound (not each other's rounding: two float32 sums in different orders
    # differ in the last bits, 2.8653e-02 vs 2.8654e-02 on the embedded model).
    normed = unembed.normalize(vectors, apply_norm=apply_ln)
    exact = exact_logits(unembed, normed)
    eps = logit_error_bound(unembed, normed)
    ours = log_prob_error_bound(eps, exact, block)
    # TransformerLens normalises on its own (same module, maybe another kernel) and takes
    # one softmax over the whole vocabulary.
    eps_tl = logit_error_bound(unembed, normed, input_error=float32_gamma(normed.shape[1] + 8))
    theirs = log_prob_error_bound(eps_tl, exact, block=model.d_vocab)
    assert_near_exact("lenstui", stats.top_ids, stats.top_probs, exact, eps, ours)
    assert_near_exact("TransformerLens", tl_top.top_ids, tl_top.values, exact, eps_tl, theirs)
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
