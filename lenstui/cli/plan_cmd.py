"""`lenstui plan --model SPEC [placement options] [--tokens N] [--json]`: what a load would
take and where it would go, from the config alone (no weight is read)."""

from __future__ import annotations

import argparse

from lenstui.cli.common import add_model_options, downloads_allowed, load_settings, print_json
from lenstui.core.placement import MemoryPlan, describe_placement, format_bytes


def configure(parser: argparse.ArgumentParser, command: str = "plan") -> None:
    add_model_options(parser)
    parser.add_argument(
        "--tokens", type=int, default=None, metavar="N",
        help="the prompt length the lens's working memory is given for (default 512)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lenstui.core.errors import InputError
    from lenstui.engine.model.load import plan_model
    from lenstui.engine.model.plan import DEFAULT_PLAN_TOKENS

    tokens = DEFAULT_PLAN_TOKENS if args.tokens is None else args.tokens
    if tokens < 1:
        raise InputError("--tokens must be 1 or more.")
    device, dtype, placement = load_settings(args)
    plan = plan_model(
        args.model, device=device, dtype=dtype, placement=placement, prompt_tokens=tokens,
        allow_download=downloads_allowed(args),
    )
    if args.json:
        print_json(plan.to_json())
    else:
        print(format_plan(plan))
    return 0 if plan.fits else 1


def format_plan(plan: MemoryPlan) -> str:
    quant = f", {plan.quantize}" if plan.quantize else ""
    lines = [
        f"{plan.model}: {plan.params:,} parameters, {format_bytes(plan.bytes)} of weights in {plan.dtype}{quant}",
        f"the lens at {plan.prompt_tokens} tokens: about {format_bytes(plan.working_bytes)} more",
        "",
        f"{'device':<10} {'free':>11} {'weights':>11} {'lens':>11}",
    ]
    for device in plan.devices:
        free = format_bytes(device.free_bytes) if device.free_bytes is not None else "?"
        lines.append(
            f"{device.name:<10} {free:>11} {format_bytes(device.bytes):>11} {format_bytes(device.working_bytes):>11}"
        )
    lines += ["", f"placement: {describe_placement(plan.placement)}"]
    lines += plan.notes
    lines += ["", ("fits: " if plan.fits else "does not fit: ") + plan.sentence]
    return "\n".join(lines)
