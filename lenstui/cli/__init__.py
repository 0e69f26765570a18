"""`lenstui`: the app, plus headless subcommands that print tables or --json.

`lenstui [PROMPT] [--model SPEC] [--theme NAME]` opens the explorer;
`lenstui lens|token|speak|scan|aim|undertrained|attribute|patch|steer ...` run the same engine without a screen;
`lenstui plan` says what a model's load would take and where it would go, before it is read;
`lenstui lenses fit|eval|list` fits, measures and lists learned lenses (tuned, jacobian);
`lenstui serve` serves the app to a web browser; `lenstui present FILE --check` checks a talk file.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

from lenstui.cli.common import fail
from lenstui.core.errors import Cancelled, LenstuiError

# Imported on use: the subcommands pull in torch, and the app's first frame should not
# wait for an import it does not need yet.
SUBCOMMANDS = {
    "lens": "lenstui.cli.lens_cmd",
    "token": "lenstui.cli.token_cmd",
    "speak": "lenstui.cli.speak_cmd",
    "scan": "lenstui.cli.speak_cmd",
    "attribute": "lenstui.cli.attribute_cmd",
    "serve": "lenstui.cli.serve_cmd",
    "present": "lenstui.cli.present_cmd",
    "aim": "lenstui.cli.aim_cmd",
    "undertrained": "lenstui.cli.undertrained_cmd",
    "lenses": "lenstui.cli.lenses_cmd",
    "patch": "lenstui.cli.patch_cmd",
    "steer": "lenstui.cli.steer_cmd",
    "plan": "lenstui.cli.plan_cmd",
}


def build_parser(command: Optional[str]) -> argparse.ArgumentParser:
    if command is None:
        parser = argparse.ArgumentParser(
            prog="lenstui",
            description="Terminal explorer for transformer internals. Subcommands: "
            + ", ".join(SUBCOMMANDS)
            + " (lenstui SUBCOMMAND --help).",
        )
        importlib.import_module("lenstui.cli.app_cmd").configure(parser)
        return parser
    parser = argparse.ArgumentParser(prog=f"lenstui {command}")
    importlib.import_module(SUBCOMMANDS[command]).configure(parser, command)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = args_list[0] if args_list and args_list[0] in SUBCOMMANDS else None
    parser = build_parser(command)
    args = parser.parse_args(args_list[1:] if command else args_list)
    return run_command(args.func, args)


def run_command(func, args: argparse.Namespace) -> int:
    """Run a subcommand; what the user should read becomes one line on stderr, not a traceback."""
    try:
        return int(func(args) or 0)
    except (LenstuiError, Cancelled) as err:  # Cancelled is not a LenstuiError: name it too
        return fail(str(err))
    except KeyboardInterrupt:
        return fail("Interrupted.", status=130)
    except BrokenPipeError:
        # `lenstui lens ... | head`: the reader left; that is not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
