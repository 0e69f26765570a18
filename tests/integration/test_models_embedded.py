"""The embedded model loads with its shape, and its GGUF is cached by content hash and reused."""

from __future__ import annotations

import torch

from lenstui.engine.model.load import (
    EMBEDDED_NAME,
    embedded_gguf_path,
    file_sha256,
    load_model,
)
from lenstui.store.paths import cache_root


def test_embedded_model_loads_with_its_shape(embedded):
    assert embedded.name == EMBEDDED_NAME and embedded.source == "embedded"
    assert (embedded.n_layers, embedded.d_model, embedded.d_vocab) == (30, 576, 49152)
    assert embedded.normalization_type == "RMS"
    assert embedded.piece(15107) == "ĠðŁ"


def test_gguf_is_cached_by_content_hash_and_reused(embedded):
    """The first load (the fixture) leaves a cache entry keyed by the file's sha256;
    loading the same GGUF by path then comes from that cache."""
    gguf = embedded_gguf_path()
    entry = cache_root() / "gguf" / file_sha256(gguf)[:32]
    assert (entry / "model.safetensors").is_file() and (entry / "config.json").is_file()
    again = load_model(str(gguf), device="cpu")
    assert again.from_cache and again.source == "gguf"
    ids = torch.tensor([[504, 3458, 314]])
    with torch.no_grad():
        torch.testing.assert_close(again.bridge(ids), embedded.bridge(ids))
