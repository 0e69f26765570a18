"""The app's line to the model worker: which worker, its restarts, requests out, replies in.

Where the model runs:

- **A child process** by default (``jobs/process.ProcessWorker``): the UI's process never
  imports torch and keeps its latency whatever the model does. ``lenstui`` starts it
  before Textual is imported (``cli/app_cmd``) and the app takes it over (``early``).
  When the child dies, ``ProcessWorker`` starts another and loads the model again itself;
  it tells the link (``on_restart``), and after a few quick deaths it gives up.
- **A thread of this process** (``jobs/scheduler.ModelWorker``) when the app was given a
  loader (a model built in this process: tests, the benchmarks) or LENSTUI_IN_PROCESS=1.
  A thread that died (a bug in the scheduler itself: handlers' errors are results) is
  noticed by ``watch`` (a timer), and a new one is started and given the model again, at
  most ``WORKER_RESTARTS`` times.

Either way the link then tells its owner (``LinkOwner.worker_restarted``): nothing asked
of the old worker has an answer coming; the prompt, the session and the screen stay.

Replies come back as ``WorkerReply`` messages, posted to the app from the worker's thread
(``post_message`` is thread-safe); the app hands each to ``deliver`` on the UI thread:
a stale one (a newer request of its kind was sent) is dropped, the widget that asked
(``submit(request, reply_to=widget)``) gets it, a failure becomes a notice, and the
table ``routes`` (request type -> handler, filled by the app) gives it to the part of the
app that handles that kind.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Protocol

from textual.message import Message
from textual.widget import Widget

from lenstui.jobs.protocol import Failed, Handler, LoadModel, Partial, Progress, Request, Result
from lenstui.jobs.process import ProcessWorker
from lenstui.jobs.scheduler import ModelWorker
from lenstui.tui.widgets.status import StatusBar

# How often the link checks that a worker thread is alive (seconds), and how many times
# it starts a new one before it gives up (a worker that dies at once every time).
WORKER_WATCH_SECONDS = 0.5
WORKER_RESTARTS = 5

Worker = ModelWorker | ProcessWorker
ReplyRoute = Callable[[Result], None]


class WorkerReply(Message, bubble=False):
    """A worker result, delivered on the UI thread."""

    def __init__(self, result: Result) -> None:
        super().__init__()
        self.result = result

    def can_replace(self, message: Message) -> bool:
        # Only progress merges: a burst of load/scan progress collapses to the latest.
        return (
            isinstance(message, WorkerReply)
            and isinstance(self.result, Progress)
            and isinstance(message.result, Progress)
            and message.result.seq == self.result.seq
        )


def runs_in_process(loader: Optional[Callable], asked: Optional[bool] = None) -> bool:
    """Whether the model runs on a thread of this process (else in a child process):
    when asked, for a loader given (a model built in this process), or under
    LENSTUI_IN_PROCESS=1."""
    if asked is not None:
        return asked
    return loader is not None or os.environ.get("LENSTUI_IN_PROCESS", "") not in ("", "0")


class LinkOwner(Protocol):
    """What the link uses of the app (``LenstuiApp``)."""

    @property
    def status(self) -> StatusBar: ...

    def post_message(self, message: Message) -> bool: ...

    def call_from_thread(self, callback: Callable[..., Any], *args: Any) -> Any: ...

    def notify(self, message: str, *, title: str = "", severity: str = "information", timeout: Optional[float] = None, markup: bool = True) -> None: ...

    def reload_request(self) -> LoadModel:
        """What a new worker thread loads: the model loaded last, else the one asked for."""

    def worker_restarted(self, why: str) -> None:
        """A new worker is loading the model again: nothing asked of the old one has an
        answer coming (its replies' routes are forgotten already)."""


class WorkerLink:
    """The worker the app talks to now (``worker``), and everything about talking to it."""

    def __init__(self, owner: LinkOwner, *, in_process: bool, loader: Optional[Callable] = None,
                 early: Optional[ProcessWorker] = None) -> None:
        self.owner = owner
        self.in_process = in_process
        self.loader = loader  # in process: what builds the model (None: load_model)
        self._early = None if in_process else early  # a model process started before the UI
        self.worker: Optional[Worker] = None
        self.routes: dict[type, ReplyRoute] = {}  # request type -> the app's handler of its replies
        self._handlers: dict[type, Handler] = {}  # register's, kept for a restarted thread
        self._reply_to: dict[type, tuple[int, Widget]] = {}
        self.restarts = 0  # worker threads started again

    # ------------------------------------------------------------ the worker's life

    def start(self) -> Worker:
        self.worker = self._new_worker()
        return self.worker

    def stop(self, timeout: float) -> None:
        if self.worker is not None:
            self.worker.stop(timeout=timeout)

    def _new_worker(self) -> Worker:
        early, self._early = self._early, None
        if early is not None:
            return early.attach(self._post, on_restart=self._process_restarted)
        if not self.in_process:
            return ProcessWorker(self._post, on_restart=self._process_restarted).start()
        from lenstui.jobs.handlers import HANDLERS  # the engine's handlers, torch only on use

        worker = ModelWorker(self._post, loader=self.loader, handlers=HANDLERS)
        for kind, handler in self._handlers.items():
            worker.register(kind, handler)
        return worker.start()

    def _post(self, result: Result) -> None:
        # Called on the worker's thread; post_message is thread-safe.
        self.owner.post_message(WorkerReply(result))

    def _process_restarted(self, message: str) -> None:
        """The model's process ended (killed, out of memory, a crash in torch) and
        ProcessWorker started another and asked it for the model again (on its reader
        thread): on the UI thread, say so and forget what was in flight."""
        try:
            self.owner.call_from_thread(self._after_process_restart, message)
        except RuntimeError:
            pass  # the app is not running (any more)

    def _after_process_restart(self, message: str) -> None:
        gave_up = isinstance(self.worker, ProcessWorker) and self.worker.gave_up is not None
        self._say(message, gave_up)
        if not gave_up:
            self._restarted("restarting the worker")

    def watch(self) -> None:
        """A worker thread that died (a bug in the scheduler itself: handlers' errors are
        results): say so, start a new one and give it the model again. (A ProcessWorker
        restarts its own child and says so: ``_process_restarted``.)"""
        worker = self.worker
        if not isinstance(worker, ModelWorker) or worker.alive or worker.stopping:
            return
        self.restarts += 1
        where = f" Details in {worker.death}." if worker.death is not None else ""
        if self.restarts > WORKER_RESTARTS:
            worker.stop(timeout=0)  # (marks it stopping: this is said once)
            self._say(f"The model worker keeps stopping; quit and start lenstui again.{where}", gave_up=True)
            return
        self._say(f"The model worker stopped unexpectedly; restarting it and loading the model again.{where}")
        self.worker = self._new_worker()
        self.submit(self.owner.reload_request())
        self._restarted("restarting the worker")

    def _say(self, message: str, gave_up: bool = False) -> None:
        """A notice about the worker (plain text: a crash log's path may hold brackets);
        when the link gave up, the status line says so too, until the user quits."""
        if gave_up:
            self.owner.status.set_error("the model worker keeps failing")
        self.owner.notify(message, title="Worker", severity="error", timeout=30 if gave_up else 12, markup=False)

    def _restarted(self, why: str) -> None:
        self._reply_to.clear()  # their answers died with the old worker
        self.owner.worker_restarted(why)

    # ------------------------------------------------------------ requests out

    def register(self, kind: type, handler: Handler) -> None:
        """Route requests of ``kind`` to ``handler`` on the worker thread."""
        if self.worker is None:
            raise RuntimeError("register handlers from on_mount or later")
        self._handlers[kind] = handler
        self.worker.register(kind, handler)

    def submit(self, request: Request, reply_to: Optional[Widget] = None) -> int:
        """Send a request to the worker; ``reply_to`` receives its WorkerReply messages."""
        assert self.worker is not None
        seq = self.worker.submit(request)
        # Only the newest request of a kind is ever answered, so one entry per kind
        # (and superseded requests leave nothing behind).
        if reply_to is not None:
            self._reply_to[type(request)] = (seq, reply_to)
        else:
            self._reply_to.pop(type(request), None)
        return seq

    def cancel(self, kind: type) -> bool:
        """Stop a request of ``kind`` (queued or running); whether there was one."""
        return self.worker is not None and self.worker.cancel(kind)

    def busy(self, kind: type) -> bool:
        """Whether a request of ``kind`` is queued or running."""
        return self.worker is not None and kind in self.worker.busy_kinds()

    # ------------------------------------------------------------ replies in

    def deliver(self, result: Result) -> None:
        """A reply, on the UI thread: dropped when stale; else to the widget that asked,
        a failure's sentence as a notice, and to the route of its request type."""
        if self.worker is None or not self.worker.is_current(result):
            return  # a newer request of the same kind was sent: this answer is stale
        seq, target = self._reply_to.get(result.kind, (None, None))
        if seq != result.seq:
            target = None
        elif not isinstance(result, (Progress, Partial)):
            del self._reply_to[result.kind]
        if isinstance(result, Failed):
            self.owner.notify(result.message, title=result.request.title, severity="error", timeout=10)
        if target is not None:
            target.post_message(WorkerReply(result))
        route = self.route(result.kind)
        if route is not None:
            route(result)

    def route(self, kind: type) -> Optional[ReplyRoute]:
        """The handler of ``kind``'s replies: its own, else its nearest base class's."""
        for base in kind.__mro__:
            if base in self.routes:
                return self.routes[base]
        return None
