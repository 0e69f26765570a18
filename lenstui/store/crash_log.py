"""The crash log: unexpected tracebacks, kept in a rotating file the user's notice names.

``log_crash(text)`` appends one entry and returns the file's path (None when it cannot
be written: a crash log must never add a second failure). One file for the whole
explorer: the worker's failed requests, a worker thread that died, and whatever the
app's safety net caught on the UI thread (``lenstui.tui.safety``).

The log can hold what the user typed (a request names its prompt), so it is private:
its folder is 0700 and every file of it 0600, rotated ones included, whatever the umask.
``short_repr(request)`` is how an entry names a request: its repr, cut to a few hundred
characters (a 1 MB prompt is not copied into the log); any other line of an entry (an
exception's message may quote its input) is cut at ``LINE_LIMIT`` characters.
"""

from __future__ import annotations

import dataclasses
import logging
import logging.handlers
import os
import reprlib
import threading
from pathlib import Path
from typing import Any, Optional

from lenstui.store.paths import data_dir

# Unexpected tracebacks (bugs, torch errors) are kept here, rotated, and the user's
# notice names the file; ``log`` alone has no handler in the app, so they would vanish.
CRASH_LOG_NAME = "crash.log"
CRASH_LOG_BYTES = 1_000_000
CRASH_LOG_BACKUPS = 3
FOLDER_MODE = 0o700
FILE_MODE = 0o600
# How much of a request's repr an entry keeps, and of any other line.
REPR_LIMIT = 300
LINE_LIMIT = 1000

_crash_log = logging.getLogger("lenstui.crashes")
_crash_log.propagate = False
_lock = threading.Lock()  # the worker thread and the UI thread both write here



_short = reprlib.Repr()
_short.maxstring = 120
_short.maxother = 120
_short.maxlist = _short.maxtuple = 12


def short_repr(value: Any, limit: int = REPR_LIMIT) -> str:
    """``repr(value)`` cut to about ``limit`` characters: long strings and sequences in a
    dataclass's fields are shortened (reprlib), and what is left is cut at ``limit``."""
    try:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = ", ".join(
                f"{field.name}={_short.repr(getattr(value, field.name, None))}" for field in dataclasses.fields(value)
            )
            text = f"{type(value).__name__}({fields})"
        else:
            text = _short.repr(value)
    except Exception:  # a repr that fails must not hide the crash being logged
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _CrashFile(logging.handlers.RotatingFileHandler):
    """Every file it opens (the log, and the new one after a rotation) is 0600; a failed
    write is remembered instead of printed to stderr (which would land in the middle of
    the terminal the app draws on)."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        self.failed = True

    def _open(self):  # noqa: D401 - logging's hook
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # an older log written with the umask's mode
        except OSError:
            pass
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)


def _clip_lines(text: str, limit: int = LINE_LIMIT) -> str:
    return "\n".join(line if len(line) <= limit else line[: limit - 1] + "…" for line in text.split("\n"))


def crash_log_path() -> Path:
    """Where unexpected tracebacks go: ``data_dir()/logs/crash.log``."""
    return data_dir() / "logs" / CRASH_LOG_NAME


def _private_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True, mode=FOLDER_MODE)
    try:
        os.chmod(folder, FOLDER_MODE)  # mkdir's mode goes through the umask, and an old folder
    except OSError:
        pass


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
                _private_folder(path.parent)
                handler = _CrashFile(path, maxBytes=CRASH_LOG_BYTES, backupCount=CRASH_LOG_BACKUPS, encoding="utf-8")
                handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
                _crash_log.addHandler(handler)
            handler = _crash_log.handlers[0]
            handler.failed = False
            _crash_log.error(_clip_lines(text))
            if getattr(handler, "failed", False):
                return None
        except (OSError, ValueError):  # ValueError: a closed stream, at interpreter exit
            return None
    return path
