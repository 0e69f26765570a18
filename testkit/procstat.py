"""What /proc tells about a process the tests started (Linux): the CPU time it has spent.

A condition in CPU seconds ("the child has started computing", "the app spins without
drawing") holds however loaded the machine is, where a wall-clock sleep guesses."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid``, all its threads (FileNotFoundError once it is gone)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spends_cpu(pid: int, seconds: float, timeout: float = 120, still: Callable[[], bool] = lambda: True) -> bool:
    """Whether ``pid`` spends ``seconds`` more of CPU within ``timeout`` wall seconds while
    ``still()`` holds; False as soon as it ends or ``still()`` turns false."""
    try:
        start = cpu_seconds(pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and still():
            if cpu_seconds(pid) - start >= seconds:
                return still()
            time.sleep(0.02)
    except FileNotFoundError:  # it ended between two looks
        pass
    return False
