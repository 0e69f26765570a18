"""Model discovery for the picker: a fake Hugging Face hub cache, .gguf files and a
models folder built in tmp_path, and listed entries that really load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lenstui.store import model_catalog
from lenstui.store.config import load_config
from lenstui.store.model_catalog import discover_models, hf_cache_entries

ROOT = Path(__file__).resolve().parents[2]
REV = "0123456789abcdef0123456789abcdef01234567"


def _save_tiny_llama(folder: Path):
    from testkit.models import tiny_llama_hf

    hf_model, tokenizer = tiny_llama_hf()
    hf_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return hf_model


def _as_hub_repo(cache: Path, model_id: str, source: Path, *, with_ref: bool = True, rev: str = REV) -> Path:
    """Lay out `source`'s files the way huggingface_hub does: blobs, snapshot symlinks, refs."""
    repo = cache / ("models--" + model_id.replace("/", "--"))
    snapshot = repo / "snapshots" / rev
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for file in source.iterdir():
        blob = repo / "blobs" / f"{file.name}.blob"
        blob.write_bytes(file.read_bytes())
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    if with_ref:
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(rev)
    return snapshot


def _fake_repo(cache: Path, model_id: str, config: dict, weights: bool, with_ref: bool = True) -> Path:
    source = cache.parent / ("src-" + model_id.replace("/", "-"))
    source.mkdir()
    (source / "config.json").write_text(json.dumps(config))
    if weights:
        (source / "model.safetensors").write_bytes(b"\0" * 1234)
    return _as_hub_repo(cache, model_id, source, with_ref=with_ref)


@pytest.fixture(scope="module")
def saved_tiny_llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "tiny-llama"
    hf_model = _save_tiny_llama(folder)
    return folder, hf_model


@pytest.fixture()
def hub_cache(tmp_path, saved_tiny_llama):
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    _as_hub_repo(cache, "tinyorg/tiny-llama", saved_tiny_llama[0])
    _fake_repo(cache, "org/masked", {"architectures": ["BertForMaskedLM"]}, weights=True)
    _fake_repo(cache, "org/config-only", {"architectures": ["LlamaForCausalLM"]}, weights=False)
    _fake_repo(cache, "org/gpt2-style", {"architectures": ["GPT2LMHeadModel"]}, weights=True)
    _fake_repo(cache, "org/no-ref", {"architectures": ["MistralForCausalLM"]}, weights=True, with_ref=False)
    (cache / "datasets--org--data").mkdir()  # datasets live in the same cache: never listed
    return cache


def test_hf_cache_lists_causal_lms_with_weights_only(hub_cache, saved_tiny_llama):
    entries = {e.label: e for e in hf_cache_entries(hub_cache)}
    assert set(entries) == {"tinyorg/tiny-llama", "org/gpt2-style", "org/no-ref"}
    tiny = entries["tinyorg/tiny-llama"]
    assert (tiny.spec, tiny.kind, tiny.where) == ("tinyorg/tiny-llama", "hf-cache", "HF cache")
    # The size is that of the weight blobs behind the snapshot's symlinks.
    assert tiny.size_bytes == (saved_tiny_llama[0] / "model.safetensors").stat().st_size
    # Without refs/main an offline load by id cannot resolve: the snapshot folder is the spec.
    assert entries["org/no-ref"].spec == str(hub_cache / "models--org--no-ref" / "snapshots" / REV)
    assert entries["org/gpt2-style"].size_bytes == 1234


def test_hf_cache_location_follows_the_hub_variables(monkeypatch, tmp_path):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    assert model_catalog.hf_hub_cache() == Path.home() / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_catalog.hf_hub_cache() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert model_catalog.hf_hub_cache() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert model_catalog.hf_hub_cache() == tmp_path / "cache"


def test_a_missing_cache_lists_nothing(tmp_path):
    assert hf_cache_entries(tmp_path / "nowhere") == []


def test_discovery_lists_embedded_cache_gguf_and_models_dir(tmp_path, hub_cache, saved_tiny_llama):
    cwd = tmp_path / "work"
    for rel in ("a.gguf", "sub/deep/b.GGUF", ".hidden/c.gguf", ".venv/d.gguf", "venv2/e.gguf",
                "1/2/3/4/too-deep.gguf", "notes.txt"):
        (cwd / rel).parent.mkdir(parents=True, exist_ok=True)
        (cwd / rel).write_bytes(b"GGUF" + b"\0" * 10)
    (cwd / "venv2" / "pyvenv.cfg").write_text("home = /usr\n")  # a virtualenv by any name
    models = tmp_path / "models"
    (models / "quant").mkdir(parents=True)
    (models / "quant" / "m.gguf").write_bytes(b"GGUF")
    (models / "llama-dir").symlink_to(saved_tiny_llama[0], target_is_directory=True)
    (models / "a-copy.gguf").symlink_to(cwd / "a.gguf")  # the same file twice is listed once

    entries = discover_models(cwd=cwd, models_dir=models, hf_cache=hub_cache)
    by_kind = [(e.kind, e.where, e.label) for e in entries]
    assert by_kind[0][0] == "embedded" and entries[0].spec == "" and entries[0].size_bytes > 50_000_000
    assert ("hf-cache", "HF cache", "tinyorg/tiny-llama") in by_kind
    gguf = [(e.where, e.label) for e in entries if e.kind == "gguf"]
    assert gguf == [("current dir", "a.gguf"), ("current dir", "sub/deep/b.GGUF"), ("models dir", "quant/m.gguf")]
    dirs = [e for e in entries if e.kind == "hf-dir"]
    assert [(d.label, d.spec) for d in dirs] == [("llama-dir/", str(models / "llama-dir"))]
    assert all(Path(e.spec).exists() for e in entries if e.kind in ("gguf", "hf-dir"))


def test_discovery_never_imports_torch():
    code = (
        "import sys; from lenstui.store.model_catalog import discover_models; discover_models(); "
        "print('torch' in sys.modules)"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"


def test_models_dir_is_a_config_key(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('models_dir = "~/models"\n')
    config, problems = load_config(path)
    assert config.models_dir == "~/models" and problems == []
    path.write_text("models_dir = 3\n")
    config, problems = load_config(path)
    assert config.models_dir is None and "models_dir" in problems[0]


def test_listed_models_dir_entry_loads_and_computes_what_hf_computes(tmp_path, saved_tiny_llama):
    from lenstui.engine.model.load import load_model

    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny").symlink_to(saved_tiny_llama[0], target_is_directory=True)
    [entry] = [e for e in discover_models(cwd=tmp_path / "empty", models_dir=models, hf_cache=tmp_path) if e.kind == "hf-dir"]
    loaded = load_model(entry.spec, device="cpu")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.bridge(ids), saved_tiny_llama[1](ids).logits, rtol=1e-4, atol=1e-4)


def test_listed_hf_cache_entry_loads_by_its_id_offline(hub_cache, saved_tiny_llama):
    """The id spec resolves through huggingface_hub's own cache lookup (in a fresh process,
    since the hub library reads HF_HUB_CACHE once at import)."""
    [entry] = [e for e in hf_cache_entries(hub_cache) if e.label == "tinyorg/tiny-llama"]
    code = (
        "import json, sys, torch; from lenstui.engine.model.load import load_model; "
        f"m = load_model({entry.spec!r}, device='cpu'); "
        "print(json.dumps([m.name, m.source, m.bridge(torch.tensor([[1, 2, 3, 4]]))[0, -1].tolist()]))"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_CACHE=str(hub_cache), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    name, source, last_logits = json.loads(out.stdout.strip().splitlines()[-1])
    assert (name, source) == ("tinyorg/tiny-llama", "hub")
    with torch.no_grad():
        expected = saved_tiny_llama[1](torch.tensor([[1, 2, 3, 4]])).logits[0, -1]
    torch.testing.assert_close(torch.tensor(last_logits), expected, rtol=1e-4, atol=1e-4)
