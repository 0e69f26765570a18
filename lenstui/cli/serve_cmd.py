"""`lenstui serve [--host H] [--port P] [--max-tabs N] [app options]`: the explorer in a web browser.

textual-serve (Textualize's package) runs one copy of the app per browser tab, as a
subprocess that speaks to the page over a websocket. The server process itself only
relays bytes: it never imports torch or loads a model; each tab's app does that. Who
may connect, the tab limit and how tabs end: ``lenstui.tui.serve.server``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Optional

from lenstui.cli import app_cmd

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# The options serve adds on top of the app's own; everything else is the app's.
_SERVE_DESTS = ("host", "port", "public_url", "max_tabs", "func")
DEFAULT_MAX_TABS = 4  # each tab loads its own model (0.5-1.3 GB for the embedded one)

WHO_MAY_CONNECT = (
    "Who may connect: the printed URL holds a random token made for this run "
    "($LENSTUI_SERVE_TOKEN sets it); the page and its websocket need it, and a page of "
    "another site (its Origin) or a request under another host name (DNS rebinding) "
    "gets 403 and starts nothing. Anyone who has the URL and can reach the port gets the "
    "app, its models and this machine's CPU/GPU (no further login); models load from the "
    "local cache only unless --allow-download is given."
)


def configure(parser: argparse.ArgumentParser, command: str = "") -> None:
    parser.description = (
        "Serve the explorer to a web browser (one app per tab); the app options are those of `lenstui`. "
        + WHO_MAY_CONNECT
    )
    app_cmd.configure(parser)
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    parser.add_argument(
        "--public-url",
        metavar="URL",
        default=None,
        help="the address browsers use to reach the server, if not http://HOST:PORT (e.g. behind a proxy); "
        "its host name is the one requests may name besides HOST",
    )
    parser.add_argument(
        "--max-tabs",
        type=int,
        metavar="N",
        default=DEFAULT_MAX_TABS,
        help=f"at most N tabs (app processes, each with its model) at a time; one more gets a page "
        f"that says so (default {DEFAULT_MAX_TABS})",
    )
    parser.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    from lenstui.tui.serve.server import is_loopback as loopback

    return loopback(host)


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
    from lenstui.tui.serve.server import default_public_url

    return default_public_url(host, port)  # a wildcard address is not one a browser can reach


def check_public_url(given: Optional[str]) -> None:
    from lenstui.core.errors import InputError, quoted

    if not given:
        return
    from yarl import URL

    try:
        url = URL(given)
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise InputError(f"--public-url {quoted(given)} is not an http:// or https:// URL with a host name.")


def run(args: argparse.Namespace) -> int:
    from lenstui.core.errors import InputError, LenstuiError

    try:
        from lenstui.tui.serve.server import LenstuiServer
    except ImportError:
        raise LenstuiError("lenstui serve needs the textual-serve package: pip install textual-serve.") from None
    if not 0 < args.port < 65536:
        raise InputError(f"--port {args.port} is not a port number (1..65535).")
    if args.max_tabs < 1:
        raise InputError(f"--max-tabs {args.max_tabs}: at least one tab is needed.")
    check_public_url(args.public_url)
    if not is_loopback(args.host):
        print(
            f"lenstui serve: warning: listening on {args.host}, not loopback: anyone who can reach "
            f"port {args.port} and has the printed URL (its token) can use the app, the model and "
            "this machine's CPU/GPU.",
            file=sys.stderr,
        )
    # Downloads stay off in the tabs unless this command allows them: a config key
    # written for the terminal does not open the hub to a web page.
    tab_environment = {} if args.allow_download else {"HF_HUB_OFFLINE": "1"}
    server = LenstuiServer(
        app_command(args),
        host=args.host,
        port=args.port,
        title="lenstui",
        public_url=public_url(args.host, args.port, args.public_url),
        max_tabs=args.max_tabs,
        token=os.environ.get("LENSTUI_SERVE_TOKEN") or None,
        tab_environment=tab_environment,
    )
    server.serve()  # BindError: one sentence, exit status 2 (a LenstuiError)
    return 0
