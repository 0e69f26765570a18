"""The contracts modules share: where Cancelled lives, how the CLI reports it."""

from __future__ import annotations

import argparse

from lenstui.cli import run_command
from lenstui.core.errors import Cancelled, LenstuiError


def test_cancelled_is_not_a_user_error():
    assert not issubclass(Cancelled, LenstuiError)


def test_cancelled_reaching_the_cli_is_one_line_not_a_traceback(capsys):
    def cancelled_command(args):
        raise Cancelled("vocabulary scan cancelled")

    status = run_command(cancelled_command, argparse.Namespace())
    assert status == 2
    err = capsys.readouterr().err
    assert err == "lenstui: vocabulary scan cancelled\n"


def test_each_request_names_its_title_and_a_new_kind_defaults_to_its_class_name():
    from dataclasses import dataclass

    from lenstui.jobs.protocol import CheckSpeakable, InspectToken, LoadModel, Request, RunLens, ScanVocabulary

    titles = {kind: kind.title for kind in (LoadModel, RunLens, InspectToken, CheckSpeakable, ScanVocabulary)}
    assert titles == {
        LoadModel: "Model",
        RunLens: "Logit lens",
        InspectToken: "Token inspector",
        CheckSpeakable: "Speakability",
        ScanVocabulary: "Vocabulary scan",
    }

    @dataclass(frozen=True)
    class Attribute(Request):
        token_id: int = 0

    assert Attribute(3).title == "Attribute"


def test_the_lens_kinds_are_named_once_for_the_app_and_the_engine():
    from lenstui.core.lenses import LENS_DESCRIPTIONS, LENS_KINDS
    from lenstui.engine.lens import kinds
    from lenstui.talks import format as talk_format

    assert kinds.LENS_KINDS is LENS_KINDS  # one copy
    assert talk_format.LENSES is LENS_KINDS
    assert set(LENS_DESCRIPTIONS) == set(LENS_KINDS)


# ---------------------------------------------------------------- promises kept in a fresh interpreter

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_fresh(code: str, tmp_path) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "LENSTUI_CONFIG_DIR": str(tmp_path / "config"),
        "LENSTUI_DATA_DIR": str(tmp_path / "data"),
        "LENSTUI_CACHE_DIR": str(tmp_path / "cache"),
    }
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
    )


def test_the_engine_never_imports_textual(tmp_path):
    done = run_fresh(
        """
        import importlib, pkgutil, sys
        import lenstui.engine
        names = [m.name for m in pkgutil.walk_packages(lenstui.engine.__path__, "lenstui.engine.")]
        for name in names:
            importlib.import_module(name)
        assert "torch" in sys.modules  # the check below is not vacuous: the engine really loaded
        leaked = sorted(m for m in sys.modules if m == "textual" or m.startswith("textual."))
        print(len(names), leaked)
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    count, leaked = done.stdout.split(" ", 1)
    assert int(count) >= 20 and leaked.strip() == "[]"


def test_core_store_and_the_talk_format_import_neither_torch_nor_textual(tmp_path):
    done = run_fresh(
        """
        import importlib, pkgutil, sys
        import lenstui.core, lenstui.store
        names = [m.name for p in (lenstui.core, lenstui.store) for m in pkgutil.walk_packages(p.__path__, p.__name__ + ".")]
        names.append("lenstui.talks.format")
        for name in names:
            importlib.import_module(name)
        heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "textual", "transformers", "transformer_lens"})
        print(len(names), heavy)
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    count, heavy = done.stdout.split(" ", 1)
    assert int(count) >= 15 and heavy.strip() == "[]"


def test_the_layer_contracts_hold():
    # pyproject.toml's [tool.importlinter]: imports go down the layers only.
    done = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_no_import_cycles_lazy_imports_included():
    import grimp

    graph = grimp.build_graph("lenstui", cache_dir=None)
    modules = sorted(graph.modules)
    cycles = []
    for module in modules:
        for imported in graph.find_modules_directly_imported_by(module):
            # A path back from what it imports to itself is a cycle through both.
            path = graph.find_shortest_chain(importer=imported, imported=module)
            if path is not None:
                cycles.append((module,) + tuple(path))
    assert cycles == []


def test_the_app_reaches_its_first_frame_without_importing_torch(tmp_path):
    # The CLI's path into the app, up to the first painted frame. The model loader is a
    # stand-in that waits (loading the model is what may import torch, on the worker).
    done = run_fresh(
        """
        import asyncio, sys, threading
        from lenstui.cli import build_parser
        import lenstui.tui.app
        assert "torch" not in sys.modules, "import lenstui.tui.app"
        args = build_parser(None).parse_args(["The capital of France is"])
        gate = threading.Event()
        app = lenstui.tui.app.LenstuiApp(
            args.prompt, model=args.model, device=args.device, dtype=args.dtype, theme=args.theme,
            chat=args.chat, loader=lambda spec, **kw: gate.wait(60),
        )
        async def first_frame():
            async with app.run_test(size=(80, 24)) as pilot:
                await pilot.pause()
                assert app.query_one("#grid").region.width > 0
                assert "torch" not in sys.modules, "the first frame"
                gate.set()
        asyncio.run(first_frame())
        print("ok")
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_an_unexpected_worker_error_goes_to_the_rotating_log_and_the_notice_names_it(tmp_path, monkeypatch):
    import queue
    from dataclasses import dataclass
    from typing import ClassVar

    from lenstui.jobs.protocol import Failed, Request
    from lenstui.jobs.scheduler import ModelWorker

    monkeypatch.setenv("LENSTUI_DATA_DIR", str(tmp_path / "data"))

    @dataclass(frozen=True)
    class Explode(Request):
        needs_model: ClassVar[bool] = False

    def explode(model, request, ctx):
        raise ValueError("a bug deep in a handler")

    results: "queue.Queue" = queue.Queue()
    worker = ModelWorker(results.put).start()
    try:
        worker.register(Explode, explode)
        seq = worker.submit(Explode())
        failed = results.get(timeout=30)
    finally:
        worker.stop()
    log_file = tmp_path / "data" / "logs" / "crash.log"
    assert isinstance(failed, Failed) and failed.seq == seq
    assert failed.message == (
        f"Explode failed (ValueError: a bug deep in a handler). Details in {log_file}."
    )
    logged = log_file.read_text(encoding="utf-8")
    assert "Traceback (most recent call last)" in logged
    assert 'raise ValueError("a bug deep in a handler")' in logged


def test_one_progress_bar_drawing_clamps_to_its_width():
    from lenstui.core.textfmt import bar

    assert bar(0.5, 10, "░") == "█████░░░░░"
    assert bar(1.7, 4, "·") == "████" and bar(-0.2, 4, "·") == "····"
