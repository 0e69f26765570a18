"""Where a model's weights go, as plain data: the options a load takes beyond one device
(accelerate's device map, memory budgets, a disk folder, quantized weights), the memory
plan a load is checked against, and the one-line summary of a placement that the status
line, the picker and every ``--json`` payload show.

Torch-free (the app and the CLI parse and show these before the engine is imported). The
engine computes the plan (``lenstui.engine.model.plan``) and loads by it
(``lenstui.engine.model.load``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from lenstui.core.errors import ModelLoadError, quoted

# accelerate's strategies (``from_pretrained(device_map=...)``).
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
QUANTIZE_CHOICES = ("8bit", "4bit")
# "auto": the model's own dtype (its config's) on an accelerator, float32 on a CPU.
DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")

MAX_MEMORY_EXAMPLE = '"0=70GiB,1=70GiB,cpu=200GiB"'
_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_GPU_NAME = re.compile(r"^(?:cuda:)?(\d+)$")
_TARGETS = ("cpu", "disk", "mps")

DeviceMap = Union[str, dict[str, Union[int, str]]]


@dataclass(frozen=True)
class PlacementOptions:
    """How a model is spread beyond one ``--device``; every field optional."""

    device_map: Optional[str] = None  # a strategy (DEVICE_MAP_STRATEGIES), a JSON object, or a .json file
    max_memory: Optional[str] = None  # "0=70GiB,1=70GiB,cpu=200GiB"
    offload_dir: Optional[str] = None  # the folder for weights that fit on no device
    quantize: Optional[str] = None  # "8bit" | "4bit" (bitsandbytes)

    @property
    def spread(self) -> bool:
        """Whether the load goes through a device map (anything but one device)."""
        return bool(self.device_map or self.max_memory or self.offload_dir)

    def check(self) -> None:
        """Raise ModelLoadError with a sentence for any option that cannot be read."""
        if self.device_map:
            parse_device_map(self.device_map)
        if self.max_memory:
            parse_max_memory(self.max_memory)
        if self.quantize is not None and self.quantize not in QUANTIZE_CHOICES:
            raise ModelLoadError(f"Unknown --quantize {quoted(self.quantize)}: choose 8bit or 4bit.")
        if self.offload_dir is not None and not str(self.offload_dir).strip():
            raise ModelLoadError("--offload-dir is empty: name a folder with room for the weights that fit nowhere else.")


def parse_size(text: str) -> int:
    """ "70GiB", "1.5 TB", "512MB", "1000" (bytes) -> bytes."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ModelLoadError(
            f"{quoted(text)} is not a memory size: write a number and a unit, e.g. 70GiB, 512MB or 1.5TB."
        )
    return int(float(match.group(1)) * _UNITS[unit])


def device_key(name: str) -> Union[int, str]:
    """A device as accelerate's maps name it: a GPU index (0, "cuda:1" -> 1), "cpu",
    "disk" or "mps"."""
    text = str(name).strip().lower()
    gpu = _GPU_NAME.match(text)
    if gpu:
        return int(gpu.group(1))
    if text == "cuda":
        return 0
    if text in _TARGETS:
        return text
    raise ModelLoadError(
        f"Unknown device {quoted(name)} in the placement: use a GPU index (0, 1, ... or cuda:N), cpu, disk or mps."
    )


def parse_max_memory(text: str) -> dict[Union[int, str], int]:
    """ "0=70GiB,1=70GiB,cpu=200GiB" -> {0: bytes, 1: bytes, "cpu": bytes}."""
    budgets: dict[Union[int, str], int] = {}
    for entry in str(text).split(","):
        if not entry.strip():
            continue
        name, sep, size = entry.partition("=")
        if not sep:
            raise ModelLoadError(
                f"--max-memory entry {quoted(entry.strip())} has no '=': write DEVICE=SIZE pairs, e.g. {MAX_MEMORY_EXAMPLE}."
            )
        budgets[device_key(name)] = parse_size(size)
    if not budgets:
        raise ModelLoadError(f"--max-memory names no device: write DEVICE=SIZE pairs, e.g. {MAX_MEMORY_EXAMPLE}.")
    return budgets


def parse_device_map(text: str) -> DeviceMap:
    """A strategy name, or a JSON object {module: device} given inline or as a .json file."""
    value = str(text).strip()
    if value in DEVICE_MAP_STRATEGIES:
        return value
    if value.startswith("{"):
        source = "--device-map"
        raw = value
    else:
        path = Path(value).expanduser()
        if not (path.suffix.lower() == ".json" and path.is_file()):
            raise ModelLoadError(
                f"--device-map {quoted(value, middle=True)} is neither {', '.join(DEVICE_MAP_STRATEGIES)} nor a JSON "
                'object ({"model.layers.0": 0, ...}) nor a .json file holding one.'
            )
        source = str(path)
        try:
            raw = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ModelLoadError(f"Cannot read the device map {quoted(source, middle=True)}: {err}.") from None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise ModelLoadError(f"The device map in {quoted(source, middle=True)} is not JSON ({err}).") from None
    if not isinstance(data, dict) or not data or not all(isinstance(k, str) for k in data):
        raise ModelLoadError(
            f"The device map in {quoted(source, middle=True)} must be a JSON object of module names to devices."
        )
    return {name: device_key(str(device)) for name, device in data.items()}


def device_label(device: Union[int, str]) -> str:
    """How a placement names a device: a GPU index reads "cuda:N"."""
    if isinstance(device, int) or (isinstance(device, str) and device.isdigit()):
        return f"cuda:{int(device)}"
    return str(device)


def format_bytes(n: Union[int, float]) -> str:
    """Bytes as a person reads them (binary units, as --max-memory's GiB)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            break
        value /= 1024
    if unit == "GiB" and abs(value) >= 1024:
        return f"{value / 1024:.1f} TiB"
    return f"{value:.0f} {unit}" if unit in ("B", "KiB") else f"{value:.1f} {unit}"


_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|block)\.(\d+)$")
_SHORT = {"embed_tokens": "embed", "wte": "embed", "wpe": "pos", "norm": "norm", "ln_f": "norm",
          "lm_head": "unembed", "rotary_emb": None}


def describe_placement(placement: Mapping[str, Any]) -> str:
    """One line for a placement {module: device}: per device, its blocks as ranges and
    its other parts ("cuda:0 embed L0-39 · cuda:1 L40-79 norm unembed"); a model on one
    device is that device's name."""
    if not placement:
        return ""
    labels = {name: device_label(device) for name, device in placement.items()}
    if len(set(labels.values())) == 1:
        return next(iter(labels.values()))
    per_device: dict[str, list[str]] = {}
    layers: dict[str, list[int]] = {}
    for name, device in labels.items():
        parts = per_device.setdefault(device, [])
        match = _LAYER.search(name)
        if match:
            layers.setdefault(device, []).append(int(match.group(1)))
            if "\0layers" not in parts:
                parts.append("\0layers")
        else:
            leaf = name.rsplit(".", 1)[-1]
            short = _SHORT.get(leaf, leaf or "model")
            if short is not None and short not in parts:
                parts.append(short)
    out = []
    order = {"embed": 0, "pos": 1, "\0layers": 2, "norm": 3, "unembed": 4}
    for device, parts in per_device.items():
        words = []
        for part in sorted(parts, key=lambda part: order.get(part, 5)):
            words.append(_ranges(layers[device]) if part == "\0layers" else part)
        out.append(f"{device} {' '.join(words)}")
    return " · ".join(out)


def short_placement(placement: Mapping[str, Any]) -> str:
    """The status line's version: per device its blocks only ("cuda:0 L0-39 · cuda:1
    L40-79", "cpu · disk L0-2"); a model on one device is that device's name."""
    if not placement:
        return ""
    labels = {name: device_label(device) for name, device in placement.items()}
    if len(set(labels.values())) == 1:
        return next(iter(labels.values()))
    layers: dict[str, list[int]] = {}
    for name, device in labels.items():
        match = _LAYER.search(name)
        layers.setdefault(device, [])
        if match:
            layers[device].append(int(match.group(1)))
    return " · ".join(f"{device} {_ranges(found)}" if found else device for device, found in layers.items())


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 6] -> "L0-2,5-6"."""
    indices = sorted(set(indices))
    spans, start = [], indices[0]
    for prev, cur in zip(indices, indices[1:] + [None]):
        if cur is None or cur != prev + 1:
            spans.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = cur
    return "L" + ",".join(spans)


@dataclass(frozen=True)
class DeviceBudget:
    """One device of a plan: its free memory now and what the plan puts there."""

    name: str  # "cuda:0", "cpu", "disk", "mps"
    free_bytes: Optional[int]  # None: not measurable here
    bytes: int  # the weights placed there
    working_bytes: int = 0  # the lens's own working memory, where it runs

    def to_json(self) -> dict:
        return {"name": self.name, "free_bytes": self.free_bytes, "bytes": self.bytes,
                "working_bytes": self.working_bytes}


@dataclass(frozen=True)
class MemoryPlan:
    """What a load would take, from the config alone (no weights read)."""

    model: str
    params: int
    bytes: int  # the weights at the chosen dtype / quantization
    dtype: str
    quantize: Optional[str]
    devices: tuple[DeviceBudget, ...]
    placement: dict[str, str]  # module -> device label ("" -> the whole model)
    fits: bool
    sentence: str
    prompt_tokens: int = 0  # the prompt length the working memory is given for
    working_bytes: int = 0  # the lens's working memory at that length
    notes: tuple[str, ...] = ()
    # What the load passes to from_pretrained: the device map it computed (None: one device).
    device_map: Optional[dict[str, Union[int, str]]] = field(default=None, compare=False)

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "params": self.params,
            "bytes": self.bytes,
            "dtype": self.dtype,
            "quantize": self.quantize,
            "devices": [d.to_json() for d in self.devices],
            "placement": dict(self.placement),
            "fits": self.fits,
            "sentence": self.sentence,
            "prompt_tokens": self.prompt_tokens,
            "working_bytes": self.working_bytes,
            "notes": list(self.notes),
        }
