"""`lenstui speak TOKEN` (one token's certified verdict) and `lenstui scan` (every token)."""

from __future__ import annotations

import argparse
import sys
import time

from lenstui.cli.common import add_model_options, add_token_arguments, load_from_args, one_token, print_json
from lenstui.core.errors import InputError
from lenstui.core.textfmt import aim_lines, bar, visible, visible_bytes
from lenstui.core.verdicts import DECIDED, Method, Verdict


def configure(parser: argparse.ArgumentParser, command: str = "speak") -> None:
    if command == "scan":
        parser.description = (
            "Give every token of the vocabulary a certified verdict (speakable / unspeakable / "
            "undetermined) and say which are hard to speak. Interruptible (Ctrl-C keeps what is "
            "done) and resumable; the result is cached per model."
        )
        add_model_options(parser)
        parser.add_argument("--out", metavar="FILE", default=None, help="write every token's row to FILE (.csv or .json)")
        parser.add_argument("--limit", type=int, default=None, metavar="N", help="scan only ids 0..N-1 (for testing; not cached)")
        parser.add_argument("--no-resume", action="store_true", help="start over instead of continuing a cached partial scan")
        parser.add_argument("--json", action="store_true", help="print the summary as JSON")
        parser.set_defaults(func=run_scan)
        return
    parser.description = (
        "Can any final residual make this token the model's argmax? A witness residual or a "
        "certificate of infeasibility, both re-checked in float64."
    )
    add_token_arguments(parser)
    add_model_options(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """`lenstui speak`."""
    from lenstui.engine.model.vocab import resolve_token
    from lenstui.engine.speak.aim import speak_aim
    from lenstui.engine.speak.check import check_speakable

    token = one_token(args, "Pass exactly one of a token's text or --id N.")
    model = load_from_args(args)
    token_id = resolve_token(model, token)
    bar = _StderrBar("checking")
    try:
        result = check_speakable(model, token_id, progress=bar)
        speak_aim(model, result)
    finally:
        bar.clear()
    if args.json:
        print_json(result.to_json(), model)
    else:
        print(format_result(result, label=lambda token_id: token_label(model, token_id)))
    return 0


def token_label(model, token_id: int) -> str:
    """The token's true bytes, legible: ``␣⟨f0 9f⟩`` rather than ``␣�``."""
    from lenstui.core.token_bytes import token_bytes

    return visible_bytes(token_bytes(model, token_id).data)


def format_result(result, label=None) -> str:
    """A readable summary of a SpeakResult (``label(id)`` renders a token; default: its text)."""
    texts = {result.id: result.text}
    texts.update({b.id: b.text for b in result.binding})
    for token in (result.runner_up, result.best_match):
        if token is not None:
            texts[token.id] = token.text
    if label is None:
        label = lambda token_id: visible(texts.get(token_id, ""))  # noqa: E731
    name = f"{label(result.id)} (id {result.id})"
    lines = [f"{name} · {result.model} · {result.norm} final norm", ""]
    if result.verdict == Verdict.SPEAKABLE:
        runner = f"{label(result.runner_up.id)} (id {result.runner_up.id})" if result.runner_up else "?"
        lines.append(f"speakable: a witness residual makes it the argmax by {result.margin:.6g} over {runner}")
        module = f"{result.module_margin:.6g}" if result.module_margin is not None else "n/a"
        lines.append(
            f"  witness residual from the {result.method} direction, re-checked in float64 over the "
            f"whole vocabulary (needs > {result.speak_tolerance:.3g}); through the model's own "
            f"final norm and unembedding the gap is {module}"
        )
    elif result.verdict == Verdict.UNSPEAKABLE:
        cert = result.certificate
        if result.method == Method.TWIN:
            twin = result.binding[0]
            lines.append(
                f"unspeakable: its effective unembedding vector is an exact copy of {label(twin.id)} "
                f"(id {twin.id}), whose offset is no lower, so it can at best tie"
            )
        else:
            lines.append("unspeakable: a convex combination of other tokens' effective vectors dominates it")
        tokens = "token" if len(cert.ids) == 1 else "tokens"
        lines.append(
            f"  certificate: {len(cert.ids)} {tokens}, residual norm {cert.residual_norm:.3g}, "
            f"best possible lead <= {cert.bound:.3g} (tolerance {result.certificate_tolerance:.3g})"
        )
    else:
        lines.append("undetermined: neither a witness nor a certificate passed its tolerance")
        if result.best_gap_found is not None:
            lines.append(f"  best witness gap found {result.best_gap_found:.6g} (needs > {result.speak_tolerance:.3g})")
        if result.certificate is not None:
            lines.append(f"  best certificate bound {result.certificate.bound:.3g} (needs <= {result.certificate_tolerance:.3g})")
        if result.reason:
            lines.append(f"  {result.reason}")
    best = result.best_match
    if result.hard_to_speak:
        lines.append(f"hard to speak: yes, along its own direction {visible(best.text)} (id {best.id}) wins")
    else:
        lines.append("hard to speak: no, its own direction already says it")
    lines.extend(aim_lines(result.aim))
    if result.binding:
        heading = "certificate tokens" if result.verdict == Verdict.UNSPEAKABLE else "binding competitors"
        shown = ", ".join(f"{label(b.id)} ({b.id})" for b in result.binding)
        lines.append(f"{heading}: {shown}")
    lines.append(f"reachable set: {result.reachable_set}")
    if result.lp_rounds:
        lines.append(f"LP: {result.lp_rounds} rounds, {result.lp_constraints} competitors")
    lines.append(f"{result.seconds:.3f} s")
    return "\n".join(lines)


def run_scan(args: argparse.Namespace) -> int:
    """`lenstui scan`."""
    from lenstui.engine.speak.check import as_readout
    from lenstui.engine.speak.scan import scan_vocabulary
    from lenstui.engine.speak.scan_cache import scan_dir
    from lenstui.store.scan_export import check_out_path, write_scan

    # Checked before the model loads and the scan runs: minutes of work must not end in
    # "cannot write".
    out = check_out_path(args.out) if args.out else None
    if args.limit is not None and args.limit < 1:
        raise InputError("--limit must be at least 1.")
    model = load_from_args(args)
    bar = _StderrBar("scan", always=True)
    started = time.perf_counter()
    result = run_resumable(
        bar, "the tokens done so far", lambda: scan_vocabulary(model, progress=bar, resume=not args.no_resume, limit=args.limit)
    )
    if result is None:
        return 130
    for note in result.notes:  # e.g. a damaged cache was set aside and the scan started over
        print(f"lenstui: note: {note}", file=sys.stderr)
    if out is not None:
        from lenstui.engine.speak.undertrained import find_undertrained

        # A kept under-trained run (lenstui undertrained) adds its columns; none: none.
        undertrained = find_undertrained(model, cached_only=True) if args.limit is None else None
        write_scan(result, out, undertrained)
    counts = result.counts()
    folder = scan_dir(as_readout(model)) if args.limit is None else None
    if args.json:
        print_json(
            {
                "model": result.model,
                "tokens": result.n_scanned,
                "complete": result.complete,
                "counts": counts,
                "unspeakable": sorted(result.unspeakable_ids),
                "undetermined": sorted(result.undetermined_ids),
                "theta_lower_quantiles": _theta_quantiles_json(result),
                "seconds": result.seconds,
                "cache": str(folder) if folder else None,
                "out": str(out) if out else None,
            },
            model,
        )
        return 0
    print(format_scan(result, counts, time.perf_counter() - started, folder, out))
    return 0


def format_scan(result, counts, wall: float, folder, out) -> str:
    decode = result.decode or (lambda i: f"#{i}")
    lines = [f"{result.model} · {result.n_scanned:,} tokens · {result.reachable_set}"]
    for verdict in DECIDED + (Verdict.PENDING,):
        if counts[verdict] or verdict != Verdict.PENDING:
            lines.append(f"  {verdict:<13}{counts[verdict]:>8,}")
    lines.append(
        f"  hard to speak{counts['hard_to_speak']:>8,}  (of which speakable: {counts['hard_to_speak_but_speakable']:,})"
    )
    quantiles = result.theta_quantiles()
    if quantiles is not None:
        shown = " / ".join(f"{value:.1f}" for value in quantiles.values())
        levels = "/".join(f"{q * 100:g}" for q in quantiles)
        lines.append(
            f"  aim θ (certified lower bound, {len(result.theta_values()):,} speakable tokens): "
            f"quantiles {levels}% = {shown}°"
        )
    elif result.counts()[Verdict.SPEAKABLE] and not _has_batched_theta(result):
        lines.append("  aim θ: no batched bound for a readout with offsets (use lenstui aim TOKEN)")
    for label, ids in ((Verdict.UNSPEAKABLE, result.unspeakable_ids), (Verdict.UNDETERMINED, result.undetermined_ids)):
        if ids:
            shown = sorted(ids)[:40]
            more = f" … and {len(ids) - len(shown)} more" if len(ids) > len(shown) else ""
            lines.append(f"{label}: " + ", ".join(f"{i} {visible(decode(i))}" for i in shown) + more)
    lines.append(
        f"scan time {result.seconds:.1f} s (this run {wall:.1f} s)"
        + (f" · cached in {folder}" if folder else "")
        + (f" · written to {out}" if out else "")
    )
    return "\n".join(lines)


def _theta_quantiles_json(result):
    quantiles = result.theta_quantiles()
    return None if quantiles is None else {f"{q:g}": value for q, value in quantiles.items()}


def _has_batched_theta(result) -> bool:
    import numpy as np

    return bool(np.isfinite(result.theta_lower).any())


def run_resumable(bar, what: str, work):
    """``work()``, its bar cleared after; None after Ctrl-C, with a line saying that ``what``
    is saved and the same command resumes."""
    try:
        return work()
    except KeyboardInterrupt:
        bar.clear()
        print(f"lenstui: interrupted; {what} are saved, run the same command again to resume.", file=sys.stderr)
        return None
    finally:
        bar.clear()


class _StderrBar:
    """A one-line progress bar on stderr (a line every 10 s when stderr is not a terminal)."""

    def __init__(self, label: str, always: bool = False):
        self.label = label
        self.tty = sys.stderr.isatty()
        self.always = always
        self.last = 0.0
        self.drawn = False

    def __call__(self, message: str, fraction: float) -> None:
        now = time.monotonic()
        if self.tty:
            if now - self.last < 0.1 and fraction < 1.0:
                return
            cells = bar(fraction, 30, "·")
            print(f"\r\033[2K{self.label} {cells} {fraction * 100:5.1f}%  {message}", end="", file=sys.stderr, flush=True)
            self.drawn = True
        elif self.always and now - self.last >= 10.0:
            print(f"{self.label}: {fraction * 100:5.1f}% {message}", file=sys.stderr, flush=True)
        else:
            return
        self.last = now

    def clear(self) -> None:
        if self.tty and self.drawn:
            print("\r\033[2K", end="", file=sys.stderr, flush=True)
            self.drawn = False
