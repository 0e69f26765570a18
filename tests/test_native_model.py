"""The plain transformers model reads what TransformerLens' bridge reads.

The lens runs on the plain model where ``engine/model/anatomy.py`` knows the
architecture: these tests hold its parts (unembedding, embedding, final norm, context
length) and its residual stack (every block's input, the last block's output, the mid
residuals; full and incremental forwards with the KV cache) to the bridge's own hook
points, the reference. A model the anatomy does not know is read through the bridge.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from lenstui.core.lenses import LensOptions
from lenstui.engine.model.forward import SITE_KINDS, BridgeForward, NativeForward, Site, stack_sites
from lenstui.engine.lens.run import run_lens
from lenstui.engine.model.load import wrap_model
from testkit.models import tiny_gpt2, tiny_llama, tiny_tokenizer

PROMPT = "The Eiffel Tower is located in the city of Paris, hello world"


@pytest.fixture(params=["tiny_gpt2", "tiny_llama", "embedded"])
def model(request):
    if request.param == "embedded":
        return request.getfixturevalue("embedded")
    return {"tiny_gpt2": tiny_gpt2, "tiny_llama": tiny_llama}[request.param]()


def test_the_anatomy_is_the_bridges_model(model):
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


def _stack(run, sites):
    return torch.stack([run.values[site][0] for site in sites])


def test_the_plain_forward_captures_the_bridges_hook_points(model):
    ids = model.tokenizer(PROMPT)["input_ids"]
    head, tail = ids[:-3], ids[-3:]
    plain_cache, bridge_cache = DynamicCache(), DynamicCache()
    resid, mid = stack_sites(model.n_layers, mid=True)
    for chunk in (head, tail):  # a full forward, then an incremental one over the cache
        tokens = torch.tensor([chunk])
        plain = NativeForward(model).run(tokens, kv=plain_cache, reads=resid + mid, logits=True)
        bridge = BridgeForward(model).run(tokens, kv=bridge_cache, reads=resid + mid, logits=True)
        plain_pre, bridge_pre = _stack(plain, resid), _stack(bridge, resid)
        scale = bridge_pre.abs().max().item()
        assert plain_pre.shape == bridge_pre.shape == (model.n_layers + 1, len(chunk), model.d_model)
        assert (plain_pre - bridge_pre).abs().max().item() <= 1e-6 * max(1.0, scale)
        assert (_stack(plain, mid) - _stack(bridge, mid)).abs().max().item() <= 1e-6 * max(1.0, scale)
        assert torch.allclose(plain.logits, bridge.logits, atol=1e-4, rtol=1e-5)
    assert plain_cache.get_seq_length() == len(ids)


def test_every_site_reads_and_writes_as_the_bridge_does(model):
    """Each intervention site of the native machinery (resid, mid, attn, mlp, the per-head
    output) holds what the bridge's hook point holds, and an edit there changes the rest
    of the forward exactly as the same edit on the bridge does."""
    ids = model.tokenizer(PROMPT)["input_ids"][:9]
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


def test_a_run_from_a_block_skips_the_blocks_below_and_agrees_with_running_them(model):
    from lenstui.engine.model.forward import kv_prefix

    ids = model.tokenizer(PROMPT)["input_ids"][:10]
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


def test_the_lens_never_boots_the_bridge_and_agrees_with_it():
    plain, reference = tiny_llama(), tiny_llama()
    reference.caches.anatomy, reference.caches.anatomy_known = None, True  # read through the bridge
    for options in ({}, {"incl_mid": True}, {"lens": "extended", "extended_blocks": 2}, {"lens": "raw"}):
        got = run_lens(plain, PROMPT, LensOptions(**options))
        want = run_lens(reference, PROMPT, LensOptions(**options))
        for got_row, want_row in zip(got.grid, want.grid):
            for a, b in zip(got_row, want_row):
                assert [t.id for t in a.top] == [t.id for t in b.top]
                assert a.kl_to_final == pytest.approx(b.kl_to_final, abs=1e-5)
                assert a.target_prob == pytest.approx(b.target_prob, abs=1e-6)
    assert not plain.has_bridge and reference.has_bridge


def test_a_model_the_anatomy_does_not_know_is_read_through_the_bridge():
    from transformers import GemmaConfig, GemmaForCausalLM

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    config = GemmaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    model = wrap_model(GemmaForCausalLM(config), tokenizer, name="tiny-gemma", device="cpu")
    assert model.anatomy is None  # offset RMSNorm, scaled embeddings: the bridge knows them
    result = run_lens(model, PROMPT)
    assert model.has_bridge and len(result.layers) == 3
    final = model.hf(torch.tensor([result.token_ids])).logits[0]
    assert [row.top[0].id for row in [c for c in result.grid[-1]]] == final.argmax(-1).tolist()


def test_a_lens_run_imports_no_transformer_lens(tmp_path):
    from test_contracts import run_fresh

    done = run_fresh(
        """
        import sys
        from testkit.models import tiny_llama
        from lenstui.core.lenses import LensOptions
        from lenstui.engine.lens.run import run_lens
        from lenstui.engine.model.generate import greedy_ids
        model = tiny_llama()
        result = run_lens(model, "hello world, hello tokens", LensOptions(top_k=5))
        greedy_ids(model, result.token_ids, 3)
        print(sorted(m for m in sys.modules if m.split(".")[0] == "transformer_lens"))
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
