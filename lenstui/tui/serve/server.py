"""``lenstui serve``'s server: textual-serve's ``Server``, hardened (no fork of the package).

Who may connect (docs/guide/browser.md, "Who may connect", says the same):

- **A per-run token.** The printed URL is ``PUBLIC_URL/?token=T`` (T: 32 random
  URL-safe characters per run, or ``$LENSTUI_SERVE_TOKEN``). The page needs it, in the
  query or in the cookie the page sets (HttpOnly, SameSite=Strict, one per port) so a
  reload and the app's downloads work; the websocket needs it in its path, ``/ws/T``
  (the page's JS appends ``?width=..`` to the template's socket URL, which would mangle
  a token in a query). Compared in constant time.
- **The Host check** (DNS rebinding): every request, static files included, must name
  the bound host, the ``--public-url``'s host, a loopback name (``localhost``,
  ``127.0.0.1``, ``::1``) when the server listens on loopback, or, when it listens on a
  wildcard address, this machine's names or any IP address literal (an IP cannot be
  rebound). The port is not compared: rebinding needs a foreign *name*.
- **The Origin check** (a page on another site opening the websocket): the upgrade's
  ``Origin`` must be the served origin (``--public-url``'s, or ``http://HOST:PORT`` for
  an allowed host); a missing or ``null`` Origin is refused.
- Anything else gets **403 before any upgrade: no process is started**.
- **A tab limit** (``max_tabs``): at the limit a new page gets a page that says so (503,
  it retries every 10 s) instead of the app, and a socket that races past it gets that
  sentence and a close (1013); a slot comes back when its process has been reaped.

Tab processes (the fix for tabs that outlived their browser and the server):

- started with exec (textual-serve runs ``/bin/sh -c``, whose child the app is), in
  their own session, with ``PR_SET_PDEATHSIG=SIGKILL`` (a SIGKILLed server takes them
  along), and with :mod:`lenstui.tui.serve.driver` as their Textual driver;
- when a tab's websocket closes, or the server stops: the ``quit`` packet, after
  ``quit_grace`` s SIGTERM to the tab's process group, after ``term_grace`` s more
  SIGKILL; the process is always reaped (textual-serve's ``stop()`` only sends ``quit``
  and waits for a reader task that ends as soon as a send to the gone browser fails);
- its stdout is read to the end after the browser has gone (else the app blocks on a
  full pipe);
- the server's shutdown stops every tab in parallel before aiohttp waits for handlers,
  then closes the sockets, so SIGTERM or Ctrl+C ends the server within about
  ``quit_grace + term_grace`` seconds (textual-serve: up to 60 s, and tabs left behind).

Bind errors (port in use, an address not on this machine, an unknown host name, a
privileged port) are :class:`BindError`: one sentence; the CLI prints it and exits 2.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import functools
import hmac
import html
import ipaddress
import logging
import os
import re
import secrets
import shlex
import signal
import socket
import sys
from typing import Any, Optional

import aiohttp_jinja2
import jinja2
from aiohttp import WSCloseCode, web
from textual_serve.app_service import AppService
from textual_serve.server import Server
from yarl import URL

from lenstui.core.errors import InputError, LenstuiError

log = logging.getLogger("lenstui.serve")

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("", "0.0.0.0", "::")
TOKEN_ENV = "LENSTUI_SERVE_TOKEN"
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
DEFAULT_MAX_TABS = 4
# The tabs' Textual driver (lenstui.tui.serve.driver), named here so that this module
# never imports Textual.
APP_DRIVER = "lenstui.tui.serve.driver:GuardedWebDriver"


class BindError(LenstuiError):
    """The server could not listen; str() is one sentence for the user."""


def describe_bind_error(host: str, port: int, error: OSError) -> str:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(error, socket.gaierror):
        return (
            f"Cannot listen on {host}: no such host name (it does not resolve to an address); "
            "use --host 127.0.0.1 or an address of this machine."
        )
    if error.errno == errno.EADDRINUSE:
        return f"Cannot listen on {where}: the port is already in use; pick another with --port."
    if error.errno == errno.EADDRNOTAVAIL:
        return (
            f"Cannot listen on {host}: that is not an address of this machine; "
            "use --host 127.0.0.1 or one of its addresses."
        )
    if error.errno == errno.EACCES:
        return (
            f"Cannot listen on {where}: permission denied (ports below 1024 need privileges); "
            "pick another with --port."
        )
    return f"Cannot listen on {where}: {error.strerror or error}."


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def default_public_url(host: str, port: int) -> str:
    """``http://HOST:PORT`` as a browser can use it: a wildcard address becomes this
    machine's name, an IPv6 address gets its brackets (textual-serve writes
    ``http://::1:8000``, which no browser or yarl reads)."""
    shown = socket.getfqdn() if host in WILDCARDS else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def check_token(token: str) -> str:
    if not TOKEN_PATTERN.match(token):
        raise InputError(
            f"{TOKEN_ENV} must be 16 to 128 letters, digits, '-' or '_' (it goes into the page's URL)."
        )
    return token


try:  # resolved here, in the parent: the child only calls it between fork and exec
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _prctl = None
PR_SET_PDEATHSIG = 1


def _die_with_parent(server_pid: int) -> None:
    """preexec_fn: SIGKILL this child when the server dies, however it dies (Linux)."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != server_pid:  # the server died between fork and prctl
            os._exit(1)


class TabService(AppService):
    """One tab's app process, which has always ended when ``stop()`` returns."""

    def __init__(
        self,
        *args: Any,
        quit_grace: float = 2.0,
        term_grace: float = 2.0,
        app_driver: Optional[str] = APP_DRIVER,
        environment: Optional[dict[str, str]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.quit_grace = quit_grace  # after the "quit" packet, before SIGTERM to the group
        self.term_grace = term_grace  # after SIGTERM, before SIGKILL
        self.app_driver = app_driver
        self.extra_environment = dict(environment or {})
        self._stop_task: Optional[asyncio.Task[None]] = None
        self._remote_gone = False
        self.ended_by = "running"  # then: "exited", "SIGTERM" or "SIGKILL"

    def _build_environment(self, width: int = 80, height: int = 24) -> dict[str, str]:
        environment = super()._build_environment(width=width, height=height)
        if self.app_driver:
            environment["TEXTUAL_DRIVER"] = self.app_driver
            # lenstui's driver exits hard this long after SIGTERM: before our SIGKILL, so
            # a tab stuck at start still ends with its own status (143).
            environment["LENSTUI_WEB_EXIT_GRACE"] = f"{max(0.5, self.term_grace - 0.5):g}"
        environment.update(self.extra_environment)
        return environment

    async def _open_app_process(self, width: int = 80, height: int = 24):
        # textual-serve runs asyncio.create_subprocess_shell(command): /bin/sh forks the
        # app and waits, so its Process is the shell, and nothing ever kills either.
        environment = self._build_environment(width=width, height=height)
        self._process = process = await asyncio.create_subprocess_exec(
            *shlex.split(self.command),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=environment,
            start_new_session=True,  # its own process group: killpg reaches all it starts
            preexec_fn=functools.partial(_die_with_parent, os.getpid()) if _prctl is not None else None,
        )
        assert process.stdin is not None
        self._stdin = process.stdin
        log.info("tab %s: started pid %s", self.app_service_id[:8], process.pid)
        return process

    async def on_data(self, payload: bytes) -> None:
        # AppService.run() ends its read loop on ConnectionResetError (the browser left),
        # and then nobody reads the app's stdout. Keep reading; drop what cannot be sent.
        if self._remote_gone:
            return
        try:
            await super().on_data(payload)
        except (ConnectionResetError, RuntimeError):
            self._remote_gone = True

    async def on_meta(self, data: bytes) -> None:
        try:
            await super().on_meta(data)
        except (ConnectionResetError, RuntimeError):
            self._remote_gone = True

    async def send_meta(self, data: dict[str, Any]) -> bool:
        try:
            return await super().send_meta(data)
        except (ConnectionResetError, BrokenPipeError, RuntimeError):
            return False  # the app is gone already

    @property
    def pid(self) -> Optional[int]:
        return None if self._process is None else self._process.pid

    def signal_group(self, signum: int) -> bool:
        if self._process is None:
            return False
        try:
            os.killpg(self._process.pid, signum)  # pgid == pid: start_new_session
            return True
        except (ProcessLookupError, PermissionError):
            return False

    async def _wait_exit(self, seconds: float) -> bool:
        assert self._process is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._process.wait()), seconds)
            return True
        except asyncio.TimeoutError:
            return False

    async def stop(self) -> None:
        """Quit, then SIGTERM, then SIGKILL the tab's process group, and reap it.
        Idempotent, and it completes even if the caller is cancelled (server shutdown)."""
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stop_task)

    async def _stop(self) -> None:
        process = self._process
        if process is None:
            return
        try:
            await self._download_manager.cancel_app_downloads(app_service_id=self.app_service_id)
        except Exception:
            pass
        how = "exited"
        if process.returncode is None:
            try:
                await asyncio.wait_for(self.send_meta({"type": "quit"}), 0.5)
            except Exception:
                pass
            if not await self._wait_exit(self.quit_grace):
                how = "SIGTERM"
                self.signal_group(signal.SIGTERM)
                if not await self._wait_exit(self.term_grace):
                    how = "SIGKILL"
                    self.signal_group(signal.SIGKILL)
                    await process.wait()
        # Whatever the app started in its group goes too (the leader has just been
        # reaped: its pgid cannot have been reused this quickly while members remain).
        self.signal_group(signal.SIGKILL)
        try:
            if self._stdin is not None:
                self._stdin.close()
        except Exception:
            pass
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 2)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            self._task = None
        self.ended_by = how
        log.info("tab %s: pid %s ended (%s, status %s)", self.app_service_id[:8], process.pid, how, process.returncode)


LIMIT_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">
<title>{title}: tab limit</title>
<style>body {{ background: #0c181f; color: #eee; font-family: "Roboto Mono", menlo, monospace;
display: flex; align-items: center; justify-content: center; height: 90vh; }}
div {{ max-width: 40em; background: #12232d; padding: 2em; }}</style></head>
<body><div><h2>{title}: tab limit reached</h2>
<p id="limit">{sentence}</p><p>This page tries again every 10 seconds.</p></div></body></html>
"""


class LenstuiServer(Server):
    """textual-serve's Server with the token, Host and Origin checks, a tab limit, bind
    errors as one sentence, and tab processes that always end (see the module doc)."""

    def __init__(
        self,
        command: str,
        host: str = "127.0.0.1",
        port: int = 8000,
        title: Optional[str] = None,
        public_url: Optional[str] = None,
        *,
        max_tabs: Optional[int] = DEFAULT_MAX_TABS,
        token: Optional[str] = None,
        quit_grace: float = 2.0,
        term_grace: float = 2.0,
        app_driver: Optional[str] = APP_DRIVER,
        tab_environment: Optional[dict[str, str]] = None,
    ) -> None:
        public_url = public_url or default_public_url(host, port)
        super().__init__(command, host=host, port=port, title=title or "lenstui", public_url=public_url)
        self.public_url = self.public_url.rstrip("/")
        self.max_tabs = max_tabs
        self.token = check_token(token) if token else secrets.token_urlsafe(24)
        self.quit_grace = quit_grace
        self.term_grace = term_grace
        self.app_driver = app_driver
        self.tab_environment = dict(tab_environment or {})
        self.cookie_name = f"lenstui_token_{port}"  # cookies ignore ports: one per server
        self._tabs: set[TabService] = set()
        self._sockets: set[web.WebSocketResponse] = set()
        self._slots = 0  # tabs reserved or running (given back once the process is reaped)

        public = URL(self.public_url)
        self._public_origin = (public.scheme, (public.host or "").lower(), public.port)
        self._wildcard = host in WILDCARDS
        names = {(public.host or "").lower()}
        if not self._wildcard:
            names.add(host.strip("[]").lower())
        if is_loopback(host) or self._wildcard:
            names.update(LOOPBACK_NAMES)  # a loopback name cannot be rebound to a foreign site
        if self._wildcard:
            names.update({socket.getfqdn().lower(), socket.gethostname().lower()})
        self.allowed_names = frozenset(name for name in names if name)

    # ------------------------------------------------------------------ who may connect

    @property
    def url(self) -> str:
        """The URL to print and open: the public URL with this run's token."""
        return f"{self.public_url}/?token={self.token}"

    def name_allowed(self, name: str) -> bool:
        name = name.strip("[]").lower().rstrip(".")
        return name in self.allowed_names or (self._wildcard and is_ip_literal(name))

    def host_allowed(self, request: web.Request) -> bool:
        header = request.headers.get("Host")
        if not header:
            return False
        try:
            name = URL(f"http://{header}").host
        except ValueError:
            return False
        return bool(name) and self.name_allowed(name)

    def origin_allowed(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if not origin or origin == "null":
            return False
        try:
            url = URL(origin)
        except ValueError:
            return False
        if not url.scheme or not url.host:
            return False
        key = (url.scheme, url.host.lower(), url.port)
        if key == self._public_origin:
            return True
        return url.scheme == "http" and url.port == self.port and self.name_allowed(url.host)

    def token_ok(self, given: Optional[str]) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    @web.middleware
    async def _host_middleware(self, request: web.Request, handler):
        if not self.host_allowed(request):
            raise self._forbidden(
                request, "this server does not answer to that host name.", f"Host {request.headers.get('Host')!r}"[:120]
            )
        return await handler(request)

    def _forbidden(self, request: web.Request, why: str, detail: str = "") -> web.HTTPForbidden:
        log.warning("refused %s %s from %s: %s", request.method, request.path[:60], request.remote, detail or why)
        return web.HTTPForbidden(text=f"Forbidden: {why}\n", headers={"Cache-Control": "no-store"})

    # ------------------------------------------------------------------ routes

    async def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._host_middleware])
        aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(self.templates_path))
        app.add_routes(
            [
                web.get("/", self.handle_index, name="index"),
                # "websocket" keeps textual-serve's route name, which Server.handle_index
                # builds the page's socket URL from; the bare /ws never upgrades.
                web.get("/ws", self.handle_bare_websocket, name="websocket"),
                web.get("/ws/{token}", self.handle_websocket, name="websocket_token"),
                web.get("/download/{key}", self.handle_download, name="download"),
                web.static("/static", self.statics_path, show_index=False, name="static"),
            ]
        )
        app.on_shutdown.append(self.on_shutdown)
        return app

    def limit_sentence(self) -> str:
        tabs = "tab" if self.max_tabs == 1 else "tabs"
        return (
            f"This server runs at most {self.max_tabs} {tabs} at a time (each tab is its own "
            "copy of the app, with its own model in memory); close one and reload this page."
        )

    def at_limit(self) -> bool:
        return self.max_tabs is not None and self._slots >= self.max_tabs

    async def handle_index(self, request: web.Request) -> web.StreamResponse:
        if not (self.token_ok(request.query.get("token")) or self.token_ok(request.cookies.get(self.cookie_name))):
            raise self._forbidden(request, "this page needs the token in the URL that `lenstui serve` printed.")
        if self.at_limit():
            log.info("tab limit (%s) reached: the limit page for %s", self.max_tabs, request.remote)
            return web.Response(
                status=503,
                content_type="text/html",
                text=LIMIT_PAGE.format(title=html.escape(self.title), sentence=html.escape(self.limit_sentence())),
                headers={"Retry-After": "10", "Cache-Control": "no-store"},
            )
        # Server.handle_index is wrapped by @aiohttp_jinja2.template (functools.wraps):
        # __wrapped__ returns its template context, reused as is but for the socket URL,
        # which gets the token as a path segment.
        context = await Server.handle_index.__wrapped__(self, request)
        context["app_websocket_url"] = f"{context['app_websocket_url']}/{self.token}"
        response = aiohttp_jinja2.render_template("app_index.html", request, context)
        response.set_cookie(
            self.cookie_name,
            self.token,
            httponly=True,
            samesite="Strict",
            path="/",
            secure=self._public_origin[0] == "https",
        )
        response.headers["Referrer-Policy"] = "no-referrer"  # the URL holds the token (the page loads a web font)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        return response

    async def handle_bare_websocket(self, request: web.Request) -> web.StreamResponse:
        raise self._forbidden(request, "the websocket needs this run's token.")

    async def handle_download(self, request: web.Request) -> web.StreamResponse:
        if not self.token_ok(request.cookies.get(self.cookie_name)):
            raise self._forbidden(request, "downloads need the page's cookie.")
        return await super().handle_download(request)

    async def handle_websocket(self, request: web.Request) -> web.StreamResponse:
        if not self.token_ok(request.match_info.get("token")):
            raise self._forbidden(request, "wrong token.")
        if not self.origin_allowed(request):
            origin = f"Origin {request.headers.get('Origin')!r}"[:120]
            raise self._forbidden(request, "a page of another site cannot open this socket.", origin)
        websocket = web.WebSocketResponse(heartbeat=15, timeout=2.0)
        if self.at_limit():
            await websocket.prepare(request)
            await websocket.send_bytes(f"\r\n  {self.limit_sentence()}\r\n".encode())
            await websocket.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"tab limit")
            log.info("tab limit (%s) reached: a socket from %s refused", self.max_tabs, request.remote)
            return websocket

        width = _to_int(request.query.get("width", "80"), 80, 1, 1000)
        height = _to_int(request.query.get("height", "24"), 24, 1, 1000)
        self._slots += 1
        tab: Optional[TabService] = None
        try:
            await websocket.prepare(request)
            self._sockets.add(websocket)
            tab = TabService(
                self.command,
                write_bytes=websocket.send_bytes,
                write_str=websocket.send_str,
                close=websocket.close,
                download_manager=self.download_manager,
                debug=self.debug,
                quit_grace=self.quit_grace,
                term_grace=self.term_grace,
                app_driver=self.app_driver,
                environment=self.tab_environment,
            )
            self._tabs.add(tab)
            await tab.start(width, height)
            await self._process_messages(websocket, tab)
        except asyncio.CancelledError:
            pass
        except Exception as error:  # a malformed message, a process that would not start
            name = tab.app_service_id[:8] if tab else "-"
            log.warning("tab %s: %s: %s", name, type(error).__name__, str(error)[:200])
        finally:
            self._sockets.discard(websocket)
            try:
                if tab is not None:
                    await tab.stop()  # shielded inside: the process ends even if we are cancelled
            finally:
                if tab is not None:
                    self._tabs.discard(tab)
                self._slots -= 1
                if not websocket.closed:
                    try:
                        await websocket.close(code=WSCloseCode.GOING_AWAY)
                    except Exception:
                        pass
        return websocket

    async def on_shutdown(self, app: web.Application) -> None:
        """The server is stopping: every tab's process ends (in parallel) before aiohttp
        waits for its handlers; then the sockets are told the server went away."""
        tabs = list(self._tabs)
        if tabs:
            log.info("stopping %d tab(s)", len(tabs))
        await asyncio.gather(*(tab.stop() for tab in tabs), return_exceptions=True)
        for websocket in list(self._sockets):
            try:
                await websocket.close(code=WSCloseCode.GOING_AWAY, message=b"server stopped")
            except Exception:
                pass

    def kill_all_now(self) -> None:
        """Last resort: SIGKILL every tab's process group."""
        for tab in list(self._tabs):
            tab.signal_group(signal.SIGKILL)

    # ------------------------------------------------------------------ running

    def initialize_logging(self) -> None:
        # textual-serve's RichHandler prints tracebacks with their local variables (the
        # token among them) and aiohttp's access log; one plain line per event instead.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("lenstui serve: %(message)s"))
        log.handlers[:] = [handler]
        log.setLevel(logging.DEBUG if self.debug else logging.INFO)
        log.propagate = False

    async def _run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        app = await self._make_app()
        runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=max(1.0, self.quit_grace + self.term_grace)
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            try:
                await site.start()
            except OSError as error:  # socket.gaierror is one
                raise BindError(describe_bind_error(self.host, self.port, error)) from None
            self.console.print(f"Serving {self.title} on [bold]{self.url}[/bold]", highlight=False, soft_wrap=True)
            self.console.print(
                "Open that URL (it holds this run's token): the page and its socket need the token, "
                "pages of other sites and other host names are refused."
                + (f" At most {self.max_tabs} tab(s) at a time." if self.max_tabs else ""),
                highlight=False,
                soft_wrap=True,
            )
            self.console.print("[cyan]Press Ctrl+C to quit", highlight=False)
            await stop.wait()
            log.info("stopping")
        finally:
            await runner.cleanup()  # on_shutdown: every tab's process ends
            self.kill_all_now()

    def serve(self, debug: bool = False) -> None:
        """Serve until SIGINT/SIGTERM. Raises BindError (one sentence) if it cannot listen."""
        self.debug = debug
        self.initialize_logging()
        try:
            asyncio.run(self._run())
        finally:
            self.kill_all_now()


def _to_int(value: str, default: int, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        return default
    return min(max(number, low), high)
