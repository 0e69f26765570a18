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
