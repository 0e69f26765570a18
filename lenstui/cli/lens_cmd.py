"""`lenstui lens PROMPT`: the logit lens as a table or JSON."""

from __future__ import annotations

import argparse
from typing import Optional

from lenstui.cli.common import (
    add_lens_options,
    add_model_options,
    announce_lens,
    encoded_prompt,
    lens_options,
    load_from_args,
    print_result,
)
from lenstui.core.errors import InputError, quoted
from lenstui.core.lens_result import LensResult
from lenstui.core.lenses import patchscope_target_line
from lenstui.core.textfmt import fit, visible
from lenstui.engine.backends import engine_for
from lenstui.engine.lens.run import parse_positions


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    parser.description = "Decode every layer x position of a prompt through the model's own readout."
    parser.add_argument("prompt", help="the prompt text")
    add_model_options(parser)
    add_lens_options(
        parser,
        target_help="target token text (default: the model's top-1)",
        track_help="follow a token through every cell (text, vocabulary piece like ĠðŁ, or #ID); repeat, up to 8",
    )
    parser.add_argument(
        "--lens-path", metavar="PATH", default=None,
        help="--lens tuned/jacobian: a tuned-lens directory or J-lens file, or registry:NAME for a published one "
        "(`lenstui lenses list --published`; fetched only with --allow-download) (default: the one fitted for the model)",
    )
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
    parser.add_argument(
        "--vs",
        default=None,
        metavar="PROMPT_B",
        help="a second prompt: compare the two rows by rows (KL(A||B) per layer) at --compare-positions",
    )
    parser.add_argument(
        "--compare-positions",
        default="-1,-1",
        metavar="PA,PB",
        help="with --vs: the position compared in A and in B (default -1,-1: the last of each)",
    )
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template (a user turn)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def _compare_positions(spec: str) -> tuple[int, int]:
    try:
        first, second = (int(part) for part in spec.split(","))
    except ValueError:
        raise InputError(f"--compare-positions takes two positions like -1,-1 or 4,7, not {quoted(spec)}.") from None
    return first, second


def run(args: argparse.Namespace) -> int:
    options = lens_options(args)
    if args.vs is not None:
        return run_compare(args, options)
    model = load_from_args(args)
    prompt = encoded_prompt(model, args.prompt, args.chat)
    n_tokens = len(model.tokenizer(prompt)["input_ids"]) if isinstance(prompt, str) else len(prompt)
    computed = len(parse_positions(args.positions, n_tokens)) if args.positions else n_tokens
    announce_lens(args, model, options, computed)
    result = engine_for(model).run_lens(model, prompt, options, positions=args.positions)
    return print_result(result, args.json, lambda r: format_table(r, args.position), model)


def run_compare(args: argparse.Namespace, options) -> int:
    from lenstui.engine.backends import engine_for

    if args.positions is not None:
        raise InputError("--vs compares whole prompts: use --compare-positions PA,PB instead of --positions.")
    pos_a, pos_b = _compare_positions(args.compare_positions)
    model = load_from_args(args)
    announce_lens(args, model, options)
    comparison = engine_for(model).compare_rows(model, args.prompt, pos_a, args.vs, pos_b, options)
    return print_result(comparison, args.json, format_compare, model)


def format_compare(comparison) -> str:
    """Per layer: A's top-1, B's top-1, KL(A||B) and the tracked tokens' probabilities in both."""
    a, b = comparison.a, comparison.b
    ca, cb = comparison.column("a"), comparison.column("b")
    pa, pb = comparison.positions
    label_w = max(len(label) for label in a.layers) + 1
    lines = [
        f"{a.model} · {a.lens} lens · A position {pa} ({visible(a.tokens[pa].text)}) "
        f"vs B position {pb} ({visible(b.tokens[pb].text)})",
        "",
    ]
    tracked = [visible(t.text) for t in a.tracked]
    header = fit("layer", label_w) + fit("A top", 12) + fit("B top", 12) + fit("KL(A||B)", 10)
    header += "".join(fit(f"{name} A/B", 16) for name in tracked)
    lines.append(header)
    for row, label in enumerate(a.layers):
        cell_a, cell_b = a.grid[row][ca], b.grid[row][cb]
        line = fit(label, label_w) + fit(visible(cell_a.top[0].text), 12) + fit(visible(cell_b.top[0].text), 12)
        line += fit(f"{comparison.kl[row]:.3f}", 10)
        line += "".join(
            fit(f"{ta.prob:.3f}/{tb.prob:.3f}", 16) for ta, tb in zip(cell_a.tracked, cell_b.tracked)
        )
        lines.append(line)
    return "\n".join(lines)


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
    if result.lens_file is not None:
        lines[1:1] = [f"{result.lens_file.origin} · {result.lens_file.path}", f"({result.lens_file.note})"]
    if result.patchscope_target is not None:
        lines[1:1] = [f"target {patchscope_target_line(result.patchscope_target)!r}: each row patched over its last token"]
    shown = list(range(max(0, len(column_pos) - 8), len(column_pos)))  # the last 8 columns fit a terminal
    lines.append(" " * label_w + " ".join(fit(visible(result.tokens[column_pos[c]].text), col) for c in shown))
    for label, row in zip(result.layers, result.grid):
        cells = [fit(visible(row[c].top[0].text), col) for c in shown]
        lines.append(fit(label, label_w) + " ".join(cells))
    target = result.targets[col_index]
    lines += ["", f"position {pos} ({visible(result.tokens[pos].text)}) · target {visible(target.text)!s}", ""]
    depth = result.depth[col_index]
    lines.append(f"prediction depth: top-1 settles at {_row_name(result, depth.top1)}, "
                 f"top-{len(result.grid[0][col_index].top)} at {_row_name(result, depth.topk)}")
    if result.tracked:
        lines.append("tracked (probability / rank per layer below): " + ", ".join(visible(t.text) for t in result.tracked))
    lines.append("")
    header = fit("layer", label_w) + fit("entropy", 8) + fit("KL", 8) + fit("rank", 6)
    header += "".join(fit(_label(t), 16) for t in result.tracked)
    lines.append(header + "top tokens (probability)")
    for label, row in zip(result.layers, result.grid):
        cell = row[col_index]
        tops = "  ".join(f"{visible(t.text)} {t.prob:.2f}" for t in cell.top)
        lines.append(
            fit(label, label_w)
            + fit(f"{cell.entropy:.2f}", 8)
            + fit(f"{cell.kl_to_final:.2f}", 8)
            + fit(str(cell.target_rank), 6)
            + "".join(fit(f"{t.prob:.1e} #{t.rank}", 16) for t in cell.tracked)
            + tops
        )
    return "\n".join(lines)


def _row_name(result: LensResult, row: Optional[int]) -> str:
    return "never" if row is None else result.layers[row]


def _label(token) -> str:
    """A token's text, or its vocabulary piece where the text is a partial UTF-8 sequence."""
    return token.piece if "\ufffd" in token.text else visible(token.text)
