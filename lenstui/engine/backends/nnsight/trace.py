"""The nnsight traces the backend runs: each one a ``with`` block nnsight captures (and, on
NDIF, ships as source with the values it names), reducing on the model's side of the wire.

- :func:`grid` reads the lens rows at some positions (with edits: a patched or steered
  run) and reduces them to the cells (``reduce.read_rows``);
- :func:`patched` runs a whole patch as one session: the source prompt, the clean run,
  the patched run, the clean and patched cells and KL(patched || clean) per cell;
- :func:`steered` runs a whole steer as one session: the scale (the median residual norm
  after the block), the direction (the token's effective unembedding row), the greedy
  steps under the steer and the steered cells;
- :func:`row_kl` compares two prompts' rows at one position each.

Only plain values enter a block (tensors, ints, strings, tuples, dicts, the envoys nnsight
references by name) and only the reductions leave it: no residual stream comes back.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from lenstui.core.callbacks import Progress, StopCheck
from lenstui.core.errors import Cancelled, LenstuiError
from lenstui.engine.backends.nnsight import reduce
from lenstui.engine.backends.nnsight.model import NnsightModel
from lenstui.engine.backends.nnsight.transport import RemoteError, remote_sentence


def sites(model: NnsightModel) -> dict:
    """The envoys a walk along the forward pass reads (``reduce.walk``)."""
    paths = model.paths
    envoy = model.envoy

    def many(names):
        return None if names is None else [envoy(name) for name in names]

    return {
        "inputs": [envoy(name) for name in paths.blocks] + [envoy(paths.final_norm)],
        "mids": many(paths.mid_norms),
        "attns": many(paths.attns),
        "mlps": many(paths.mlps),
        "out_projs": many(paths.out_projs),
        "n_heads": paths.n_heads,
    }


def readout(model: NnsightModel) -> tuple[Any, Any]:
    """(the final norm, the unembedding) as envoys."""
    return model.envoy(model.paths.final_norm), model.envoy(model.paths.unembed)


def _tokens(ids: Sequence[int]) -> torch.Tensor:
    return torch.tensor([list(ids)], dtype=torch.long)


def _ids_tensor(values: Optional[Sequence[int]]) -> Optional[torch.Tensor]:
    return None if values is None else torch.tensor(list(values), dtype=torch.long)


class _Running:
    """Runs a trace through the model's transport: a failure on the way to NDIF and back
    becomes one sentence (``RemoteError``); a cancel stays a cancel."""

    def __init__(self, model: NnsightModel, label: str, progress: Optional[Progress], should_stop: Optional[StopCheck]):
        self.model = model
        self.backend = model.transport.backend(model.lm, label, progress, should_stop)
        self.no_grad = torch.no_grad()  # a block run here computes no gradients

    def __enter__(self):
        self.no_grad.__enter__()
        return self.backend

    def __exit__(self, kind, err, tb):
        self.no_grad.__exit__(kind, err, tb)
        if err is None or isinstance(err, (Cancelled, LenstuiError, KeyboardInterrupt)):
            return False
        if self.model.remote:
            raise RemoteError(remote_sentence(err, self.model.transport, self.model.name)) from None
        return False


def grid(
    model: NnsightModel,
    ids: Sequence[int],
    positions: Sequence[int],
    *,
    top_k: int,
    apply_norm: bool = True,
    incl_mid: bool = False,
    targets: Optional[Sequence[int]] = None,
    track: Sequence[int] = (),
    translators=None,
    edits: Sequence[tuple] = (),
    label: str = "grid",
    progress: Optional[Progress] = None,
    should_stop: Optional[StopCheck] = None,
) -> dict:
    """The lens cells of ``ids`` at ``positions`` (``reduce.read_rows``'s dict), under
    ``edits`` when given; ``targets``: per position (None: each position's own top-1)."""
    walk_sites = sites(model)
    lm = model.lm
    norm, head = readout(model)
    index = torch.tensor(list(positions), dtype=torch.long)
    target_ids = _ids_tensor(targets)
    track_ids = torch.tensor(list(track), dtype=torch.long)
    edits = list(edits)
    walk, read_rows = reduce.walk, reduce.read_rows
    with _Running(model, label, progress, should_stop) as backend:
        with lm.trace(_tokens(ids), backend=backend):
            rows, _ = walk(walk_sites, index, incl_mid, edits, [])
            out = read_rows(rows, rows[-1], norm, head, top_k, target_ids, track_ids, apply_norm, translators).save()
    return out


def row_kl(
    model: NnsightModel,
    ids_a: Sequence[int],
    pos_a: int,
    ids_b: Sequence[int],
    pos_b: int,
    *,
    apply_norm: bool = True,
    incl_mid: bool = False,
    translators_a=None,
    translators_b=None,
    progress: Optional[Progress] = None,
    should_stop: Optional[StopCheck] = None,
) -> torch.Tensor:
    """``[rows]``: KL(A || B) between prompt A's rows at ``pos_a`` and B's at ``pos_b``."""
    walk_sites = sites(model)
    lm = model.lm
    norm, head = readout(model)
    index_a = torch.tensor([pos_a], dtype=torch.long)
    index_b = torch.tensor([pos_b], dtype=torch.long)
    walk, kl_rows, translated, cat = reduce.walk, reduce.row_kl, reduce.translated_rows, torch.cat
    tokens_a, tokens_b = _tokens(ids_a), _tokens(ids_b)
    with _Running(model, "compare", progress, should_stop) as backend:
        with lm.session(backend=backend):
            with lm.trace(tokens_a):
                rows_a, _ = walk(walk_sites, index_a, incl_mid, [], [])
                stack_a = cat(translated(rows_a, translators_a), 0)
            with lm.trace(tokens_b):
                rows_b, _ = walk(walk_sites, index_b, incl_mid, [], [])
                stack_b = cat(translated(rows_b, translators_b), 0)
            kl = kl_rows(stack_a, stack_b, norm, head, apply_norm).save()
    return kl


def patched(
    model: NnsightModel,
    ids: Sequence[int],
    *,
    site: tuple,  # (component, block, head)
    position: int,
    source: str,  # "prompt", "zero" or "mean"
    source_ids: Optional[Sequence[int]] = None,
    from_position: Optional[int] = None,
    top_k: int,
    apply_norm: bool = True,
    incl_mid: bool = False,
    target: Optional[int] = None,
    track: Sequence[int] = (),
    translators=None,
    progress: Optional[Progress] = None,
    should_stop: Optional[StopCheck] = None,
) -> dict:
    """One session: prompt B's value at the site (source "prompt"), the clean run of
    ``ids`` (its cells everywhere, its value at the site for a mean), the patched run (its
    cells from ``position`` on, read against the clean run's targets) and KL(patched ||
    clean) there. -> ``{"clean": cells, "patched": cells, "kl": [R, P - position]}``."""
    walk_sites = sites(model)
    lm = model.lm
    norm, head = readout(model)
    component, block, head_index = site
    capture = [(component, block, head_index)]
    n = len(ids)
    every = torch.arange(n, dtype=torch.long)
    later = torch.arange(position, n, dtype=torch.long)
    fixed = None if target is None else torch.full((n,), int(target), dtype=torch.long)
    track_ids = torch.tensor(list(track), dtype=torch.long)
    source_tokens = None if source_ids is None else _tokens(source_ids)
    q = from_position
    p = position
    later_translators = _sliced(translators, position)
    walk, read_rows, cell_kl, translated = reduce.walk, reduce.read_rows, reduce.cell_kl, reduce.translated_rows
    tokens = _tokens(ids)
    with _Running(model, "patch", progress, should_stop) as backend:
        with lm.session(backend=backend):
            value = None
            if source_tokens is not None:
                with lm.trace(source_tokens):
                    _, taken = walk(walk_sites, every[:1], False, [], capture)
                    value = taken[0][q]
            with lm.trace(tokens):
                clean_rows, taken = walk(walk_sites, every, incl_mid, [], capture)
                clean = read_rows(clean_rows, clean_rows[-1], norm, head, top_k, fixed, track_ids, apply_norm, translators)
            if source == "mean":
                value = taken[0][1:].float().mean(dim=0) if n > 1 else taken[0][0].float()
            op = "zero" if source == "zero" else "set"
            edits = [(component, block, p, p + 1, head_index, op, value)]
            targets = fixed[p:] if fixed is not None else clean["final_top1"][p:]
            with lm.trace(tokens):
                rows, _ = walk(walk_sites, later, incl_mid, edits, [])
                changed = read_rows(rows, rows[-1], norm, head, top_k, targets, track_ids, apply_norm, later_translators)
            clean_later = [row[p:] for row in translated(clean_rows, translators)]
            kl = cell_kl(translated(rows, later_translators), clean_later, norm, head, apply_norm)
            out = {"clean": clean, "patched": changed, "kl": kl}.save()
    return out


def steered(
    model: NnsightModel,
    ids: Sequence[int],
    *,
    block: int,
    position: int,
    toward: int,
    away: Optional[int],
    alpha: float,
    scale: Optional[float],
    steps: int,
    clean_steps: bool,
    top_k: int,
    apply_norm: bool = True,
    incl_mid: bool = False,
    target: Optional[int] = None,
    track: Sequence[int] = (),
    translators=None,
    progress: Optional[Progress] = None,
    should_stop: Optional[StopCheck] = None,
) -> dict:
    """One session: the scale (the median norm of the residual after ``block`` over the
    prompt, unless given), the unit direction toward ``toward``'s effective unembedding row
    (the final norm's gain folded in; minus ``away``'s), ``steps`` greedy tokens under the
    steer (and as many without it, with ``clean_steps``), then the steered cells over the
    prompt and the steps. -> ``{"cells", "generated", "clean_generated", "scale"}``."""
    walk_sites = sites(model)
    lm = model.lm
    norm, head = readout(model)
    n = len(ids)
    prompt = _tokens(ids)
    track_ids = torch.tensor(list(track), dtype=torch.long)
    fixed_scale = None if scale is None else torch.tensor(float(scale))
    capture = [("resid", block, None)]
    walk, read_rows, direction_of = reduce.walk, reduce.read_rows, reduce.steer_direction
    with _Running(model, "steer", progress, should_stop) as backend:
        with lm.session(backend=backend):
            if fixed_scale is None:
                with lm.trace(prompt):
                    _, taken = walk(walk_sites, torch.arange(1), False, [], capture)
                    used_scale = taken[0].float().norm(dim=-1).median()
            else:
                used_scale = fixed_scale
            unit = direction_of(head, norm, toward, away)
            vector = unit * (float(alpha) * used_scale)
            edits = [("resid", block, position, None, None, "add", vector)]
            grown = []  # the steered steps, then the clean ones
            for run_edits, count in ((edits, steps), ([], steps if clean_steps else 0)):
                tokens = prompt
                for _ in range(count):
                    with lm.trace(tokens):
                        rows, _ = walk(walk_sites, torch.tensor([tokens.shape[1] - 1]), False, run_edits, [])
                        logits = head(norm(rows[-1]))
                    next_id = logits.argmax(dim=-1)
                    tokens = torch.cat([tokens, next_id[None].to(tokens.device)], dim=1)
                grown.append(tokens)
            tokens, clean_tokens = grown
            every = torch.arange(tokens.shape[1])
            with lm.trace(tokens):
                rows, _ = walk(walk_sites, every, incl_mid, edits, [])
                fixed = None if target is None else torch.full((tokens.shape[1],), int(target))
                cells = read_rows(rows, rows[-1], norm, head, top_k, fixed, track_ids, apply_norm, translators)
            out = {
                "cells": cells,
                "generated": tokens[0, n:].cpu(),
                "clean_generated": clean_tokens[0, n:].cpu(),
                "scale": used_scale.detach().float().cpu(),
            }.save()
    return out


def _sliced(translators, start: int):
    """A learned lens's translators for the positions from ``start`` on."""
    if translators is None:
        return None
    return translators[0], translators[1][start:]


def swept(
    model: NnsightModel,
    ids: Sequence[int],
    points: Sequence[tuple],  # (block, P, Q) per patched run
    *,
    component: str,
    head_index: Optional[int],
    source: str,
    source_ids: Optional[Sequence[int]],
    target: Optional[int],
    extra: Sequence[int],
    progress: Optional[Progress] = None,
    should_stop: Optional[StopCheck] = None,
) -> dict:
    """One session for a whole sweep: the clean run (its final row at the last position
    and, for a mean, the sites' values), prompt B's run (its sites' values and its final
    row), then one patched run per point read at A's last position only.
    -> ``{"target", "answer", "points": [final_point per point], "clean": final_point,
    "source": final_point of B's last position or None}``."""
    walk_sites = sites(model)
    lm = model.lm
    norm, head = readout(model)
    n = len(ids)
    blocks = sorted({b for b, _, _ in points})
    capture = [(component, b, head_index) for b in blocks]
    last = torch.tensor([n - 1])
    prompt = _tokens(ids)
    source_tokens = None if source_ids is None else _tokens(source_ids)
    fixed_target = None if target is None else torch.tensor(int(target))
    extra_ids = torch.tensor(list(extra), dtype=torch.long)
    plan = [(b, p, q, blocks.index(b)) for b, p, q in points]
    walk, point_of = reduce.walk, reduce.final_point
    with _Running(model, "sweep", progress, should_stop) as backend:
        with lm.session(backend=backend):
            with lm.trace(prompt):
                rows, clean_values = walk(walk_sites, last, False, [], capture if source == "mean" else [])
                clean_final = rows[-1][0]
                clean_logits = head(norm(clean_final[None]))[0]
            target_id = fixed_target if fixed_target is not None else clean_logits.argmax().cpu()
            answer_id = None
            source_values = None
            b_final = None
            if source_tokens is not None:
                with lm.trace(source_tokens):
                    b_rows, source_values = walk(walk_sites, torch.tensor([source_tokens.shape[1] - 1]), False, [], capture)
                    b_final = b_rows[-1][0]
                    answer_id = head(norm(b_final[None]))[0].argmax().cpu()
            wanted = [target_id.reshape(1)]
            if answer_id is not None:
                wanted.append(answer_id.reshape(1))
            targets = torch.cat(wanted + [extra_ids])
            results = []
            for b, p, q, slot in plan:
                if source == "zero":
                    edit = (component, b, p, p + 1, head_index, "zero", None)
                elif source == "mean":
                    taken = clean_values[slot]
                    edit = (component, b, p, p + 1, head_index, "set", taken[1:].float().mean(dim=0) if n > 1 else taken[0])
                else:
                    edit = (component, b, p, p + 1, head_index, "set", source_values[slot][q])
                with lm.trace(prompt):
                    patched_rows, _ = walk(walk_sites, last, False, [edit], [])
                    results.append(point_of(patched_rows[-1][0], clean_final, norm, head, targets))
            clean_point = point_of(clean_final, clean_final, norm, head, targets)
            source_point = None if b_final is None else point_of(b_final, b_final, norm, head, targets)
            out = {
                "target": target_id,
                "answer": answer_id,
                "points": results,
                "clean": clean_point,
                "source": source_point,
            }.save()
    return out


def greedy(
    model: NnsightModel,
    ids: Sequence[int],
    steps: int,
    *,
    progress: Optional[Progress] = None,
    should_stop: Optional[StopCheck] = None,
) -> list[int]:
    """``ids`` plus ``steps`` greedy tokens (each the model's own top-1 after the last),
    one session: a trace per step, the ids growing on the model's side."""
    walk_sites = sites(model)
    lm = model.lm
    norm, head = readout(model)
    walk = reduce.walk
    tokens = _tokens(ids)
    with _Running(model, "steps", progress, should_stop) as backend:
        with lm.session(backend=backend):
            for _ in range(steps):
                with lm.trace(tokens):
                    rows, _ = walk(walk_sites, torch.tensor([tokens.shape[1] - 1]), False, [], [])
                    logits = head(norm(rows[-1]))
                next_id = logits.argmax(dim=-1)
                tokens = torch.cat([tokens, next_id[None].to(tokens.device)], dim=1)
            out = tokens[0].cpu().save()
    return [int(i) for i in out.tolist()]
