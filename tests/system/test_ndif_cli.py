"""``lenstui ... --remote`` as a user runs it (a real process, real sockets): without a key,
and with a key but no network, one sentence and exit status 2, and nothing sent anywhere
else; with a key, the JSON says where the model ran, and the key shows nowhere.

"Nothing sent" is shown with real listeners on loopback: the NDIF endpoint and the Hugging
Face hub (``HF_ENDPOINT``) each a socket that records every connection made to it. "No
network" is a network namespace with no interface up (``unshare -rn``), where it exists.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from testkit.hub_cache import tiny_hub_cache

REPO = "lenstui-test/tiny-llama"
KEY = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
LENSTUI = [sys.executable, "-m", "lenstui.cli"]


class Listener:
    """A TCP listener on loopback that accepts, records and (optionally) drops connections."""

    def __init__(self):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.port = self.socket.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self):
        while True:
            try:
                conn, _ = self.socket.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()  # a server that answers nothing: the connection breaks

    def close(self):
        self.socket.close()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    return tiny_hub_cache(tmp_path_factory.mktemp("hub"), REPO)


@pytest.fixture
def env(hub, tmp_path):
    """The environment of a user's shell: no HF_HUB_OFFLINE (lenstui must keep the hub
    offline itself), the hub pointed at a listener, lenstui's dirs in tmp_path."""
    hub_listener = Listener()
    values = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "NDIF_API_KEY")}
    values.update(
        HF_HUB_CACHE=str(hub),
        HF_ENDPOINT=hub_listener.url,
        LENSTUI_CONFIG_DIR=str(tmp_path / "config"),
        LENSTUI_DATA_DIR=str(tmp_path / "data"),
        NNSIGHT_CONFIG=str(tmp_path / "nnsight.yaml"),  # the user's nnsight config stays out too
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
    )
    values["_hub_listener"] = hub_listener
    yield values
    hub_listener.close()


def run(env: dict, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in env.items() if not k.startswith("_")}
    return subprocess.run([*prefix, *LENSTUI, *args], env=clean, capture_output=True, text=True, timeout=300)


def one_sentence(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("command", [["lens", "hello"], []], ids=["lens", "app"])
def test_remote_without_a_key_sends_nothing(env, command):
    endpoint = Listener()
    try:
        result = run(env, *command, "--remote", "--model", REPO, "--endpoint", endpoint.url)
        line = one_sentence(result)
        assert line.startswith("lenstui: --remote needs an NDIF API key") and "nothing was sent" in line
        assert endpoint.connections == 0
        assert env["_hub_listener"].connections == 0
    finally:
        endpoint.close()


def test_remote_with_a_key_and_a_broken_network(env):
    """The endpoint accepts the connection and drops it (what a broken network looks like
    from here): one sentence, exit 2; the hub is never asked."""
    endpoint = Listener()
    try:
        result = run({**env, "NDIF_API_KEY": KEY}, "lens", "hello", "--remote", "--model", REPO, "--endpoint", endpoint.url)
        line = one_sentence(result)
        assert line.startswith(f"lenstui: Cannot reach NDIF at {endpoint.url}")
        assert KEY not in result.stderr
        # The one status check, nothing after it. (The client's connection may still wait in
        # the listen backlog: the accepting thread can be slow to run in a long session.)
        deadline = time.monotonic() + 10
        while endpoint.connections < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert endpoint.connections >= 1
        assert env["_hub_listener"].connections == 0
    finally:
        endpoint.close()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) for a network namespace")
def test_remote_with_a_key_and_no_network(env):
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("this machine does not allow a network namespace")
    result = run(
        {**env, "NDIF_API_KEY": KEY}, "lens", "hello", "--remote", "--model", REPO, prefix=("unshare", "-rn")
    )
    line = one_sentence(result)
    assert line.startswith("lenstui: Cannot reach NDIF at https://api.ndif.us")


def test_remote_json_says_where_and_never_the_key(env, hub, tmp_path):
    """A whole run against the loopback NDIF-protocol server: the grid comes back, the
    JSON says backend, remote and endpoint, and the key is in no output or file."""
    from testkit.ndif_server import LoopbackNdif

    server = LoopbackNdif.from_hub_cache(hub, REPO, KEY).start()
    try:
        result = run({**env, "NDIF_API_KEY": KEY}, "lens", "The Eiffel Tower is in", "--remote", "--model", REPO,
                     "--endpoint", server.url, "--json", "--top-k", "3")
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert (payload["backend"], payload["remote"], payload["endpoint"]) == ("nnsight", True, server.url)
    assert len(payload["grid"]) == 4 and payload["depth"]
    assert KEY not in result.stdout and KEY not in result.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert env["_hub_listener"].connections == 0
