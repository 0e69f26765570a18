"""Every worker handler in one place: what each request does on the model thread.

A handler is ``handler(model, request, ctx) -> value``. It runs on the worker thread
(``lenstui.jobs.scheduler``, in the process that holds the model: a child process by default,
``lenstui.jobs.process``), calls the engine and hands back plain data (results, reports,
id sets) that the UI thread renders. ``ctx`` is the worker's ``JobContext``:
``should_stop()``, ``progress(message, fraction)`` and ``checkpoint()`` (raises
``Cancelled`` when superseded and, in a long job, first serves queued short requests).

The engine is imported inside each handler, not at the top: this module is imported
by the app before its first frame, and the engine pulls in torch. The first request
pays for that import on the worker thread instead.

``HANDLERS`` maps every request kind to its handler; the scheduler serves them all
(``LoadModel`` is its own: loading sets the model the other handlers get).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Optional

from lenstui.core.attribution_result import AttributionResult
from lenstui.core.lenses import BLOCK_OUTPUT_LENSES, LensOptions
from lenstui.core.scan_result import ScanMarks, ScanResult, marks_for
from lenstui.core.speak_result import SpeakResult
from lenstui.jobs.protocol import (
    AttributeCell,
    CheckSpeakable,
    EvaluateLenses,
    FitLens,
    Handler,
    InspectReply,
    InspectToken,
    ModelInfo,
    RenderScenes,
    RunCompare,
    RunLens,
    RunPatch,
    RunSteer,
    RunSweep,
    ScanVocabulary,
    SceneRender,
)
from lenstui.talks.format import Scene

# Positions per streamed chunk after the first: about one readout chunk of a 30-layer
# model, so a superseding request waits at most about that long for the stream to stop.
STREAM_POSITIONS = 32


def _encoded(model, prompt, chat: bool):
    """A request's prompt for the engine: ids as a list, text chat-templated when asked
    (on the worker: the app never touches the tokenizer)."""
    from lenstui.engine.model.chat import chat_prompt_ids

    if prompt is None:
        return None
    if isinstance(prompt, tuple):
        return list(prompt)
    return chat_prompt_ids(model, prompt) if chat else prompt


def _options(model, options: LensOptions) -> LensOptions:
    """A request's lens options for this model (a top-k past its vocabulary is all of it)."""
    return replace(options, top_k=min(options.top_k, model.d_vocab))


def run_lens_handler(model, request: RunLens, ctx):
    """-> LensResult, streamed: the cells at ``request.first_positions`` (the ones in
    view) and every cell already computed are posted first as one ``Partial``, then the
    rest in chunks, nearest to the first ones first; then the whole grid is the ``Done``
    value. Each partial is a LensResult whose ``positions`` are its columns."""
    from lenstui.engine.backends import engine_for

    started = time.perf_counter()
    engine = engine_for(model)  # the model's backend: native, or nnsight (here or on NDIF)
    state = engine.lens_state(model, progress=ctx.progress)
    plan = state.prepare(_encoded(model, request.prompt, request.chat), _options(model, request.options), ctx.should_stop)
    n = plan.n_positions
    first = stream_order(request.first_positions, n) if engine.streams else []
    # A costly lens (the Patchscope: a forward per cell) streams in small parts, the first
    # visible column alone, with its progress in the status line.
    per_pass = getattr(state.lens, "positions_per_pass", None)
    if first:
        ready = set(state.computed_positions())  # free: a prefix kept, or a re-prioritised run
        wanted = [p for p in first if p not in ready]
        head = ready | set(wanted)
        rest = [p for p in range(n) if p not in head]
        # Nearest to what is in view first, so a small scroll finds its cells ready.
        rest.sort(key=lambda p: min(abs(p - f) for f in first))
        if per_pass:
            parts = costly_parts(ready, wanted, rest, per_pass)
        else:
            parts = [sorted(head)] + [rest[i : i + STREAM_POSITIONS] for i in range(0, len(rest), STREAM_POSITIONS)]
        if len(parts) > 1:  # (with nothing left to stream, the whole grid follows at once as the Done)
            done = len(ready)
            for part in parts:
                if per_pass:
                    ctx.progress(f"{plan.settings.lens}: {done:,}/{n:,} columns", done / n)
                ctx.partial(plan.result(state.cells(part, ctx.should_stop)))
                done += len([p for p in part if p not in ready])
    return state.result(ctx.should_stop, started=started)


def costly_parts(ready: set[int], wanted: list[int], rest: list[int], per_pass: int) -> list[list[int]]:
    """The parts a costly lens streams: what is ready with the last visible column (where
    the cursor follows the prompt's end), the other visible ones from the end, then the
    rest, ``per_pass`` columns each."""
    order = list(reversed(wanted)) + rest
    if not order:
        return [sorted(ready)]
    parts = [sorted(ready | {order[0]})]
    parts += [order[i : i + per_pass] for i in range(1, len(order), per_pass)]
    return parts


def compare_handler(model, request: RunCompare, ctx):
    """-> core.comparison.Comparison for the two prompts (chat-templated when asked)."""
    from lenstui.engine.backends import engine_for

    return engine_for(model).compare_rows(
        model,
        _encoded(model, request.prompt_a, request.chat),
        request.position_a,
        _encoded(model, request.prompt_b, request.chat),
        request.position_b,
        _options(model, request.options),
        ctx.should_stop,
        progress=ctx.progress,
    )


def patch_handler(model, request: RunPatch, ctx):
    """-> core.patch_result.PatchResult: the patched grid, its effects and cone."""
    from lenstui.engine.backends import engine_for

    return engine_for(model).patch(
        model,
        _encoded(model, request.prompt_a, request.chat),
        request.site,
        source_prompt=_encoded(model, request.prompt_b, request.chat),
        ablate=request.ablate,
        options=_options(model, request.options),
        should_stop=ctx.should_stop,
        progress=ctx.progress,
    )


def sweep_handler(model, request: RunSweep, ctx):
    """-> core.patch_result.SweepResult, with progress per patched run."""
    from lenstui.engine.backends import engine_for

    return engine_for(model).sweep(
        model,
        _encoded(model, request.prompt_a, request.chat),
        request.site,
        mode=request.mode,
        source_prompt=_encoded(model, request.prompt_b, request.chat),
        ablate=request.ablate,
        target=request.target,
        track=request.track,
        should_stop=ctx.should_stop,
        progress=ctx.progress,
    )


def steer_handler(model, request: RunSteer, ctx):
    """-> core.patch_result.SteerResult (no clean continuation: the app steps itself)."""
    from lenstui.engine.backends import engine_for

    return engine_for(model).steer(
        model,
        _encoded(model, request.prompt, request.chat),
        request.setting,
        steps=request.steps,
        options=_options(model, request.options),
        clean_steps=False,
        should_stop=ctx.should_stop,
        progress=ctx.progress,
    )


def stream_order(first_positions: tuple[int, ...], n_positions: int) -> list[int]:
    """The requested first positions in range (negative from the end), deduplicated."""
    chosen: list[int] = []
    for pos in first_positions:
        pos = pos + n_positions if pos < 0 else pos
        if 0 <= pos < n_positions and pos not in chosen:
            chosen.append(pos)
    return chosen


def inspect_handler(model, request: InspectToken, ctx) -> InspectReply:
    """-> the token's report, plus the prompt's ids joined into characters if given."""
    from lenstui.core.token_bytes import join_tokens
    from lenstui.engine.backends import native_model
    from lenstui.engine.inspect.neighbors import inspect_token

    model = native_model(model, "The token inspector's neighbours", vocabulary=True)
    report = inspect_token(model, request.token_id, request.neighbors)
    sequence = join_tokens(model, list(request.sequence)) if request.sequence else None
    return InspectReply(report, sequence, request.selected)


def speak_handler(model, request: CheckSpeakable, ctx) -> SpeakResult:
    """-> SpeakResult for ``request.token_id``, with its aim measure attached."""
    from lenstui.engine.backends import native_model
    from lenstui.engine.speak.aim import speak_aim
    from lenstui.engine.speak.check import check_speakable

    model = native_model(model, "The speakability check", vocabulary=True)
    result = check_speakable(model, request.token_id, should_stop=ctx.should_stop, progress=ctx.progress)
    ctx.progress("measuring the aim", None)
    speak_aim(model, result, should_stop=ctx.should_stop)
    return result


def scan_handler(model, request: ScanVocabulary, ctx) -> Optional[ScanResult]:
    """-> ScanResult (None when ``cached_only`` and nothing is cached). Between chunks
    it calls ``ctx.checkpoint()``, so lens runs and token checks are served while the
    scan runs, and a cancel keeps what is done."""
    from lenstui.core.errors import LenstuiError
    from lenstui.engine.backends import backend_of, native_model
    from lenstui.engine.speak.scan import load_cached_scan, scan_vocabulary

    if request.cached_only and backend_of(model) == "nnsight" and model.local is None:
        return None  # (asked at every load: no cached scan to show for a model on NDIF)
    model = native_model(model, "The vocabulary scan", vocabulary=True)
    if request.cached_only:
        problems: list[str] = []
        scan = load_cached_scan(model, problems)
        if problems:  # a damaged cache: a notice (it was set aside; the next scan rebuilds it)
            raise LenstuiError(problems[0])
        return scan

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
    return marks_for(scan)


def attribute_handler(model, request: AttributeCell, ctx) -> AttributionResult:
    """-> AttributionResult for one cell; stops between steps when superseded."""
    from lenstui.engine.attribution import attribute
    from lenstui.engine.backends import native_model

    model = native_model(model, "Attribution")
    return attribute(
        model,
        list(request.prompt_ids),
        position=request.position,
        layer=request.row,
        token=request.token_id,
        contrast=request.contrast_id,
        heads=request.heads,
        should_stop=ctx.should_stop,
    )


def render_scene(model, scene: Scene, request: RenderScenes, ctx) -> SceneRender:
    """The scene's ids (greedy steps appended), then one lens run. A scene that does not
    fit this model (InputError from resolve_scene or greedy_ids) comes back with its
    problem; Cancelled propagates."""
    from lenstui.core.errors import LenstuiError
    from lenstui.engine.backends import engine_for
    from lenstui.talks.resolve import resolve_scene

    try:
        resolved = resolve_scene(model, scene)
        options = LensOptions(
            top_k=request.top_k,
            lens=scene.lens,
            extended_blocks=scene.extended_blocks or 1,
            incl_mid=request.incl_mid and scene.lens not in BLOCK_OUTPUT_LENSES,
            target=resolved.target_id,
            track=tuple(resolved.pinned_ids),  # as the session sends its pins
            patchscope_target=scene.patchscope_target if scene.lens == "patchscope" else None,
        )
        # The same request the app's session makes for this state: generated steps and
        # id prompts run as ids, a text prompt as text (templated on this thread).
        if scene.steps:
            ids = engine_for(model).greedy_ids(model, resolved.prompt_ids, scene.steps, should_stop=ctx.should_stop)
            lens_request = RunLens(tuple(ids), options=options)
        elif scene.prompt_ids is not None:
            lens_request = RunLens(tuple(scene.prompt_ids), options=options)
        else:
            lens_request = RunLens(scene.prompt or "", chat=scene.chat, options=options)
        result = run_lens_handler(model, lens_request, ctx)
    except LenstuiError as err:
        return SceneRender(scene.number, problem=str(err))
    return SceneRender(
        scene.number,
        request=lens_request,
        result=result,
        prompt_length=len(resolved.prompt_ids),
        cursor_layer=resolved.cursor_layer,
        cursor_position=resolved.cursor_position,
        target_id=resolved.target_id,
        pinned_ids=tuple(resolved.pinned_ids),
    )


def render_scenes_handler(model, request: RenderScenes, ctx) -> int:
    """Scene after scene in ``request.order``, each handed back as it is done
    (``ctx.partial``); between scenes ``ctx.checkpoint()`` serves interactive requests.
    -> how many scenes were computed."""
    by_number = {scene.number: scene for scene in request.scenes}
    for number in request.order:
        ctx.checkpoint()  # raises Cancelled when superseded
        ctx.partial(render_scene(model, by_number[number], request, ctx))
    return len(request.order)


def _between_chunks(ctx):
    """A should_stop for long engine jobs: ``ctx.checkpoint()`` (serves queued short
    requests, raises Cancelled when superseded or cancelled), never True itself."""

    def should_stop() -> bool:
        ctx.checkpoint()
        return False

    return should_stop


def fit_lens_handler(model, request: FitLens, ctx):
    """-> FitReport. Checkpoints between forward passes (lens runs get in), progress
    with an ETA; a cancel saves nothing."""
    from pathlib import Path

    from lenstui.core.errors import InputError
    from lenstui.engine.backends import native_model
    from lenstui.engine.lens.fit import fit_lens

    model = native_model(model, "Fitting a lens")
    text = None
    if request.text_path:
        try:
            text = Path(request.text_path).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"Cannot read {request.text_path}: {err}.") from None
    return fit_lens(
        model,
        request.kind,
        tokens=request.tokens,
        text=text,
        text_name=request.text_path or "",
        out=request.out,
        refine_steps=request.refine_steps,
        should_stop=_between_chunks(ctx),
        progress=ctx.progress,
    )


def evaluate_lenses_handler(model, request: EvaluateLenses, ctx):
    """-> LensEval over the prompt's ids (one window) or the text file."""
    from pathlib import Path

    from lenstui.core.errors import InputError
    from lenstui.engine.backends import native_model
    from lenstui.engine.lens.evaluate import evaluate_lenses

    model = native_model(model, "Evaluating lenses")
    if request.text_path:
        try:
            source = Path(request.text_path).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"Cannot read {request.text_path}: {err}.") from None
    else:
        source = [list(request.prompt_ids)]
    return evaluate_lenses(
        model, source, request.lenses, lens_path=request.lens_path, patchscope_target=request.patchscope_target,
        should_stop=_between_chunks(ctx), progress=ctx.progress,
    )


HANDLERS: dict[type, Handler] = {
    RunLens: run_lens_handler,
    InspectToken: inspect_handler,
    CheckSpeakable: speak_handler,
    ScanVocabulary: scan_marks_handler,
    AttributeCell: attribute_handler,
    RenderScenes: render_scenes_handler,
    RunCompare: compare_handler,
    FitLens: fit_lens_handler,
    EvaluateLenses: evaluate_lenses_handler,
    RunPatch: patch_handler,
    RunSweep: sweep_handler,
    RunSteer: steer_handler,
}


def model_info(model) -> ModelInfo:
    """What the UI may know about a loaded model (plain values)."""
    from lenstui.engine.lens.learned import available_lenses
    from lenstui.engine.model.chat import has_chat_template

    try:
        lenses = tuple(available_lenses(model))
    except Exception:  # finding fitted lenses is a convenience: never a failed load
        lenses = ()
    return ModelInfo(
        name=model.name,
        source=model.source,
        device=str(model.device),
        dtype=model.dtype,
        n_layers=model.n_layers,
        n_ctx=model.n_ctx,
        d_vocab=model.d_vocab,
        load_seconds=model.load_seconds,
        from_cache=model.from_cache,
        has_chat_template=has_chat_template(model),
        notes=tuple(getattr(model, "notes", ())),
        lenses=lenses,
        placement=tuple((name, str(device)) for name, device in (getattr(model, "placement", None) or {}).items()),
        placement_summary=getattr(model, "placement_summary", "") or str(model.device),
        quantize=getattr(model, "quantize", None),
        wiring=getattr(model, "wiring", None),
        mid_rows=_mid_rows_missing(model),
        **backend_info(model),
    )


def _mid_rows_missing(model) -> Optional[str]:
    """Why the model has no mid-block rows, or None (never a reason the load fails)."""
    from lenstui.core.errors import LenstuiError
    from lenstui.engine.model.anatomy import mid_rows_missing

    try:
        return mid_rows_missing(model)
    except LenstuiError as err:  # the bridge would not boot: the lens says so when mid rows are asked
        return str(err)



def backend_info(model) -> dict:
    """ModelInfo's backend fields: who reads the model, where, and what it cannot do there."""
    from lenstui.core.backends import REMOTE_LIMITS
    from lenstui.engine.backends import backend_of

    backend = backend_of(model)
    remote = bool(getattr(model, "remote", False))
    return {
        "backend": backend,
        "remote": remote,
        "endpoint": getattr(model, "endpoint", None) if remote else None,
        "limits": REMOTE_LIMITS if remote else (),
    }


# ---------------------------------------------------------------- speakability: issue 32


def undertrained_handler(model, request, ctx):
    """-> UndertrainedMarks (None when ``cached_only`` and nothing was verified before)."""
    from lenstui.core.undertrained_result import marks_for_undertrained
    from lenstui.engine.backends import backend_of, native_model
    from lenstui.engine.speak.undertrained import find_undertrained

    if request.cached_only and backend_of(model) == "nnsight" and model.local is None:
        return None  # (asked at every load: nothing is kept for a model on NDIF)
    model = native_model(model, "Finding under-trained tokens", vocabulary=True)

    def between_batches() -> bool:
        ctx.checkpoint()  # raises Cancelled when superseded
        return False

    result = find_undertrained(
        model,
        share=request.share,
        limit=request.limit,
        verify_candidates=request.verify,
        cached_only=request.cached_only,
        should_stop=between_batches,
        progress=ctx.progress,
    )
    if result is None:  # cached_only, and nothing kept
        return None
    return marks_for_undertrained(result)


def share_handler(model, request, ctx):
    """-> ShareReply for one token."""
    from lenstui.engine.backends import native_model
    from lenstui.engine.speak.aim import aim
    from lenstui.engine.speak.share import estimate_share
    from lenstui.jobs.protocol import ShareReply

    model = native_model(model, "The share of directions", vocabulary=True)

    measured = aim(model, request.token_id, should_stop=ctx.should_stop)
    estimate = estimate_share(
        model, request.token_id, samples=request.samples, seed=request.seed, aim_result=measured,
        should_stop=ctx.should_stop, progress=ctx.progress,
    )
    return ShareReply(request.token_id, estimate.text, measured.to_json(), estimate.share_json())


def share_sample_handler(model, request, ctx):
    """-> ShareSample (None when ``cached_only`` and none is kept)."""
    from lenstui.engine.backends import backend_of, native_model
    from lenstui.engine.speak.share_sample import share_sample

    if request.cached_only and backend_of(model) == "nnsight" and model.local is None:
        return None
    model = native_model(model, "The share of directions", vocabulary=True)

    def between_tokens() -> bool:
        ctx.checkpoint()
        return False

    return share_sample(
        model, count=request.count, hardest=request.hardest, cached_only=request.cached_only,
        should_stop=between_tokens, progress=ctx.progress,
    )


def _speakability_handlers() -> dict:
    from lenstui.jobs.protocol import EstimateShare, FindUndertrained, SampleShares

    return {FindUndertrained: undertrained_handler, EstimateShare: share_handler, SampleShares: share_sample_handler}


HANDLERS.update(_speakability_handlers())
