"""Random-weight models written to a folder, so they load the way a user's checkpoint does
(``load_model(folder, placement=...)``: accelerate's device maps, the offload folder,
bitsandbytes' quantization all start from files on disk)."""

from __future__ import annotations

from pathlib import Path

import torch

from testkit.models import tiny_tokenizer


def saved_llama(
    folder: Path,
    *,
    hidden: int = 64,
    layers: int = 3,
    intermediate: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 0,
    tied: bool = True,
    seed: int = 0,
    initializer_range: float = 0.2,
) -> Path:
    """A random Llama (and the tiny byte-level tokenizer) saved as safetensors in
    ``folder``; ``vocab`` 0: the tokenizer's own size. A larger ``initializer_range`` than
    Llama's 0.02 gives peaked distributions (a top-k that means something)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab or len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        initializer_range=initializer_range,
    )
    model = LlamaForCausalLM(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def assert_same_grid(a, b, tolerance: float = 1e-5) -> None:
    """Two lens results of the same prompt read alike: the same rows, tokens and top-k ids
    in every cell, and probabilities within ``tolerance`` (the model placed two ways)."""
    assert a.layers == b.layers and [t.id for t in a.tokens] == [t.id for t in b.tokens]
    worst = 0.0
    for row_a, row_b in zip(a.grid, b.grid):
        for x, y in zip(row_a, row_b):
            assert [t.id for t in x.top] == [t.id for t in y.top]
            worst = max(worst, abs(x.target_prob - y.target_prob), *(abs(s.prob - t.prob) for s, t in zip(x.top, y.top)))
    assert worst <= tolerance, worst
