"""`lenstui aim TOKEN`: how precisely must the model aim to say this token (certified)."""

from __future__ import annotations

import argparse

from lenstui.cli.common import add_model_options, add_token_arguments, load_from_args, print_json
from lenstui.core.errors import InputError


def configure(parser: argparse.ArgumentParser, command: str = "aim") -> None:
    parser.description = (
        "How precisely must the final residual point to make this token the argmax? The widest "
        "cap of directions (or, with offsets, the widest ball) that says it, certified from "
        "both sides in float64."
    )
    add_token_arguments(parser)
    add_model_options(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--share",
        action="store_true",
        help="also estimate the share of directions (or of the reachable ball) that say it, with a 95%% interval",
    )
    parser.add_argument("--samples", type=int, default=None, metavar="N", help="samples per level of the share estimate (default 128)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed of the share estimate (default 0)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lenstui.engine.model.vocab import resolve_token
    from lenstui.engine.speak.aim import aim

    if (args.token is None) == (args.id is None):
        raise InputError("Pass exactly one of a token's text or --id N.")
    model = load_from_args(args)
    token_id = resolve_token(model, args.id if args.id is not None else args.token)
    if not args.share and args.samples is not None:
        raise InputError("--samples sets the share estimate: add --share.")
    result = aim(model, token_id)
    share = None
    if args.share:
        from lenstui.cli.speak_cmd import _StderrBar
        from lenstui.engine.speak.share import DEFAULT_SAMPLES, estimate_share

        bar = _StderrBar("share")
        try:
            share = estimate_share(
                model, token_id, samples=args.samples or DEFAULT_SAMPLES, seed=args.seed, aim_result=result, progress=bar
            )
        finally:
            bar.clear()
    if args.json:
        payload = result.to_json()
        if share is not None:
            payload["share"] = share.share_json()
        print_json(payload, model)
        return 0
    from lenstui.cli.speak_cmd import token_label

    print(format_aim(result, token_label(model, token_id)))
    if share is not None:
        print(format_share(share))
    return 0


def format_share(share) -> str:
    """The share estimate in words (after ``format_aim``)."""
    what = "directions" if share.measure == "cap" else "points of the reachable ball"
    if share.exact_zero:
        return f"share: exactly 0 — no {what[:-1] if what.endswith('s') else what} says it (certified unspeakable; log10 = -inf)"
    floor = (
        f"; the certified cap alone guarantees 1 in 10^{-share.log10_certified_lower:.1f}"
        if share.log10_certified_lower is not None
        else ""
    )
    return (
        f"share: about 1 in 10^{-share.log10:.1f} {what} say it "
        f"(95%: 1 in 10^{-share.log10_lo:.1f} to 1 in 10^{-share.log10_hi:.1f}){floor}\n"
        f"  {share.method}: {share.levels} levels of {share.samples} samples, seed {share.seed}, {share.seconds:.1f} s"
    )


def format_aim(result, label: str) -> str:
    """The result in words."""
    lines = [f"{label} (id {result.id}) · {result.model} · measure: {result.method}", ""]
    if result.verdict == "unspeakable":
        lines.append("unspeakable: no direction says it (theta* = 0; the weights are the certificate)")
    elif result.verdict == "undetermined":
        lines.append(
            f"no certified cap: theta is between {result.theta_deg:.4g} and {result.theta_upper_deg:.4g} deg"
        )
    else:
        bounds = (
            f"{result.theta_deg:.4g} deg (exact up to the rounding allowance; upper {result.theta_upper_deg:.4g})"
            if result.exact
            else f"between {result.theta_deg:.4g} and {result.theta_upper_deg:.4g} deg"
        )
        offset = f", {result.offset_deg:.3g} deg away from the token's own direction" if result.offset_deg is not None else ""
        lines.append(f"the model must aim within {bounds} of one axis{offset}")
        if result.log10_share_lower is not None:
            what = "directions" if result.method == "cap" else "points of the reachable ball"
            lines.append(f"at least 1 in 10^{-result.log10_share_lower:.1f} {what} say it")
        if result.method == "ball":
            lines.append(
                f"largest ball: radius {result.radius_fraction:.4g} x sqrt(d_model) "
                f"(upper {result.radius_fraction_upper:.4g}), centre at norm {result.centre_norm:.4g}"
            )
        lines.append(f"rounding allowance {result.rounding_deg:.2g} deg (the speakability tolerance as an angle)")
    lines.append(f"upper bound from {len(result.upper)} convex weights; {result.rounds} rounds, {result.constraints} constraints")
    if result.reason:
        lines.append(result.reason)
    lines.append(f"{result.seconds:.3f} s")
    return "\n".join(lines)
