"""Shared fixtures: tiny local models (fast) and the real embedded model (integration).

Nothing here may reach a model hub: HF_HUB_OFFLINE is forced on, and the user's own
lenstui config never leaks in (LENSTUI_CONFIG_DIR / LENSTUI_DATA_DIR point at temp dirs).
"""

from __future__ import annotations

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    base = tmp_path_factory.mktemp("user")
    monkeypatch.setenv("LENSTUI_CONFIG_DIR", str(base / "config"))
    monkeypatch.setenv("LENSTUI_DATA_DIR", str(base / "data"))
    monkeypatch.setenv("LENSTUI_LENS_DIR", str(base / "lenses"))  # fitted lenses (the cache holds the model)


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
