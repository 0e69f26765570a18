"""Per-user directories (XDG via platformdirs), each overridable by an environment
variable so tests and scripted runs never touch a developer's own files."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_config_dir, user_data_dir

from lenstui.engine.models import cache_root

__all__ = ["config_dir", "data_dir", "cache_root"]


def config_dir() -> Path:
    """Config (config.toml, user themes/): $LENSTUI_CONFIG_DIR or the XDG config dir."""
    return Path(os.environ.get("LENSTUI_CONFIG_DIR") or user_config_dir("lenstui"))


def data_dir() -> Path:
    """Data (prompt history): $LENSTUI_DATA_DIR or the XDG data dir."""
    return Path(os.environ.get("LENSTUI_DATA_DIR") or user_data_dir("lenstui"))
