"""Placeholder until this subcommand lands (owned by its issue)."""

from __future__ import annotations

import argparse

from lenstui.engine.errors import LenstuiError


def configure(parser: argparse.ArgumentParser, command: str = "") -> None:
    parser.add_argument("rest", nargs="*")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise LenstuiError("this command is not built yet")
