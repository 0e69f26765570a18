"""The two callbacks every long engine computation takes (torch-free, like errors.py).

- ``should_stop() -> bool`` is polled between chunks/rows/LP rounds; when it turns
  true the computation raises ``lenstui.core.errors.Cancelled`` (``check_stop`` does both).
- ``progress(message, fraction)`` reports what is being done; ``fraction`` is 0..1,
  or None when unknown. The worker's ``JobContext.progress`` and the CLI's bars have
  exactly this signature, so they are passed straight through.
"""

from __future__ import annotations

from typing import Callable, Optional

from lenstui.core.errors import Cancelled

StopCheck = Callable[[], bool]
Progress = Callable[[str, Optional[float]], None]


def check_stop(should_stop: Optional[StopCheck], why: str = "superseded by a newer request") -> None:
    """Raise ``Cancelled(why)`` when ``should_stop()`` has turned true (None: never)."""
    if should_stop is not None and should_stop():
        raise Cancelled(why)
