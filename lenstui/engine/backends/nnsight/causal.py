"""Patch, sweep, steer and compare through nnsight: the same requests and the same result
dataclasses as ``engine/causal`` and ``engine/lens/compare.py``, each run as one nnsight
session (``trace.py``) that intervenes where the native engine's hooks would (the site
names and the cone are shared: ``engine/causal/sites.py``, ``core/patch_result.py``).

Every run starts from the prompt's first token (nothing is kept between requests on NDIF),
so a patch or steer costs the server a full forward per run it makes; what crosses the
network is the intervention and the cells.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

from lenstui.core.callbacks import Progress, StopCheck, check_stop
from lenstui.core.comparison import Comparison
from lenstui.core.errors import InputError
from lenstui.core.lenses import MAX_TRACKED, LensOptions
from lenstui.core.patch_result import (
    SWEEPS,
    ForwardCost,
    PatchResult,
    PatchSite,
    PatchSpec,
    SteerResult,
    SteerSetting,
    SteerSpec,
    SweepPoint,
    SweepResult,
    in_cone,
    patch_cone,
    steer_cone,
)
from lenstui.core.tokens import TokenSpec
from lenstui.engine.backends.nnsight import trace
from lenstui.engine.backends.nnsight.model import NnsightModel
from lenstui.engine.backends.nnsight.state import NnsightLensState, nnsight_lens_state, translators_for
from lenstui.engine.causal.prepared import Prompt, read_site
from lenstui.engine.causal.sites import from_position, parse_layer, position_in, source_kind
from lenstui.engine.causal.steer import MAX_STEER_STEPS
from lenstui.engine.causal.sweep import _top_token, _tracked, sweep_points, sweep_site  # (the same points, read alike)
from lenstui.engine.model.vocab import encode_prompt, resolve_token, token_ref


def _branch(state: NnsightLensState, keep: int, ids: Sequence[int]) -> NnsightLensState:
    """A lens state with ``state``'s settings over ``ids``, sharing its cells before ``keep``
    (a patched or steered run: what it computes is stored into it, nothing is traced)."""
    other = NnsightLensState(state.model)
    other._settings, other._options, other._lens = state._settings, state._options, state._lens
    other._capture_mid = state._capture_mid
    other._ids = [int(i) for i in ids]
    other._columns = {p: c for p, c in state._columns.items() if p < keep}
    other._final_top1 = {p: t for p, t in state._final_top1.items() if p < keep}
    other._plan = state._plan
    if len(ids) != len(state.ids):
        from dataclasses import replace

        other._plan = replace(state._plan, tokens=[token_ref(state.model, i) for i in ids])
    return other


def _translators(state: NnsightLensState, n: int):
    return translators_for(state.lens, range(n), state.model.n_layers + 1)


def patch(
    model: NnsightModel,
    prompt: Prompt,
    site: PatchSite,
    *,
    source_prompt: Optional[Prompt] = None,
    ablate: Optional[str] = None,
    options: LensOptions = LensOptions(),
    should_stop: Optional[StopCheck] = None,
    progress: Optional[Progress] = None,
) -> PatchResult:
    """``engine.causal.patch`` through nnsight: one session computes the source value, the
    clean cells, the patched cells from the patched position on and KL(patched || clean)."""
    started = time.perf_counter()
    source = source_kind(source_prompt, ablate)
    comp, block, head = read_site(model, site)
    state = nnsight_lens_state(model, "a")
    state.prepare(prompt, options, should_stop)
    n = len(state.ids)
    p = position_in(site.position, n, "prompt A")
    q = other = None
    if source == "prompt":
        other = nnsight_lens_state(model, "b")
        other.prepare(source_prompt, options, should_stop)
        q = from_position(site.position, site.from_position, len(other.ids))
    check_stop(should_stop)
    settings = state.settings
    out = trace.patched(
        model,
        state.ids,
        site=(comp, block, head),
        position=p,
        source=source,
        source_ids=None if other is None else other.ids,
        from_position=q,
        top_k=settings.top_k,
        apply_norm=state.lens.apply_norm,
        incl_mid=settings.incl_mid,
        target=settings.target_id,
        track=settings.track_ids,
        translators=_translators(state, n),
        progress=progress,
        should_stop=should_stop,
    )
    fixed = None if settings.target_id is None else [settings.target_id] * n
    state.store(list(range(n)), out["clean"], fixed)
    clean = state.result(should_stop)
    clean_targets = [t.id for t in clean.targets]
    patched_state = _branch(state, p, state.ids)
    patched_state.fixed_targets = dict(enumerate(clean_targets))
    patched_state.store(list(range(p, n)), out["patched"], clean_targets[p:])
    patched = patched_state.result(should_stop)
    cone = patch_cone(clean.layers, n, component=comp, layer=block, position=p, extended=False)
    n_rows = len(clean.layers)
    later_kl = out["kl"].tolist()  # [rows][positions p..]
    kl = [[later_kl[r][c - p] if c >= p and in_cone(cone, r, c) else 0.0 for c in range(n)] for r in range(n_rows)]
    before = [[cell.target_prob for cell in row] for row in clean.grid]
    after = [
        [patched.grid[r][c].target_prob if in_cone(cone, r, c) else before[r][c] for c in range(n)]
        for r in range(n_rows)
    ]
    seconds = time.perf_counter() - started
    patched.seconds = seconds
    return PatchResult(
        spec=PatchSpec(comp, block, p, source=source, from_position=q, head=head),
        clean=clean,
        patched=patched,
        kl=kl,
        target_before=before,
        target_after=after,
        cone=cone,
        source_tokens=None if other is None else [token_ref(model, i) for i in other.ids],
        cost=ForwardCost("full", n, model.n_layers, seconds),
        seconds=seconds,
    )


def steer(
    model: NnsightModel,
    prompt: Prompt,
    setting: SteerSetting,
    *,
    steps: int = 0,
    options: LensOptions = LensOptions(),
    clean_steps: bool = True,
    should_stop: Optional[StopCheck] = None,
    progress: Optional[Progress] = None,
) -> SteerResult:
    """``engine.causal.steer`` through nnsight: one session measures the scale, builds the
    direction from the server's own unembedding and final norm, generates ``steps`` greedy
    tokens under the steer (and without it, with ``clean_steps``) and reads the steered cells."""
    started = time.perf_counter()
    if not 0 <= steps <= MAX_STEER_STEPS:
        raise InputError(f"Steps must be between 0 and {MAX_STEER_STEPS}, not {steps}.")
    block = parse_layer(setting.layer, model.n_layers)
    toward_id = resolve_token(model, setting.toward)
    away_id = None if setting.away is None else resolve_token(model, setting.away)
    if away_id == toward_id:
        raise InputError("Steering toward and away from the same token is no direction at all.")
    state = nnsight_lens_state(model, "a")
    state.prepare(prompt, options, should_stop)
    n = len(state.ids)
    if n + steps > model.n_ctx:
        raise InputError(f"The prompt ({n} tokens) plus {steps} steps is more than the {model.n_ctx} tokens {model.name} reads.")
    p = position_in(setting.position, n, "the prompt")
    settings = state.settings
    check_stop(should_stop)
    out = trace.steered(
        model,
        state.ids,
        block=block,
        position=p,
        toward=toward_id,
        away=away_id,
        alpha=float(setting.alpha),
        scale=setting.scale,
        steps=steps,
        clean_steps=clean_steps,
        top_k=settings.top_k,
        apply_norm=state.lens.apply_norm,
        incl_mid=settings.incl_mid,
        target=settings.target_id,
        track=settings.track_ids,
        translators=_translators(state, n + steps),
        progress=progress,
        should_stop=should_stop,
    )
    generated = [int(t) for t in out["generated"].tolist()]
    clean_generated = [int(t) for t in out["clean_generated"].tolist()]
    ids = list(state.ids) + generated
    steered_state = _branch(state, p, ids)
    fixed = None if settings.target_id is None else [settings.target_id] * len(ids)
    steered_state.store(list(range(len(ids))), out["cells"], fixed)
    result = steered_state.result(should_stop)
    result.seconds = time.perf_counter() - started
    spec = SteerSpec(
        layer=block,
        position=p,
        toward=token_ref(model, toward_id),
        alpha=float(setting.alpha),
        scale=float(out["scale"]),
        away=None if away_id is None else token_ref(model, away_id),
    )
    return SteerResult(
        spec=spec,
        steered=result,
        prompt_length=n,
        generated=[token_ref(model, t) for t in generated],
        clean_generated=[token_ref(model, t) for t in clean_generated],
        cone=steer_cone(result.layers, len(ids), layer=block, position=p),
        cost=ForwardCost("full", len(ids), model.n_layers, result.seconds),
        seconds=result.seconds,
    )


def sweep(
    model: NnsightModel,
    prompt: Prompt,
    site: PatchSite = PatchSite(),
    *,
    mode: str = "layers",
    source_prompt: Optional[Prompt] = None,
    ablate: Optional[str] = None,
    target: Optional[TokenSpec] = None,
    track: Sequence[TokenSpec] = (),
    should_stop: Optional[StopCheck] = None,
    progress: Optional[Progress] = None,
) -> SweepResult:
    """``engine.causal.sweep`` through nnsight: every patched run of the sweep in one session."""
    started = time.perf_counter()
    if mode not in SWEEPS:
        raise InputError(f"Unknown sweep {mode!r}: choose layers or positions.")
    source = source_kind(source_prompt, ablate)
    comp, block, head = sweep_site(model, site, mode)
    ids = encode_prompt(model, prompt)
    n = len(ids)
    source_ids = None if source != "prompt" else encode_prompt(model, source_prompt)
    n_b = None if source_ids is None else len(source_ids)
    points = sweep_points(site, mode, comp, block, model.n_layers, n, n_b)
    target_id = resolve_token(model, target) if target is not None else None
    tracked: list[int] = []
    for spec_token in track:
        token_id = resolve_token(model, spec_token)
        if token_id not in tracked:
            tracked.append(token_id)
    if len(tracked) > MAX_TRACKED:
        raise InputError(f"At most {MAX_TRACKED} tokens can be tracked at once.")
    check_stop(should_stop)
    out = trace.swept(
        model,
        ids,
        points,
        component=comp,
        head_index=head,
        source=source,
        source_ids=source_ids,
        target=target_id,
        extra=tracked,
        progress=progress,
        should_stop=should_stop,
    )
    target_id = int(out["target"])
    answer_id = None if out["answer"] is None else int(out["answer"])
    # Columns sent: [target, answer (with a source prompt), tracked...]; kept as the native
    # sweep keeps them: the answer when it is not the target, then the tracked tokens not
    # already there.
    sent = [target_id] + ([answer_id] if answer_id is not None else []) + tracked
    extra: list[int] = []
    columns: list[int] = []
    for column, token_id in enumerate(sent[1:], start=1):
        if token_id != target_id and token_id not in extra:
            extra.append(token_id)
            columns.append(column)

    def values(point: dict) -> dict:
        probs = point["probs"].tolist()
        ranks = [int(r) for r in point["ranks"].tolist()]
        return {
            "probs": [probs[0]] + [probs[c] for c in columns],
            "ranks": [ranks[0]] + [ranks[c] for c in columns],
            "top_id": int(point["top_id"]),
            "top_prob": float(point["top_prob"]),
            "top_logit": float(point["top_logit"]),
            "kl": float(point["kl"]),
        }

    stats = [values(point) for point in out["points"]]
    clean_point = values(out["clean"])
    source_point = None if out["source"] is None else out["source"]
    swept_points = [
        SweepPoint(
            layer=b,
            position=p,
            from_position=q,
            target_prob=point["probs"][0],
            target_rank=point["ranks"][0],
            top=_top_token(model, point),
            kl=point["kl"],
            tracked=_tracked(model, extra, point),
        )
        for (b, p, q), point in zip(points, stats)
    ]
    seconds = time.perf_counter() - started
    source_probs = None if source_point is None else source_point["probs"].tolist()
    return SweepResult(
        model=model.name,
        mode=mode,
        component=comp,
        source=source,
        head=head,
        tokens=[token_ref(model, i) for i in ids],
        source_tokens=None if source_ids is None else [token_ref(model, i) for i in source_ids],
        measured_position=n - 1,
        target=token_ref(model, target_id),
        clean_target_prob=clean_point["probs"][0],
        clean_target_rank=clean_point["ranks"][0],
        source_answer=None if answer_id is None else token_ref(model, answer_id),
        source_target_prob=None if source_probs is None else source_probs[0],
        source_answer_prob=None if source_probs is None else source_probs[1],
        clean_tracked=_tracked(model, extra, clean_point),
        points=swept_points,
        cost=ForwardCost("full", n * len(points), model.n_layers * len(points), seconds),
        seconds=seconds,
    )


def compare_rows(
    model: NnsightModel,
    prompt_a: Prompt,
    pos_a: int,
    prompt_b: Prompt,
    pos_b: int,
    options: LensOptions = LensOptions(),
    should_stop: Optional[StopCheck] = None,
    progress: Optional[Progress] = None,
) -> Comparison:
    """``engine.lens.compare.compare_rows`` through nnsight: both grids (lens slots "a" and
    "b"), and KL(A || B) per row from one session over both prompts."""
    from lenstui.engine.lens.compare import _position

    state_a, state_b = nnsight_lens_state(model, "a"), nnsight_lens_state(model, "b")
    state_a.progress = state_b.progress = progress
    state_a.prepare(prompt_a, options, should_stop)
    a = state_a.result(should_stop)
    state_b.prepare(prompt_b, options, should_stop)
    b = state_b.result(should_stop)
    pa = _position(pos_a, len(a.tokens), "A")
    pb = _position(pos_b, len(b.tokens), "B")
    n_rows = model.n_layers + 1
    kl = trace.row_kl(
        model,
        state_a.ids,
        pa,
        state_b.ids,
        pb,
        apply_norm=state_a.lens.apply_norm,
        incl_mid=state_a.settings.incl_mid,
        translators_a=translators_for(state_a.lens, [pa], n_rows),
        translators_b=translators_for(state_b.lens, [pb], n_rows),
        progress=progress,
        should_stop=should_stop,
    )
    return Comparison(a=a, b=b, positions=(pa, pb), kl=[float(v) for v in kl.tolist()])
