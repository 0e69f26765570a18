"""lenstui's command line as the tests drive it: in process (``run_cli``), as the installed
console script a user runs (``lenstui_command``), and code in a fresh interpreter that imports
only what the code under test imports (``run_fresh``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``lenstui ARGV`` through lenstui.cli.main in this process: (status, stdout, stderr)."""
    from lenstui.cli import main

    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def lenstui_command() -> list[str]:
    """The installed console script next to this interpreter, else the package's __main__."""
    script = Path(sys.executable).with_name("lenstui")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "lenstui.cli"]


def run_fresh(code: str, tmp_path) -> subprocess.CompletedProcess:
    """``code`` (dedented) in a fresh Python with a minimal environment: only the repository
    on its path, offline, one thread, user folders under ``tmp_path``."""
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "LENSTUI_CONFIG_DIR": str(tmp_path / "config"),
        "LENSTUI_DATA_DIR": str(tmp_path / "data"),
        "LENSTUI_CACHE_DIR": str(tmp_path / "cache"),
    }
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
    )
