"""`lenstui serve [--host H] [--port P] [app options]`: the explorer in a web browser.

textual-serve (Textualize's package) runs one copy of the app per browser tab, as a
subprocess that speaks to the page over a websocket. The server process itself only
relays bytes: it never imports torch or loads a model; each tab's app does that.
"""

from __future__ import annotations

import argparse
import ipaddress
import shlex
import socket
import sys
from typing import Optional

from lenstui.cli import app_cmd

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# The options serve adds on top of the app's own; everything else is the app's.
_SERVE_DESTS = ("host", "port", "public_url", "func")


def configure(parser: argparse.ArgumentParser, command: str = "") -> None:
    parser.description = "Serve the explorer to a web browser (one app per tab); the app options are those of `lenstui`."
    app_cmd.configure(parser)
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    parser.add_argument(
        "--public-url",
        metavar="URL",
        default=None,
        help="the address browsers use to reach the server, if not http://HOST:PORT (e.g. behind a proxy)",
    )
    parser.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def app_arguments(args: argparse.Namespace) -> list[str]:
    """The `lenstui` arguments that reproduce the app options in ``args``.

    Rebuilt from the app's own parser, so an option the app gains later is passed on
    without a change here. Positionals go after `--`, so a prompt that starts with `-`
    or reads like a subcommand ("scan") stays a prompt.
    """
    parser = argparse.ArgumentParser(add_help=False)
    app_cmd.configure(parser)
    options: list[str] = []
    positionals: list[str] = []
    done: set[str] = set()
    for action in parser._actions:
        dest = action.dest
        if dest in done or dest in _SERVE_DESTS or not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        if value == action.default or value is None:
            continue
        if not action.option_strings:
            positionals.append(str(value))
            done.add(dest)
        elif action.nargs == 0:
            # store_true/store_false/store_const: the flag whose constant is the value.
            if action.const == value:
                options.append(action.option_strings[-1])
                done.add(dest)
        else:
            options += [action.option_strings[-1], str(value)]
            done.add(dest)
    return options + (["--", *positionals] if positionals else [])


def app_command(args: argparse.Namespace) -> str:
    """The shell command textual-serve runs per tab: this same Python, so the same venv."""
    return shlex.join([sys.executable, "-m", "lenstui.cli", *app_arguments(args)])


def public_url(host: str, port: int, given: Optional[str]) -> str:
    if given:
        return given.rstrip("/")
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()  # a wildcard address is not one a browser can reach
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def run(args: argparse.Namespace) -> int:
    try:
        from textual_serve.server import Server
    except ImportError:
        from lenstui.core.errors import LenstuiError

        raise LenstuiError("lenstui serve needs the textual-serve package: pip install textual-serve.") from None
    if not 0 < args.port < 65536:
        from lenstui.core.errors import InputError

        raise InputError(f"--port {args.port} is not a port number (1..65535).")
    if not is_loopback(args.host):
        print(
            f"lenstui serve: warning: listening on {args.host}, not loopback: anyone who can reach "
            f"port {args.port} can use the app, the model and this machine's CPU/GPU.",
            file=sys.stderr,
        )
    server = Server(
        app_command(args),
        host=args.host,
        port=args.port,
        title="lenstui",
        public_url=public_url(args.host, args.port, args.public_url),
    )
    server.serve()
    return 0
