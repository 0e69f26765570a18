"""A steered lens run: a direction toward a token's unembedding added after a block from a
position on, and greedy steps generated under it."""

from __future__ import annotations

import time
from typing import Optional

import torch

from lenstui.core.callbacks import StopCheck, check_stop
from lenstui.core.errors import InputError
from lenstui.core.lenses import LensOptions
from lenstui.core.patch_result import SteerResult, SteerSetting, SteerSpec, steer_cone
from lenstui.core.tokens import TokenSpec
from lenstui.engine.causal.interventions import SteerEdit, fork
from lenstui.engine.causal.prepared import Prompt, prepare_prompts
from lenstui.engine.causal.sites import parse_layer, position_in
from lenstui.engine.lens.state import LensState
from lenstui.engine.model.load import LoadedModel
from lenstui.engine.model.vocab import resolve_token, token_ref

MAX_STEER_STEPS = 1024


def steering_vector(
    model: LoadedModel, toward: TokenSpec, away: Optional[TokenSpec] = None
) -> tuple[int, Optional[int], torch.Tensor]:
    """(toward id, away id, unit direction [d_model] float32): the effective unembedding
    row of ``toward`` (minus ``away``'s)."""
    from lenstui.engine.inspect.geometry import effective_unembedding

    toward_id = resolve_token(model, toward)
    away_id = None if away is None else resolve_token(model, away)
    if away_id == toward_id:
        raise InputError("Steering toward and away from the same token is no direction at all.")
    w_eff, _ = effective_unembedding(model)
    direction = w_eff[toward_id].clone()
    if away_id is not None:
        direction = direction - w_eff[away_id]
    norm = float(direction.norm())
    if norm == 0.0:
        raise InputError("That direction has length 0 in this model's readout: pick another token.")
    return toward_id, away_id, direction / norm


def median_norm(state: LensState, layer: int) -> float:
    """The median residual norm after block ``layer`` over the state's positions."""
    return float(state.residual(layer + 1).float().norm(dim=-1).median())


def steer(
    model: LoadedModel,
    prompt: Prompt,
    setting: SteerSetting,
    *,
    steps: int = 0,
    options: LensOptions = LensOptions(),
    clean_steps: bool = True,
    should_stop: Optional[StopCheck] = None,
) -> SteerResult:
    """The prompt's lens grid under ``setting`` (``alpha`` median residual norms of the
    direction toward ``toward``, away from ``away``, added after block ``layer`` from
    ``position`` on), then ``steps`` greedy tokens generated under the steer (and, with
    ``clean_steps``, as many without it). The steered run is kept in the model's caches:
    the same steer asked again for the prompt grown by a step runs that one position only."""
    started = time.perf_counter()
    if not 0 <= steps <= MAX_STEER_STEPS:
        raise InputError(f"Steps must be between 0 and {MAX_STEER_STEPS}, not {steps}.")
    block = parse_layer(setting.layer, model.n_layers)
    toward_id, away_id, unit = steering_vector(model, setting.toward, setting.away)
    prepared = prepare_prompts(model, prompt, options, should_stop=should_stop)
    state, n = prepared.clean, prepared.n
    if n + steps > model.n_ctx:
        raise InputError(f"The prompt ({n} tokens) plus {steps} steps is more than the {model.n_ctx} tokens {model.name} reads.")
    p = position_in(setting.position, n, "the prompt")
    scale = median_norm(state, block) if setting.scale is None else setting.scale
    vector = unit * (float(setting.alpha) * float(scale))
    key = (block, p, toward_id, away_id, float(setting.alpha), float(scale))
    kept = model.caches.steered
    cost = None
    if kept is not None and kept[0] == key:
        # The same steer: its lens state runs only what differs from the ids it holds
        # (a generation step: one position), with the steer's edits.
        steered = kept[1]
        steered.prepare(state.ids, options, should_stop)
    else:
        steered, cost = fork(model, state, p, SteerEdit(block, p, vector), options, should_stop)
    model.caches.steered = (key, steered)
    ids = list(state.ids)
    generated = []
    for _ in range(steps):
        check_stop(should_stop)
        token = steered.next_token_id()
        ids.append(token)
        generated.append(token)
        steered.prepare(ids, options, should_stop)
    clean_generated: list[int] = []
    if steps and clean_steps:
        clean_run = state.fork(n)  # slot "a" itself stays on the prompt
        clean_ids = list(state.ids)
        for _ in range(steps):
            check_stop(should_stop)
            clean_run.prepare(clean_ids, options, should_stop)
            token = clean_run.next_token_id()
            clean_ids.append(token)
            clean_generated.append(token)
    result = steered.result(should_stop)
    result.seconds = time.perf_counter() - started
    spec = SteerSpec(
        layer=block,
        position=p,
        toward=token_ref(model, toward_id),
        alpha=float(setting.alpha),
        scale=float(scale),
        away=None if away_id is None else token_ref(model, away_id),
    )
    return SteerResult(
        spec=spec,
        steered=result,
        prompt_length=n,
        generated=[token_ref(model, t) for t in generated],
        clean_generated=[token_ref(model, t) for t in clean_generated],
        cone=steer_cone(result.layers, len(result.tokens), layer=block, position=p),
        cost=cost,
        seconds=result.seconds,
    )
