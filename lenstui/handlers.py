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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Union

from lenstui.worker import CheckSpeakable, Handler, InspectToken, RunCompare, RunLens, ScanVocabulary

if TYPE_CHECKING:
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


def run_lens_handler(model, request: RunLens, ctx):
    """-> LensResult. Text is encoded (chat-templated when asked) here, on the worker."""
    from lenstui.engine.chat import chat_prompt_ids
    from lenstui.engine.lens import run_lens

    prompt: Union[str, list[int]] = (
        list(request.prompt) if isinstance(request.prompt, tuple) else request.prompt
    )
    if isinstance(prompt, str) and request.chat:
        prompt = chat_prompt_ids(model, prompt)
    return run_lens(
        model,
        prompt,
        top_k=min(request.top_k, model.d_vocab),
        lens=request.lens,
        extended_blocks=request.extended_blocks,
        incl_mid=request.incl_mid,
        target=request.target,
        track=request.track,
        should_stop=ctx.should_stop,
    )


def compare_handler(model, request: RunCompare, ctx):
    """-> engine.compare.Comparison for the two prompts (chat-templated when asked)."""
    from lenstui.engine.chat import chat_prompt_ids
    from lenstui.engine.compare import compare_rows

    def encoded(prompt):
        prompt = list(prompt) if isinstance(prompt, tuple) else prompt
        return chat_prompt_ids(model, prompt) if isinstance(prompt, str) and request.chat else prompt

    return compare_rows(
        model,
        encoded(request.prompt_a),
        request.position_a,
        encoded(request.prompt_b),
        request.position_b,
        top_k=min(request.top_k, model.d_vocab),
        lens=request.lens,
        incl_mid=request.incl_mid,
        target=request.target,
        track=request.track,
        should_stop=ctx.should_stop,
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
    RunCompare: compare_handler,
}
