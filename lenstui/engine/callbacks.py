"""The two callbacks every long engine computation takes (torch-free, like errors.py).

- ``should_stop() -> bool`` is polled between chunks/rows/LP rounds; when it turns
  true the computation raises ``lenstui.engine.errors.Cancelled``.
- ``progress(message, fraction)`` reports what is being done; ``fraction`` is 0..1,
  or None when unknown. The worker's ``JobContext.progress`` and the CLI's bars have
  exactly this signature, so they are passed straight through.
"""

from __future__ import annotations

from typing import Callable, Optional

StopCheck = Callable[[], bool]
Progress = Callable[[str, Optional[float]], None]
