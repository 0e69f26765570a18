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

from lenstui.jobs.handlers import HANDLERS
from lenstui.jobs.scheduler import ModelWorker
from lenstui.jobs.transport import dumps, loads


def serve(conn: Connection) -> None:
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


def main(argv: list[str]) -> int:
    # The UI's process handles the terminal's signals; a Ctrl+C meant for it must not
    # kill the model under it (it stops this process itself, with "stop" or a signal).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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
