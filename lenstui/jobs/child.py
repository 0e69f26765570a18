"""The model's process: ``python -m lenstui.jobs.child FD`` serves one UI process.

It runs the scheduler (``jobs.scheduler.ModelWorker``, every handler of ``jobs.handlers``)
and speaks to the UI over the socket ``FD`` (``multiprocessing.connection`` framing,
``jobs.transport`` pickling): messages in are ``("submit", seq, request)``,
``("cancel", kind)`` and ``("stop",)``; out go the results. It exits when told to stop or
when the UI's end of the socket closes (the UI quit or died), so it never outlives it.
Torch is imported here only, by the handlers, never in the UI's process.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from multiprocessing.connection import Connection

from lenstui.jobs.transport import dumps, loads


def _warm_up() -> None:
    """Import what every model load needs, before the first request is read: the UI's
    process is still importing Textual then (it starts this one first, ``cli/app_cmd``),
    and its requests wait in the socket meanwhile. On this thread, before any other
    starts: two threads importing the same modules can meet in a circular import."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

        import lenstui.engine.lens.state  # noqa: F401  (torch, the lens, its readout)
        import lenstui.engine.model.load  # noqa: F401
    except Exception:
        pass  # whatever fails here fails again, and is reported, where it is needed


def serve(conn: Connection) -> None:
    from lenstui.jobs.handlers import HANDLERS
    from lenstui.jobs.scheduler import ModelWorker

    sending = threading.Lock()

    def post(result) -> None:
        data = dumps(result)
        with sending:
            conn.send_bytes(data)

    worker = ModelWorker(post, handlers=HANDLERS, stopped_when_dropped=True).start()
    try:
        while True:
            try:
                message = loads(conn.recv_bytes())
            except (EOFError, OSError):
                break  # the UI is gone
            if message[0] == "submit":
                worker.submit(message[2], seq=message[1])
            elif message[0] == "cancel":
                worker.cancel(message[1])
            elif message[0] == "stop":
                break
    finally:
        worker.stop(timeout=1.0)


# How much lower than the UI's the model's CPU priority is (``nice``): its threads fill
# every core for seconds at a time, and the UI's process must still get a core at once for
# a key's echo or a paint (a few ms of work). The model loses next to nothing: the UI is
# idle almost always. LENSTUI_WORKER_NICE=0 keeps them equal.
WORKER_NICE = 10


def _yield_to_the_ui() -> None:
    try:
        os.nice(int(os.environ.get("LENSTUI_WORKER_NICE", WORKER_NICE)))
    except (OSError, ValueError):
        pass  # not allowed, or not a number: run at the UI's priority


def main(argv: list[str]) -> int:
    # The UI's process handles the terminal's signals; a Ctrl+C meant for it must not
    # kill the model under it (it stops this process itself, with "stop" or a signal).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _yield_to_the_ui()
    _warm_up()
    conn = Connection(int(argv[0]))
    try:
        serve(conn)
    finally:
        conn.close()
    # Daemon threads may still be inside torch: leave without waiting for them.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
