"""The scheduler: one background thread that owns the model and torch.

The UI thread never touches tensors: it ``submit``s typed requests and gets typed
results back through a ``post`` callback (the app wraps each result in a Textual
message; ``post_message`` is thread-safe). Nothing here imports Textual, so the
worker is tested with a plain list or queue as its ``post``.

Rules the worker keeps:

- **Supersede.** A newer request of the same kind replaces an older one: a queued
  one is dropped without a result, a running one is asked to stop (its
  ``should_stop()`` turns true; the engine checks it between rows/chunks) and ends
  in a ``Stopped`` result. A ``LoadModel`` stops every running job, since their
  answers would describe the old model; queued jobs stay and run on the new one.
- **No stale results.** Every result carries the ``seq`` that ``submit`` returned.
  ``is_current(result)`` is true only for the newest request of its kind, so a
  slow, old answer can never overwrite a newer one (the app checks it on receipt,
  after any newer submit, which closes the race between thread and UI).
- **Partial results.** A handler may post what it has so far with
  ``ctx.partial(value)`` (the lens: the visible columns first, then the rest in
  chunks). Partials carry their request's ``seq`` like every result, so the UI drops
  them with ``is_current`` as it drops any stale answer; once a job is superseded its
  partials are no longer posted at all. A ``Done`` (or ``Stopped``/``Failed``) still
  ends every job.
- **Errors are results.** A failing request becomes ``Failed`` with a sentence for
  the user; the thread keeps serving. That holds for any ``BaseException`` a handler
  raises (``SystemExit`` from a library, say): on this thread nothing is a reason to
  stop but ``stop()``. (``KeyboardInterrupt`` and ``SystemExit`` in the main thread are
  not this thread's business: they end the app as usual.) Should the thread itself die
  (a bug here, not in a handler), the traceback goes to the crash log, ``death`` names
  it and ``alive`` turns false: the app notices and starts a new worker.
- **Model first.** Requests that need a model wait until one is loaded; they fail
  only if a load was attempted, failed, and no other load is queued. A failed load
  while a model is loaded keeps that model: it goes on serving.
- **Priority and interleaving.** Among queued requests the lowest
  ``Request.priority`` runs first (load < lens/inspect < speak check, scenes < scan), FIFO
  within a priority. A long job (``long_running``, e.g. a vocabulary scan) calls
  ``JobContext.checkpoint()`` between its chunks; the checkpoint runs every queued
  short request right there, on this same thread, before the long job continues.
  So a lens run waits at most one scan chunk, the scan never needs to be restarted,
  and torch is still only ever used by one thread. Nested jobs never interleave
  further (a lens run's checkpoints only check for cancellation).

Features plug in without editing this module: a request class in
``lenstui.jobs.protocol``, its handler in ``lenstui.jobs.handlers`` (``HANDLERS``, which
the app's worker serves; ``register(RequestClass, handler)`` adds or replaces one). A handler
is ``handler(model, request, ctx) -> value`` and runs on the worker thread.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

from lenstui.core.errors import Cancelled, LenstuiError, clipped
from lenstui.jobs.handlers import model_info, run_lens_handler
from lenstui.jobs.protocol import (
    Done,
    Failed,
    Handler,
    LoadModel,
    ModelInfo,
    Partial,
    Progress,
    Request,
    Result,
    RunLens,
    Stopped,
    check_reply,
)
from lenstui.store.crash_log import log_crash, short_repr

log = logging.getLogger(__name__)


class _Job:
    __slots__ = ("seq", "request", "cancelled")

    def __init__(self, seq: int, request: Request):
        self.seq = seq
        self.request = request
        self.cancelled = False  # set from the UI thread; read by the worker (a plain bool is enough)


class JobContext:
    """What a handler gets besides the model: cancellation, progress, interleaving."""

    def __init__(self, worker: "ModelWorker", job: _Job, nested: bool):
        self._worker = worker
        self._job = job
        self._nested = nested
        self.seq = job.seq
        self.request = job.request

    def should_stop(self) -> bool:
        return self._job.cancelled or self._worker._stopping

    def progress(self, message: str, fraction: Optional[float] = None) -> None:
        if not self.should_stop():
            self._worker._emit(Progress(self.seq, self.request, message, fraction))

    def partial(self, value: Any) -> None:
        """Post part of the answer now (a superseded job posts nothing more)."""
        if not self.should_stop():
            self._worker._emit(Partial(self.seq, self.request, value))

    def checkpoint(self) -> None:
        """Call between chunks of a long job: raises Cancelled when superseded, and
        otherwise first serves every queued short request (see the module doc)."""
        if self.should_stop():
            raise Cancelled("superseded by a newer request")
        if self.request.long_running and not self._nested:
            self._worker._serve_short_jobs(outer=self._job)
            if self.should_stop():
                raise Cancelled("superseded by a newer request")


class ModelWorker:
    """One daemon thread, the model it loaded, and the requests waiting for it."""

    def __init__(
        self,
        post: Callable[[Result], None],
        *,
        loader: Optional[Callable[..., Any]] = None,
        handlers: Optional[dict[type, Handler]] = None,
        stopped_when_dropped: bool = False,
    ):
        """``handlers``: what to serve besides ``LoadModel`` (default: ``RunLens`` only;
        the app passes ``lenstui.jobs.handlers.HANDLERS``, every kind).
        ``stopped_when_dropped``: a queued request that is superseded or cancelled before
        it runs ends in a ``Stopped`` result too (by default it ends in none)."""
        self._stopped_when_dropped = stopped_when_dropped
        self._post = post
        self._loader = loader
        self._cond = threading.Condition()
        self._pending: dict[type, _Job] = {}  # at most one queued job per kind: the newest
        self._active: list[_Job] = []  # the running job, plus short jobs nested in a long one
        self._latest: dict[type, int] = {}
        self._counter = itertools.count(1)
        served = {RunLens: run_lens_handler} if handlers is None else handlers
        self._handlers: dict[type, Handler] = {**served, LoadModel: self._load}
        # Kinds whose handler was registered later (tests, an app's own requests): they
        # answer what their handler says; the rest answer what protocol.REPLIES promises.
        self._own_replies: set[type] = set()
        self._model = None  # only the worker thread reads or writes it
        self._load_error: Optional[str] = None
        self._stopping = False
        self.death: Optional[Path] = None  # the crash log holding why the thread died
        self._thread = threading.Thread(target=self._serve_until_stopped, name="lenstui-model", daemon=True)

    # -------------------------------------------------- the UI thread's side

    def register(self, kind: type, handler: Handler) -> None:
        """Route requests of ``kind`` (a Request subclass) to ``handler``; a later
        registration replaces an earlier one."""
        if not (isinstance(kind, type) and issubclass(kind, Request)):
            raise TypeError(f"{kind!r} is not a Request subclass")
        with self._cond:
            self._handlers[kind] = handler
            self._own_replies.add(kind)

    def submit(self, request: Request, seq: Optional[int] = None) -> int:
        """Queue a request; returns its sequence number (results carry it). ``seq``: the
        number to give it, when the caller numbers requests itself (the process worker)."""
        kind = type(request)
        with self._cond:
            seq = next(self._counter) if seq is None else seq
            self._latest[kind] = seq
            dropped = self._pending.get(kind)
            self._pending[kind] = _Job(seq, request)  # drops an older queued one of this kind
            for job in self._active:
                if type(job.request) is kind or kind is LoadModel:
                    job.cancelled = True
            self._cond.notify_all()
        self._report_dropped(dropped)
        return seq

    def cancel(self, kind: type) -> bool:
        """Drop a queued request of ``kind`` and stop a running one (it ends ``Stopped``).
        Returns whether there was anything to cancel."""
        with self._cond:
            dropped = self._pending.pop(kind, None)
            found = dropped is not None
            for job in self._active:
                if type(job.request) is kind:
                    job.cancelled = True
                    found = True
            self._cond.notify_all()
        self._report_dropped(dropped)
        return found

    def _report_dropped(self, job: Optional[_Job]) -> None:
        # A queued job dropped unrun has no result; a caller that counts the requests
        # it is owed an answer for (the process worker) asks for a Stopped instead.
        if job is not None and self._stopped_when_dropped:
            self._emit(Stopped(job.seq, job.request, "superseded"))

    def latest_seq(self, kind: type) -> Optional[int]:
        with self._cond:
            return self._latest.get(kind)

    def is_current(self, result: Result) -> bool:
        """True if no request of the same kind was submitted after this result's."""
        return self.latest_seq(result.kind) == result.seq

    def busy_kinds(self) -> set[type]:
        """Kinds queued or running now (for a "running…" indicator)."""
        with self._cond:
            return set(self._pending) | {type(job.request) for job in self._active}

    def start(self) -> "ModelWorker":
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the thread to finish (the running job is cancelled) and wait a little.

        A forward pass cannot be interrupted midway; the thread is a daemon, so an
        exiting app never hangs on it."""
        with self._cond:
            self._stopping = True
            for job in self._active:
                job.cancelled = True
            self._pending.clear()
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        """Whether ``stop()`` was called (a thread that ended then did not die)."""
        return self._stopping

    # -------------------------------------------------- the worker thread's side

    def _serve_until_stopped(self) -> None:
        try:
            self._serve()
        except BaseException:  # the loop itself failed: record why, and let the thread end
            text = f"the worker thread died:\n{traceback.format_exc()}"
            log.error(text)
            self.death = log_crash(text)

    def _serve(self) -> None:
        while True:
            with self._cond:
                job = self._take(short_only=False)
                while job is None and not self._stopping:
                    self._cond.wait()
                    job = self._take(short_only=False)
                if self._stopping:
                    return
            self._run(job, nested=False)

    def _serve_short_jobs(self, outer: _Job) -> None:
        while not self._stopping and not outer.cancelled:
            with self._cond:
                job = self._take(short_only=True, exclude=type(outer.request))
            if job is None:
                return
            self._run(job, nested=True)

    def _take(self, *, short_only: bool, exclude: Optional[type] = None) -> Optional[_Job]:
        """Pop the next runnable job (caller holds the lock)."""
        candidates = []
        for kind, job in self._pending.items():
            if kind is exclude:
                continue
            if short_only and (kind.long_running or kind is LoadModel):
                continue
            if kind.needs_model and self._model is None and not self._should_fail_for_no_model():
                continue  # waits for the model
            candidates.append(job)
        if not candidates:
            return None
        job = min(candidates, key=lambda j: (j.request.priority, j.seq))
        del self._pending[type(job.request)]
        self._active.append(job)
        return job

    def _should_fail_for_no_model(self) -> bool:
        loading = LoadModel in self._pending or any(
            type(job.request) is LoadModel for job in self._active
        )
        return self._load_error is not None and not loading

    def _run(self, job: _Job, nested: bool) -> None:
        started = time.perf_counter()
        result: Result
        try:
            with self._cond:
                handler = self._handlers.get(type(job.request))
                checked = type(job.request) not in self._own_replies
            if job.cancelled:
                raise Cancelled("superseded by a newer request")
            if handler is None:
                raise LenstuiError(
                    f"Nothing handles {type(job.request).__name__} requests in this build."
                )
            if job.request.needs_model and self._model is None:
                raise LenstuiError(f"No model is loaded ({self._load_error}).")
            value = handler(self._model, job.request, JobContext(self, job, nested))
            if checked:
                check_reply(job.request, value)
            if job.cancelled:  # finished, but a newer request already replaced it
                raise Cancelled("superseded by a newer request")
            result = Done(job.seq, job.request, value, time.perf_counter() - started)
        except Cancelled:
            result = Stopped(job.seq, job.request, "stopped" if self._stopping else "superseded")
        except LenstuiError as err:
            result = Failed(job.seq, job.request, str(err), type(err).__name__)
        except BaseException as err:  # a bug, a torch error, a stray SystemExit: reported; the thread lives on
            text = f"worker request {short_repr(job.request)} failed:\n{traceback.format_exc()}"
            log.error(text)
            where = log_crash(text)
            details = f" Details in {where}." if where is not None else ""
            result = Failed(
                job.seq,
                job.request,
                f"{type(job.request).__name__} failed ({type(err).__name__}: {clipped(err)}).{details}",
                type(err).__name__,
            )
        finally:
            with self._cond:
                self._active.remove(job)
        self._emit(result)

    def _load(self, _current_model, request: LoadModel, ctx: JobContext) -> ModelInfo:
        loader = self._loader
        if loader is None:
            from lenstui.engine.model.load import load_model as loader
        try:
            model = loader(
                request.spec,
                device=request.device,
                dtype=request.dtype,
                placement=request.placement,
                progress=ctx.progress,
                allow_download=request.allow_download,
            )
        except Exception as err:
            # A failed switch to a second model leaves the first one loaded and serving:
            # requests keep running on it, so there is no load error to report.
            with self._cond:
                if self._model is None:
                    self._load_error = str(err).rstrip(".") or type(err).__name__
            raise
        if ctx.should_stop():  # a newer LoadModel is queued: it replaces this one
            raise Cancelled("superseded by a newer request")
        with self._cond:  # _take reads _model under the lock to decide who waits
            self._model = model
            self._load_error = None
        return model_info(model)

    def _emit(self, result: Result) -> None:
        if self._stopping and not isinstance(result, Stopped):
            return
        try:
            self._post(result)
        except Exception:  # the app is gone; nobody is listening
            log.debug("post failed", exc_info=True)
