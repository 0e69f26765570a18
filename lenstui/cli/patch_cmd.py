"""`lenstui patch A --from B ...`: activation patching (or ablation) and the lens grid it
changes; `--sweep layers|positions` patches at every layer or position and prints the
target's probability each time."""

from __future__ import annotations

import argparse
from typing import Optional

from lenstui.cli.common import add_lens_options, add_model_options, announce_lens, encoded_prompt, lens_options, load_from_args, print_result
from lenstui.cli.lens_cmd import table_column
from lenstui.core.errors import InputError
from lenstui.core.patch_result import ABLATIONS, SWEEPS, PatchResult, PatchSite, SweepResult
from lenstui.core.textfmt import fit, visible

SHOWN_COLUMNS = 8


def configure(parser: argparse.ArgumentParser, command: str = "") -> None:
    parser.description = (
        "Activation patching: run prompt A with one activation (the residual after a block, "
        "a block's attention or MLP output, or one head's) at one position replaced by prompt "
        "B's, or zero/mean-ablated, and show the lens grid it changes (the effect per cell and "
        "the causal cone). --sweep patches at every layer (or position) and prints the "
        "target's probability at A's last position each time."
    )
    parser.add_argument("prompt", help="prompt A, the run that is patched")
    parser.add_argument("--from", dest="source", default=None, metavar="PROMPT_B", help="the prompt the patch comes from")
    parser.add_argument(
        "--ablate", choices=ABLATIONS, default=None, help="instead of --from: zeros, or the mean over A's positions 1.."
    )
    parser.add_argument(
        "--layer",
        default=None,
        metavar="L",
        help="the block: L3, 3, -1 (the last) or embed (the embedding, resid only); "
        "for --sweep positions, the one layer",
    )
    parser.add_argument(
        "--position", type=int, default=-1, metavar="P", help="the position patched in A (default -1: the last)"
    )
    parser.add_argument(
        "--from-position",
        type=int,
        default=None,
        metavar="Q",
        help="the position in B it comes from (default: P, counted the same way in B)",
    )
    parser.add_argument(
        "--component",
        default="resid",
        metavar="C",
        help="resid (the residual after the block; default), attn, mlp, or a head: L3H4, H4, or head with --head",
    )
    parser.add_argument("--head", type=int, default=None, metavar="H", help="the head, with --component head")
    parser.add_argument("--sweep", choices=SWEEPS, default=None, help="patch at every layer, or every position")
    parser.add_argument("--chat", action="store_true", help="wrap both prompts in the chat template")
    add_model_options(parser)
    add_lens_options(
        parser,
        target_help="target token text (default: the clean run's top-1 at each position)",
        track_help="follow a token through every cell (text, vocabulary piece or #ID); repeat, up to 8",
    )
    parser.add_argument(
        "--positions",
        default=None,
        metavar="SPEC",
        help="the columns the output holds: -1, 3, 5:12 or a comma list (default: all)",
    )
    parser.add_argument(
        "--show",
        type=int,
        default=None,
        metavar="POS",
        help="the position whose layers the readable output lists (default: the last)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Usage mistakes are told before a model loads.
    if (args.source is None) == (args.ablate is None):
        raise InputError("Say where the patch comes from: --from PROMPT_B, or --ablate zero|mean (one of them).")
    if args.sweep != "layers" and args.layer is None and not _names_block(args.component):
        raise InputError("Say which layer to patch: --layer L3 (or a head like --component L3H4).")
    options = lens_options(args)
    site = PatchSite(
        layer=args.layer, position=args.position, component=args.component, head=args.head,
        from_position=args.from_position,
    )
    model = load_from_args(args)
    announce_lens(args, model, options)
    prompt = encoded_prompt(model, args.prompt, args.chat)
    source = None if args.source is None else encoded_prompt(model, args.source, args.chat)
    if args.sweep is not None:
        from lenstui.engine.backends import engine_for

        result = engine_for(model).sweep(
            model, prompt, site, mode=args.sweep, source_prompt=source, ablate=args.ablate,
            target=options.target, track=options.track,
        )
        return print_result(result, args.json, format_sweep, model)
    from lenstui.engine.backends import engine_for
    from lenstui.engine.lens.run import parse_positions

    result = engine_for(model).patch(model, prompt, site, source_prompt=source, ablate=args.ablate, options=options)
    if args.positions is not None:
        result = result.select(parse_positions(args.positions, len(result.patched.tokens)))
    return print_result(result, args.json, lambda r: format_patch(r, args.show), model)


def _names_block(component: str) -> bool:
    return component.upper().startswith("L") and "H" in component.upper()


def format_patch(result: PatchResult, show: Optional[int] = None) -> str:
    """The patched grid for a terminal: the last columns' top-1 (``*`` where it differs
    from the clean run's), then layer by layer at one position: clean and patched top-1,
    the target's probability before and after, KL(patched || clean)."""
    clean, patched, spec = result.clean, result.patched, result.spec
    columns = patched.column_positions
    col = table_column(patched, show)
    pos = columns[col]
    n_rows = len(patched.layers)
    label_w = max(len(label) for label in patched.layers) + 1
    cost = result.cost
    cost_text = f" · {cost.path}: {cost.positions} position(s) x {cost.blocks} block(s)" if cost else ""
    lines = [f"{patched.model} · {patched.lens} lens · patched: {spec.label}{cost_text} · {result.seconds:.2f}s"]
    if result.source_tokens is not None and spec.from_position is not None:
        lines.append(
            f"source: B@{spec.from_position} ({visible(result.source_tokens[spec.from_position].text)}) · "
            f"A@{spec.position} ({visible(patched.tokens[spec.position].text)})"
        )
    final_before = result.target_before[-1][col]
    final_after = result.target_after[-1][col]
    target = patched.targets[col]
    top_clean, top_patched = clean.grid[-1][col].top[0], patched.grid[-1][col].top[0]
    lines.append(
        f"at position {pos} ({visible(patched.tokens[pos].text)}): target {visible(target.text)} "
        f"{final_before:.4f} -> {final_after:.4f} · top-1 {visible(top_clean.text)} {top_clean.prob:.2f} -> "
        f"{visible(top_patched.text)} {top_patched.prob:.2f} · KL(patched||clean) {result.kl[-1][col]:.3f}"
    )
    lines.append(f"cone: {result.cone_cells} cells can change (* marks a changed top-1)")
    lines.append("")
    shown = list(range(max(0, len(columns) - SHOWN_COLUMNS), len(columns)))
    width = 10
    lines.append(" " * label_w + " ".join(fit(visible(patched.tokens[columns[c]].text), width) for c in shown))
    for row in range(n_rows):
        cells = []
        for c in shown:
            top = patched.grid[row][c].top[0]
            mark = "*" if top.id != clean.grid[row][c].top[0].id else ""
            cells.append(fit(mark + visible(top.text), width))
        lines.append(fit(patched.layers[row], label_w) + " ".join(cells))
    lines += ["", f"position {pos} layer by layer ({'target ' + visible(target.text)})", ""]
    header = fit("layer", label_w) + fit("clean top-1", 16) + fit("patched top-1", 16)
    lines.append(header + fit("P(target) before", 17) + fit("after", 10) + "KL(patched||clean)")
    for row in range(n_rows):
        a, b = clean.grid[row][col].top[0], patched.grid[row][col].top[0]
        cone = "" if result.in_cone(row, pos) else "  (outside the cone)"
        lines.append(
            fit(patched.layers[row], label_w)
            + fit(f"{visible(a.text)} {a.prob:.2f}", 16)
            + fit(f"{visible(b.text)} {b.prob:.2f}", 16)
            + fit(f"{result.target_before[row][col]:.4f}", 17)
            + fit(f"{result.target_after[row][col]:.4f}", 10)
            + f"{result.kl[row][col]:.4f}{cone}"
        )
    return "\n".join(lines)


def format_sweep(result: SweepResult) -> str:
    """One line per patched run: the target's probability at A's last position, its
    change from the clean run, its rank, the tracked tokens (the source's answer first),
    the patched top-1 and KL(patched || clean) there."""
    target = visible(result.target.text)
    first = result.points[0] if result.points else None
    what = {"resid": "residual", "attn": "attention output", "mlp": "MLP output", "head": f"head {result.head}"}[
        result.component
    ]
    if result.source == "prompt":
        source = "B's " + what
    else:
        source = f"{result.source}-ablated {what}"
    if result.mode == "layers" and first is not None:
        where = f"at A@{first.position}" + (f" from B@{first.from_position}" if first.from_position is not None else "")
        scope = f"every layer {where}"
    else:
        scope = f"every position at {first.label if first else '?'}"
    cost = result.cost
    cost_text = f"{len(result.points)} patched runs, {cost.seconds:.2f}s forward ({cost.path})" if cost else ""
    measured = result.measured_position
    lines = [
        f"{result.model} · sweep: {source} patched {scope} · read at A@{measured} "
        f"({visible(result.tokens[measured].text)}) · {cost_text} · {result.seconds:.2f}s",
        f"clean A: P({target}) {result.clean_target_prob:.4f} (rank {result.clean_target_rank})"
        + "".join(f" · P({visible(t.text)}) {t.prob:.4f}" for t in result.clean_tracked),
    ]
    if result.source_answer is not None:
        lines.append(
            f"clean B: top-1 {visible(result.source_answer.text)} {result.source_answer_prob:.4f} · "
            f"P({target}) {result.source_target_prob:.4f}"
        )
    lines.append("")
    key = "layer" if result.mode == "layers" else "pos"
    header = fit(key, 7) + fit(f"P({target})", 12) + fit("change", 9) + fit("rank", 6)
    header += "".join(fit(f"P({visible(t.text)})", 12) for t in result.clean_tracked)
    lines.append(header + fit("top-1", 16) + "KL")
    for point in result.points:
        name = point.label if result.mode == "layers" else str(point.position)
        line = (
            fit(name, 7)
            + fit(f"{point.target_prob:.4f}", 12)
            + fit(f"{round(point.target_prob - result.clean_target_prob, 4) + 0.0:+.4f}", 9)  # no "-0.0000"
            + fit(str(point.target_rank), 6)
            + "".join(fit(f"{t.prob:.4f}", 12) for t in point.tracked)
            + fit(f"{visible(point.top.text)} {point.top.prob:.2f}", 16)
            + f"{point.kl:.3f}"
        )
        lines.append(line)
    return "\n".join(lines)
