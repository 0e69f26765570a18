"""Shared fixtures: tiny local models (fast) and the real embedded model (integration).

The tests are in four tiers, one folder each: tests/unit (core, store, engine on tiny models
built from configs), tests/app (the explorer driven by the Pilot, snapshots), tests/integration
(the embedded SmolLM2; every test there is marked ``integration`` by its folder) and
tests/system (a real terminal, the web server, the model's own process). ``make test-fast``
runs the first two; the embedded model is refused there (``_no_embedded_model_in_fast_tiers``).

Nothing here may reach a model hub: HF_HUB_OFFLINE is forced on, and the user's own
lenstui config never leaks in (LENSTUI_CONFIG_DIR / LENSTUI_DATA_DIR point at temp dirs).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


TESTS = Path(__file__).resolve().parent
FAST_TIERS = (TESTS / "unit", TESTS / "app")


@pytest.fixture(autouse=True)
def _no_embedded_model_in_fast_tiers(request, monkeypatch):
    """The unit and app tiers never load the embedded model, however they ask for it (the
    ``embedded`` fixture is refused by their conftest; this catches ``load_model()`` itself)."""
    if not request.node.path.is_relative_to(FAST_TIERS[0]) and not request.node.path.is_relative_to(FAST_TIERS[1]):
        return
    from lenstui.engine.model import load

    real = load._load_gguf

    def refuse_the_embedded_model(path, *args, **kwargs):
        if Path(path) == load.embedded_gguf_path():
            pytest.fail(f"{request.node.nodeid} loads the embedded model: it belongs in tests/integration")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(load, "_load_gguf", refuse_the_embedded_model)


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    base = tmp_path_factory.mktemp("user")
    monkeypatch.setenv("LENSTUI_CONFIG_DIR", str(base / "config"))
    monkeypatch.setenv("LENSTUI_DATA_DIR", str(base / "data"))
    monkeypatch.setenv("LENSTUI_LENS_DIR", str(base / "lenses"))  # fitted lenses (the cache holds the model)


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(options)``: a fresh tmpfs mounted under tmp_path with mount's ``options``
    (e.g. "size=64k", "ro,size=64k"); the test is skipped where mounting is not allowed."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        where = tmp_path / f"tmpfs-{len(mounted)}"
        where.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip() or result.returncode})")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture(scope="session")
def tiny_gpt2():
    from testkit.models import tiny_gpt2 as build

    return build()


@pytest.fixture(scope="session")
def tiny_llama():
    from testkit.models import tiny_llama as build

    return build()


@pytest.fixture(scope="session")
def embedded():
    """The real SmolLM2-135M-Instruct (dequantized once, then from the user cache)."""
    from lenstui.engine.model.load import load_model

    return load_model()


@pytest.fixture
def make_app(embedded):
    """``make_app(prompt, **options)``: an explorer (keeping its notices) on the embedded model."""
    from testkit.apphelpers import RecordingApp

    def make(prompt: str = "", **kwargs):
        kwargs.setdefault("loader", lambda spec, **kw: embedded)
        return RecordingApp(prompt, **kwargs)

    return make


@pytest.fixture
def make_tiny_app(tiny_llama):
    """``make_tiny_app(prompt, **options)``: an explorer (keeping its notices) on the tiny
    random Llama: the whole app in milliseconds per run."""
    from testkit.apphelpers import RecordingApp

    def make(prompt: str = "", **kwargs):
        kwargs.setdefault("loader", lambda spec, **kw: tiny_llama)
        return RecordingApp(prompt, **kwargs)

    return make


@pytest.fixture
def walk_setup(tmp_path, monkeypatch):
    """For the random walks (testkit/walk.py): exports into the test's folder; more, smaller
    and paced lens chunks."""
    from lenstui.jobs import handlers
    from lenstui.jobs.protocol import RunLens
    from testkit.walk import paced_lens

    config = tmp_path / "config"
    config.mkdir(exist_ok=True)
    # A quick typist's debounce: the idle checks wait for it.
    (config / "config.toml").write_text(
        f'export_dir = "{tmp_path / "exports"}"\ndebounce_ms = 80\n', encoding="utf-8"
    )
    monkeypatch.setenv("LENSTUI_CONFIG_DIR", str(config))
    monkeypatch.setattr(handlers, "STREAM_POSITIONS", 4)
    monkeypatch.setitem(handlers.HANDLERS, RunLens, paced_lens)
