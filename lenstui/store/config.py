"""The explorer's settings: ``config_dir()/config.toml``, every key optional.

```toml
theme = "lenstui-contrast"   # a shipped or user theme name
top_k = 10                   # tokens per cell in the layer x top-k view (1..100, MAX_TOP_K)
debounce_ms = 350            # pause after typing before the lens re-runs
export_dir = "~/slides"      # where exports go (default: the current dir, else the data dir)
chat = true                  # chat template on at start for instruct models
models_dir = "~/models"      # also list the .gguf files and HF model folders here in the model picker
allow_download = false       # true: a Hugging Face id not in the local cache may be downloaded
device = "cuda:0"            # where a model loads (default: the best available)
dtype = "bfloat16"           # auto (default: the model's own on a GPU, float32 on a CPU), float32, float16, bfloat16
device_map = "auto"          # spread a model over devices: auto, balanced, balanced_low_0, sequential, or a .json map
max_memory = "0=70GiB,1=70GiB,cpu=200GiB"  # what each device may hold of the weights (with device_map)
offload_dir = "~/offload"    # where the weights that fit on no device are read from (with device_map)
quantize = "4bit"            # 8bit or 4bit (bitsandbytes): the blocks' linear layers quantized at load

[keymap]                     # rebind keys by binding id (see `?`), comma-separated keys
"lenstui.step" = "ctrl+n,f8"
```

A broken file never stops the app: the loader returns defaults plus a sentence per
problem, and the app shows those as notices.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from lenstui.core.errors import clipped, quoted
from lenstui.core.lenses import MAX_TOP_K
from lenstui.core.placement import DTYPE_CHOICES, QUANTIZE_CHOICES, PlacementOptions


@dataclass
class Config:
    theme: Optional[str] = None
    top_k: int = 10
    debounce_ms: int = 350
    export_dir: Optional[str] = None
    chat: Optional[bool] = None
    models_dir: Optional[str] = None
    allow_download: bool = False
    # Where models load (the CLI's --device, --dtype, --device-map, --max-memory,
    # --offload-dir, --quantize win over these): lenstui.core.placement.
    device: Optional[str] = None
    dtype: Optional[str] = None
    device_map: Optional[str] = None
    max_memory: Optional[str] = None
    offload_dir: Optional[str] = None
    quantize: Optional[str] = None
    keymap: dict[str, str] = field(default_factory=dict)


    def placement(self) -> PlacementOptions:
        """The placement keys as the loader takes them."""
        return PlacementOptions(device_map=self.device_map, max_memory=self.max_memory,
                                offload_dir=self.offload_dir, quantize=self.quantize)


def config_path() -> Path:
    from lenstui.store.paths import config_dir

    return config_dir() / "config.toml"


def load_config(path: Optional[Path] = None) -> tuple[Config, list[str]]:
    path = path or config_path()
    config, problems = Config(), []
    if not path.is_file():
        return config, problems
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as err:
        return config, [f"{path} was ignored ({clipped(err)})."]
    except RecursionError:  # tomllib recurses per nesting level: [[[[...]]]] deep enough
        return config, [f"{path} was ignored (its tables or lists are nested too deeply to read)."]
    checks = {
        "theme": (str, None),
        "top_k": (int, lambda v: 1 <= v <= MAX_TOP_K),
        "debounce_ms": (int, lambda v: 0 <= v <= 5000),
        "export_dir": (str, None),
        "chat": (bool, None),
        "models_dir": (str, lambda v: bool(v.strip())),
        "allow_download": (bool, None),
        "device": (str, lambda v: bool(v.strip())),
        "dtype": (str, lambda v: v in DTYPE_CHOICES),
        "device_map": (str, lambda v: bool(v.strip())),
        "max_memory": (str, lambda v: bool(v.strip())),
        "offload_dir": (str, lambda v: bool(v.strip())),
        "quantize": (str, lambda v: v in QUANTIZE_CHOICES),
        "keymap": (dict, lambda v: all(isinstance(x, str) for x in v.values())),
    }
    for key, value in data.items():
        if key not in checks:
            problems.append(f"{path.name}: unknown setting {quoted(key)} was ignored.")
            continue
        kind, valid = checks[key]
        if not isinstance(value, kind) or isinstance(value, bool) and kind is int or (valid and not valid(value)):
            problems.append(f"{path.name}: {key} = {quoted(value)} is not allowed and was ignored.")
            continue
        setattr(config, key, value)
    return config, problems
