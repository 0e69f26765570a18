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


# ---------------------------------------------------------------- the import graph (the fresh-interpreter checks: tests/system/test_contracts_fresh.py)


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
