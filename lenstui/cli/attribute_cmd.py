"""`lenstui attribute PROMPT`: which components and heads wrote a lens cell's token."""

from __future__ import annotations

import argparse
import re

from lenstui.cli.common import add_model_options, load_from_args, print_json
from lenstui.core.attribution_result import AttributionResult, Component
from lenstui.core.errors import InputError, quoted
from lenstui.core.textfmt import fit, signed_bar, visible
from lenstui.engine.attribution import DEFAULT_HEADS, attribute

NAME_WIDTH = 10
VALUE_WIDTH = 9
BAR_HALF = 14  # cells each side of the axis: the components table is 10 + 9 + 29 = 48 cells
PAGE_WIDTH = 80
_LABEL = re.compile(r"^L(\d+)$")


def configure(parser: argparse.ArgumentParser, command: str = "") -> None:
    parser.description = (
        "Direct logit attribution of one lens cell: how much the embedding, each block's "
        "attention and MLP output, and each attention head write the cell's token, read "
        "through the final norm with its scale frozen at that row (so the parts add up to "
        "the row's logit), and what the strongest heads attend to."
    )
    parser.add_argument("prompt", help="the prompt text")
    parser.add_argument(
        "--position",
        type=int,
        default=-1,
        metavar="N",
        help="the cell's position (default the last; negative counts from the end)",
    )
    parser.add_argument(
        "--layer",
        default="-1",
        metavar="ROW",
        help="the cell's lens row: a label (embed, L0, L1, ...) or its index (0 = embed, "
        "k + 1 = Lk; negative counts from the end); default the last row",
    )
    parser.add_argument(
        "--token", default=None, metavar="T", help="the token to attribute (default: the cell's top-1)"
    )
    parser.add_argument(
        "--vs",
        default=None,
        metavar="T2",
        help="a contrast token: attribute logit(T) - logit(T2) (default: minus the mean logit)",
    )
    parser.add_argument(
        "--heads",
        type=int,
        default=DEFAULT_HEADS,
        metavar="K",
        help=f"how many top heads to list (default {DEFAULT_HEADS})",
    )
    parser.add_argument("--sort", action="store_true", help="list components by size, not in layer order")
    add_model_options(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def parse_row(text: str, n_layers: int) -> int:
    """A lens row from its label ("embed", "L12") or its index ("13", "-1")."""
    text = text.strip()
    if text == "embed":
        return 0
    label = _LABEL.match(text) if len(text) <= 12 else None  # "L" and a few digits
    if label:
        block = int(label.group(1))
        if block >= n_layers:
            raise InputError(f"Layer {text} is out of range: the model has blocks L0..L{n_layers - 1}.")
        return block + 1
    try:
        return int(text)
    except ValueError:
        raise InputError(
            f"Unknown layer {quoted(text)}: pass a row label (embed, L0..L{n_layers - 1}) or its index "
            f"(0..{n_layers})."
        ) from None


def run(args: argparse.Namespace) -> int:
    # Checked before loading the model: a usage mistake should not cost a model load.
    if not args.prompt:
        raise InputError("The prompt is empty: type some text to attribute.")
    model = load_from_args(args)
    result = attribute(
        model,
        args.prompt,
        position=args.position,
        layer=parse_row(args.layer, model.n_layers),
        token=args.token,
        contrast=args.vs,
        heads=args.heads,
    )
    if args.json:
        print_json(result.to_json(), model)
    else:
        print(format_result(result, sort=args.sort))
    return 0


def format_result(result: AttributionResult, sort: bool = False) -> str:
    """The attribution as plain text for an 80-column terminal."""
    at = visible(result.prompt_tokens[result.position].text)
    baseline = "mean logit" if result.contrast is None else f"logit({visible(result.contrast.text)})"
    lines = [
        f"{result.model} · position {result.position} ({at}) · row {result.row_label}"
        f" · {result.seconds:.2f}s",
        f"logit({visible(result.token.text)}) - {baseline} = {result.total:+.3f}"
        f"   parts add to {result.component_sum:+.3f}",
        f"frozen norm scale {result.norm_scale:.4g}: the parts add up exactly, but a part is",
        "not what removing it would change (that would move the scale too).",
        "",
        "components" + (" by size" if sort else " in layer order"),
    ]
    components = result.sorted_components() if sort else result.components
    scale = max((abs(c.contribution) for c in result.components), default=0.0)
    lines += [_component_line(c, scale) for c in components]
    if result.heads:
        lines += ["", f"top {len(result.heads)} heads by |contribution|, and what they attend to from {at}"]
        head_scale = max(abs(h.contribution) for h in result.heads)
        for head in result.heads:
            sources = "  ".join(
                f"{visible(s.token.text)}@{s.position} {s.weight:.2f}" for s in head.attends_to
            )
            start = (
                fit(head.name, 8)
                + fit(f"{head.contribution:+.3f}", VALUE_WIDTH)
                + signed_bar(head.contribution, head_scale, 4)
            )
            lines.append(start + " " + fit(sources, PAGE_WIDTH - len(start) - 1).rstrip())
    return "\n".join(lines)


def _component_line(component: Component, scale: float) -> str:
    return (
        fit(component.name, NAME_WIDTH)
        + fit(f"{component.contribution:+.3f}", VALUE_WIDTH)
        + signed_bar(component.contribution, scale, BAR_HALF)
    ).rstrip()
