"""The contracts modules share: where Cancelled lives, how the CLI reports it."""

from __future__ import annotations

import argparse

from lenstui.cli import run_command
from lenstui.engine.errors import Cancelled, LenstuiError


def test_cancelled_is_not_a_user_error_and_old_import_path_still_works():
    from lenstui.engine.lens import Cancelled as from_lens

    assert from_lens is Cancelled
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

    from lenstui.worker import CheckSpeakable, InspectToken, LoadModel, Request, RunLens, ScanVocabulary

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
    from lenstui.engine import lens
    from lenstui.engine.lens_kinds import LENS_DESCRIPTIONS, LENS_KINDS

    assert lens.LENS_KINDS == LENS_KINDS  # until lens.py imports it from lens_kinds
    assert set(LENS_DESCRIPTIONS) == set(LENS_KINDS)
