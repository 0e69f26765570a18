"""A patch sweep: where does the prediction come from? One patch per layer (or per
position), each read as the target's probability at prompt A's last position."""

from __future__ import annotations

import time
from typing import Optional, Sequence

import torch

from lenstui.core.callbacks import Progress, StopCheck, check_stop
from lenstui.core.errors import InputError
from lenstui.core.lens_result import TopToken, TrackedValue
from lenstui.core.lenses import MAX_TRACKED, LensOptions
from lenstui.core.patch_result import SWEEPS, ForwardCost, PatchSite, PatchSpec, SweepPoint, SweepResult
from lenstui.core.tokens import TokenSpec
from lenstui.engine.causal.interventions import PatchEdit, run_intervened, source_value
from lenstui.engine.causal.prepared import Prompt, prepare_prompts, read_site
from lenstui.engine.causal.sites import from_position, position_in, source_kind
from lenstui.engine.lens.readout import read_out, unembedding
from lenstui.engine.lens.state import lens_state
from lenstui.engine.model.forward import Site
from lenstui.engine.model.load import LoadedModel
from lenstui.engine.model.vocab import resolve_token, token_ref


def sweep_site(model, site: PatchSite, mode: str) -> tuple[str, int, Optional[int]]:
    """(component, block, head) a sweep patches; a positions sweep must name its layer.
    Shared by every backend's sweep."""
    if mode == "positions" and site.layer is None:
        raise InputError("A positions sweep patches every position at one layer: say which (--layer L12).")
    return read_site(model, site, layer=site.layer if site.layer is not None else 0)


def sweep_points(
    site: PatchSite, mode: str, comp: str, block: int, n_layers: int, n: int, n_b: Optional[int]
) -> list[tuple[int, int, Optional[int]]]:
    """The (block, position, position in B) of each patched run: every layer at the
    site's position ("layers": from the embedding for the residual), or every position at
    its block ("positions", each from the same position of B, as long as A). ``n`` and
    ``n_b``: the tokens of A and of B (None: no source prompt). Shared by every backend."""
    if mode == "layers":
        p = position_in(site.position, n, "prompt A")
        q = from_position(site.position, site.from_position, n_b) if n_b is not None else None
        return [(b, p, q) for b in range(-1 if comp == "resid" else 0, n_layers)]
    if n_b is not None and n_b != n:
        raise InputError(
            f"A positions sweep patches each position of A from the same position of B: "
            f"A has {n} tokens and B {n_b}."
        )
    return [(block, p, p if n_b is not None else None) for p in range(n)]


def sweep(
    model: LoadedModel,
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
    """Patch the site's position (default the last) at every layer (``mode`` "layers":
    the embedding, then every block; for attn/mlp/head every block), or every position at
    the site's layer ("positions"; prompt B as long as A, each position patched from the
    same one), reading the target's probability at A's last position each time.
    ``target`` defaults to clean A's top-1 there; with a source prompt, clean B's top-1 at
    its last position (the "source answer") is read too, first among the tracked tokens."""
    started = time.perf_counter()
    if mode not in SWEEPS:
        raise InputError(f"Unknown sweep {mode!r}: choose layers or positions.")
    source = source_kind(source_prompt, ablate)
    n_layers = model.n_layers
    comp, block, head = sweep_site(model, site, mode)
    # A sweep reads no cells: keeping the explorer's settings keeps the cells it read.
    options = lens_state(model, "a").options or LensOptions()
    prepared = prepare_prompts(model, prompt, options, source=source, source_prompt=source_prompt, should_stop=should_stop)
    state, source_state = prepared.clean, prepared.other
    n = prepared.n
    n_b = prepared.other_plan.n_positions if prepared.other_plan is not None else None
    measured = n - 1
    sites = sweep_points(site, mode, comp, block, n_layers, n, n_b)
    unembed = unembedding(model)
    clean_final = state.residual(n_layers)[measured].float()
    target_id = resolve_token(model, target) if target is not None else _top1(unembed, clean_final)
    answer_id = None
    if source_state is not None:
        answer_id = _top1(unembed, source_state.residual(n_layers)[len(source_state.ids) - 1].float())
    extra = [answer_id] if answer_id is not None and answer_id != target_id else []
    for spec_token in track:
        token_id = resolve_token(model, spec_token)
        if token_id not in extra and token_id != target_id:
            extra.append(token_id)
    if len(extra) > MAX_TRACKED + 1:
        raise InputError(f"At most {MAX_TRACKED} tokens can be tracked at once.")
    final = Site("resid", n_layers - 1)
    finals, costs = [], []
    for index, (b, p, q) in enumerate(sites):
        check_stop(should_stop)
        if progress is not None:
            progress(f"patching {'embed' if b < 0 else f'L{b}'} @{p}", index / len(sites))
        spec = PatchSpec(comp, b, p, source=source, from_position=q, head=head)
        value = source_value(model, spec, state, source_state)
        run = run_intervened(model, state, p, PatchEdit(comp, b, p, value, head), [final])
        finals.append(run.values[final][measured - p].float())
        costs.append(run.cost)
    check_stop(should_stop)
    targets = [target_id, *extra]
    stats = _final_stats(unembed, torch.stack(finals), clean_final, targets, should_stop)
    clean_point = _final_stats(unembed, clean_final[None], clean_final, targets, should_stop)[0]
    points = [
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
        for (b, p, q), point in zip(sites, stats)
    ]
    source_target = source_answer = None
    if source_state is not None:
        b_final = source_state.residual(n_layers)[len(source_state.ids) - 1].float()
        b_point = _final_stats(unembed, b_final[None], b_final, [target_id, answer_id], should_stop)[0]
        source_target, source_answer = b_point["probs"][0], b_point["probs"][1]
    return SweepResult(
        model=model.name,
        mode=mode,
        component=comp,
        source=source,
        head=head,
        tokens=[token_ref(model, i) for i in state.ids],
        source_tokens=None if source_state is None else [token_ref(model, i) for i in source_state.ids],
        measured_position=measured,
        target=token_ref(model, target_id),
        clean_target_prob=clean_point["probs"][0],
        clean_target_rank=clean_point["ranks"][0],
        source_answer=None if answer_id is None else token_ref(model, answer_id),
        source_target_prob=source_target,
        source_answer_prob=source_answer,
        clean_tracked=_tracked(model, extra, clean_point),
        points=points,
        cost=ForwardCost(
            costs[0].path,
            sum(c.positions for c in costs),
            sum(c.blocks for c in costs),
            sum(c.seconds for c in costs),
        ),
        seconds=time.perf_counter() - started,
    )


def _top1(unembed, vector: torch.Tensor) -> int:
    stats = read_out(unembed, unembed.normalize(vector[None]), top_k=1)
    return int(stats.top_ids[0, 0])


def _final_stats(unembed, finals: torch.Tensor, clean_final: torch.Tensor, targets: list[int], should_stop) -> list[dict]:
    """Per final-row vector: the targets' probabilities and ranks, the top-1 and
    KL(patched || clean), in two batched readouts."""
    normed = unembed.normalize(finals)
    target_tensor = torch.tensor([targets] * finals.shape[0], device=normed.device)
    stats = read_out(unembed, normed, top_k=1, targets=target_tensor, should_stop=should_stop)
    clean_normed = unembed.normalize(clean_final[None]).expand(finals.shape[0], -1).contiguous()
    kl = read_out(unembed, clean_normed, top_k=1, reference=normed, should_stop=should_stop).kl.tolist()
    probs = stats.target_probs.tolist()
    ranks = stats.target_ranks.tolist()
    top_probs = stats.top_probs.tolist()
    return [
        {
            "probs": probs[i],
            "ranks": [int(r) for r in ranks[i]],
            "top_id": int(stats.top_ids[i, 0]),
            "top_prob": float(top_probs[i][0]),
            "top_logit": float(stats.top_logits[i, 0]),
            "kl": float(kl[i]),
        }
        for i in range(finals.shape[0])
    ]


def _top_token(model, stats: dict) -> TopToken:
    ref = token_ref(model, stats["top_id"])
    return TopToken(ref.id, ref.text, ref.piece, stats["top_prob"], stats["top_logit"])


def _tracked(model, extra: list[int], stats: dict) -> tuple[TrackedValue, ...]:
    return tuple(
        TrackedValue(tid, token_ref(model, tid).text, stats["probs"][1 + j], stats["ranks"][1 + j])
        for j, tid in enumerate(extra)
    )
