"""`lenstui steer PROMPT --token " sea" --layer L --alpha X`: add a token's readout
direction to the residual stream, generate under it, and show the steered lens grid."""

from __future__ import annotations

import argparse

from lenstui.cli.common import add_lens_options, add_model_options, announce_lens, encoded_prompt, lens_options, load_from_args, print_result
from lenstui.cli.lens_cmd import format_table
from lenstui.core.patch_result import SteerResult, SteerSetting
from lenstui.core.textfmt import visible
from lenstui.core.tokens import token_spec


def configure(parser: argparse.ArgumentParser, command: str = "") -> None:
    parser.description = (
        "Steering: add alpha x (the median residual norm after block L) x the unit direction "
        "of a token's effective unembedding row (the final norm's gain folded in; minus "
        "another token's with --away) to the residual after block L at every position from "
        "--position on, generate --steps greedy tokens under it, and show the steered lens "
        "grid beside the clean continuation."
    )
    parser.add_argument("prompt", help="the prompt text")
    parser.add_argument("--token", required=True, metavar="T", help="steer toward this token (text, piece or #ID)")
    parser.add_argument("--away", default=None, metavar="T2", help="and away from this one (the difference of the rows)")
    parser.add_argument("--layer", required=True, metavar="L", help="after this block: L12, 12, -1 (the last) or embed")
    parser.add_argument(
        "--alpha", type=float, required=True, metavar="X", help="strength in median residual norms at L (negative: away)"
    )
    parser.add_argument("--position", type=int, default=0, metavar="P", help="steer positions P.. (default 0: all)")
    parser.add_argument("--steps", type=int, default=0, metavar="N", help="greedy tokens generated under the steer")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    add_model_options(parser)
    add_lens_options(
        parser,
        target_help="target token text (default: each position's top-1)",
        track_help="follow a token through every cell; repeat",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lenstui.engine.backends import engine_for

    options = lens_options(args)
    setting = SteerSetting(
        toward=token_spec(args.token),
        away=None if args.away is None else token_spec(args.away),
        layer=args.layer,
        alpha=args.alpha,
        position=args.position,
    )
    model = load_from_args(args)
    announce_lens(args, model, options)
    result = engine_for(model).steer(model, encoded_prompt(model, args.prompt, args.chat), setting, steps=args.steps, options=options)
    return print_result(result, args.json, format_steer, model)


def format_steer(result: SteerResult) -> str:
    spec = result.spec
    away = f" - {visible(spec.away.text)}" if spec.away is not None else ""
    where = "embed" if spec.layer < 0 else f"L{spec.layer}"
    lines = [
        f"steer toward {visible(spec.toward.text)}{away} · alpha {spec.alpha:g} x median |resid| after {where} "
        f"{spec.scale:.2f} = norm {abs(spec.alpha) * spec.scale:.2f} · positions {spec.position}.. · {result.seconds:.2f}s",
    ]
    if result.generated or result.clean_generated:
        lines.append(f"clean:   {visible(''.join(t.text for t in result.clean_generated))}")
        lines.append(f"steered: {visible(''.join(t.text for t in result.generated))}")
    lines.append("")
    lines.append(format_table(result.steered))
    return "\n".join(lines)
