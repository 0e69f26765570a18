"""`lenstui lens PROMPT`: the logit lens as a table or JSON."""

from __future__ import annotations

import argparse

from lenstui.cli.common import add_model_options, load_from_args, print_json
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
        "--position", type=int, default=-1, help="position for the layer x top-k table (default last)"
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
    )
    if args.json:
        print_json(result.to_json())
    else:
        print(format_table(result, args.position))
    return 0


def format_table(result: LensResult, position: int) -> str:
    """Layer x position (top-1) for the whole prompt, then layer x top-k at one position."""
    n = len(result.tokens)
    pos = position if position >= 0 else n + position
    pos = max(0, min(n - 1, pos))
    label_w = max(len(label) for label in result.layers) + 1
    col = 10
    lines = [f"{result.model} · {result.lens} lens · {n} tokens · {result.seconds:.2f}s", ""]
    shown = list(range(max(0, n - 8), n))  # the last 8 positions fit a terminal
    lines.append(" " * label_w + " ".join(fit(visible(result.tokens[p].text), col) for p in shown))
    for label, row in zip(result.layers, result.grid):
        cells = [fit(visible(row[p].top[0].text), col) for p in shown]
        lines.append(fit(label, label_w) + " ".join(cells))
    target = result.targets[pos]
    lines += ["", f"position {pos} ({visible(result.tokens[pos].text)}) · target {visible(target.text)!s}", ""]
    header = fit("layer", label_w) + fit("entropy", 8) + fit("KL", 8) + fit("rank", 6)
    lines.append(header + "top tokens (probability)")
    for label, row in zip(result.layers, result.grid):
        cell = row[pos]
        tops = "  ".join(f"{visible(t.text)} {t.prob:.2f}" for t in cell.top)
        lines.append(
            fit(label, label_w)
            + fit(f"{cell.entropy:.2f}", 8)
            + fit(f"{cell.kl_to_final:.2f}", 8)
            + fit(str(cell.target_rank), 6)
            + tops
        )
    return "\n".join(lines)
