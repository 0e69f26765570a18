"""`lenstui serve`: the explorer in a real (headless) browser, and the served command.

The browser test needs Debian's chromium at /usr/bin/chromium (`make test` installs it
when missing) and the playwright package (the `test` extra); it drives the page with
playwright but never downloads playwright's own browsers.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lenstui.cli import build_parser, main, serve_cmd

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
EIFFEL = "The Eiffel Tower is located in the city of"

# textual-serve's page builds its xterm.js Terminal inside a closure. The public Terminal
# is the only object that assigns `_addonManager` in its constructor, so a setter on
# Object.prototype for that name sees each Terminal as it is built and keeps it.
CAPTURE_TERMINAL = """(() => {
  window.__lenstuiTerminals = [];
  Object.defineProperty(Object.prototype, '_addonManager', {
    configurable: true,
    set(value) {
      Object.defineProperty(this, '_addonManager', {value, writable: true, configurable: true, enumerable: true});
      window.__lenstuiTerminals.push(this);
    },
  });
})();"""

# The visible screen, one line per terminal row, read from xterm's buffer (the page draws
# with WebGL/canvas, so there is no text in the DOM).
READ_SCREEN = """() => {
  const term = (window.__lenstuiTerminals || []).find(t => t.buffer && t.buffer.active);
  if (!term) return null;
  const buffer = term.buffer.active, rows = [];
  for (let y = 0; y < term.rows; y++) {
    const line = buffer.getLine(buffer.viewportY + y);
    rows.push(line ? line.translateToString(true) : '');
  }
  return rows.join('\\n');
}"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, server: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"lenstui serve exited with {server.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"lenstui serve did not listen on port {port} within {seconds} s")


def _wait_for_screen(page, predicate, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    screen = None
    while time.monotonic() < deadline:
        screen = page.evaluate(READ_SCREEN)
        if screen and predicate(screen):
            return screen
        time.sleep(0.25)
    raise AssertionError(f"the page never showed what was expected; last screen:\n{screen}")


def _parse(argv):
    return build_parser("serve").parse_args(argv)


def test_served_command_is_this_python_with_the_app_options_quoted():
    args = _parse(["--port", "8123", "--chat", "--model", "my models/x.gguf", "--theme", "lenstui-contrast", "scan"])
    words = shlex.split(serve_cmd.app_command(args))
    assert words[:3] == [sys.executable, "-m", "lenstui.cli"]
    # The app's own parser reads back exactly the options given; serve's are not passed on.
    app_args = build_parser(None).parse_args(words[3:])
    assert (app_args.prompt, app_args.model, app_args.theme, app_args.chat) == ("scan", "my models/x.gguf", "lenstui-contrast", True)
    assert "--port" not in words and "8123" not in words
    # A prompt that starts with a dash or names a subcommand stays a prompt.
    words = shlex.split(serve_cmd.app_command(_parse(["--no-chat", "-- not an option; $(rm -rf x)"])))
    assert words[-2:] == ["--", "-- not an option; $(rm -rf x)"]
    assert build_parser(None).parse_args(words[3:]).chat is False


def test_loopback_is_recognised_and_a_wildcard_gets_a_reachable_url():
    assert serve_cmd.is_loopback("127.0.0.1") and serve_cmd.is_loopback("localhost") and serve_cmd.is_loopback("::1")
    assert not serve_cmd.is_loopback("0.0.0.0") and not serve_cmd.is_loopback("192.168.1.5")
    assert serve_cmd.public_url("::1", 8000, None) == "http://[::1]:8000"
    assert "0.0.0.0" not in serve_cmd.public_url("0.0.0.0", 8000, None)
    assert serve_cmd.public_url("0.0.0.0", 8000, "https://talk.example/") == "https://talk.example"


def test_a_bad_port_is_one_sentence(capsys):
    assert main(["serve", "--port", "70000"]) == 2
    assert "is not a port number" in capsys.readouterr().err


def test_the_server_process_never_imports_torch():
    # Build the server as `lenstui serve` does, up to listening, and look at sys.modules.
    code = (
        "import sys; from lenstui.cli import build_parser; from lenstui.cli import serve_cmd; "
        "from textual_serve.server import Server; "
        "a = build_parser('serve').parse_args(['hello']); "
        "Server(serve_cmd.app_command(a), host=a.host, port=a.port); "
        "print('torch' in sys.modules, 'transformer_lens' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True)
    assert out.stdout.split() == ["False", "False"]


def test_a_public_host_prints_a_warning():
    # Listen on all addresses for a moment: the warning comes before the server starts.
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "lenstui.cli", "serve", "--host", "0.0.0.0", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    try:
        _wait_for_port(port, server, 30)
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert "warning" in err and "anyone who can reach" in err


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.mark.integration
def test_the_explorer_runs_in_a_headless_browser(tmp_path):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "chromium is missing: `make test` installs it (apt-get install chromium)"
    port = _free_port()
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "lenstui.cli", "serve", "--port", str(port), EIFFEL],
        stdout=log, stderr=subprocess.STDOUT, env=_env(),
    )
    try:
        _wait_for_port(port, server, 60)
        with sync_playwright() as playwright:
            # A fresh profile (--user-data-dir) under the test's tmp dir.
            browser = playwright.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),
                executable_path=CHROMIUM,
                viewport={"width": 1400, "height": 900},
                args=[
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--no-first-run", "--disable-component-update", "--disable-sync",
                ],
            )
            try:
                page = browser.pages[0] if browser.pages else browser.new_page()
                page.add_init_script(CAPTURE_TERMINAL)
                page.goto(f"http://127.0.0.1:{port}/")
                # The model loads in the served app's own process: give a loaded machine time.
                screen = _wait_for_screen(page, lambda s: "layer × position" in s and "␣Paris" in s, 120)
                assert EIFFEL in screen
                # The model's last row, last column reads " Paris" (as in the terminal).
                last_layer_row = next(line for line in screen.splitlines() if line.startswith("L29 "))
                assert "␣Paris" in last_layer_row

                # A key press reaches the app: F4 switches the grid to the top-k view.
                page.focus(".xterm-helper-textarea")
                page.keyboard.press("F4")
                screen = _wait_for_screen(page, lambda s: "layer × top-" in s, 30)
                assert "layer × position" not in screen
                page.screenshot(path=str(tmp_path / "lenstui-in-browser.png"))
            finally:
                browser.close()
    except AssertionError as err:
        log.flush()
        raise AssertionError(f"{err}\nserver log:\n{(tmp_path / 'serve.log').read_text()[-3000:]}") from None
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    shot = tmp_path / "lenstui-in-browser.png"
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
