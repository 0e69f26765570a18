"""The contracts checked in other processes: a fresh interpreter's sys.modules (the engine never
imports Textual; core, store and the talk format import neither torch nor Textual; the app
reaches its first frame without torch) and `lint-imports` on the layers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from testkit.cli import REPO, run_fresh


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
