"""A Hugging Face hub cache made here: a model saved under a hub id, found offline the way
a user's ``hf download`` leaves it (``models--org--name/snapshots/<rev>/``, ``refs/main``).

The remote path's tests open models by hub id (NDIF serves them by id) without a network:
nnsight builds its meta model from the config and tokenizer found here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

REVISION = "0" * 40


def save_to_hub_cache(hf_model: Any, tokenizer: Any, cache: Path, repo_id: str) -> Path:
    """Save ``hf_model`` and ``tokenizer`` as ``repo_id`` in the hub cache at ``cache``;
    -> the snapshot folder."""
    org, name = repo_id.split("/")
    root = Path(cache) / f"models--{org}--{name}"
    snapshot = root / "snapshots" / REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    hf_model.config.name_or_path = repo_id
    hf_model.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(REVISION)
    return snapshot


def use_hub_cache(monkeypatch, cache: Path) -> None:
    """Point this process's hub libraries at ``cache`` (they read the constant per call)."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))


def tiny_hub_cache(cache: Path, repo_id: str, seed: int = 0) -> Path:
    """testkit's tiny Llama saved as ``repo_id`` in the hub cache at ``cache``; -> ``cache``."""
    from testkit.models import tiny_llama_hf

    hf_model, tokenizer = tiny_llama_hf(seed)
    save_to_hub_cache(hf_model, tokenizer, cache, repo_id)
    return cache
