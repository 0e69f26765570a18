"""A patched lens run: prompt A's grid with one activation replaced, beside the clean grid,
with per-cell effects and the causal cone (the package doc says what is recomputed)."""

from __future__ import annotations

import time
from typing import Optional

import torch

from lenstui.core.callbacks import StopCheck, check_stop
from lenstui.core.lenses import LensOptions
from lenstui.core.patch_result import PatchResult, PatchSite, PatchSpec, in_cone, patch_cone
from lenstui.engine.causal.interventions import PatchEdit, fork, source_value
from lenstui.engine.causal.prepared import Prompt, prepare_prompts, read_site
from lenstui.engine.causal.sites import from_position, position_in, source_kind
from lenstui.engine.lens.readout import read_out, unembedding
from lenstui.engine.lens.state import LensState
from lenstui.engine.model.load import LoadedModel
from lenstui.engine.model.vocab import token_ref


def patch(
    model: LoadedModel,
    prompt: Prompt,
    site: PatchSite,
    *,
    source_prompt: Optional[Prompt] = None,
    ablate: Optional[str] = None,
    options: LensOptions = LensOptions(),
    should_stop: Optional[StopCheck] = None,
) -> PatchResult:
    """Prompt A's lens grid with ``site`` patched from ``source_prompt`` (prompt B) or
    ablated (``ablate`` "zero" or "mean"). Positions may be negative (from the end); the
    site's ``from_position`` defaults to its position read in prompt B. Raises InputError
    on bad input, Cancelled when ``should_stop()`` turns true."""
    started = time.perf_counter()
    source = source_kind(source_prompt, ablate)
    comp, block, head = read_site(model, site)
    prepared = prepare_prompts(model, prompt, options, source=source, source_prompt=source_prompt, should_stop=should_stop)
    state = prepared.clean
    clean = state.result(should_stop)
    n = prepared.n
    p = position_in(site.position, n, "prompt A")
    q = None
    if prepared.other_plan is not None:
        q = from_position(site.position, site.from_position, prepared.other_plan.n_positions)
    spec = PatchSpec(comp, block, p, source=source, from_position=q, head=head)
    check_stop(should_stop)
    value = source_value(model, spec, state, prepared.other)
    forked, cost = fork(model, state, p, PatchEdit(comp, block, p, value, head), options, should_stop)
    forked.fixed_targets = {pos: clean.targets[pos].id for pos in range(n)}
    patched = forked.result(should_stop)
    cone = patch_cone(clean.layers, n, component=comp, layer=block, position=p, extended=options.lens == "extended")
    kl = cone_kl(model, state, forked, cone, should_stop)
    before = [[cell.target_prob for cell in row] for row in clean.grid]
    after = [
        [patched.grid[r][c].target_prob if in_cone(cone, r, c) else before[r][c] for c in range(n)]
        for r in range(len(clean.layers))
    ]
    seconds = time.perf_counter() - started
    patched.seconds = seconds
    return PatchResult(
        spec=spec,
        clean=clean,
        patched=patched,
        kl=kl,
        target_before=before,
        target_after=after,
        cone=cone,
        source_tokens=None if prepared.other is None else [token_ref(model, i) for i in prepared.other.ids],
        cost=cost,
        seconds=seconds,
    )


def cone_kl(model, clean: LensState, patched: LensState, cone, should_stop) -> list[list[float]]:
    """KL(patched || clean) per cell: the clean rows read against the patched ones as the
    reference, for the cone's cells (0 elsewhere: nothing there can change)."""
    n = len(cone)
    n_rows = clean.rows_at(0).shape[0]
    kl = [[0.0] * n for _ in range(n_rows)]
    cells = [(r, pos) for pos in range(n) if cone[pos] is not None for r in range(cone[pos], n_rows)]
    if not cells:
        return kl
    unembed = unembedding(model)
    apply_norm = clean.lens.apply_norm
    rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    clean_rows, patched_rows = [], []
    for r, pos in cells:
        if pos not in rows:
            rows[pos] = (clean.rows_at(pos), patched.rows_at(pos))
        clean_rows.append(rows[pos][0][r])
        patched_rows.append(rows[pos][1][r])
    values: list[float] = []
    chunk = 512
    for first in range(0, len(cells), chunk):
        check_stop(should_stop)
        vectors = unembed.normalize(torch.stack(clean_rows[first : first + chunk]), apply_norm=apply_norm)
        reference = unembed.normalize(torch.stack(patched_rows[first : first + chunk]), apply_norm=apply_norm)
        stats = read_out(unembed, vectors, top_k=1, reference=reference, should_stop=should_stop)
        values += stats.kl.tolist()
    for (r, pos), value in zip(cells, values):
        kl[r][pos] = float(value)
    return kl
