"""Loading models: nothing is fetched from the network unless asked, and a GGUF cache that
cannot be written (a full disk) costs only speed.

The disk-full cases write to a real, tiny tmpfs (mounted for the test; skipped where
mounting is not allowed), so the errors are the ones a full disk raises: safetensors'
``SafetensorError`` for the weights, ``OSError`` for the rest.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from lenstui.core.errors import ModelLoadError
from lenstui.engine.model import load as load_module
from lenstui.engine.model.load import _cache_gguf, gguf_digest, hub_offline, load_model, sweep_stale_staging


@pytest.fixture
def no_network(monkeypatch):
    """Every name lookup and connection attempt is recorded and refused."""
    attempts: list[str] = []

    def refuse_lookup(host, *args, **kwargs):
        attempts.append(f"getaddrinfo {host}")
        raise socket.gaierror(socket.EAI_NONAME, "no network in this test")

    def refuse_connect(self, address):
        attempts.append(f"connect {address}")
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)
    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse_connect)
    return attempts


@pytest.fixture
def online_by_default(monkeypatch, tmp_path):
    """As on a user's machine: no HF_HUB_OFFLINE in the environment, an empty HF cache;
    the hub library's offline switch is restored afterwards."""
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return constants


# ---------------------------------------------------------------- no downloads unless asked


def test_a_hub_id_not_in_the_cache_is_one_sentence_and_no_network(online_by_default, no_network):
    with pytest.raises(ModelLoadError) as err:
        load_model("someone/not-cached-" + uuid.uuid4().hex[:8], device="cpu")
    message = str(err.value)
    assert "not in the local Hugging Face cache" in message and "--allow-download" in message
    assert "allow_download = true" in message and "\n" not in message
    assert no_network == []  # not even a name lookup
    assert online_by_default.HF_HUB_OFFLINE is True  # the hub libraries are offline for the process


def test_allow_download_does_reach_for_the_hub(online_by_default, no_network, monkeypatch):
    """The switch is real: with allow_download the same load tries the hub (refused here)."""
    import types

    from huggingface_hub.utils import _http

    # The hub library retries a refused connection with a backoff (1+2+4+8+8 s): no waiting here.
    no_wait = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    no_wait.sleep = lambda seconds: None
    monkeypatch.setattr(_http, "time", no_wait)
    with pytest.raises(ModelLoadError) as err:
        load_model("someone/not-cached-" + uuid.uuid4().hex[:8], device="cpu", allow_download=True)
    assert "hub could not be reached" in str(err.value)
    assert no_network, "the hub was never asked"
    assert online_by_default.HF_HUB_OFFLINE is False


def test_the_users_own_offline_setting_wins_over_allow_download(online_by_default, no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_offline(allow_download=True) is True
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE is set"):
        load_model("someone/not-cached-" + uuid.uuid4().hex[:8], device="cpu", allow_download=True)
    assert no_network == []


def test_typed_names_and_the_app_load_offline_by_default():
    from lenstui.cli import build_parser
    from lenstui.cli.common import downloads_allowed
    from lenstui.jobs.protocol import LoadModel
    from lenstui.tui.app import LenstuiApp

    assert LoadModel("org/name").allow_download is False
    args = build_parser(None).parse_args(["--model", "org/name"])
    assert args.allow_download is None and downloads_allowed(args) is False
    assert LenstuiApp("", model="org/name").model_request.allow_download is False
    assert downloads_allowed(build_parser("lens").parse_args(["hi", "--allow-download"])) is True
    # The config key turns it on for the app and the CLI.
    config = Path(os.environ["LENSTUI_CONFIG_DIR"])
    config.mkdir(parents=True, exist_ok=True)
    (config / "config.toml").write_text("allow_download = true\n")
    assert downloads_allowed(args) is True
    assert LenstuiApp("", model="org/name").model_request.allow_download is True


def test_a_model_switch_keeps_the_download_policy():
    from dataclasses import replace

    from lenstui.jobs.protocol import LoadModel

    start = LoadModel(None, "cpu", "float32", allow_download=False)
    assert replace(start, spec="org/other") == LoadModel("org/other", "cpu", "float32", allow_download=False)


def test_the_worker_passes_the_policy_to_the_loader():
    import queue

    from lenstui.jobs.protocol import Failed, LoadModel
    from lenstui.jobs.scheduler import ModelWorker

    seen = []

    def loader(spec, **kwargs):
        seen.append(kwargs.get("allow_download"))
        raise ModelLoadError("no model in this test")

    results: queue.Queue = queue.Queue()
    worker = ModelWorker(results.put, loader=loader).start()
    try:
        worker.submit(LoadModel("org/name"))
        assert isinstance(results.get(timeout=10), Failed)
        worker.submit(LoadModel("org/name", allow_download=True))
        assert isinstance(results.get(timeout=10), Failed)
    finally:
        worker.stop()
    assert seen == [False, True]


# ---------------------------------------------------------------- the GGUF cache


def test_a_full_disk_while_caching_costs_only_speed(tmpfs):
    """The weights' write hits ENOSPC inside safetensors (SafetensorError, not OSError):
    the model is kept, a note says why, and no staging folder is left."""
    from testkit.models import tiny_llama_hf

    model, tokenizer = tiny_llama_hf()
    folder = tmpfs("size=64k") / "gguf"
    notes: list[str] = []
    assert _cache_gguf(model, tokenizer, Path("/models/x.gguf"), folder / "abc", notes) is False
    assert len(notes) == 1 and "Could not cache the dequantized model" in notes[0]
    assert "next start dequantizes it again" in notes[0]
    assert list(folder.iterdir()) == []  # no .partial-* left, no half entry


def test_an_unwritable_cache_folder_costs_only_speed(tmp_path):
    from testkit.models import tiny_llama_hf

    model, tokenizer = tiny_llama_hf()
    (tmp_path / "gguf").write_text("a file where the folder should be")
    notes: list[str] = []
    assert _cache_gguf(model, tokenizer, Path("x.gguf"), tmp_path / "gguf" / "abc", notes) is False
    assert notes and "Could not cache" in notes[0]


def test_a_cache_written_meanwhile_by_another_process_is_kept(tmp_path):
    from testkit.models import tiny_llama_hf

    model, tokenizer = tiny_llama_hf()
    cached = tmp_path / "gguf" / "abc"
    assert _cache_gguf(model, tokenizer, Path("x.gguf"), cached, []) is True
    first = (cached / "model.safetensors").stat().st_mtime_ns
    time.sleep(0.01)
    assert _cache_gguf(model, tokenizer, Path("x.gguf"), cached, []) is True  # the rename loses: theirs stays
    assert (cached / "model.safetensors").stat().st_mtime_ns == first
    assert [p.name for p in cached.parent.iterdir()] == ["abc"]


def test_stale_staging_folders_are_swept(tmp_path):
    folder = tmp_path / "gguf"
    folder.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    names = {
        "killed": f".partial-{dead.pid}-aaaa",  # its process is gone
        "running": f".partial-{os.getpid()}-bbbb",  # a start in progress (this one)
        "old-style-new": ".partial-cccc",  # an older lenstui's, recent: given an hour
        "old-style-old": ".partial-dddd",
    }
    for name in names.values():
        (folder / name).mkdir()
        (folder / name / "model.safetensors").write_bytes(b"x" * 10)
    old = time.time() - 7200
    os.utime(folder / names["old-style-old"], (old, old))
    removed = {p.name for p in sweep_stale_staging(folder)}
    assert removed == {names["killed"], names["old-style-old"]}
    assert {p.name for p in folder.iterdir()} == {names["running"], names["old-style-new"]}


def test_two_processes_hashing_at_once_both_keep_their_digest(tmp_path, monkeypatch):
    """digests.json: each writer re-reads and merges under the lock, so no entry is lost."""
    monkeypatch.setenv("LENSTUI_CACHE_DIR", str(tmp_path / "cache"))
    files = []
    for i in range(6):
        path = tmp_path / f"m{i}.gguf"
        path.write_bytes(os.urandom(1000))
        files.append(path)
    code = (
        "import sys; from pathlib import Path; from lenstui.engine.model.load import gguf_digest; "
        "[gguf_digest(Path(p)) for p in sys.argv[1:]]"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    procs = [
        subprocess.Popen([sys.executable, "-c", code, *map(str, files[k::2])], env=env) for k in range(2)
    ]
    assert [p.wait(120) for p in procs] == [0, 0]
    import json

    memo = json.loads((tmp_path / "cache" / "gguf" / "digests.json").read_text())
    assert len(memo) == 6
    assert gguf_digest(files[0]) == load_module.file_sha256(files[0])
