"""`lenstui undertrained`: under-trained tokens found from the (un)embedding and verified by
repetition prompts (Magikarp, Land & Bartolo 2024), set against the speakability scan."""

from __future__ import annotations

import argparse
import time

from lenstui.cli.common import add_model_options, load_from_args, print_json
from lenstui.core.errors import InputError
from lenstui.core.textfmt import visible


def configure(parser: argparse.ArgumentParser, command: str = "undertrained") -> None:
    parser.description = (
        "Find under-trained tokens (Magikarp): the tokenizer round trip, the indicator (cosine distance of "
        "each unembedding row to the mean of known-unused rows, first principal component removed), the "
        "lowest share as candidates, verified by prompting the model to repeat them (verified: the largest "
        "probability it gives the token stays below 0.01). Interruptible and resumable; the verifications "
        "are cached per model."
    )
    add_model_options(parser)
    parser.add_argument(
        "--share", type=float, default=None, metavar="PCT",
        help="candidates: the lowest PCT percent of the indicator among reachable tokens (default 2, Magikarp's)",
    )
    parser.add_argument(
        "--reference", default=None, metavar="ID,ID,...",
        help="known-unused token ids to measure against (default: single-byte tokens of 0xF5-0xFF, else exact-copy rows)",
    )
    parser.add_argument("--no-verify", action="store_true", help="only the round trip, the indicator and the candidates")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="verify only the N lowest candidates")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def _reference(text):
    if text is None:
        return None
    try:
        ids = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise InputError(f"--reference takes token ids separated by commas, not {text!r}.") from None
    if not ids:
        raise InputError("--reference needs at least one token id.")
    return ids


def run(args: argparse.Namespace) -> int:
    from lenstui.cli.speak_cmd import _StderrBar, run_resumable
    from lenstui.engine.speak.scan import load_cached_scan
    from lenstui.engine.speak.undertrained import DEFAULT_SHARE, find_undertrained

    reference = _reference(args.reference)
    if args.limit is not None and args.limit < 1:
        raise InputError("--limit must be at least 1.")
    model = load_from_args(args)
    bar = _StderrBar("undertrained", always=True)
    started = time.perf_counter()
    result = run_resumable(
        bar,
        "the verifications done so far",
        lambda: find_undertrained(
            model,
            share=args.share if args.share is not None else DEFAULT_SHARE,
            reference=reference,
            verify_candidates=not args.no_verify,
            limit=args.limit,
            progress=bar,
        ),
    )
    if result is None:
        return 130
    scan = load_cached_scan(model)
    if args.json:
        print_json(undertrained_json(result, scan), model)
    else:
        print(format_undertrained(result, scan, time.perf_counter() - started))
    return 0


def scan_relation(result, scan) -> dict:
    """How the verified tokens sit in the speakability scan (None fields without a scan)."""
    verified = sorted(result.verified_ids)
    if scan is None:
        return {"scan": False, "verified": len(verified), "unspeakable": None, "hardest_by_theta": None}
    hardest = scan.hardest_by_theta()
    hard_ids = hardest[0] if hardest else frozenset()
    unspeakable = scan.unspeakable_ids
    return {
        "scan": True,
        "complete": scan.complete,
        "verified": len(verified),
        "unspeakable": len([i for i in verified if i in unspeakable]),
        "unspeakable_total": len(unspeakable),
        "unspeakable_verified_or_reference": len([i for i in unspeakable if i in result.verified_ids or i in result.reference_ids]),
        "hardest_by_theta": len([i for i in verified if i in hard_ids]) if hardest else None,
        "hardest_by_theta_total": len(hard_ids) if hardest else None,
        "hardest_theta_bound_deg": hardest[1] if hardest else None,
    }


def undertrained_json(result, scan=None) -> dict:
    decode = result.decode or (lambda i: f"#{i}")
    candidates = []
    for i in result.candidates:
        entry = {"id": i, "text": decode(i), "indicator": float(result.indicator[i]), "category": result.category(i)}
        v = result.verifications.get(i)
        entry["verification"] = v.to_json() if v else None
        if scan is not None and i < scan.n_scanned:
            entry["scan_verdict"] = scan.verdict(i)
            theta = float(scan.theta_lower[i])
            entry["theta_lower_deg"] = theta if theta == theta else None
        candidates.append(entry)
    unreachable = [int(i) for i in range(result.n_vocab) if result.category(i) not in ("OK", "OK_SPECIAL")]
    return {
        "model": result.model,
        "tied": result.tied,
        "matrix": result.matrix,
        "indicator": result.indicator_name,
        "reference": {"ids": result.reference_ids, "texts": [decode(i) for i in result.reference_ids], "why": result.reference_why},
        "categories": result.category_counts(),
        "unreachable": [{"id": i, "text": decode(i), "category": result.category(i)} for i in unreachable],
        "share": result.candidate_share,
        "threshold": result.threshold,
        "candidates": candidates,
        "verified": sorted(result.verified_ids),
        "complete": result.complete,
        "prompts": result.prompts,
        "placeholder": result.placeholder,
        "relation": scan_relation(result, scan),
        "seconds": result.seconds,
    }


def format_undertrained(result, scan, wall: float) -> str:
    decode = result.decode or (lambda i: f"#{i}")
    counts = result.category_counts()
    lines = [f"{result.model} · {result.n_vocab:,} tokens · indicator on the {result.matrix}", ""]
    lines.append("tokenizer round trip: " + ", ".join(f"{name} {n:,}" for name, n in counts.items() if n))
    refs = ", ".join(f"{i} {visible(decode(i))}" for i in result.reference_ids[:12])
    more = f" … +{len(result.reference_ids) - 12}" if len(result.reference_ids) > 12 else ""
    lines.append(f"reference (known unused, {len(result.reference_ids)}): {refs}{more}")
    lines.append(f"  why: {result.reference_why}")
    verified = [i for i in result.candidates if i in result.verified_ids]
    checked = [i for i in result.candidates if i in result.verifications]
    lines.append(
        f"candidates: the lowest {result.candidate_share:g}% of the indicator (≤ {result.threshold:.4f}): "
        f"{result.candidates_found:,}"
        + (f" (the first {len(result.candidates):,} taken)" if len(result.candidates) < result.candidates_found else "")
        + f"; verified {len(checked):,}, under-trained {len(verified):,} (max prob < 0.01)"
    )
    relation = scan_relation(result, scan)
    if relation["scan"]:
        hard = relation["hardest_by_theta"]
        lines.append(
            f"against the scan: {relation['unspeakable']} of them certified unspeakable "
            f"({relation['unspeakable_verified_or_reference']} of the {relation['unspeakable_total']} unspeakable are "
            "verified or in the reference)"
            + (f", {hard} among the hardest 1% to aim at (θ ≤ {relation['hardest_theta_bound_deg']:.2f}°)" if hard is not None else "")
        )
    else:
        lines.append("against the scan: no vocabulary scan cached (lenstui scan)")
    if verified:
        lines.append("")
        lines.append("verified under-trained (lowest indicator first): id, text, indicator, max prob (prompt)")
        for i in verified[:60]:
            v = result.verifications[i]
            theta = ""
            if scan is not None and i < scan.n_scanned:
                bound = float(scan.theta_lower[i])
                theta = f"  scan: {scan.verdict(i)}" + (f", θ ≥ {bound:.1f}°" if bound == bound else "")
            lines.append(f"  {i:>6} {visible(decode(i))[:28]:<28} {result.indicator[i]:.4f}  {v.max_prob:.1e} ({v.prompt}){theta}")
        if len(verified) > 60:
            lines.append(f"  … and {len(verified) - 60} more (--json lists them all)")
    lines.append(f"{result.seconds:.1f} s (this run {wall:.1f} s)")
    return "\n".join(lines)
