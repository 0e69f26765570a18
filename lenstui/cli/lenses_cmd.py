"""`lenstui lenses fit|eval|list`: learned lenses (tuned, jacobian) fitted here, measured, listed.

- ``fit``: a tuned lens fitted on text the model writes itself (or ``--text FILE``),
  saved in the tuned-lens format in the user cache per model (or ``--out DIR``); or a
  TransformerLens J-lens (``--kind jacobian``), refused on the CPU unless ``--allow-cpu``.
- ``eval TEXTFILE``: per row and lens, the mean KL(final || row), the top-1 agreement
  with the final top-1 and its mean rank (the tuned-lens paper's per-layer figure).
- ``list``: the lenses fitted for the model, and where they are.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from lenstui.cli.common import (
    add_model_options,
    add_patchscope_option,
    downloads_allowed,
    lens_options,
    load_from_args,
    needs_weights,
    print_json,
)
from lenstui.core.errors import InputError
from lenstui.core.learned_lens import FitReport, LensEval, format_duration, short_path


def configure(parser: argparse.ArgumentParser, command: str = "lenses") -> None:
    parser.description = "Learned lenses: fit a tuned lens here, measure lenses on a text, list the fitted ones."
    verbs = parser.add_subparsers(dest="verb", metavar="fit|eval|list", required=True)

    fit = verbs.add_parser("fit", help="fit a tuned lens (or a J-lens) for the model", description=(
        "Fit a tuned lens on text the model writes itself (least squares per layer, then optional "
        "KL refinement), saved as a tuned-lens directory in the user cache per model (found again "
        "on the next start) or in --out. Ctrl-C stops it; nothing is saved then."))
    add_model_options(fit)
    fit.add_argument("--kind", choices=("tuned", "jacobian"), default="tuned", help="the lens to fit (default tuned)")
    fit.add_argument("--tokens", type=int, default=None, metavar="N",
                     help="positions to fit on (default 6144 sampled; with --text: the whole text)")
    fit.add_argument("--text", metavar="FILE", default=None, help="fit on this text instead of sampled text")
    fit.add_argument("--out", metavar="DIR", default=None, help="save here instead of the user cache")
    fit.add_argument("--refine-steps", type=int, default=0, metavar="N",
                     help="then N Adam steps on KL(final || lens) (about 7 s each on SmolLM2, 1 CPU thread)")
    fit.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    fit.add_argument("--prompts", type=int, default=None, metavar="N", help="--kind jacobian: prompts to fit on (default 100)")
    fit.add_argument("--allow-cpu", action="store_true", help="--kind jacobian: fit on the CPU anyway (hours)")
    fit.add_argument("--estimate", action="store_true", help="--kind jacobian: only measure what the fit would cost")
    fit.add_argument("--json", action="store_true", help="print the report as JSON")
    fit.set_defaults(func=run_fit)

    ev = verbs.add_parser("eval", help="per-layer KL, top-1 agreement and rank of each lens on a text", description=(
        "Per row, for each lens: mean KL(final || row) in nats and bits, the share of positions whose "
        "row top-1 is the final top-1, and the mean rank of the final top-1. Position 0 of every "
        "paragraph (window of 256 tokens) is left out."))
    ev.add_argument("textfile", help="the text (paragraphs separated by blank lines)")
    add_model_options(ev)
    ev.add_argument("--lens", default="logit,tuned", metavar="LIST",
                    help="comma-separated lenses: logit, extended, raw, tuned, jacobian, patchscope (default logit,tuned)")
    ev.add_argument("--lens-path", metavar="PATH", default=None,
                    help="a tuned-lens directory or a J-lens file to read, or registry:NAME for a published one "
                    "(default: the ones fitted for the model)")
    add_patchscope_option(ev)
    ev.add_argument("--json", action="store_true", help='print {"tokens", "rows", "lenses": {name: {"kl", "top1_agree", "final_rank"}}}')
    ev.set_defaults(func=run_eval)

    ls = verbs.add_parser("list", help="the lenses fitted for the model (or published for it)")
    add_model_options(ls)
    ls.add_argument("--published", action="store_true",
                    help="the published lenses for the model: TransformerLens' J-lens registry and the tuned-lens "
                    "space (read with --lens-path registry:NAME; fetched once with --allow-download)")
    ls.add_argument("--all", action="store_true", help="with --published: every published lens, for any model")
    ls.add_argument("--json", action="store_true", help="print them as JSON")
    ls.set_defaults(func=run_list)


def _read_text(path: str) -> str:
    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"Cannot read {path}: {err}.") from None


def run_fit(args: argparse.Namespace) -> int:
    from lenstui.cli.speak_cmd import _StderrBar
    from lenstui.engine.lens.fit import estimate_jacobian, fit_lens

    if args.kind == "jacobian" and (args.text or args.refine_steps):
        raise InputError("--text and --refine-steps are for the tuned lens: the J-lens is fitted on sampled prompts.")
    if args.kind == "tuned" and (args.prompts or args.allow_cpu or args.estimate):
        raise InputError("--prompts, --allow-cpu and --estimate are for --kind jacobian.")
    text = _read_text(args.text) if args.text else None
    model = needs_weights(load_from_args(args), "Fitting a lens")
    if args.estimate:
        estimate = estimate_jacobian(model, args.prompts or 100)
        if args.json:
            print_json({"device": estimate.device, "prompts": estimate.prompts, "seconds": estimate.seconds,
                        "per_prompt": estimate.per_prompt, "backward_passes": estimate.backward_passes}, model)
        else:
            print(estimate.sentence())
        return 0
    progress = _StderrBar(f"fitting the {args.kind} lens", always=True)
    try:
        report = fit_lens(
            model, args.kind, tokens=args.tokens, text=text, text_name=args.text, out=args.out, seed=args.seed,
            refine_steps=args.refine_steps, prompts=args.prompts, allow_cpu=args.allow_cpu, progress=progress,
        )
    finally:
        progress.clear()
    if args.json:
        print_json(report.to_json(), model)
    else:
        print(format_fit(report))
    return 0


def format_fit(report: FitReport) -> str:
    phases = " · ".join(f"{name} {format_duration(sec)}" for name, sec in report.seconds.items() if name != "total")
    source = "text the model wrote itself" if report.source == "sampled" else report.source
    lines = [
        f"{report.model} · {report.kind} lens saved in {short_path(report.path)}",
        f"fitted on {report.tokens:,} positions of {source} ({report.sequences} sequences) "
        f"in {format_duration(report.seconds.get('total', 0.0))} ({phases})",
    ]
    if report.refine_kl is not None:
        before, after = report.refine_kl
        lines.append(
            f"KL refinement, {report.refine_steps} steps: held-out mean KL {before:.3f} -> {after:.3f} nats "
            f"({(after - before) / before * 100:+.1f}%)"
        )
    if report.kind == "tuned":
        lines.append("Read it with `lenstui lens PROMPT --lens tuned`, or F5 / the palette in the explorer.")
    return "\n".join(lines)


def run_eval(args: argparse.Namespace) -> int:
    from lenstui.cli.speak_cmd import _StderrBar
    from lenstui.core.lenses import LEARNED_LENSES, patchscope_cost
    from lenstui.engine.lens.evaluate import evaluate_lenses, parse_lenses
    from lenstui.engine.lens.published import is_registry_path, published_path

    names = parse_lenses(args.lens)
    text = _read_text(args.textfile)
    options = lens_options(args)
    model = needs_weights(load_from_args(args), "Evaluating lenses")
    if is_registry_path(args.lens_path) and downloads_allowed(args):
        learned = [name for name in names if name in LEARNED_LENSES]
        if len(learned) == 1:
            published_path(model, learned[0], args.lens_path, allow_download=True)
    if "patchscope" in names:
        print(f"lenstui: note: {patchscope_cost(model.n_layers)}.", file=sys.stderr)
    progress = _StderrBar("evaluating", always=True)
    try:
        result = evaluate_lenses(
            model, text, names, lens_path=args.lens_path, patchscope_target=options.patchscope_target, progress=progress
        )
    finally:
        progress.clear()
    if args.json:
        print_json(result.to_json(), model)
    else:
        print(format_eval(result))
    return 0


def format_eval(result: LensEval) -> str:
    """Per row: each lens's KL (nats and bits), top-1 agreement and mean rank; then the
    means over every row but the last (the model's own output, 0 under every lens)."""
    names = list(result.lenses)
    lines = [f"{result.model} · {result.tokens:,} positions · {result.seconds:.1f}s"]
    for name, lens_file in result.files.items():
        lines.append(f"{name}: {lens_file.origin} · {short_path(lens_file.path)}")
    lines.append("")
    # Each column as wide as its header (a gap of 2): "patchscope top-1" outgrows a fixed width.
    kl_w = max([24] + [len(n) + 15 for n in names])
    top_w = max([14] + [len(n) + 8 for n in names])
    rank_w = max([13] + [len(n) + 7 for n in names])
    header = "row".ljust(7) + "".join(f"{name + ' KL nats/bits':>{kl_w}}" for name in names)
    header += "".join(f"{name + ' top-1':>{top_w}}" for name in names)
    header += "".join(f"{name + ' rank':>{rank_w}}" for name in names)
    lines.append(header)
    for r, label in enumerate(result.rows):
        line = label.ljust(7)
        line += "".join(f"{result.lenses[n].kl[r]:>{kl_w - 9}.3f} /{result.lenses[n].kl_bits[r]:>7.2f}" for n in names)
        line += "".join(f"{result.lenses[n].top1_agree[r]:>{top_w}.3f}" for n in names)
        line += "".join(f"{result.lenses[n].final_rank[r]:>{rank_w}.1f}" for n in names)
        lines.append(line)
    last = len(result.rows) - 2
    span = f"{result.rows[0]}..{result.rows[last]}"
    lines.append("")
    base = result.mean_kl(names[0]) if names else math.nan
    for name in names:
        mean = result.mean_kl(name)
        ratio = f" ({mean / base:.3f}x {names[0]})" if name != names[0] and base > 0 else ""
        agree = sum(result.lenses[name].top1_agree[: last + 1]) / (last + 1)
        lines.append(f"mean over {span}: {name} KL {mean:.3f} nats{ratio}, top-1 agreement {agree:.3f}")
    return "\n".join(lines)


def run_list(args: argparse.Namespace) -> int:
    from lenstui.engine.lens.learned import available_lenses, model_folder

    if args.all and not args.published:
        raise InputError("--all lists the published lenses: add --published.")
    if args.published and args.all:
        return _list_published(args, None)
    model = load_from_args(args)
    if args.published:
        return _list_published(args, model)
    model = needs_weights(model, "Listing fitted lenses")
    found = available_lenses(model)
    if args.json:
        payload = {"model": model.name, "folder": str(model_folder(model)), "lenses": [f.to_json() for f in found]}
        print_json(payload, model)
        return 0
    if not found:
        print(f"No lenses fitted for {model.name} yet (they go in {short_path(str(model_folder(model)))}): "
              "`lenstui lenses fit`.")
    for lens_file in found:
        print(lens_file.describe())
    return 0


def _list_published(args: argparse.Namespace, model) -> int:
    """The published lenses for ``model`` (None: all of them), and which are cached."""
    from lenstui.engine.lens.published import KIND_NAMES, cached_file, model_ids, published_for, published_lenses

    found = published_lenses() if model is None else published_for(model)
    cached = {lens.spec + lens.kind: cached_file(lens) for lens in found}
    if args.json:
        payload = {"lenses": [{**lens.to_json(), "cached": str(cached[lens.spec + lens.kind] or "") or None} for lens in found]}
        if model is not None:
            payload["model"] = model_ids(model)[0]
        print_json(payload, model)  # with a model: where it is, as every --json says
        return 0
    if not found:
        print(f"No published lens is listed for {model_ids(model)[0]} (TransformerLens' J-lens registry and the "
              "tuned-lens space); `lenstui lenses list --published --all` lists every one, "
              "`lenstui lenses fit` fits a tuned lens here.")
        return 0
    for lens in found:
        where = cached[lens.spec + lens.kind]
        state = f"cached in {short_path(str(where))}" if where else "not cached: fetch it once with --allow-download"
        made_for = next((n for n in lens.for_models if "/" in n), lens.for_models[0])
        print(f"{KIND_NAMES[lens.kind]:<10} --lens {lens.kind} --lens-path {lens.spec:<28} for {made_for} · {state}")
    return 0
