"""Learned lenses: a fitted translator per residual row, read from files in their
ecosystem's format, then read out like the logit lens.

Rows are lenstui's (``LensState``): row 0 is the embeddings (block 0's input), row i the
output of block i-1 (Hugging Face's ``hidden_states[i]``), the last row the last block's
output, which every learned lens reads as is.

**Tuned lens** (Belrose et al. 2023; the ``tuned-lens`` package, 0.2.0). A directory with
``config.json`` (``base_model_name_or_path``, ``d_model``, ``num_hidden_layers``, ``bias``,
``base_model_revision``, ``unembed_hash``, ``lens_type = "linear_tuned_lens"``) and
``params.pt``, the ``state_dict`` of a ``ModuleList`` of ``num_hidden_layers``
``Linear(d, d)``: keys ``"{i}.weight"`` ``[d, d]`` and ``"{i}.bias"`` ``[d]``. Translator i
reads ``hidden_states[i]`` (row i; i = 0 is the embeddings) as ``h + W h + b``, then the
model's final norm and unembedding; the last row has none. ``unembed_hash`` is
``sha256(np.array_str(W_U.T as float32, precision=1))`` under numpy's default print
options (set explicitly here: the package's hash depends on them); a lens whose hash is
not this model's is refused. lenstui writes exactly this format (and a ``lenstui.json``
beside it saying how it was fitted), so its lenses load in the package and the
published ones load here.

**Jacobian lens** (TransformerLens 4.3 ``JacobianLens``; Gurnee et al. 2026): a ``.pt`` with
``J`` per source layer l, the average Jacobian of the last block's output with respect to
block l's output (``blocks.{l}.hook_out`` = row l + 1), read as ``norm(J h)``, no bias.
The embeddings row has no J and reads as the logit lens, as does any row the file lacks.
Loaded with ``JacobianLens.load`` and checked with its ``validate_model``.

**Position 0.** Without a BOS it is the attention sink: its residual is hundreds of times
larger than elsewhere, and translators fitted on the other positions read it worse than
the logit lens does (13.2 nats against 7.7 on SmolLM2). Learned lenses therefore read
position 0 as the logit lens, and say so (``LensFile.note``).

Fitted lenses live under ``lens_root()/<model>-<hash of its weights>/`` (``tuned/``, and
``jacobian/lens.pt``), found again on the next start by :func:`available_lenses`.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Union

import torch

from lenstui.core.errors import InputError
from lenstui.core.learned_lens import LensFile, short_path
from lenstui.core.lenses import LEARNED_LENSES
from lenstui.engine.lens.published import base_model_name, is_registry_path, published_path, resolve
from lenstui.engine.model.load import LoadedModel, gguf_digest
from lenstui.store.atomic import atomic_file, write_text_atomic
from lenstui.store.paths import lens_root

TUNED_CONFIG = "config.json"
TUNED_PARAMS = "params.pt"
JACOBIAN_FILE = "lens.pt"  # JacobianLens.from_pretrained's default file name
SIDECAR = "lenstui.json"  # how lenstui fitted a lens (the formats have no room for it)
LENS_TYPE = "linear_tuned_lens"
# Positions before this one read as the logit lens under a learned lens (the sink).
LOGIT_POSITIONS = 1
POSITION_NOTE = "position 0 (the attention sink) reads as the logit lens"
# numpy's default print options: the tuned-lens hash is the sha256 of a printed array.
_NUMPY_PRINT_DEFAULTS = dict(
    precision=8, threshold=1000, edgeitems=3, linewidth=75, suppress=False,
    nanstr="nan", infstr="inf", sign="-", floatmode="maxprec", legacy=False,
)
# Models built in memory with more parameters than this hash a strided sample of them.
_FULL_HASH_PARAMETERS = 50_000_000


# ---------------------------------------------------------------- identities


def unembed_hash(model: LoadedModel) -> str:
    """The tuned-lens package's ``Unembed.unembedding_hash()`` for this model: sha256 of
    ``np.array_str`` of the output embedding as an ``nn.Linear`` weight (``[vocab, d]``,
    float32) at precision 1, under numpy's default print options. It sees only the
    printed corners of the matrix, so it tells models apart only roughly."""
    cached = model.caches.unembed_hash
    if cached is None:
        import numpy as np

        weight = model.W_U.detach().T.float().cpu().numpy()
        with np.printoptions(**_NUMPY_PRINT_DEFAULTS):
            text = np.array_str(weight, precision=1)
        cached = hashlib.sha256(text.encode()).hexdigest()
        model.caches.unembed_hash = cached
    return cached


def weights_key(model: LoadedModel) -> str:
    """A sha256 that names the model's weights: the GGUF's, the weight files' (each
    memoised by path, size and mtime), or, for a model built in memory, its tensors'."""
    cached = model.caches.weights_key
    if cached is not None:
        return cached
    if model.weights_sha256:
        key = model.weights_sha256
    elif model.weights_files:
        digest = hashlib.sha256()
        for name in model.weights_files:
            digest.update(Path(name).name.encode() + b"\0" + gguf_digest(Path(name)).encode() + b"\0")
        key = digest.hexdigest()
    else:
        key = _tensor_hash(model)
    model.caches.weights_key = key
    return key


def _tensor_hash(model: LoadedModel) -> str:
    params = list(model.hf.named_parameters())
    total = sum(p.numel() for _, p in params)
    stride = max(1, total // _FULL_HASH_PARAMETERS)
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in params:
            flat = param.detach().reshape(-1)[::stride].float().cpu().contiguous()
            digest.update(name.encode() + str(tuple(param.shape)).encode())
            digest.update(flat.numpy().tobytes())
    return digest.hexdigest()


def model_folder(model: LoadedModel) -> Path:
    """Where this model's fitted lenses live: ``lens_root()/<name>-<weights hash>/``."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", model.name).strip("._") or "model"
    return lens_root() / f"{name[:48]}-{weights_key(model)[:16]}"


def cached_path(model: LoadedModel, kind: str) -> Path:
    """The lens of ``kind`` fitted for this model's weights (it may not exist)."""
    folder = model_folder(model)
    return folder / "tuned" if kind == "tuned" else folder / "jacobian" / JACOBIAN_FILE


# ---------------------------------------------------------------- the lens itself


@dataclass
class LearnedLens:
    """Translators for some rows: row ``rows[j]`` reads ``h @ matrices[j].T + biases[j]``."""

    kind: str
    file: LensFile
    rows: list[int]  # lenstui row indices (0 = embed), in the stack without mid rows
    matrices: torch.Tensor  # [len(rows), d, d], float32, CPU
    biases: Optional[torch.Tensor]  # [len(rows), d], or None (the J-lens)
    logit_positions: int = LOGIT_POSITIONS
    stamp: str = ""  # the file's path, mtime and size: a new file is a new lens
    _placed: dict = field(default_factory=dict, repr=False)

    def _on(self, device: torch.device, dtype: torch.dtype):
        key = (str(device), dtype)
        placed = self._placed.get(key)
        if placed is None:
            self._placed.clear()  # one placement at a time: a lens is tens of MB
            matrices = self.matrices.to(device=device, dtype=dtype)
            biases = None if self.biases is None else self.biases.to(device=device, dtype=dtype)
            index = torch.tensor(self.rows, device=device)
            placed = (matrices.transpose(1, 2).contiguous(), biases, index)
            self._placed[key] = placed
        return placed

    def apply(self, stack: torch.Tensor, positions: Union[list[int], torch.Tensor]) -> torch.Tensor:
        """[rows, P, d] block-output rows at prompt ``positions`` -> the same, translated
        (positions before ``logit_positions`` and rows without a translator unchanged)."""
        # float32 whatever the model's dtype: a half-precision translator loses the small
        # corrections it is made of.
        matrices_t, biases, index = self._on(stack.device, torch.float32)
        with torch.no_grad():
            picked = stack.index_select(0, index).float()  # [R', P, d]
            if biases is not None:
                moved = torch.baddbmm(biases[:, None, :], picked, matrices_t)
            else:
                moved = torch.bmm(picked, matrices_t)
            pos = torch.as_tensor(positions, device=stack.device)
            keep = pos < self.logit_positions
            if bool(keep.any()):
                moved[:, keep] = picked[:, keep]
            out = stack.clone()
            out[index] = moved.to(stack.dtype)
        return out


# ---------------------------------------------------------------- loading


def kind_of_path(path: Union[str, Path]) -> Optional[str]:
    """"tuned" for a folder with config.json and params.pt, "jacobian" for a ``.pt`` file
    (or a folder holding ``lens.pt``), None for ``registry:NAME`` (either kind publishes
    by name); InputError for anything else."""
    if is_registry_path(str(path)):
        return None
    where = Path(path).expanduser()
    if where.is_dir():
        if (where / TUNED_CONFIG).is_file() or (where / TUNED_PARAMS).is_file():
            return "tuned"
        if (where / JACOBIAN_FILE).is_file():
            return "jacobian"
    elif where.is_file() and where.suffix in (".pt", ".pth"):
        return "jacobian"
    if not where.exists():
        raise InputError(f"No lens at {path}: pass a tuned-lens folder (config.json + params.pt) or a J-lens .pt file.")
    raise InputError(
        f"{path} is not a lens: a tuned lens is a folder with config.json and params.pt, "
        "a J-lens a .pt file (or a folder with lens.pt)."
    )


def _stamp(path: Path) -> tuple:
    files = [path / TUNED_CONFIG, path / TUNED_PARAMS] if path.is_dir() else [path]
    return tuple((f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.exists())


def learned_lens(model: LoadedModel, kind: str, path: Union[str, Path, None] = None) -> LearnedLens:
    """The lens of ``kind`` to read rows with: the file at ``path``, else the one fitted
    for this model (``cached_path``). Memoised per kind until the file changes. Raises
    InputError with a sentence when there is none or it does not fit the model."""
    if kind not in LEARNED_LENSES:
        raise InputError(f"{kind!r} is not a learned lens: choose one of {', '.join(LEARNED_LENSES)}.")
    published = None
    if path is None:
        where = cached_path(model, kind)
        if not where.exists():
            raise InputError(_no_lens_sentence(model, kind))
    elif is_registry_path(path):  # a published lens, from the Hugging Face cache (never downloaded here)
        published = resolve(model, kind, str(path))
        where = published_path(model, kind, str(path))
    else:
        where = Path(path).expanduser()
        if kind == "jacobian" and where.is_dir() and (where / JACOBIAN_FILE).is_file():
            where = where / JACOBIAN_FILE
        if not where.exists():
            raise InputError(f"No {kind} lens at {path}: check the path.")
    where = where.resolve()
    memo = model.caches.learned_lenses
    stamp = _stamp(where)
    hit = memo.get(kind)
    if hit is not None and hit[0] == (str(where), stamp):
        return hit[1]
    lens = load_tuned(where, model) if kind == "tuned" else load_jacobian(where, model)
    if published is not None:
        revision = f" @ {published.revision[:7]}" if published.revision else ""
        lens.file = replace(lens.file, origin=f"published {published.spec} ({published.repo_id}{revision}); {lens.file.origin}")
    lens.stamp = f"{where}|{stamp}"
    memo[kind] = ((str(where), stamp), lens)
    return lens


def _no_lens_sentence(model: LoadedModel, kind: str) -> str:
    if kind == "tuned":
        return (
            f"No tuned lens for {model.name} yet: fit one (`lenstui lenses fit`, or the palette's "
            "\"lens: fit a tuned lens for this model\"), or load a tuned-lens folder."
        )
    return (
        f"No J-lens for {model.name} yet: load a TransformerLens J-lens file, or fit one on a GPU "
        "(`lenstui lenses fit --kind jacobian`)."
    )


def _read_sidecar(folder: Path) -> dict:
    try:
        data = json.loads((folder / SIDECAR).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def load_tuned(path: Union[str, Path], model: LoadedModel) -> LearnedLens:
    """A tuned-lens directory, checked against ``model`` as the package's loader checks
    it (strict keys) and more (shapes, layer count, ``unembed_hash``)."""
    folder = Path(path)
    shown = short_path(str(folder))
    config_path, params_path = folder / TUNED_CONFIG, folder / TUNED_PARAMS
    missing = [p.name for p in (config_path, params_path) if not p.is_file()]
    if missing:
        raise InputError(f"{shown} is not a tuned lens: it has no {' or '.join(missing)}.")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"The tuned lens's config.json at {shown} cannot be read ({err}).") from None
    if not isinstance(config, dict):
        raise InputError(f"The tuned lens's config.json at {shown} is not a JSON object.")
    absent = [k for k in ("base_model_name_or_path", "d_model", "num_hidden_layers") if k not in config]
    if absent:
        raise InputError(f"The tuned lens's config.json at {shown} lacks {', '.join(absent)}.")
    lens_type = config.get("lens_type", LENS_TYPE)
    if lens_type != LENS_TYPE:
        raise InputError(f"The tuned lens at {shown} is a {lens_type!r}; lenstui reads {LENS_TYPE!r} lenses only.")
    base = config["base_model_name_or_path"]
    d, n_layers = model.d_model, model.n_layers
    if int(config["d_model"]) != d:
        raise InputError(
            f"The tuned lens at {shown} was fitted for {base} (d_model {config['d_model']}); "
            f"{model.name} has d_model {d}: it belongs to another model."
        )
    if int(config["num_hidden_layers"]) != n_layers:
        raise InputError(
            f"The tuned lens at {shown} has {config['num_hidden_layers']} translators (for {base}); "
            f"{model.name} has {n_layers} layers: it belongs to another model."
        )
    wanted_hash = config.get("unembed_hash")
    if wanted_hash and wanted_hash != unembed_hash(model):
        raise InputError(
            f"The tuned lens at {shown} was fitted on another unembedding: its unembed_hash "
            f"{str(wanted_hash)[:12]}… is not {model.name}'s {unembed_hash(model)[:12]}… (it was made for {base})."
        )
    try:
        state = torch.load(params_path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged or foreign file: one sentence, not a traceback
        raise InputError(f"The tuned lens's params.pt at {shown} cannot be read ({type(err).__name__}: {err}).") from None
    if not isinstance(state, dict):
        raise InputError(f"The tuned lens's params.pt at {shown} is not a state dict.")
    bias = bool(config.get("bias", True))
    expected = [f"{i}.weight" for i in range(n_layers)] + ([f"{i}.bias" for i in range(n_layers)] if bias else [])
    lacking = [k for k in expected if k not in state]
    extra = sorted(set(state) - set(expected))
    if lacking or extra:
        said = []
        if lacking:
            said.append(f"lacks {', '.join(lacking[:4])}{' …' if len(lacking) > 4 else ''}")
        if extra:
            said.append(f"has unexpected {', '.join(map(str, extra[:4]))}{' …' if len(extra) > 4 else ''}")
        raise InputError(f"The tuned lens's params.pt at {shown} {' and '.join(said)} (translators 0..{n_layers - 1}).")
    eye = torch.eye(d)
    matrices, biases = [], []
    for i in range(n_layers):
        weight, b = state[f"{i}.weight"], state.get(f"{i}.bias")
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (d, d):
            raise InputError(f"The tuned lens's {i}.weight at {shown} is not a [{d}, {d}] tensor.")
        if bias and (not isinstance(b, torch.Tensor) or tuple(b.shape) != (d,)):
            raise InputError(f"The tuned lens's {i}.bias at {shown} is not a [{d}] tensor.")
        matrices.append(weight.float() + eye)
        biases.append(b.float() if bias else torch.zeros(d))
    side = _read_sidecar(folder)
    if side.get("fitted_by") == "lenstui":
        origin = f"fitted by lenstui on {int(side.get('tokens', 0)):,} {side.get('source_words', 'self-sampled')} tokens"
        if side.get("refine_steps"):
            origin += f", KL-refined {side['refine_steps']} steps"
    else:
        origin = f"tuned-lens file for {base}"
    labels = ["embed"] + [f"L{i}" for i in range(n_layers - 1)]
    info = LensFile("tuned", str(folder), origin, rows=tuple(labels), note=POSITION_NOTE)
    return LearnedLens("tuned", info, list(range(n_layers)), torch.stack(matrices), torch.stack(biases))


def load_jacobian(path: Union[str, Path], model: LoadedModel) -> LearnedLens:
    """A TransformerLens J-lens file (``JacobianLens.load``, then ``validate_model``)."""
    from transformer_lens.tools.analysis import JacobianLens

    where = Path(path)
    shown = short_path(str(where))
    try:
        lens = JacobianLens.load(str(where))
    except Exception as err:  # pickle, ValueError, RuntimeError: all one sentence
        raise InputError(f"{shown} is not a J-lens file ({type(err).__name__}: {err}).") from None
    try:
        lens.validate_model(model.bridge)
    except (ValueError, TypeError) as err:
        raise InputError(f"The J-lens at {shown} does not fit {model.name}: {err}") from None
    layers = lens.source_layers
    rows = [layer + 1 for layer in layers]
    matrices = torch.stack([lens.jacobians[layer].float() for layer in layers])
    corpus = lens.metadata.get("corpus")
    origin = f"J-lens on {lens.n_prompts:,} prompts" + (f" ({corpus})" if corpus else "")
    without = ["embed"] + [f"L{i}" for i in range(model.n_layers - 1) if i not in lens.jacobians]
    shown_without = ", ".join(without[:4]) + (" …" if len(without) > 4 else "")
    note = f"{POSITION_NOTE}; rows without a J ({shown_without}) read as the logit lens"
    info = LensFile("jacobian", str(where), origin, rows=tuple(f"L{layer}" for layer in layers), note=note)
    return LearnedLens("jacobian", info, rows, matrices, None)


def available_lenses(model: LoadedModel) -> list[LensFile]:
    """The lenses fitted for this model's weights, from their small files only (the
    translators are read when a lens is first used)."""
    found = []
    tuned = cached_path(model, "tuned")
    if (tuned / TUNED_CONFIG).is_file() and (tuned / TUNED_PARAMS).is_file():
        side = _read_sidecar(tuned)
        origin = (
            f"fitted by lenstui on {int(side.get('tokens', 0)):,} {side.get('source_words', 'self-sampled')} tokens"
            if side.get("fitted_by") == "lenstui"
            else "tuned-lens file"
        )
        found.append(LensFile("tuned", str(tuned), origin, note=POSITION_NOTE))
    jacobian = cached_path(model, "jacobian")
    if jacobian.is_file():
        side = _read_sidecar(jacobian.parent)
        origin = f"J-lens on {int(side['prompts']):,} prompts" if "prompts" in side else "J-lens file"
        found.append(LensFile("jacobian", str(jacobian), origin, note=POSITION_NOTE))
    return found


# ---------------------------------------------------------------- saving


def save_tuned(
    folder: Union[str, Path],
    model: LoadedModel,
    matrices: torch.Tensor,
    biases: torch.Tensor,
    *,
    sidecar: Optional[dict] = None,
) -> LensFile:
    """Write translators ``h -> A h + b`` (``matrices`` [L, d, d] as out x in, ``biases``
    [L, d]) as a tuned-lens directory: ``params.pt`` holds ``{i}.weight = A - I`` and
    ``{i}.bias = b`` (float32), ``config.json`` the package's config, ``lenstui.json`` how
    it was fitted. The folder is replaced whole (written beside it, then renamed)."""
    folder = Path(folder).expanduser()
    n_layers, d = int(matrices.shape[0]), int(matrices.shape[1])
    if (n_layers, d) != (model.n_layers, model.d_model) or tuple(biases.shape) != (n_layers, d):
        raise ValueError(f"translators {tuple(matrices.shape)} / {tuple(biases.shape)} do not fit {model.name}")
    eye = torch.eye(d)
    state = {}
    for i in range(n_layers):
        state[f"{i}.weight"] = (matrices[i].detach().float().cpu() - eye).contiguous()
    for i in range(n_layers):
        state[f"{i}.bias"] = biases[i].detach().float().cpu().contiguous()
    # The ModuleList's state_dict order: 0.weight, 0.bias, 1.weight, ...
    state = {k: state[k] for i in range(n_layers) for k in (f"{i}.weight", f"{i}.bias")}
    config = {
        "base_model_name_or_path": base_model_name(model),
        "d_model": d,
        "num_hidden_layers": n_layers,
        "bias": True,
        "base_model_revision": None,
        "unembed_hash": unembed_hash(model),
        "lens_type": LENS_TYPE,
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.partial-"))
    try:
        with atomic_file(staging / TUNED_PARAMS) as handle:
            torch.save(state, handle)
        write_text_atomic(staging / TUNED_CONFIG, json.dumps(config))
        write_text_atomic(staging / SIDECAR, json.dumps({"fitted_by": "lenstui", **(sidecar or {})}, indent=1))
        old = None
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{staging.name[-8:]}"
            folder.rename(old)
        staging.rename(folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    model.caches.learned_lenses.pop("tuned", None)
    side = _read_sidecar(folder)
    origin = f"fitted by lenstui on {int(side.get('tokens', 0)):,} {side.get('source_words', 'self-sampled')} tokens"
    return LensFile("tuned", str(folder), origin, note=POSITION_NOTE)


def save_jacobian(path: Union[str, Path], model: LoadedModel, lens, *, sidecar: Optional[dict] = None) -> LensFile:
    """Write a ``JacobianLens`` with its own ``save`` (atomically), and a sidecar."""
    where = Path(path).expanduser()
    if where.suffix not in (".pt", ".pth"):
        where = where / JACOBIAN_FILE
    where.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=where.parent, prefix=f".{where.name}.", suffix=".tmp")
    import os

    os.close(fd)
    try:
        lens.save(tmp)
        os.replace(tmp, where)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    write_text_atomic(where.parent / SIDECAR, json.dumps({"fitted_by": "lenstui", **(sidecar or {})}, indent=1))
    model.caches.learned_lenses.pop("jacobian", None)
    return LensFile("jacobian", str(where), f"J-lens on {lens.n_prompts:,} prompts", note=POSITION_NOTE)
