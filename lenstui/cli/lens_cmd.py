"""`lenstui lens PROMPT`: the logit lens as a table or JSON."""

from __future__ import annotations

import argparse
from typing import Optional

from lenstui.cli.common import add_model_options, load_from_args, print_json
from lenstui.engine.errors import InputError
from lenstui.engine.lens import LENS_KINDS, LensResult, run_lens
from lenstui.textfmt import fit, visible


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    parser.description = "Decode every layer x position of a prompt through the model's own readout."
    parser.add_argument("prompt", help="the prompt text")
    add_model_options(parser)
    parser.add_argument("--top-k", type=int, default=5, help="tokens per cell (default 5)")
    parser.add_argument("--lens", choices=LENS_KINDS, default="logit", help="lens variant (default logit)")
    parser.add_argument(
        "--extended-blocks", type=int, default=1, metavar="N", help="decoder blocks for --lens extended"
    )
    parser.add_argument("--mid", action="store_true", help="also read the mid-block residual")
    parser.add_argument("--target", default=None, help="target token text (default: the model's top-1)")
    parser.add_argument("--target-id", type=int, default=None, help="target token id")
    parser.add_argument(
        "--positions",
        default=None,
        metavar="SPEC",
        help="compute only these columns: -1, 3, 5:12 (end exclusive) or a comma list (default: all)",
    )
    parser.add_argument(
        "--position",
        type=int,
        default=None,
        help="the column shown as the layer x top-k table: a prompt position among those computed "
        "(default: the last computed)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = load_from_args(args)
    target = args.target_id if args.target_id is not None else args.target
    result = run_lens(
        model,
        args.prompt,
        top_k=args.top_k,
        lens=args.lens,
        extended_blocks=args.extended_blocks,
        incl_mid=args.mid,
        target=target,
        positions=args.positions,
    )
    if args.json:
        print_json(result.to_json())
    else:
        print(format_table(result, args.position))
    return 0


def table_column(result: LensResult, position: Optional[int]) -> int:
    """The grid column of a prompt position (negative from the prompt's end); None: the last
    computed column. A position that was not computed is an InputError naming those that were."""
    columns = result.column_positions
    if position is None:
        return len(columns) - 1
    n = len(result.tokens)
    pos = position + n if position < 0 else position
    if pos not in columns:
        shown = ", ".join(map(str, columns[:12])) + (" ..." if len(columns) > 12 else "")
        raise InputError(f"--position {position} was not computed: pick one of {shown} (see --positions).")
    return columns.index(pos)


def format_table(result: LensResult, position: Optional[int] = None) -> str:
    """Layer x position (top-1) for the computed positions (the last 8 of them), then
    layer x top-k at one position (``position``: a prompt position; default the last)."""
    n = len(result.tokens)
    column_pos = result.column_positions
    col_index = table_column(result, position)
    pos = column_pos[col_index]
    label_w = max(len(label) for label in result.layers) + 1
    col = 10
    scope = "" if result.positions is None else f" · {len(column_pos)} positions computed"
    lines = [f"{result.model} · {result.lens} lens · {n} tokens{scope} · {result.seconds:.2f}s", ""]
    shown = list(range(max(0, len(column_pos) - 8), len(column_pos)))  # the last 8 columns fit a terminal
    lines.append(" " * label_w + " ".join(fit(visible(result.tokens[column_pos[c]].text), col) for c in shown))
    for label, row in zip(result.layers, result.grid):
        cells = [fit(visible(row[c].top[0].text), col) for c in shown]
        lines.append(fit(label, label_w) + " ".join(cells))
    target = result.targets[col_index]
    lines += ["", f"position {pos} ({visible(result.tokens[pos].text)}) · target {visible(target.text)!s}", ""]
    header = fit("layer", label_w) + fit("entropy", 8) + fit("KL", 8) + fit("rank", 6)
    lines.append(header + "top tokens (probability)")
    for label, row in zip(result.layers, result.grid):
        cell = row[col_index]
        tops = "  ".join(f"{visible(t.text)} {t.prob:.2f}" for t in cell.top)
        lines.append(
            fit(label, label_w)
            + fit(f"{cell.entropy:.2f}", 8)
            + fit(f"{cell.kl_to_final:.2f}", 8)
            + fit(str(cell.target_rank), 6)
            + tops
        )
    return "\n".join(lines)
