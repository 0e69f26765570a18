"""Per-user directories (XDG via platformdirs), each overridable by an environment
variable so tests and scripted runs never touch a developer's own files.

Deliberately light (no torch, no engine imports): the app reads these before its
first frame.
"""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir, user_config_dir, user_data_dir

CACHE_ENV = "LENSTUI_CACHE_DIR"


def config_dir() -> Path:
    """Config (config.toml, user themes/): $LENSTUI_CONFIG_DIR or the XDG config dir."""
    return Path(os.environ.get("LENSTUI_CONFIG_DIR") or user_config_dir("lenstui"))


def data_dir() -> Path:
    """Data (prompt history, vocabulary scans): $LENSTUI_DATA_DIR or the XDG data dir."""
    return Path(os.environ.get("LENSTUI_DATA_DIR") or user_data_dir("lenstui"))


def cache_root() -> Path:
    """Rebuildable caches (dequantized GGUF models): $LENSTUI_CACHE_DIR or the XDG cache dir."""
    return Path(os.environ.get(CACHE_ENV) or user_cache_dir("lenstui"))


LENS_ENV = "LENSTUI_LENS_DIR"


def lens_root() -> Path:
    """Learned lenses fitted here (tuned-lens directories, J-lens files), one folder per
    model's weights: $LENSTUI_LENS_DIR or ``lenses/`` under the cache dir."""
    return Path(os.environ.get(LENS_ENV) or cache_root() / "lenses")
