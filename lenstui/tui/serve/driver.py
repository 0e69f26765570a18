"""The tabs' Textual driver: textual's ``WebDriver``, with exits that do not need the event loop.

textual's ``WebDriver`` (textual 8.2.8, web_driver.py:139-213) turns SIGTERM/SIGINT into an
``ExitApp`` message through ``loop.add_signal_handler``: the handler runs only when the
asyncio loop gets a turn, and the process ends only if the app's shutdown completes. A
blocked handler, a write blocked on a full pipe, or Textual's exit-during-start-up
livelock (an ``ExitApp`` handled while a ``Resize`` is pending leaves the Screen posting
Resize events to itself forever, and the loop never runs anything else) leave SIGTERM
ignored for good. And when stdin reaches EOF (the server is gone) its input thread just
returns: the app runs on, drawing into a pipe nobody reads.

``GuardedWebDriver`` keeps the graceful path and adds a deadline:

- SIGTERM / SIGINT: a plain ``signal.signal`` handler (it runs between bytecodes on the
  main thread, whatever the loop is doing) asks the app to exit with ``128 + signal``
  (``app.exit(return_code=...)``; ``lenstui`` returns the app's return code) and starts a
  timer thread that calls ``os._exit(128 + signal)`` after ``EXIT_GRACE`` seconds. So a
  served tab ends on SIGTERM with status 143 within about 3 s, as a plain ``lenstui`` in
  a terminal does (there SIGTERM is fatal at once: Textual's Linux driver does not catch it).
- stdin closed (the server went away): the same, with status 1.

The server (:mod:`lenstui.tui.serve.server`) selects it with ``TEXTUAL_DRIVER``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import threading
from typing import Any, Optional

from textual.drivers.web_driver import WebDriver

# Seconds between the graceful request and the hard exit.
try:
    EXIT_GRACE = max(0.1, float(os.environ.get("LENSTUI_WEB_EXIT_GRACE", "3")))
except ValueError:
    EXIT_GRACE = 3.0
DRIVER_IMPORT = "lenstui.tui.serve.driver:GuardedWebDriver"


class GuardedWebDriver(WebDriver):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._exiting = threading.Event()
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    def exit_soon(self, status: int) -> None:
        """Ask for a graceful exit with ``status``; exit hard after EXIT_GRACE seconds
        whatever happens. Safe from a signal handler and from any thread."""
        if self._exiting.is_set():
            return
        self._exiting.set()
        timer = threading.Timer(EXIT_GRACE, os._exit, (status,))
        timer.daemon = True
        timer.start()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(functools.partial(self._app.exit, return_code=status))
            except RuntimeError:  # the loop closed meanwhile: the timer ends the process
                pass

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.exit_soon(128 + signum)

    def start_application_mode(self) -> None:
        self._loop = asyncio.get_running_loop()
        super().start_application_mode()  # installs loop.add_signal_handler(...)
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                # asyncio's handler only wakes the loop (which may never run again).
                self._loop.remove_signal_handler(signum)
                signal.signal(signum, self._on_signal)
            except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
                pass

    def run_input_thread(self) -> None:
        try:
            super().run_input_thread()
        finally:
            if not self.exit_event.is_set():  # stdin closed, not an exit of the app's own
                self.exit_soon(1)

    def stop_application_mode(self) -> None:
        super().stop_application_mode()
        # The app has shut down: a SIGTERM while the interpreter finishes (joining the
        # model thread, atexit) is fatal as usual.
        for signum, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
            try:
                signal.signal(signum, default)
            except (ValueError, RuntimeError):
                pass
