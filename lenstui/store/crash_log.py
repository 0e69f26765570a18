"""The crash log: unexpected tracebacks, kept in a rotating file the user's notice names.

``log_crash(text)`` appends one entry and returns the file's path (None when it cannot
be written: a crash log must never add a second failure). One file for the whole
explorer: the worker's failed requests, a worker thread that died, and whatever the
app's safety net caught on the UI thread (``lenstui.tui.safety``).
"""

from __future__ import annotations

import logging
import logging.handlers
import threading
from pathlib import Path
from typing import Optional

from lenstui.store.paths import data_dir

# Unexpected tracebacks (bugs, torch errors) are kept here, rotated, and the user's
# notice names the file; ``log`` alone has no handler in the app, so they would vanish.
CRASH_LOG_NAME = "crash.log"
CRASH_LOG_BYTES = 1_000_000
CRASH_LOG_BACKUPS = 3

_crash_log = logging.getLogger("lenstui.crashes")
_crash_log.propagate = False
_lock = threading.Lock()  # the worker thread and the UI thread both write here


class _CrashFile(logging.handlers.RotatingFileHandler):
    """A rotating file that remembers a failed write instead of printing to stderr (which
    would land in the middle of the terminal the app draws on)."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        self.failed = True


def crash_log_path() -> Path:
    """Where unexpected tracebacks go: ``data_dir()/logs/crash.log``."""
    return data_dir() / "logs" / CRASH_LOG_NAME


def log_crash(text: str) -> Optional[Path]:
    """Append a traceback to the rotating crash log; returns its path (None if unwritable)."""
    path = crash_log_path()
    with _lock:
        try:
            handlers = _crash_log.handlers
            if not handlers or Path(handlers[0].baseFilename) != path:  # the data dir moved (tests)
                for old in list(handlers):
                    _crash_log.removeHandler(old)
                    old.close()
                path.parent.mkdir(parents=True, exist_ok=True)
                handler = _CrashFile(path, maxBytes=CRASH_LOG_BYTES, backupCount=CRASH_LOG_BACKUPS, encoding="utf-8")
                handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
                _crash_log.addHandler(handler)
            handler = _crash_log.handlers[0]
            handler.failed = False
            _crash_log.error(text)
            if getattr(handler, "failed", False):
                return None
        except (OSError, ValueError):  # ValueError: a closed stream, at interpreter exit
            return None
    return path
