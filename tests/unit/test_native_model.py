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

from lenstui.core.lenses import LensOptions
from lenstui.engine.lens.run import run_lens
from lenstui.engine.model.load import wrap_model
from testkit.checks import (
    assert_a_run_from_a_block_skips_the_blocks_below_and_agrees,
    assert_anatomy_is_the_bridges,
    assert_every_site_reads_and_writes_as_the_bridge_does,
    assert_plain_forward_captures_the_bridges_hook_points,
)
from testkit.models import tiny_gpt2, tiny_llama, tiny_tokenizer

PROMPT = "The Eiffel Tower is located in the city of Paris, hello world"


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])
def model(request):
    """Fresh tiny models (the embedded model's turn: tests/integration/test_native_model_embedded.py)."""
    return {"tiny_gpt2": tiny_gpt2, "tiny_llama": tiny_llama}[request.param]()


def test_the_anatomy_is_the_bridges_model(model):
    assert_anatomy_is_the_bridges(model)


def test_the_plain_forward_captures_the_bridges_hook_points(model):
    assert_plain_forward_captures_the_bridges_hook_points(model, PROMPT)


def test_every_site_reads_and_writes_as_the_bridge_does(model):
    assert_every_site_reads_and_writes_as_the_bridge_does(model, PROMPT)


def test_a_run_from_a_block_skips_the_blocks_below_and_agrees_with_running_them(model):
    assert_a_run_from_a_block_skips_the_blocks_below_and_agrees(model, PROMPT)


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


def test_a_model_the_anatomy_does_not_know_is_read_through_the_bridge(monkeypatch):
    from transformers import GemmaConfig, GemmaForCausalLM

    # (Gemma is read natively now: the anatomy is told it does not know it.)
    monkeypatch.setattr("lenstui.engine.model.load.find_anatomy", lambda hf: None)

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
    from testkit.cli import run_fresh

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
