"""A tiny Textual app standing in for the explorer under ``lenstui serve``, and a server for it.

The serve tests need tabs that do what a tab may do (block its event loop for minutes,
ignore ``quit``) without paying for torch and a model per tab:

    python -m testkit.serve_standin app --tag T [--mode daemon|block] [--load SECONDS]
    python -m testkit.serve_standin server --port P --tag T [--mode ...] [--max-tabs N] [--stock-driver]

``app`` is the stand-in: it shows "standin app (MODE)" and either "loads a model" on a
daemon thread (like lenstui's worker) or sleeps ``--load`` seconds inside ``on_mount``
(its event loop blocked: neither ``quit`` nor textual's SIGTERM handler can reach it).
``server`` runs ``lenstui.tui.serve.server.LenstuiServer`` on that app, the token from
``$LENSTUI_SERVE_TOKEN``; ``--stock-driver`` gives the tabs textual's own ``WebDriver``
instead of lenstui's, to show what the server alone guarantees. The tag is in every
tab's command line, so a test finds the processes a server started (``tab_pids``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Optional


def tab_pids(tag: str, marker: str = "serve_standin") -> list[int]:
    """Live (not zombie) processes whose command line has ``marker`` and ``tag`` as an
    argument, other than servers (their command line says ``server`` or ``serve``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        words = [word.decode(errors="replace") for word in argv]
        if state in ("Z", "X") or tag not in words:
            continue
        if not any(marker in word for word in words) or "server" in words or "serve" in words:
            continue
        pids.append(int(entry))
    return pids


def run_app(mode: str, load: float) -> int:
    from textual.app import App, ComposeResult
    from textual.widgets import Static

    class Standin(App):
        def compose(self) -> ComposeResult:
            yield Static(f"standin app ({mode}): loading the model…", id="status")

        def on_mount(self) -> None:
            if mode == "block":
                time.sleep(load)  # the event loop is blocked
            else:
                threading.Thread(target=self._load, daemon=True).start()

        def _load(self) -> None:
            started = time.monotonic()
            while time.monotonic() - started < load:
                time.sleep(0.5)

    app = Standin()
    app.run()
    return int(app.return_code or 0)


def run_server(args: argparse.Namespace) -> int:
    from lenstui.core.errors import LenstuiError
    from lenstui.tui.serve.server import APP_DRIVER, LenstuiServer

    app = [sys.executable, "-m", "testkit.serve_standin", "app", "--mode", args.mode, "--load", str(args.load)]
    command = shlex.join([*app, "--tag", args.tag])
    server = LenstuiServer(
        command,
        host=args.host,
        port=args.port,
        title="standin",
        max_tabs=args.max_tabs,
        token=os.environ.get("LENSTUI_SERVE_TOKEN") or None,
        app_driver="textual.drivers.web_driver:WebDriver" if args.stock_driver else APP_DRIVER,
    )
    try:
        server.serve()
    except LenstuiError as err:
        print(f"standin server: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testkit.serve_standin")
    parser.add_argument("role", choices=("app", "server"))
    parser.add_argument("--mode", choices=("daemon", "block"), default="daemon")
    parser.add_argument("--load", type=float, default=60.0)
    parser.add_argument("--tag", default="")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-tabs", type=int, default=4)
    parser.add_argument("--stock-driver", action="store_true")
    args = parser.parse_args(argv)
    return run_app(args.mode, args.load) if args.role == "app" else run_server(args)


if __name__ == "__main__":
    raise SystemExit(main())
