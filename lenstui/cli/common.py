"""Options and helpers every headless subcommand shares."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional

from lenstui.core.errors import InputError


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        metavar="SPEC",
        default=None,
        help="a .gguf file, a Hugging Face model directory or id; default: the embedded SmolLM2-135M-Instruct",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: best available)")
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "float16", "bfloat16"), help="weights dtype"
    )
    parser.add_argument(
        "--allow-download",
        action="store_true",
        default=None,
        help="let a Hugging Face model id that is not in the local cache be downloaded "
        "(default: never, unless allow_download = true in config.toml)",
    )


def downloads_allowed(args: argparse.Namespace) -> bool:
    """--allow-download, else the config's ``allow_download`` (default False)."""
    if getattr(args, "allow_download", None):
        return True
    from lenstui.store.config import load_config

    return bool(load_config()[0].allow_download)


def add_token_arguments(parser: argparse.ArgumentParser) -> None:
    """TOKEN or --id N: one token by its text (or vocabulary piece) or by id (read with
    ``one_token``)."""
    parser.add_argument("token", nargs="?", default=None, help="the token's text (or vocabulary piece)")
    parser.add_argument("--id", type=int, default=None, metavar="N", help="the token id instead of its text")


def load_from_args(args: argparse.Namespace):
    """Load the model named by --model/--device/--dtype, reporting progress on stderr."""
    from lenstui.engine.model.load import load_model

    def progress(message: str, fraction: Optional[float]) -> None:
        if sys.stderr.isatty():
            print(f"\r\033[2K{message}…", end="", file=sys.stderr, flush=True)

    try:
        model = load_model(
            args.model, device=args.device, dtype=args.dtype, progress=progress, allow_download=downloads_allowed(args)
        )
    finally:
        if sys.stderr.isatty():
            print("\r\033[2K", end="", file=sys.stderr, flush=True)
    for note in model.notes:  # e.g. the GGUF cache could not be written
        print(f"lenstui: note: {note}", file=sys.stderr)
    global _loaded_wiring
    _loaded_wiring = model.wiring
    if model.wiring is not None and not model.wiring.ok:
        print(f"lenstui: warning: {model.wiring.sentence}", file=sys.stderr)
    return model


# The wiring check of the model this command loaded (engine/model/wiring.py): every --json
# payload carries it (print_json), so a script sees a lens that does not read the model true.
_loaded_wiring = None


def forget_loaded_model() -> None:
    """A new command starts: no model loaded yet (one process may run several in tests)."""
    global _loaded_wiring
    _loaded_wiring = None


def one_token(args: argparse.Namespace, message: str):
    """The TOKEN argument or --id, whichever was given; ``message`` when not exactly one.
    Checked before the model loads: a usage mistake should not cost a load."""
    if (args.token is None) == (args.id is None):
        raise InputError(message)
    return args.id if args.id is not None else args.token


def lens_options(args: argparse.Namespace):
    """The lens options a subcommand's --top-k, --lens, --extended-blocks, --mid, --target
    (or --target-id), --track and --lens-path give (those it has; the rest default)."""
    from lenstui.core.lenses import LensOptions
    from lenstui.core.tokens import token_spec

    target = getattr(args, "target_id", None)
    return LensOptions(
        top_k=getattr(args, "top_k", 10),
        lens=getattr(args, "lens", "logit"),
        extended_blocks=getattr(args, "extended_blocks", 1),
        incl_mid=getattr(args, "mid", False),
        target=target if target is not None else getattr(args, "target", None),
        track=tuple(token_spec(t) for t in getattr(args, "track", [])),
        lens_path=getattr(args, "lens_path", None),
    )


def print_json(payload: Any) -> None:
    if isinstance(payload, dict) and _loaded_wiring is not None and "wiring" not in payload:
        payload = {**payload, "wiring": _loaded_wiring.to_json()}
    json.dump(payload, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


def fail(message: str, status: int = 2) -> int:
    print(f"lenstui: {message}", file=sys.stderr)
    return status
