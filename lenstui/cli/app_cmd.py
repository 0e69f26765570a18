"""`lenstui [PROMPT] [--model SPEC] [--theme NAME]`: open the explorer."""

from __future__ import annotations

import argparse
import os

from lenstui.cli.common import add_model_options, load_settings


def configure(parser: argparse.ArgumentParser, command: str = "") -> None:
    parser.add_argument("prompt", nargs="?", default="", help="a prompt to run as soon as the model is ready")
    add_model_options(parser)
    parser.add_argument(
        "--theme",
        metavar="NAME",
        default=None,
        help="lenstui-dark (default), lenstui-light, lenstui-contrast, or one of yours in the config dir",
    )
    chat = parser.add_mutually_exclusive_group()
    chat.add_argument("--chat", dest="chat", action="store_true", default=None, help="wrap the prompt in the chat template")
    chat.add_argument("--no-chat", dest="chat", action="store_false", help="use the prompt as typed (default)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.remote:  # no key: one sentence and exit 2 before anything starts (or is sent)
        from lenstui.store.ndif import require_key

        require_key(args.endpoint)
    from lenstui.cli.common import backend_choice

    # The model's process first: it imports torch and transformers while this one imports
    # Textual and draws the first frame. Not for a browser tab (``lenstui serve`` sets
    # TEXTUAL_DRIVER): a tab's start-up keeps the order its driver's start-up race was
    # measured with (tests/system/test_serve.py reproduces Textual's livelock by its timing).
    worker = None
    if os.environ.get("LENSTUI_IN_PROCESS", "") in ("", "0") and not os.environ.get("TEXTUAL_DRIVER"):
        from lenstui.jobs.process import ProcessWorker

        worker = ProcessWorker(None).start()
    app = None
    try:
        # Imported here so `lenstui lens ...` never pays for Textual.
        from lenstui.tui.app import LenstuiApp

        device, dtype, placement = load_settings(args)
        app = LenstuiApp(
            args.prompt,
            model=args.model,
            device=device,
            dtype=dtype,
            placement=placement,
            theme=args.theme,
            chat=args.chat,
            allow_download=args.allow_download,
            worker=worker,
            backend=backend_choice(args),
            remote=args.remote,
            endpoint=args.endpoint,
        )
        app.run()
    finally:
        if worker is not None and (app is None or app.worker is not worker):
            worker.stop()  # the app ended (or failed) before it took the worker over
    return int(app.return_code or 0)
