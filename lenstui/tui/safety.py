"""The safety net: no unexpected exception ends the explorer.

An exception that escapes an action, a message handler, a timer, a callback or the
drawing of a widget becomes one notice, "Something went wrong: <what>. Details in
<crash log>.", and one entry with its traceback in the crash log
(``lenstui.store.crash_log``). The app keeps running: the prompt, the history and the
session are where they were. Only quitting quits.

Where Textual 8 lets an exception end the app, and what catches it here:

- ``App._dispatch_action`` runs every action (key bindings, the footer, ``run_action``):
  ``LenstuiApp`` overrides it (``guard_action``);
- ``MessagePump._dispatch_message`` runs every message handler of a node (the app, a
  screen, a widget; worker replies and ``call_later`` callbacks are messages too). An
  exception there makes Textual leave that node's message loop for good (a widget that
  never answers again), so it is caught there, in each class of ours: the ``Guarded``
  mixin (``tests/app/test_never_crashes.py`` checks that every app, screen and widget class in
  ``lenstui.tui`` has it);
- ``App._handle_exception`` is where everything else lands (timers, idle and
  after-refresh callbacks, compose, a widget's render): ``LenstuiApp`` reports it instead
  of exiting, once the app is up (before that, and while it shuts down, a failure stays
  fatal and Textual prints it as usual).

``KeyboardInterrupt``, ``SystemExit`` and ``asyncio.CancelledError`` are not ``Exception``s:
they pass. A failure repeated in a loop (a widget failing on every frame) is logged and
told once per ``REPEAT_SECONDS``; every one is still recorded in ``SafetyNet.crashes``.
``strict`` (tests): a caught crash is also re-raised when the Pilot's ``run_test`` ends,
so a test fails on it, while the app went on running exactly as a user's would.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from lenstui.store.crash_log import log_crash

if TYPE_CHECKING:
    from textual.app import App
    from textual.message import Message

REPEAT_SECONDS = 10.0
LINE_WIDTH = 160  # the notice's one line about the error


@dataclass(frozen=True)
class Crash:
    """One caught exception: where it happened, the error, its traceback text and the
    crash log it was written to (None when that could not be written, or it repeated)."""

    where: str
    error: BaseException
    text: str
    log_path: Optional[Path]


def one_line(error: BaseException) -> str:
    """``IndexError: list index out of range``: the error's type and first line, cut."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    line = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return line if len(line) <= LINE_WIDTH else line[: LINE_WIDTH - 1] + "…"


class SafetyNet:
    """What the app does with an exception nobody expected (see the module doc)."""

    def __init__(
        self,
        notify: Callable[..., Any],
        *,
        strict: bool = False,
        on_strict: Optional[Callable[[BaseException], None]] = None,
    ) -> None:
        self._notify = notify
        self.strict = strict
        self._on_strict = on_strict  # strict: handed every caught error (the app keeps the first)
        self.armed = False  # set once the app is up, cleared when it shuts down
        self.crashes: list[Crash] = []
        self._last_told: dict[tuple, float] = {}  # (type, file, line) -> when last told
        self._repeats: dict[tuple, int] = {}

    def report(self, error: BaseException, where: str) -> Crash:
        """Log ``error`` with its traceback and tell the user (once per repeat window)."""
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        key = _signature(error)
        now = time.monotonic()
        last = self._last_told.get(key)
        path: Optional[Path] = None
        if last is not None and now - last < REPEAT_SECONDS:
            self._repeats[key] = self._repeats.get(key, 0) + 1
        else:
            repeated = self._repeats.pop(key, 0)
            also = f" (and {repeated} more times since the last entry)" if repeated else ""
            path = log_crash(f"unexpected error in the explorer, {where}{also}:\n{text}")
            self._last_told[key] = now
            details = f" Details in {path}." if path is not None else " (The crash log could not be written.)"
            try:
                self._notify(
                    f"Something went wrong: {one_line(error)}.{details}",
                    title="Unexpected error",
                    severity="error",
                    timeout=12,
                    markup=False,
                )
            except Exception:  # telling the user must never be a second failure
                pass
        crash = Crash(where, error, text, path)
        self.crashes.append(crash)
        if self.strict and self._on_strict is not None:
            self._on_strict(error)
        return crash


def _signature(error: BaseException) -> tuple:
    frames = traceback.extract_tb(error.__traceback__)
    last = frames[-1] if frames else None
    return (type(error), last.filename if last else "", last.lineno if last else 0)


def net_of(app: "App") -> Optional[SafetyNet]:
    """The app's safety net when it is armed (None: let the exception through)."""
    net = getattr(app, "safety_net", None)
    return net if isinstance(net, SafetyNet) and net.armed else None


def catch(node: Any, error: Exception, where: str) -> bool:
    """Report ``error`` through the safety net of ``node``'s app; False when there is no
    armed net (the caller re-raises: Textual's own handling then applies)."""
    try:
        app = node.app
    except Exception:
        return False
    net = net_of(app)
    if net is None:
        return False
    net.report(error, where)
    return True


def _describe(message: "Message") -> str:
    name = type(message).__name__
    if name in ("WorkerReply",):
        result = getattr(message, "result", None)
        request = getattr(result, "request", None)
        return f"a worker reply ({type(result).__name__} for {type(request).__name__})"
    if name == "Callback":
        return "a scheduled callback"
    return f"the {name} message"


class Guarded:
    """Mixed into an App, Screen or Widget class (before the Textual base): an exception in
    one of its message handlers is reported by the safety net, and the node goes on
    handling its messages (Textual would otherwise stop its message loop)."""

    async def _dispatch_message(self, message: "Message") -> None:
        try:
            await super()._dispatch_message(message)  # type: ignore[misc]
        except Exception as error:
            if not catch(self, error, f"{type(self).__name__} handling {_describe(message)}"):
                raise
