"""`lenstui token (TOKEN | --id N)`: a token's bytes, readout neighbours and facts."""

from __future__ import annotations

import argparse
import textwrap

from lenstui.cli.common import add_model_options, load_from_args, one_token, print_json
from lenstui.core.textfmt import fit, neighbor_row, report_rows
from lenstui.core.token_report import Neighbor, TokenReport
from lenstui.engine.inspect.neighbors import DEFAULT_NEIGHBORS, inspect_token

LABEL_WIDTH = 16
PAGE_WIDTH = 80


def configure(parser: argparse.ArgumentParser, command: str = "") -> None:
    parser.description = (
        "Inspect one token: the bytes it stands for (partial UTF-8 explained), its nearest "
        "tokens in the unembedding (final-norm gain folded in), and whether it is its own "
        "best match under the readout."
    )
    parser.add_argument(
        "token",
        nargs="?",
        default=None,
        help="text that is exactly one token (e.g. ' the'), or a vocabulary piece (e.g. 'ĠðŁ')",
    )
    parser.add_argument("--id", type=int, default=None, metavar="N", help="the token id instead of its text")
    add_model_options(parser)
    parser.add_argument(
        "--neighbors",
        type=int,
        default=DEFAULT_NEIGHBORS,
        metavar="N",
        help=f"how many nearest tokens to list (default {DEFAULT_NEIGHBORS})",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Checked before loading the model: a usage mistake should not cost a model load.
    token = one_token(args, "Pass exactly one of TOKEN (its text or vocabulary piece) or --id N.")
    model = load_from_args(args)
    report = inspect_token(model, token, args.neighbors)
    if args.json:
        print_json(report.to_json(), model)
    else:
        print(format_report(report))
    return 0


def format_report(report: TokenReport) -> str:
    """The report as plain text that reads well in an 80-column terminal."""
    lines = [f"{report.model} · token {report.id} {report.piece} · {report.seconds * 1000:.1f} ms", ""]
    indent = " " * LABEL_WIDTH
    for label, value, _tone in report_rows(report):
        wrapped = textwrap.wrap(value, PAGE_WIDTH - LABEL_WIDTH, break_on_hyphens=False) or [""]
        lines.append(fit(label, LABEL_WIDTH) + wrapped[0])
        lines += [indent + more for more in wrapped[1:]]
    lines += _neighbor_table("nearest by readout direction (cosine)", report.neighbors)
    if report.embedding_neighbors is not None:
        lines += _neighbor_table("nearest by embedding W_E (cosine)", report.embedding_neighbors)
    return "\n".join(lines)


def _neighbor_table(title: str, neighbors: tuple[Neighbor, ...]) -> list[str]:
    if not neighbors:
        return []
    return ["", title] + ["  " + neighbor_row(n.cosine, n.id, n.data, n.piece) for n in neighbors]
