"""The model in its own process: the UI's side of it.

``ProcessWorker`` has the scheduler's interface (``submit``, ``cancel``, ``is_current``,
``busy_kinds``, ``stop``, ``alive``) but the scheduler and the model live in a child
process (``python -m lenstui.jobs.child``), so whatever the model does (a long forward,
torch holding its GIL, a segfault, running out of memory) the UI's process keeps its
latency: it only reads results off a socket, on a thread of its own.

- **Numbers.** Requests are numbered here (the child uses the same ``seq``), so
  ``is_current`` needs no round trip, and the stale rule is the scheduler's.
- **Cancel** is a message. A request cancelled with ``cancel`` that has not ended after
  ``kill_grace`` seconds (a job that does not yield) costs the child its life: it is
  killed and started again.
- **Death.** When the child dies (or is killed), every request still owed an answer ends
  ``Failed`` with a sentence saying so, a new child starts, and the last model asked for
  is loaded again; ``on_restart(message)`` tells the app.
- ``stop`` asks the child to stop, then terminates it, then kills it.
- **Early start.** ``ProcessWorker(None).start()`` before the UI is built (``cli/app_cmd``
  does, before it imports Textual): the child imports torch and transformers while the UI
  starts, and what it sends waits until ``attach(post, on_restart)``.

Torch is never imported here: results cross as ``jobs.transport`` encodes them.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Callable, Optional

from lenstui.jobs.protocol import Done, Failed, LoadModel, Request, Result, Stopped
from lenstui.jobs.transport import dumps, loads
from lenstui.store.crash_log import crash_log_path

# Seconds a cancelled request may take to stop before its process is killed.
KILL_GRACE = 5.0
# A child that dies before it sent a single result, this many times in a row, is not
# started again (a broken installation would otherwise restart forever).
QUICK_DEATHS = 3
_TERMINAL = (Done, Failed, Stopped)


class ProcessWorker:
    def __init__(
        self,
        post: Optional[Callable[[Result], None]],
        *,
        on_restart: Optional[Callable[[str], None]] = None,
        kill_grace: float = KILL_GRACE,
        python: str = sys.executable,
    ):
        self._post_to = post
        self._waiting: list = []  # what came before ``attach`` (post None): results, restarts
        # Held while anything is handed to the receiver, so results keep their order when
        # ``attach`` delivers the waiting ones while new ones come in.
        self._delivering = threading.Lock()
        self._on_restart = on_restart
        self.kill_grace = kill_grace
        self._python = python
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._latest: dict[type, int] = {}
        self._owed: dict[int, Request] = {}  # seq -> request still owed a final result
        self._model_request: Optional[LoadModel] = None  # what to load again after a restart
        self._process: Optional[subprocess.Popen] = None
        self._conn: Optional[Connection] = None
        self._stopping = False
        self._heard = False  # whether the current child sent anything yet
        self._quick_deaths = 0
        self.gave_up: Optional[str] = None  # why no child runs any more (None: one does)
        self.restarts = 0  # how many times a child was started again (tests read it)
        self.child_pids: list[int] = []

    # -------------------------------------------------- lifecycle

    def attach(self, post: Callable[[Result], None], on_restart: Optional[Callable[[str], None]] = None) -> "ProcessWorker":
        """Give an early-started worker its receiver; what arrived before is delivered now,
        in order."""
        self._delivering.acquire()  # nothing new is handed over before the waiting ones
        with self._lock:
            self._post_to, self._on_restart = post, on_restart
            waiting, self._waiting = self._waiting, []

        def deliver() -> None:
            # On a thread of its own: ``on_restart`` may wait for the UI's thread, which
            # is the one calling ``attach``. (A Lock may be released by another thread.)
            try:
                for kind, item in waiting:
                    try:
                        if kind == "result":
                            post(item)
                        elif on_restart is not None:
                            on_restart(item)
                    except Exception:
                        pass  # the app is gone
            finally:
                self._delivering.release()

        threading.Thread(target=deliver, name="lenstui-attach", daemon=True).start()
        return self

    def _post(self, result: Result) -> None:
        with self._lock:
            if self._post_to is None:
                self._waiting.append(("result", result))
                return
        with self._delivering:
            self._post_to(result)

    def start(self) -> "ProcessWorker":
        with self._lock:
            self._spawn()
        return self

    def _spawn(self) -> None:
        """Start a child and its reader thread (caller holds the lock)."""
        self._heard = False
        ours, theirs = socket.socketpair()
        log = self.log_path
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            stderr = open(log, "ab")
        except OSError:
            stderr = subprocess.DEVNULL
        try:
            self._process = subprocess.Popen(
                [self._python, "-m", "lenstui.jobs.child", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            theirs.close()
            if stderr is not subprocess.DEVNULL:
                stderr.close()
        self.child_pids.append(self._process.pid)
        self._conn = Connection(os.dup(ours.fileno()))
        ours.close()
        reader = threading.Thread(target=self._read, args=(self._conn, self._process), name="lenstui-results", daemon=True)
        reader.start()

    @property
    def log_path(self):
        """Where the child's stderr goes (a crash's traceback, torch's messages)."""
        return crash_log_path().with_name("worker-process.log")

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the child to stop; terminate it, then kill it, if it does not in time."""
        with self._lock:
            self._stopping = True
            process, conn = self._process, self._conn
        if process is None:
            return
        try:
            conn.send_bytes(dumps(("stop",)))
        except (OSError, ValueError):
            pass
        _end(process, timeout)
        try:
            conn.close()
        except OSError:
            pass

    @property
    def alive(self) -> bool:
        process = self._process
        return process is not None and process.poll() is None

    # -------------------------------------------------- requests

    def register(self, kind: type, handler) -> None:
        raise RuntimeError("the model's process serves lenstui.jobs.handlers.HANDLERS; register handlers in-process")

    def submit(self, request: Request) -> int:
        kind = type(request)
        with self._lock:
            seq = next(self._counter)
            self._latest[kind] = seq
            gave_up = self.gave_up
            if gave_up is None:
                self._owed[seq] = request
            if isinstance(request, LoadModel):
                self._model_request = request
            conn = self._conn
        if gave_up is not None:
            self._post(Failed(seq, request, gave_up, "WorkerDied"))
        else:
            self._send(conn, ("submit", seq, request))
        return seq

    def cancel(self, kind: type) -> bool:
        with self._lock:
            owed = [seq for seq, request in self._owed.items() if type(request) is kind]
            conn = self._conn
        if not owed:
            return False
        self._send(conn, ("cancel", kind))
        if kind is not LoadModel:  # a load cannot stop midway; it is never killed for it
            timer = threading.Timer(self.kill_grace, self._kill_if_still_owed, args=(owed,))
            timer.daemon = True
            timer.start()
        return True

    def latest_seq(self, kind: type) -> Optional[int]:
        with self._lock:
            return self._latest.get(kind)

    def is_current(self, result: Result) -> bool:
        return self.latest_seq(result.kind) == result.seq

    def busy_kinds(self) -> set[type]:
        with self._lock:
            return {type(request) for request in self._owed.values()}

    def _send(self, conn: Optional[Connection], message: tuple) -> None:
        try:
            conn.send_bytes(dumps(message))
        except (OSError, ValueError, AttributeError):
            pass  # the child is gone: the reader thread notices and restarts it

    # -------------------------------------------------- results (the reader thread)

    def _read(self, conn: Connection, process: subprocess.Popen) -> None:
        while True:
            try:
                result = loads(conn.recv_bytes())
            except (EOFError, OSError):
                break
            with self._lock:
                self._heard = True
                if isinstance(result, _TERMINAL):
                    self._owed.pop(result.seq, None)
            try:
                self._post(result)
            except Exception:
                pass  # the app is gone
        code = process.wait()
        with self._lock:
            if self._stopping or process is not self._process:
                return  # stopped on purpose, or already replaced by a restart
        self._restart(process, f"the model's process ended ({_describe(code)})")

    def _kill_if_still_owed(self, seqs: list[int]) -> None:
        with self._lock:
            if self._stopping or not any(seq in self._owed for seq in seqs):
                return
            process = self._process
        self._restart(process, f"a cancelled job did not stop within {self.kill_grace:g} s")

    def _restart(self, process: subprocess.Popen, why: str) -> None:
        """End ``process`` if it still runs, fail what it owed, start a new child and load
        the last model again."""
        with self._lock:
            if self._stopping or process is not self._process:
                return
            self._process = None  # retired: its own reader thread must not restart it again
            owed, self._owed = self._owed, {}
            self._quick_deaths = 0 if self._heard else self._quick_deaths + 1
        _end(process, 0.5)
        with self._lock:
            if self._stopping:
                return
            if self._quick_deaths >= QUICK_DEATHS:
                self.gave_up = (
                    f"The model worker could not be kept running ({why}, {self._quick_deaths} times in a row): "
                    f"see {self.log_path}."
                )
                reload = None
                message = self.gave_up
                owed.update(self._owed)  # asked for while it was being retired
                self._owed = {}
            else:
                self.restarts += 1
                self._spawn()
                reload = self._model_request
                message = f"The model worker stopped: {why}. Started it again"
                message += "; reloading the model." if reload is not None else "."
                # Asked for while the old one was being retired: the new one answers them.
                for seq, request in sorted(self._owed.items()):
                    self._send(self._conn, ("submit", seq, request))
        # The app hears of the restart before the failures it caused, so a failure can
        # be read in its light (and a test never sees one without the other).
        with self._lock:
            on_restart = self._on_restart
            if self._post_to is None:
                self._waiting.append(("restart", message))
                on_restart = None
        if on_restart is not None:
            with self._delivering:
                on_restart(message)
        for seq, request in sorted(owed.items()):
            if isinstance(request, LoadModel) and reload is not None:
                continue  # loaded again below, under a new number
            try:
                self._post(Failed(seq, request, message, "WorkerDied"))
            except Exception:
                pass
        if reload is not None:
            self.submit(reload)


def _end(process: subprocess.Popen, timeout: float) -> None:
    """Wait ``timeout`` for ``process`` to end, then SIGTERM, then SIGKILL."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None and process.poll() is None:
            try:
                process.send_signal(sig)
            except OSError:
                pass
        try:
            process.wait(timeout if sig is None else 2.0)
            return
        except subprocess.TimeoutExpired:
            continue


def _describe(code: int) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit status {code}"

