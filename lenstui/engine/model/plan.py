"""The memory plan: what a load would take and where it would go, before any weight is read.

From the model's config alone, the model is built on the meta device (accelerate's
``init_empty_weights``, with transformers' ``no_init_weights``: no memory, no random
initialisation; a 70B takes a fraction of a second), and measured and placed by the same
functions ``from_pretrained(device_map=...)`` calls (``transformers.integrations.accelerate``:
``compute_module_sizes``, ``get_balanced_memory``, ``get_max_memory``,
``infer_auto_device_map``). The device map the plan computes is the one the load passes
to ``from_pretrained``: what the plan says is where the weights go.

Three parts of the model are never offloaded (``anchors``): the token embedding, the final
norm and the unembedding. The lens reads the last two at every step for every cell, and
reads them as they are (not through accelerate's per-forward loading), so a strategy map
that would offload them is recomputed with their room kept on the main device.

The lens's own working memory at a prompt length (its residual stack, the KV cache, one
forward's largest activations, the readout's vocabulary blocks) is added to the devices it
runs on, and a load that does not fit is refused with a sentence naming the options that
would make it fit.
"""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path
from typing import Any, Optional, Union

import torch

from lenstui.core.placement import (
    DeviceBudget,
    MemoryPlan,
    PlacementOptions,
    describe_placement,
    device_label,
    format_bytes,
    parse_device_map,
    parse_max_memory,
)
from lenstui.engine.model.devices import DTYPES, parse_dtype, resolve_device

# The prompt length a plan gives the lens's working memory for (``lenstui plan --tokens``).
DEFAULT_PLAN_TOKENS = 512
# Module names a final norm goes by (the families this project reads).
_FINAL_NORMS = ("model.norm", "transformer.ln_f", "model.final_layernorm", "gpt_neox.final_layer_norm",
                "model.decoder.final_layer_norm", "transformer.norm_f", "backbone.norm_f")

DeviceKey = Union[int, str]
# The readout's vocabulary block (engine.lens.readout.DEFAULT_BLOCK, which imports more of
# the engine than a plan may: tests/unit/test_placement.py holds the two equal).
READOUT_BLOCK = 4096


# ---------------------------------------------------------------- dtypes


def config_dtype(config: Any) -> Optional[torch.dtype]:
    """The dtype a checkpoint's config names (``dtype``, or the older ``torch_dtype``)."""
    for name in ("dtype", "torch_dtype"):
        value = getattr(config, name, None)
        if isinstance(value, str):
            value = getattr(torch, value, None)
        if isinstance(value, torch.dtype) and value.is_floating_point:
            return value
    text = getattr(config, "get_text_config", None)
    if callable(text):
        inner = text()
        if inner is not config:
            return config_dtype(inner)
    return None


def choose_dtype(config: Any, requested: Optional[str], accelerator: bool) -> str:
    """The dtype a load uses: the one asked for, else on an accelerator the model's own
    (its config's; float32 when it names none), else float32 (this CPU computes bfloat16
    at a few hundred MFLOP/s)."""
    if requested not in (None, "", "auto"):
        return requested
    if not accelerator:
        return "float32"
    own = config_dtype(config)
    for name, dtype in DTYPES.items():
        if dtype == own:
            return name
    return "float32"


# ---------------------------------------------------------------- the meta model


def empty_model(config: Any, dtype: torch.dtype) -> Any:
    """The model ``config`` describes, on the meta device (no memory, no initialisation)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    config = copy.deepcopy(config)
    with init_empty_weights(), no_init_weights(), _quiet():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model


def count_parameters(model: Any) -> int:
    """What ``sum(p.numel() for p in model.parameters())`` gives once the weights are
    loaded: a tied weight (the unembedding that is the embedding) counts once. On the meta
    device the ties are not made yet; transformers lists them (``all_tied_weights_keys``),
    as its own ``compute_module_sizes`` does."""
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    return sum(p.numel() for name, p in model.named_parameters(remove_duplicate=False) if name not in tied)


class _QuantizedSizes:
    """What bitsandbytes would store per element (transformers' quantizers answer the same
    ``param_element_size``): the weights of the linear layers it converts at ``bits`` bits,
    everything else (embedding, norms, the unembedding) at the model's dtype."""

    def __init__(self, model: Any, bits: float):
        from transformers.quantizers.base import get_keys_to_not_convert

        self.bits = bits
        skip = set(get_keys_to_not_convert(model))
        self.quantized = {
            f"{name}.weight"
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and not any(name == s or name.startswith(s + ".") for s in skip)
        }

    def param_element_size(self, model: Any, name: str, param: torch.Tensor) -> float:
        if name in self.quantized:
            return self.bits / 8
        return param.element_size()


def quantized_bits(config: Any, quantize: Optional[str]) -> Optional[float]:
    """Bits per quantized weight: --quantize's, or a pre-quantized checkpoint's own."""
    if quantize:
        return 4.0 if quantize == "4bit" else 8.0
    spec = _quantization_config(config)
    if spec is None:
        return None
    bits = spec.get("bits") or spec.get("w_bit") or (4 if spec.get("load_in_4bit") else 8 if spec.get("load_in_8bit") else None)
    return float(bits) if isinstance(bits, (int, float)) and bits > 0 else None


def _quantization_config(config: Any) -> Optional[dict]:
    spec = getattr(config, "quantization_config", None)
    if spec is None:
        return None
    if not isinstance(spec, dict):
        spec = spec.to_dict() if hasattr(spec, "to_dict") else dict(vars(spec))
    return spec


def quantization_problem(config: Any, name: str, quantize: Optional[str]) -> Optional[str]:
    """A sentence when the weights cannot be quantized (or, arriving quantized, read) here."""
    arrived = _quantization_config(config)
    if arrived is not None and quantize:
        method = arrived.get("quant_method", "its own method")
        return f"{name} arrives quantized ({method}): drop --quantize, it loads as it was quantized."
    if arrived is not None:
        method = str(arrived.get("quant_method", "an unknown method"))
        if method == "gguf":
            return None
        try:
            from transformers.quantizers import AutoHfQuantizer

            quantizer = AutoHfQuantizer.from_config(arrived, pre_quantized=True)
            with _quiet():
                quantizer.validate_environment(device_map=None, weights_only=True)
        except ImportError as err:
            return (
                f"{name} arrives quantized with {method}, which needs a package that is not installed "
                f"({_first_sentence(err)}): install it, or open an unquantized checkpoint."
            )
        except Exception as err:  # noqa: BLE001 - the quantizer's own reason, in one sentence
            return f"{name} arrives quantized with {method}, which cannot run here ({_first_sentence(err)})."
        return None
    if quantize:
        return bitsandbytes_problem()
    return None


def bitsandbytes_problem() -> Optional[str]:
    """Why --quantize cannot run here (bitsandbytes missing, or no backend for this
    machine's devices), or None."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        return (
            "--quantize needs bitsandbytes, which is not installed: `pip install bitsandbytes` "
            "(it runs on CUDA GPUs, and slowly on a CPU)."
        )
    try:
        with _quiet():
            from transformers.integrations.bitsandbytes import validate_bnb_backend_availability

            if not validate_bnb_backend_availability(raise_exception=False):
                return "--quantize cannot run here: the installed bitsandbytes has no backend for this machine's devices."
    except Exception as err:  # noqa: BLE001
        return f"--quantize cannot run here: bitsandbytes does not load ({_first_sentence(err)})."
    return None


def _first_sentence(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line[:200].rstrip(".")


# ---------------------------------------------------------------- devices


def free_memory(offload_dir: Optional[str] = None) -> dict[DeviceKey, Optional[int]]:
    """Free bytes per device now: each CUDA GPU, the CPU's available memory, and the disk
    under ``offload_dir`` (when one is given)."""
    import psutil

    free: dict[DeviceKey, Optional[int]] = {}
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            try:
                free[index] = int(torch.cuda.mem_get_info(index)[0])
            except Exception:  # noqa: BLE001 - a GPU that cannot be asked counts as unknown
                free[index] = None
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        free["mps"] = int(psutil.virtual_memory().available)
    free["cpu"] = int(psutil.virtual_memory().available)
    if offload_dir:
        folder = Path(offload_dir).expanduser()
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        try:
            free["disk"] = int(shutil.disk_usage(folder).free)
        except OSError:
            free["disk"] = None
    return free


def _key(device: str) -> DeviceKey:
    """"cuda:1" -> 1, "cuda" -> 0, others as they are."""
    if device.startswith("cuda"):
        return int(device.split(":", 1)[1]) if ":" in device else 0
    return device


# ---------------------------------------------------------------- working memory


def working_bytes(config: Any, tokens: int, act_bytes: int) -> tuple[int, int]:
    """(the forward's, the readout's) working memory of one lens run over ``tokens``
    positions: the KV cache and one block's largest activations (eager attention's scores,
    the MLP's hidden units); the residual stack, the model's own logits and the readout's
    vocabulary blocks (``read_out``: 512 vectors x 4096 tokens, float32)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    d = int(getattr(text, "hidden_size", 0) or getattr(text, "n_embd", 0) or 0)
    layers = int(getattr(text, "num_hidden_layers", 0) or getattr(text, "n_layer", 0) or 0)
    heads = int(getattr(text, "num_attention_heads", 0) or getattr(text, "n_head", 0) or 1)
    kv_heads = int(getattr(text, "num_key_value_heads", 0) or heads)
    head_dim = int(getattr(text, "head_dim", 0) or (d // heads if heads else 0))
    inner = int(getattr(text, "intermediate_size", 0) or getattr(text, "n_inner", 0) or 4 * d)
    vocab = int(getattr(text, "vocab_size", 0) or 0)
    p = max(1, int(tokens))
    kv = 2 * layers * kv_heads * head_dim * p * act_bytes
    block = (heads * p * p * 2 + p * inner * 3 + p * d * 6) * act_bytes
    stack = (layers + 1) * p * d * act_bytes
    logits = p * vocab * 4
    readout = min(p * (layers + 1), 512) * min(vocab, READOUT_BLOCK) * 4 * 4
    return kv + block, stack + logits + readout


# ---------------------------------------------------------------- the plan


def plan_for_config(
    config: Any,
    *,
    name: str,
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    placement: Optional[PlacementOptions] = None,
    prompt_tokens: int = DEFAULT_PLAN_TOKENS,
    free: Optional[dict[DeviceKey, Optional[int]]] = None,
) -> MemoryPlan:
    """The plan for a model ``config`` describes. ``free``: the devices' free bytes
    (default: measured now, ``free_memory``)."""
    placement = placement or PlacementOptions()
    placement.check()
    free = free_memory(placement.offload_dir) if free is None else dict(free)
    if placement.offload_dir and "disk" not in free:
        free["disk"] = None
    budgets = parse_max_memory(placement.max_memory) if placement.max_memory else None
    strategy = parse_device_map(placement.device_map) if placement.device_map else None
    if strategy is None and placement.spread:
        strategy = "auto"  # --max-memory or --offload-dir alone: accelerate's "auto"
    if strategy is None:
        single = resolve_device(device)
        accelerator = not single.startswith("cpu")
    else:
        single = None
        pool = strategy.values() if isinstance(strategy, dict) else (budgets or free).keys()
        accelerator = any(isinstance(key, int) or key == "mps" for key in pool)
    dtype_name = choose_dtype(config, dtype, accelerator)
    torch_dtype = parse_dtype(dtype_name)
    notes: list[str] = []
    problem = quantization_problem(config, name, placement.quantize)
    model = empty_model(config, torch_dtype)
    params = count_parameters(model)
    bits = quantized_bits(config, placement.quantize)
    sizer = _QuantizedSizes(model, bits) if bits else None
    from transformers.integrations.accelerate import compute_module_sizes

    sizes, _ = compute_module_sizes(model, sizer)
    total = int(sizes[""])
    act_bytes = 4 if not accelerator else max(2, torch.tensor([], dtype=torch_dtype).element_size())
    forward_work, readout_work = working_bytes(config, prompt_tokens, act_bytes)
    quantize = placement.quantize or ((_quantization_config(config) or {}).get("quant_method") if bits else None)
    if bits:
        notes.append(
            "The embedding, the final norm and the unembedding stay unquantized "
            f"({dtype_name}): the lens and the speakability check read them as they are."
        )

    if strategy is None:
        key = _key(single)
        device_map = None if not accelerator else {"": key}
        where = {"": single}
        per_device = {single: (total, forward_work + readout_work)}
    else:
        device_map = _device_map(model, strategy, budgets, free, sizer)
        if isinstance(strategy, dict):
            offloaded = _offloaded_anchors(model, device_map)
            if offloaded and problem is None:
                problem = (
                    f"The device map puts {', '.join(offloaded)} on an offload device: the lens reads the "
                    "embedding, the final norm and the unembedding at every step, so map them to a GPU (or "
                    "the CPU on a machine without one)."
                )
        where = {module: device_label(dev) for module, dev in device_map.items()}
        per_device = {}
        for module, dev in device_map.items():
            label = device_label(dev)
            placed, work = per_device.get(label, (0, 0))
            per_device[label] = (placed + _module_size(sizes, module), work)
        embed_at = device_label(_device_of(device_map, _anchor_names(model)[0]))
        head_at = device_label(_device_of(device_map, _anchor_names(model)[-1]))
        for label, work in ((embed_at, forward_work), (head_at, readout_work)):
            placed, old = per_device.get(label, (0, 0))
            per_device[label] = (placed, old + work)

    # --max-memory bounds the weights (accelerate's meaning, and what the map was computed
    # with); the weights and the lens's working memory together must fit what is free.
    devices = tuple(
        DeviceBudget(label, free.get(_key(label)), placed, work) for label, (placed, work) in per_device.items()
    )
    over = [d for d in devices if d.free_bytes is not None and d.bytes + d.working_bytes > d.free_bytes]
    on_disk = sum(d.bytes for d in devices if d.name == "disk")
    if problem is None and on_disk and not placement.offload_dir:
        problem = (
            f"{format_bytes(on_disk)} of {name}'s weights fit on no device: pass --offload-dir PATH to read them "
            "from disk at every forward (slow), or give the devices more room with --max-memory"
            + (", or --quantize 4bit." if accelerator and not placement.quantize else ".")
        )
    if problem is None and bits and placement.quantize and strategy is not None and (
        on_disk or (accelerator and any(d.name == "cpu" and d.bytes for d in devices))
    ):
        problem = (
            "--quantize keeps every quantized block on its device (bitsandbytes does not offload them to "
            f"{'the CPU or ' if accelerator else ''}disk): give the devices more room with --max-memory, or drop "
            "--quantize and offload in the model's own dtype."
        )
    if problem is None and over:
        problem = _too_big_sentence(name, total, dtype_name, placement, over, accelerator, prompt_tokens,
                                    _quantized_total(model, sizes, total))
    fits = problem is None
    if fits:
        quant = f", {quantize}" if quantize else ""
        sentence = (
            f"{name}: {_count(params)} parameters, {format_bytes(total)} in {dtype_name}{quant}, on "
            f"{describe_placement(where)}; the lens needs about {format_bytes(forward_work + readout_work)} more "
            f"at {prompt_tokens} tokens."
        )
    else:
        sentence = problem
    return MemoryPlan(
        model=name,
        params=int(params),
        bytes=total,
        dtype=dtype_name,
        quantize=quantize,
        devices=devices,
        placement=where,
        fits=fits,
        sentence=sentence,
        prompt_tokens=int(prompt_tokens),
        working_bytes=int(forward_work + readout_work),
        notes=tuple(notes),
        device_map=device_map,
    )


def _count(params: int) -> str:
    return f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.1f}M" if params >= 1e6 else f"{params:,}"


def _quantized_total(model: Any, sizes: dict, total: int) -> int:
    from transformers.integrations.accelerate import compute_module_sizes

    quantized, _ = compute_module_sizes(model, _QuantizedSizes(model, 4.0))
    return int(quantized[""])


def _too_big_sentence(name, total, dtype_name, placement, over, accelerator, tokens, four_bit) -> str:
    worst = over[0]
    need = worst.bytes + worst.working_bytes
    what = (
        f"{name} needs {format_bytes(need)} on {worst.name} ({format_bytes(worst.bytes)} of weights in {dtype_name} "
        f"and the lens's {format_bytes(worst.working_bytes)} at {tokens} tokens) but it has "
        f"{format_bytes(worst.free_bytes)} free"
    )
    options = []
    if not placement.spread:
        options.append("--device-map auto to spread it over the GPUs and the CPU" if accelerator
                       else "--device-map auto --offload-dir PATH to read what does not fit from disk")
    elif not placement.offload_dir:
        options.append("--offload-dir PATH for what fits nowhere")
    else:
        options.append("a larger --max-memory")
    if accelerator and not placement.quantize and four_bit < total:
        options.append(f"--quantize 4bit (about {format_bytes(four_bit)})")
    return f"{what}: pass " + ", or ".join(options) + "."


def _device_map(model: Any, strategy, budgets, free, sizer) -> dict[str, DeviceKey]:
    """The full device map for a strategy (as ``from_pretrained`` computes it), with the
    anchors kept off the offload devices; an explicit map as given."""
    if isinstance(strategy, dict):
        return dict(strategy)
    from transformers.integrations.accelerate import get_balanced_memory, get_max_memory, infer_auto_device_map

    no_split = getattr(model, "_no_split_modules", None) or []
    known = {key: value for key, value in free.items() if value is not None and key != "disk"}
    limits = dict(budgets) if budgets is not None else dict(known)
    with _quiet():
        if strategy != "sequential":
            limits = get_balanced_memory(model, max_memory=dict(limits), no_split_module_classes=no_split,
                                         hf_quantizer=sizer, low_zero=strategy == "balanced_low_0")
        else:
            limits = get_max_memory(dict(limits))
        device_map = infer_auto_device_map(model, max_memory=dict(limits), no_split_module_classes=no_split,
                                           hf_quantizer=sizer)
        resident = _resident_devices(limits)
        stray = [name for name in _anchor_names(model) if _device_of(device_map, name) not in resident]
        if stray and resident:
            main = resident[0]
            from transformers.integrations.accelerate import compute_module_sizes

            sizes, _ = compute_module_sizes(model, sizer)
            # Room for all three on the main device (fixing one alone can push another off).
            anchors = _anchor_names(model)
            room = dict(limits)
            room[main] = max(0, int(room[main]) - sum(_module_size(sizes, n) for n in anchors))
            device_map = infer_auto_device_map(model, max_memory=room, no_split_module_classes=no_split,
                                               hf_quantizer=sizer)
            for anchor in anchors:
                _assign(device_map, model, anchor, main)
    for block in _block_names(model):  # one entry per block: where each block goes, said
        if block not in device_map:
            _assign(device_map, model, block, _device_of(device_map, block))
    return device_map


def _block_names(model: Any) -> list[str]:
    """The decoder blocks' module names (the classes the model never splits)."""
    no_split = set(getattr(model, "_no_split_modules", None) or ())
    return [name for name, module in model.named_modules() if type(module).__name__ in no_split]


def _resident_devices(limits: dict) -> list[DeviceKey]:
    """The devices whose weights stay where they are: the GPUs (or mps), else the CPU.
    accelerate offloads the CPU's share to a GPU at each forward when one is used."""
    accelerators = [key for key in limits if (isinstance(key, int) or key == "mps") and limits[key]]
    if accelerators:
        return accelerators
    return ["cpu"] if "cpu" in limits else []


def _anchor_names(model: Any) -> list[str]:
    """[the embedding, the final norm, the unembedding] module names ( the norm is left
    out when the model has none the plan knows)."""
    names = {id(module): name for name, module in model.named_modules()}
    out = [names[id(model.get_input_embeddings())]]
    modules = dict(model.named_modules())
    out += [name for name in _FINAL_NORMS if name in modules][:1]
    head = model.get_output_embeddings()
    if head is not None and id(head) in names:
        out.append(names[id(head)])
    return out


def _offloaded_anchors(model: Any, device_map: dict) -> list[str]:
    gpus = any(isinstance(v, int) or v == "mps" for v in device_map.values())
    offload = ("disk", "cpu") if gpus else ("disk",)
    return [name for name in _anchor_names(model) if _device_of(device_map, name) in offload]


def _device_of(device_map: dict, name: str) -> Optional[DeviceKey]:
    """The device the map gives module ``name`` (its own entry or its closest ancestor's)."""
    best, best_len = None, -1
    for key, device in device_map.items():
        if (key == "" or name == key or name.startswith(key + ".")) and len(key) > best_len:
            best, best_len = device, len(key)
    return best


def _assign(device_map: dict, model: Any, name: str, device: DeviceKey) -> None:
    """Put module ``name`` on ``device``, splitting the ancestor entry that covers it."""
    covering = max((k for k in device_map if k == "" or name == k or name.startswith(k + ".")), key=len, default=None)
    if covering == name:
        device_map[name] = device
        return
    if covering is None:
        device_map[name] = device
        return
    old = device_map.pop(covering)
    parent = model.get_submodule(covering) if covering else model
    prefix = f"{covering}." if covering else ""
    for child, _ in parent.named_children():
        device_map[prefix + child] = old
    for leaf, _ in list(parent.named_parameters(recurse=False)) + list(parent.named_buffers(recurse=False)):
        device_map[prefix + leaf] = old
    _assign(device_map, model, name, device)


def _module_size(sizes: dict, name: str) -> int:
    return int(sizes.get(name, 0))


class _quiet:
    """accelerate's and transformers' warnings (a GPU index this machine lacks, ...) stay
    off the terminal the app owns: the plan says what matters in its sentence."""

    def __enter__(self):
        import warnings

        self._loggers = [logging.getLogger(n) for n in ("accelerate", "transformers", "bitsandbytes", "kernels")]
        self._levels = [logger.level for logger in self._loggers]
        for logger in self._loggers:
            logger.setLevel(logging.ERROR)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        return self

    def __exit__(self, *exc):
        self._warnings.__exit__(*exc)
        for logger, level in zip(self._loggers, self._levels):
            logger.setLevel(level)
        return False
