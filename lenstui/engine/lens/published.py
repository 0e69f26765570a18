"""Learned lenses published by others, by name: ``--lens-path registry:NAME``.

- **J-lenses**: TransformerLens 4.3 ships a registry of pre-fitted Jacobian lenses
  (``transformer_lens/tools/analysis/jacobian_lens_registry.json``: short names, the
  Hugging Face ids they are for, files in ``neuronpedia/jacobian-lens`` at one pinned
  commit). ``registry:gpt2-small`` or ``registry:openai-community/gpt2`` name one;
  ``JacobianLens.from_pretrained`` fetches it at the registry's pinned revision.
- **Tuned lenses**: the tuned-lens package (0.2.0) fetches a lens by model id from the
  Hugging Face space ``AlignmentResearch/tuned-lens`` (``lens/<model id>/config.json`` and
  ``params.pt``; ``load_lens_artifacts``). ``registry:gpt2`` names the one for ``gpt2``.
  The package ships no list of them: :data:`TUNED_LENS_MODELS` is the space's ``lens/``
  folder as it was read for this module; an id not in it can still be asked for.

``registry:`` alone names the loaded model's own. Nothing is downloaded unless the caller
allows it (the CLI's ``--allow-download``): a lens is otherwise read from the Hugging Face
cache, where a download leaves it, so it is found again offline. A published lens made
for another model is refused in one sentence before anything is fetched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from lenstui.core.errors import InputError, quoted

REGISTRY_PREFIX = "registry:"
# The Hugging Face id of the embedded model (its config's name_or_path is lenstui's cache).
EMBEDDED_HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
TUNED_LENS_REPO = "AlignmentResearch/tuned-lens"  # tuned_lens.load_artifacts' default
TUNED_LENS_REPO_TYPE = "space"
TUNED_LENS_SUBFOLDER = "lens"
# The tuned-lens space's lens/ folder (huggingface.co/spaces/AlignmentResearch/tuned-lens,
# tree main/lens, read in 2025): the model ids it has a lens for.
TUNED_LENS_MODELS = (
    "gpt2", "gpt2-large", "gpt2-xl",
    "EleutherAI/gpt-neox-20b",
    "EleutherAI/pythia-70m-deduped", "EleutherAI/pythia-160m-deduped", "EleutherAI/pythia-410m-deduped",
    "EleutherAI/pythia-1.4b-deduped", "EleutherAI/pythia-2.8b-deduped", "EleutherAI/pythia-6.9b-deduped",
    "EleutherAI/pythia-12b-deduped",
    "EleutherAI/pythia-70m-deduped-v0", "EleutherAI/pythia-160m-deduped-v0", "EleutherAI/pythia-410m-deduped-v0",
    "EleutherAI/pythia-1b-deduped-v0", "EleutherAI/pythia-1.4b-deduped-v0", "EleutherAI/pythia-6.9b-deduped-v0",
    "EleutherAI/pythia-12b-deduped-v0",
    "facebook/opt-125m", "facebook/opt-1.3b", "facebook/opt-6.7b",
    "facebook/llama-7b", "facebook/llama-13b", "facebook/llama-30b", "facebook/llama-65b",
    "meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-chat-hf",
    "meta-llama/Llama-2-13b-hf", "meta-llama/Llama-2-13b-chat-hf",
    "meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-8B-Instruct",
    "lmsys/vicuna-13b-v1.1", "CarperAI/stable-vicuna-13b",
)
# The space spells a few folders its own way.
_TUNED_FOLDERS = {"lmsys/vicuna-13b-v1.1": "lymsys/vicuna-13b-v1.1"}
KIND_NAMES = {"tuned": "tuned lens", "jacobian": "J-lens"}


@dataclass(frozen=True)
class PublishedLens:
    """One published lens: where it is on the hub and which models it is for."""

    kind: str  # "tuned" or "jacobian"
    name: str  # what registry:NAME names it by
    for_models: tuple[str, ...]  # Hugging Face ids (and short names) of the models it was fitted for
    repo_id: str
    repo_type: Optional[str]
    filename: str  # the file (the J-lens) or the folder (the tuned lens) inside the repo
    revision: Optional[str]  # the pinned commit (J-lenses); None: the repo's main
    corpus: str = ""

    @property
    def spec(self) -> str:
        return f"{REGISTRY_PREFIX}{self.name}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "name": self.name, "spec": self.spec, "for": list(self.for_models),
                "repo_id": self.repo_id, "filename": self.filename, "revision": self.revision,
                "corpus": self.corpus}


def is_registry_path(path: Optional[str]) -> bool:
    return bool(path) and str(path).startswith(REGISTRY_PREFIX)


# ---------------------------------------------------------------- the lists


def _jacobian_registry() -> dict:
    """TransformerLens' bundled registry (read from the installed package)."""
    import transformer_lens.tools.analysis.jacobian_lens as jacobian_lens

    return json.loads(Path(jacobian_lens.__file__).with_name("jacobian_lens_registry.json").read_text())


def published_lenses(kind: Optional[str] = None) -> list[PublishedLens]:
    """Every published lens lenstui knows of (of ``kind``, or both)."""
    found: list[PublishedLens] = []
    if kind in (None, "jacobian"):
        registry = _jacobian_registry()
        revision = registry.get("revision")
        for name, entry in registry.items():
            if isinstance(entry, dict) and "filename" in entry:
                found.append(PublishedLens(
                    "jacobian", name, (name, *entry.get("aliases", [])), entry["repo_id"], None,
                    entry["filename"], revision, entry.get("corpus", ""),
                ))
    if kind in (None, "tuned"):
        for model_id in TUNED_LENS_MODELS:
            folder = f"{TUNED_LENS_SUBFOLDER}/{_TUNED_FOLDERS.get(model_id, model_id)}"
            names = (model_id, f"openai-community/{model_id}") if model_id.startswith("gpt2") else (model_id,)
            found.append(PublishedLens("tuned", model_id, names, TUNED_LENS_REPO, TUNED_LENS_REPO_TYPE, folder, None))
    return found


def base_model_name(model: Any) -> str:
    """What a tuned-lens config names the model by (a Hugging Face id where known). Here,
    not in ``learned.py`` (which reads published lenses through this module): one home."""
    if model.source == "embedded":
        return EMBEDDED_HF_ID
    if model.source == "hub":
        return model.name
    name = getattr(getattr(model.hf, "config", None), "name_or_path", "") or ""
    return name or model.name


def model_ids(model: Any) -> list[str]:
    """The names the loaded model goes by: its Hugging Face id where known (a local
    folder: its name), then its own name."""
    names = []
    for name in (base_model_name(model), model.name):
        if name and (name.startswith(("/", "~", ".")) or Path(name).expanduser().exists()):
            name = Path(name).name  # a folder on disk: no owner to go by
        if name and name not in names:
            names.append(name)
    return names


def is_for(lens: PublishedLens, model: Any) -> bool:
    """Whether ``lens`` was made for ``model``: the same Hugging Face id, or the same bare
    name where one side has no owner (a lens that names its model's owner is not another
    owner's model of the same name)."""
    made_for = [n.lower() for n in lens.for_models]
    owned = [n for n in made_for if "/" in n]
    bare = {n.rsplit("/", 1)[-1] for n in made_for}
    for own in (n.lower() for n in model_ids(model)):
        if "/" in own:
            if own in owned or (not owned and own.rsplit("/", 1)[-1] in bare):
                return True
        elif own in bare:
            return True
    return False


def published_for(model: Any) -> list[PublishedLens]:
    """The published lenses made for the loaded model."""
    return [lens for lens in published_lenses() if is_for(lens, model)]


def resolve(model: Any, kind: str, path: str) -> PublishedLens:
    """The published lens ``registry:NAME`` names for ``model`` (``registry:`` alone: the
    model's own). InputError, in one sentence, for an unknown name or another model's lens."""
    what = KIND_NAMES[kind]
    name = path[len(REGISTRY_PREFIX):].strip()
    own = model_ids(model)[0]
    if not name:
        mine = [lens for lens in published_lenses(kind) if is_for(lens, model)]
        if not mine:
            raise InputError(f"No published {what} is listed for {own}: `lenstui lenses list --published --all` lists them.")
        return mine[0]
    candidates = published_lenses(kind)
    lens = next((c for c in candidates if c.name == name), None)
    if lens is None and kind == "jacobian":  # an alias (a Hugging Face id) of a registry entry
        lens = next((c for c in candidates if name in c.for_models), None)
    if lens is None and kind == "tuned":  # the space may have more than the list: ask it
        lens = PublishedLens("tuned", name, (name,), TUNED_LENS_REPO, TUNED_LENS_REPO_TYPE,
                             f"{TUNED_LENS_SUBFOLDER}/{name}", None)
    if lens is None:
        raise InputError(
            f"No published {what} is named {quoted(name)}: `lenstui lenses list --published --all` lists them."
        )
    if not is_for(lens, model):
        made_for = next((n for n in lens.for_models if "/" in n), lens.for_models[0])
        raise InputError(f"The published {what} {lens.name} was fitted for {made_for}, not {own}: it belongs to another model.")
    return lens


# ---------------------------------------------------------------- the files


def hub_cache() -> str:
    """The Hugging Face cache a download goes to (HF_HUB_CACHE, HF_HOME, or the default)."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def cached_file(lens: PublishedLens) -> Optional[Path]:
    """Where ``lens`` is in the Hugging Face cache (the J-lens file, the tuned lens's
    folder), or None when it was never fetched. Never downloads."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    files = [lens.filename] if lens.kind == "jacobian" else [f"{lens.filename}/config.json", f"{lens.filename}/params.pt"]
    found = []
    for filename in files:
        try:
            found.append(Path(hf_hub_download(
                lens.repo_id, filename, repo_type=lens.repo_type, revision=lens.revision,
                cache_dir=hub_cache(), local_files_only=True,
            )))
        except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
            return None
    return found[0] if lens.kind == "jacobian" else found[0].parent


def fetch(lens: PublishedLens) -> Path:
    """Download ``lens`` into the Hugging Face cache with its package's own loader (the
    J-lens at the registry's pinned revision) and return where it is."""
    try:
        if lens.kind == "jacobian":
            from transformer_lens.tools.analysis import JacobianLens

            JacobianLens.from_pretrained(lens.name, revision=lens.revision)
        else:
            from tuned_lens.load_artifacts import load_lens_artifacts

            load_lens_artifacts(
                _TUNED_FOLDERS.get(lens.name, lens.name), repo_id=lens.repo_id, repo_type=lens.repo_type,
                subfolder=TUNED_LENS_SUBFOLDER, cache_dir=hub_cache(),
            )
    except Exception as err:  # the hub's errors (offline, missing, gated): one sentence
        raise InputError(
            f"Could not fetch the published {KIND_NAMES[lens.kind]} {lens.name} from {lens.repo_id} "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'})."
        ) from None
    where = cached_file(lens)
    if where is None:
        raise InputError(f"The published {KIND_NAMES[lens.kind]} {lens.name} was fetched but is not in {hub_cache()}.")
    return where


def published_path(model: Any, kind: str, path: str, *, allow_download: bool = False) -> Path:
    """The local file (J-lens) or folder (tuned lens) of ``registry:NAME`` for ``model``:
    from the Hugging Face cache, else fetched when ``allow_download``, else refused."""
    lens = resolve(model, kind, path)
    where = cached_file(lens)
    if where is not None:
        return where
    if not allow_download:
        at = f" at the registry's pinned revision {lens.revision[:12]}" if lens.revision else ""
        raise InputError(
            f"The published {KIND_NAMES[kind]} {lens.name} is not in the Hugging Face cache: run again with "
            f"--allow-download to fetch it once from {lens.repo_id}{at} (lenstui never downloads unasked)."
        )
    return fetch(lens)
