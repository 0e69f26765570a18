"""Options and helpers every headless subcommand shares."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Optional

from lenstui.core.errors import InputError
from lenstui.core.lenses import LENS_KINDS
from lenstui.core.placement import DTYPE_CHOICES, QUANTIZE_CHOICES


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        metavar="SPEC",
        default=None,
        help="a .gguf file, a Hugging Face model directory or id; default: the embedded SmolLM2-135M-Instruct",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: best available)")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=DTYPE_CHOICES,
        help="weights dtype (default auto: the model's own on a GPU, float32 on a CPU)",
    )
    parser.add_argument(
        "--device-map",
        metavar="MAP",
        default=None,
        help="spread the model over devices (accelerate): auto, balanced, balanced_low_0, sequential, "
        "or a JSON object / .json file {module: device}",
    )
    parser.add_argument(
        "--max-memory",
        metavar="BUDGETS",
        default=None,
        help='what each device may hold of the weights, e.g. "0=70GiB,1=70GiB,cpu=200GiB" (implies --device-map auto)',
    )
    parser.add_argument(
        "--offload-dir", metavar="PATH", default=None, help="where the weights that fit on no device are read from"
    )
    parser.add_argument(
        "--quantize", choices=QUANTIZE_CHOICES, default=None, help="load the blocks' linear layers in 8 or 4 bits (bitsandbytes)"
    )
    parser.add_argument(
        "--allow-download",
        action="store_true",
        default=None,
        help="let a Hugging Face model id that is not in the local cache be downloaded "
        "(default: never, unless allow_download = true in config.toml)",
    )
    add_backend_options(parser)


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """--backend, --remote, --endpoint: who reads the model, and where (docs/guide/ndif.md)."""
    from lenstui.core.backends import BACKENDS

    parser.add_argument(
        "--backend", choices=BACKENDS, default=None,
        help="native (hooks on the model here) or nnsight (default: backend in config.toml, else native)",
    )
    parser.add_argument(
        "--remote", action="store_true", default=False,
        help="run the model on NDIF through nnsight (needs NDIF_API_KEY or [ndif] api_key in config.toml)",
    )
    parser.add_argument(
        "--endpoint", metavar="URL", default=None,
        help="with --remote: the NDIF endpoint (default: [ndif] endpoint in config.toml, else https://api.ndif.us)",
    )


def backend_choice(args: argparse.Namespace) -> Optional[str]:
    """--backend, else the config's ``backend`` (None: native, or nnsight with --remote)."""
    chosen = getattr(args, "backend", None)
    if chosen is None and not getattr(args, "remote", False):
        from lenstui.store.config import load_config

        configured = load_config()[0].backend
        chosen = None if configured == "native" else configured
    return chosen




def add_lens_options(parser: argparse.ArgumentParser, *, target_help: str, track_help: str) -> None:
    """How a command reads its lens grid: --top-k, --lens, --extended-blocks, --mid,
    --target or --target-id, --track and --patchscope-target (``lens_options`` reads them
    back, as a ``LensOptions``)."""
    parser.add_argument("--top-k", type=int, default=5, help="tokens per cell (default 5)")
    parser.add_argument("--lens", choices=LENS_KINDS, default="logit", help="lens variant (default logit)")
    parser.add_argument("--extended-blocks", type=int, default=1, metavar="N", help="decoder blocks for --lens extended")
    parser.add_argument("--mid", action="store_true", help="also read the mid-block residual")
    parser.add_argument("--target", default=None, help=target_help)
    parser.add_argument("--target-id", type=int, default=None, help="target token id")
    parser.add_argument("--track", action="append", default=[], metavar="TOKEN", help=track_help)
    add_patchscope_option(parser)


def encoded_prompt(model, prompt: str, chat: bool):
    """A prompt as the engine takes it: the text, or (--chat) its chat template's ids."""
    if not chat:
        return prompt
    from lenstui.engine.model.chat import chat_prompt_ids

    return chat_prompt_ids(model, prompt)


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


def load_settings(args: argparse.Namespace):
    """(device, dtype, PlacementOptions) from the flags, each falling back to config.toml's."""
    from lenstui.core.placement import PlacementOptions
    from lenstui.store.config import load_config

    config = load_config()[0]

    def pick(name: str):
        value = getattr(args, name, None)
        return value if value is not None else getattr(config, name)

    placement = PlacementOptions(
        device_map=pick("device_map"), max_memory=pick("max_memory"), offload_dir=pick("offload_dir"),
        quantize=pick("quantize"),
    )
    return pick("device"), pick("dtype"), placement


def load_from_args(args: argparse.Namespace):
    """Load the model named by --model, the placement flags and --backend/--remote/--endpoint,
    reporting progress on stderr."""
    from lenstui.engine.backends import open_model

    def progress(message: str, fraction: Optional[float]) -> None:
        if sys.stderr.isatty():
            print(f"\r\033[2K{message}…", end="", file=sys.stderr, flush=True)

    try:
        device, dtype, placement = load_settings(args)
        model = open_model(
            args.model, device=device, dtype=dtype, placement=placement, progress=progress,
            allow_download=downloads_allowed(args), **_backend_kwargs(args),
        )
    finally:
        if sys.stderr.isatty():
            print("\r\033[2K", end="", file=sys.stderr, flush=True)
    for note in model.notes:  # e.g. the GGUF cache could not be written
        print(f"lenstui: note: {note}", file=sys.stderr)
    if model.wiring is not None and not model.wiring.ok:  # the lens does not read this model true
        print(f"lenstui: warning: {model.wiring.sentence}", file=sys.stderr)
    remote = bool(getattr(model, "remote", False))
    if remote:  # progress while NDIF queues and runs each request (the terminal's, not the app's)
        _report_remote_progress(model)
    return model


def needs_weights(model, what: str, vocabulary: bool = False):
    """The model ``what`` (a command no trace computes) runs on: the plain model (native, or
    the one nnsight wraps here), or InputError with the sentence saying why there is none
    (the model is on NDIF; ``vocabulary``: it is the unembedding it needs, with its size)."""
    from lenstui.engine.backends import native_model

    return native_model(model, what, vocabulary=vocabulary)


def _backend_kwargs(args: argparse.Namespace) -> dict:
    backend, remote = backend_choice(args), bool(getattr(args, "remote", False))
    if backend is None and not remote:
        return {}
    return {"backend": backend, "remote": remote, "endpoint": getattr(args, "endpoint", None)}


def _report_remote_progress(model) -> None:
    """NDIF's job status on stderr, one line per change, for a command that waits on it."""

    def progress(message: str, fraction: Optional[float]) -> None:
        end = "" if sys.stderr.isatty() else "\n"
        prefix = "\r\033[2K" if sys.stderr.isatty() else "lenstui: "
        print(f"{prefix}{message}", end=end, file=sys.stderr, flush=True)

    model.transport.progress = progress


def one_token(args: argparse.Namespace, message: str):
    """The TOKEN argument or --id, whichever was given; ``message`` when not exactly one.
    Checked before the model loads: a usage mistake should not cost a load."""
    if (args.token is None) == (args.id is None):
        raise InputError(message)
    return args.id if args.id is not None else args.token


def add_patchscope_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--patchscope-target", metavar="TEXT", default=None,
        help="--lens patchscope: the prompt a residual is patched into, at its last token (\\n is a line break; "
        "default: the token-identity prompt 'cat -> cat\\n1135 -> 1135\\nhello -> hello\\n?')",
    )


def lens_options(args: argparse.Namespace):
    """The lens options a subcommand's --top-k, --lens, --extended-blocks, --mid, --target
    (or --target-id), --track and --lens-path give (those it has; the rest default)."""
    from lenstui.core.lenses import LensOptions, patchscope_target_text
    from lenstui.core.tokens import token_spec

    target = getattr(args, "target_id", None)
    patch_target = getattr(args, "patchscope_target", None)
    return LensOptions(
        top_k=getattr(args, "top_k", 10),
        lens=getattr(args, "lens", "logit"),
        extended_blocks=getattr(args, "extended_blocks", 1),
        incl_mid=getattr(args, "mid", False),
        target=target if target is not None else getattr(args, "target", None),
        track=tuple(token_spec(t) for t in getattr(args, "track", [])),
        lens_path=getattr(args, "lens_path", None),
        patchscope_target=patchscope_target_text(patch_target) if patch_target is not None else None,
    )


def announce_lens(args: argparse.Namespace, model, options, n_positions: int = 0) -> None:
    """Before a lens run: fetch a published lens (``--lens-path registry:NAME``) into the
    Hugging Face cache when downloads are allowed (the engine reads it from there, and
    refuses it there otherwise), and state a costly lens's cost on stderr."""
    from lenstui.core.lenses import LEARNED_LENSES, patchscope_cost
    from lenstui.engine.lens.published import is_registry_path, published_path

    if is_registry_path(options.lens_path):
        if options.lens not in LEARNED_LENSES:
            raise InputError("--lens-path registry:NAME names a published tuned lens or J-lens: add --lens tuned or --lens jacobian.")
        if downloads_allowed(args):
            published_path(model, options.lens, options.lens_path, allow_download=True)
    if options.lens == "patchscope":
        print(f"lenstui: note: {patchscope_cost(model.n_layers, n_positions)}.", file=sys.stderr)


def backend_fields(model: Any) -> dict:
    """Who read ``model``: its backend, whether on NDIF, and NDIF's endpoint then."""
    from lenstui.engine.backends import backend_of

    remote = bool(getattr(model, "remote", False))
    return {"backend": backend_of(model), "remote": remote, "endpoint": getattr(model, "endpoint", None) if remote else None}


def print_json(payload: Any, model: Any = None) -> None:
    """``payload`` as one line of JSON; with the ``model`` it was computed on, an object
    payload also says where that model is (``"placement"``: module -> device) and what its
    load's wiring check found (``"wiring"``: ok, max_abs_dp, sentence) and who read it
    (``"backend"``, ``"remote"``, ``"endpoint"``)."""
    if model is not None and isinstance(payload, dict):
        payload = {**payload, "placement": dict(getattr(model, "placement", {}) or {"": str(model.device)})}
        wiring = getattr(model, "wiring", None)
        if wiring is not None:
            payload["wiring"] = wiring.to_json()
        payload.update(backend_fields(model))
    json.dump(payload, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


def print_result(result: Any, as_json: bool, readable: Callable[[Any], str], model: Any = None) -> int:
    """A result as JSON (--json: its ``to_json()``, saying where ``model`` is, as
    ``print_json``), else as ``readable`` writes it for a terminal. Returns the exit
    status, 0."""
    if as_json:
        print_json(result.to_json(), model)
    else:
        print(readable(result))
    return 0


def fail(message: str, status: int = 2) -> int:
    print(f"lenstui: {message}", file=sys.stderr)
    return status
