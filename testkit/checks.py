"""References and checks shared by a tiny-model test (tests/unit) and its twin on the embedded
model (tests/integration): logits through the model's own modules, never lenstui's readout; a
lens run from a fresh state to hold the incremental one to; the native forward held to the
TransformerLens bridge's hook points (parts, residual stack, every site, a run from a block)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from lenstui.core.lenses import LensOptions
from lenstui.engine.lens.state import LensState
from lenstui.engine.model.forward import SITE_KINDS, BridgeForward, NativeForward, Site, kv_prefix, stack_sites


def real_logits(bridge, x: torch.Tensor) -> torch.Tensor:
    """Through the model's own final norm and W_U (and b_U when it has one), float32."""
    with torch.no_grad():
        logits = bridge.ln_final(x.to(torch.float32)[None, None, :])[0, 0] @ bridge.W_U
        b_U = getattr(bridge, "b_U", None)
        return logits + b_U if isinstance(b_U, torch.Tensor) else logits


def model_log_probs(model, ids):
    """The model's own next-token log-probabilities at every position (its full forward)."""
    with torch.no_grad():
        logits = model.bridge(torch.tensor([ids]))
    return torch.log_softmax(logits[0].float(), dim=-1)


def scratch_lens(model, ids, **settings):
    """A from-scratch run: a fresh state that has seen nothing before."""
    state = LensState(model)
    state.prepare(ids, LensOptions(**settings))
    return state.result()


def assert_same_lens(got, want):
    """Two lens results agree cell by cell: ids exactly, numbers within float32 noise."""
    assert got.layers == want.layers and got.token_ids == want.token_ids
    assert [t.id for t in got.targets] == [t.id for t in want.targets]
    for row_got, row_want in zip(got.grid, want.grid, strict=True):
        for a, b in zip(row_got, row_want, strict=True):
            assert [t.id for t in a.top] == [t.id for t in b.top]
            assert [t.prob for t in a.top] == pytest.approx([t.prob for t in b.top], abs=1e-5)
            assert a.entropy == pytest.approx(b.entropy, abs=5e-5, rel=1e-5)
            assert a.kl_to_final == pytest.approx(b.kl_to_final, abs=5e-5, rel=1e-5)
            assert a.target_rank == b.target_rank
            assert a.target_prob == pytest.approx(b.target_prob, abs=1e-5)


def assert_cells_equal(a, b) -> None:
    """Two lens cells agree: the same top tokens, probabilities within float32 noise, the same target rank."""
    assert [t.id for t in a.top] == [t.id for t in b.top]
    assert [t.prob for t in a.top] == pytest.approx([t.prob for t in b.top], abs=1e-5)
    assert a.target_rank == b.target_rank


def _stacked(run, sites):
    return torch.stack([run.values[site][0] for site in sites])


def assert_anatomy_is_the_bridges(model):
    """The plain model's parts (unembedding, embedding, final norm, sizes) are the bridge's own."""
    bridge = model.bridge
    assert model.anatomy is not None
    assert torch.equal(model.W_U, bridge.W_U)
    assert model.W_U.data_ptr() == bridge.W_U.data_ptr()  # one copy of the weights
    assert torch.equal(model.W_E, bridge.W_E)
    bias = getattr(bridge, "b_U", None)
    if model.b_U is None:
        assert bias is None or not bool(bias.any())
    else:
        assert torch.equal(model.b_U, bias)
    assert model.n_ctx == bridge.cfg.n_ctx
    assert model.d_model == bridge.cfg.d_model and model.n_layers == bridge.cfg.n_layers
    assert model.d_vocab == bridge.cfg.d_vocab
    assert model.normalization_type == bridge.cfg.normalization_type
    x = torch.randn(1, 5, model.d_model) * 3
    assert torch.allclose(model.ln_final(x), bridge.ln_final(x), atol=1e-6, rtol=1e-6)


def assert_plain_forward_captures_the_bridges_hook_points(model, prompt: str):
    """The plain forward's residual stack (full, then incremental over the KV cache) equals
    what the bridge's hook points capture."""
    ids = model.tokenizer(prompt)["input_ids"]
    head, tail = ids[:-3], ids[-3:]
    plain_cache, bridge_cache = DynamicCache(), DynamicCache()
    resid, mid = stack_sites(model.n_layers, mid=True)
    for chunk in (head, tail):  # a full forward, then an incremental one over the cache
        tokens = torch.tensor([chunk])
        plain = NativeForward(model).run(tokens, kv=plain_cache, reads=resid + mid, logits=True)
        bridge = BridgeForward(model).run(tokens, kv=bridge_cache, reads=resid + mid, logits=True)
        plain_pre, bridge_pre = _stacked(plain, resid), _stacked(bridge, resid)
        scale = bridge_pre.abs().max().item()
        assert plain_pre.shape == bridge_pre.shape == (model.n_layers + 1, len(chunk), model.d_model)
        assert (plain_pre - bridge_pre).abs().max().item() <= 1e-6 * max(1.0, scale)
        assert (_stacked(plain, mid) - _stacked(bridge, mid)).abs().max().item() <= 1e-6 * max(1.0, scale)
        assert torch.allclose(plain.logits, bridge.logits, atol=1e-4, rtol=1e-5)
    assert plain_cache.get_seq_length() == len(ids)


def assert_every_site_reads_and_writes_as_the_bridge_does(model, prompt: str):
    """Each intervention site of the native machinery (resid, mid, attn, mlp, the per-head
    output) holds what the bridge's hook point holds, and an edit there changes the rest
    of the forward exactly as the same edit on the bridge does."""
    ids = model.tokenizer(prompt)["input_ids"][:9]
    tokens = torch.tensor([ids])
    layer = model.n_layers // 2
    sites = [Site(kind, layer) for kind in SITE_KINDS]
    final = Site("resid", model.n_layers - 1)
    plain = NativeForward(model).run(tokens, reads=[*sites, final], logits=True)
    bridge = BridgeForward(model).run(tokens, reads=sites, logits=True)
    for site in sites:
        a, b = plain.values[site], bridge.values[site]
        assert a.shape == b.shape, site
        assert (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item()), site
    for site in sites:
        if site.kind == "mid":
            continue  # read only

        def edit(x):
            x = x.clone()
            x[:, 4] = x[:, 4] * 0.5 + 0.25
            return x

        got = NativeForward(model).run(tokens, edits=[(site, edit)], reads=[final])
        want = BridgeForward(model).run(tokens, edits=[(site, edit)], reads=[final])
        assert not torch.allclose(got.values[final], plain.values[final]), site  # the edit did something
        a, b = got.values[final], want.values[final]
        assert (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item()), site


def assert_a_run_from_a_block_skips_the_blocks_below_and_agrees(model, prompt: str):
    """A run from a block (the blocks below skipped, their KV prefix kept) equals running them."""
    ids = model.tokenizer(prompt)["input_ids"][:10]
    resid, _ = stack_sites(model.n_layers)
    cache = DynamicCache()
    clean = NativeForward(model).run(torch.tensor([ids]), kv=cache, reads=resid)
    forward = NativeForward(model)
    forward.run(torch.tensor([ids[:2]]), reads=resid)  # learns the blocks' output form
    start, block = 6, model.n_layers - 1
    hidden = clean.values[resid[block]][:, start:]  # block `block`'s input
    final = resid[-1]
    first = forward.run(torch.tensor([ids[start:]]), kv=kv_prefix(cache, start), start_block=block, hidden=hidden,
                        reads=[final])
    assert forward.skipping_works is True  # checked once against running every block
    again = forward.run(torch.tensor([ids[start:]]), kv=kv_prefix(cache, start), start_block=block, hidden=hidden,
                        reads=[final])
    assert first.skipped and again.skipped  # (the first one was also run whole, to check)
    want = clean.values[final][:, start:]
    for run in (first, again):
        assert (run.values[final] - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())
