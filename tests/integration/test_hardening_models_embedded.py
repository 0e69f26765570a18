"""The embedded model on a full disk: it still loads, dequantized without a cache, and says why."""

from __future__ import annotations

import argparse


from lenstui.engine.model import load as load_module
from lenstui.engine.model.load import load_model


def test_the_embedded_model_loads_uncached_on_a_full_disk(tmpfs, monkeypatch):
    """End to end: the cache dir is a 16 MB tmpfs (the dequantized weights are 538 MB)."""
    cache = tmpfs("size=16m")
    monkeypatch.setenv("LENSTUI_CACHE_DIR", str(cache))
    loaded = load_model(device="cpu")
    assert not loaded.from_cache and loaded.d_vocab == 49152
    assert len(loaded.notes) == 1 and "Could not cache the dequantized model" in loaded.notes[0]
    assert sorted(p.name for p in (cache / "gguf").iterdir()) == ["digests.json", "digests.json.lock"]  # no .partial-*
    # The CLI says it once, on stderr, and goes on.
    from lenstui.cli.common import load_from_args

    monkeypatch.setattr(load_module, "load_model", lambda *a, **k: loaded)
    args = argparse.Namespace(model=None, device="cpu", dtype="float32", allow_download=None)
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert load_from_args(args) is loaded
    assert err.getvalue().startswith("lenstui: note: Could not cache the dequantized model")
