"""Models built locally from configs with random weights (no hub, no downloads): tiny
ones for fast tests, and one with Llama-3.2-1B's shape for the scale benchmarks.

The tokenizer is a byte-level BPE trained here on a few sentences with the
``tokenizers`` library, so it needs no files from anywhere.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from lenstui.engine.model.load import LoadedModel, wrap_model

CORPUS = [
    "The Eiffel Tower is located in the city of Paris.",
    "Sometimes, when people say plasma, they mean a state of matter.",
    "Is there a seahorse emoji? Yes: 🐠 🐴 🌊 and café naïve 東京.",
    "hello world, hello tokens, hello bytes",
]


def tiny_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    # TransformerLens re-reads a tokenizer from its name_or_path, so give it one on disk.
    folder = Path(tempfile.mkdtemp(prefix="lenstui-tiny-tok-"))
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def tiny_gpt2(seed: int = 0) -> LoadedModel:
    """GPT-2 style: LayerNorm with biases, learned positions, untied unembedding."""
    model, tokenizer = tiny_gpt2_hf(seed)
    return wrap_model(model, tokenizer, name="tiny-gpt2", device="cpu")


def tiny_gpt2_hf(seed: int = 0):
    """The plain Hugging Face model and tokenizer behind tiny_gpt2 (not wrapped)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=32,
        n_layer=3,
        n_head=4,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config).eval(), tokenizer


def tiny_llama(
    seed: int = 0, initializer_range: float = 0.02, name: str = "tiny-llama", *, context: int = 64, tied: bool = True
) -> LoadedModel:
    """Llama style: RMSNorm, rotary positions, tied embeddings (``tied=False``: its own
    lm_head). A larger ``initializer_range`` (0.3) gives peaked distributions whose middle
    rows the logit lens reads badly: what a learned lens has to fix. ``context``: positions
    (the under-trained verification prompts need a few hundred)."""
    model, tokenizer = tiny_llama_hf(seed, initializer_range, context=context, tied=tied)
    return wrap_model(model, tokenizer, name=name, device="cpu")


def tiny_llama_hf(seed: int = 0, initializer_range: float = 0.02, *, context: int = 64, tied: bool = True):
    """The plain Hugging Face model and tokenizer behind tiny_llama (not wrapped:
    TransformerLens' bridge rewires the modules it wraps)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        tie_word_embeddings=tied,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        initializer_range=initializer_range,
    )
    return LlamaForCausalLM(config).eval(), tokenizer


def llama_1b_shape(seed: int = 0) -> LoadedModel:
    """Llama-3.2-1B's shape (16 layers, d_model 2048, vocabulary 128,256) with random
    weights and the tiny tokenizer, whose ids past its own 400 are named by id (token
    texts are not what the scale benchmarks time)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
        tie_word_embeddings=True, rope_theta=500000.0, bos_token_id=0, eos_token_id=0,
    )
    torch.manual_seed(seed)
    hf = LlamaForCausalLM(config).eval()
    tokenizer = tiny_tokenizer()
    tokenizer.decode = lambda ids, **kw: f"<{int(ids[0])}>"
    tokenizer.convert_ids_to_tokens = lambda i, **kw: f"<{int(i)}>"
    return wrap_model(hf, tokenizer, name="llama-3.2-1b-shape (random)", device="cpu")
