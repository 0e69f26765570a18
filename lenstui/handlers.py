"""Every worker handler in one place: what each request does on the model thread.

A handler is ``handler(model, request, ctx) -> value``. It runs on the worker thread
(``lenstui.worker``), calls the engine and hands back plain data (results, reports,
id sets) that the UI thread renders. ``ctx`` is the worker's ``JobContext``:
``should_stop()``, ``progress(message, fraction)`` and ``checkpoint()`` (raises
``Cancelled`` when superseded and, in a long job, first serves queued short requests).

The engine is imported inside each handler, not at the top: this module is imported
by the app before its first frame, and the engine pulls in torch. The first request
pays for that import on the worker thread instead.

``APP_HANDLERS`` is what the app registers on top of the worker's own (``LoadModel``
and ``RunLens``, which every worker serves).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Union

from lenstui.worker import CheckSpeakable, Handler, InspectToken, RunLens, ScanVocabulary

if TYPE_CHECKING:
    from lenstui.engine.lens import LensResult
    from lenstui.engine.neighbors import TokenReport
    from lenstui.engine.scan import ScanResult
    from lenstui.engine.speak import SpeakResult
    from lenstui.engine.tokens import JoinedSequence


@dataclass(frozen=True)
class InspectReply:
    report: "TokenReport"
    sequence: Optional["JoinedSequence"]  # the prompt's tokens joined into characters
    selected: Optional[int]  # prompt position to highlight in the sequence


@dataclass(frozen=True)
class ScanMarks:
    """What the grid and inspector need from a vocabulary scan: id sets, no arrays."""

    scan: "ScanResult"  # for the speak pane's summary line
    unspeakable: frozenset[int]
    hard_to_speak: frozenset[int]
    complete: bool


# Positions per streamed chunk after the first: about one readout chunk of a 30-layer
# model, so a superseding request waits at most about that long for the stream to stop.
STREAM_POSITIONS = 32


def run_lens_handler(model, request: RunLens, ctx):
    """-> LensResult, streamed: the cells at ``request.first_positions`` (the ones in
    view) and every cell already computed are posted first as one ``Partial``, then the
    rest in chunks, nearest to the first ones first; then the whole grid is the ``Done``
    value. Each partial is a LensResult whose ``positions`` are its columns. Text is
    encoded (chat-templated when asked) here, on the worker."""
    from lenstui.engine.chat import chat_prompt_ids
    from lenstui.engine.lens_state import lens_state

    started = time.perf_counter()
    prompt: Union[str, list[int]] = (
        list(request.prompt) if isinstance(request.prompt, tuple) else request.prompt
    )
    if isinstance(prompt, str) and request.chat:
        prompt = chat_prompt_ids(model, prompt)
    state = lens_state(model)
    plan = state.prepare(
        prompt,
        top_k=min(request.top_k, model.d_vocab),
        lens=request.lens,
        extended_blocks=request.extended_blocks,
        incl_mid=request.incl_mid,
        target=request.target,
        should_stop=ctx.should_stop,
    )
    n = plan.n_positions
    first = stream_order(request.first_positions, n)
    if first:
        ready = set(state.computed_positions())  # free: a prefix kept, or a re-prioritised run
        wanted = [p for p in first if p not in ready]
        head = ready | set(wanted)
        rest = [p for p in range(n) if p not in head]
        # Nearest to what is in view first, so a small scroll finds its cells ready.
        rest.sort(key=lambda p: min(abs(p - f) for f in first))
        ctx.partial(_partial(plan, state.cells(sorted(head), ctx.should_stop)))
        for start in range(0, len(rest), STREAM_POSITIONS):
            chunk = rest[start : start + STREAM_POSITIONS]
            ctx.partial(_partial(plan, state.cells(chunk, ctx.should_stop)))
    return state.result(ctx.should_stop, started=started)


def stream_order(first_positions: tuple[int, ...], n_positions: int) -> list[int]:
    """The requested first positions in range (negative from the end), deduplicated."""
    chosen: list[int] = []
    for pos in first_positions:
        pos = pos + n_positions if pos < 0 else pos
        if 0 <= pos < n_positions and pos not in chosen:
            chosen.append(pos)
    return chosen


def _partial(plan, columns) -> "LensResult":
    from lenstui.engine.lens import LensResult

    settings = plan.settings
    return LensResult(
        model=plan.model,
        lens=settings.lens,
        tokens=plan.tokens,
        layers=plan.layers,
        grid=columns.cells,
        targets=columns.targets,
        target_is_default=settings.target_id is None,
        extended_blocks=settings.extended_blocks,
        positions=columns.positions,
    )


def inspect_handler(model, request: InspectToken, ctx) -> InspectReply:
    """-> the token's report, plus the prompt's ids joined into characters if given."""
    from lenstui.engine.neighbors import inspect_token
    from lenstui.engine.tokens import join_tokens

    report = inspect_token(model, request.token_id, request.neighbors)
    sequence = join_tokens(model, list(request.sequence)) if request.sequence else None
    return InspectReply(report, sequence, request.selected)


def speak_handler(model, request: CheckSpeakable, ctx) -> "SpeakResult":
    """-> SpeakResult for ``request.token_id``."""
    from lenstui.engine.speak import check_speakable

    return check_speakable(model, request.token_id, should_stop=ctx.should_stop, progress=ctx.progress)


def scan_handler(model, request: ScanVocabulary, ctx) -> Optional["ScanResult"]:
    """-> ScanResult (None when ``cached_only`` and nothing is cached). Between chunks
    it calls ``ctx.checkpoint()``, so lens runs and token checks are served while the
    scan runs, and a cancel keeps what is done."""
    from lenstui.engine.scan import load_cached_scan, scan_vocabulary

    if request.cached_only:
        return load_cached_scan(model)

    def between_chunks() -> bool:
        ctx.checkpoint()  # raises Cancelled when superseded
        return False

    return scan_vocabulary(
        model, should_stop=between_chunks, progress=ctx.progress, resume=request.resume, limit=request.limit
    )


def scan_marks_handler(model, request: ScanVocabulary, ctx) -> Optional[ScanMarks]:
    """The scan, reduced to the id sets the app marks tokens with."""
    scan = scan_handler(model, request, ctx)
    if scan is None:  # cached_only and no scan cached for this model
        return None
    return ScanMarks(scan, scan.unspeakable_ids, scan.hard_to_speak_ids, scan.complete)


APP_HANDLERS: dict[type, Handler] = {
    InspectToken: inspect_handler,
    CheckSpeakable: speak_handler,
    ScanVocabulary: scan_marks_handler,
}
