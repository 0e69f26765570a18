"""Runs of a prompt under an intervention (a patch, a steer), reusing what cannot change.

An intervention says which site it rewrites, the first block a run must recompute
(``first_block``), and its edits for the positions a run covers (``edits(start, count)``,
pairs for the forward machinery). :func:`run_intervened` runs the clean run's positions
``start..`` under it; :func:`fork` makes a lens state of the intervened run, which later
generation steps extend through the state's own forward with the intervention's edits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from lenstui.core.callbacks import StopCheck, check_stop
from lenstui.core.lenses import LensOptions
from lenstui.core.patch_result import ForwardCost, PatchSpec
from lenstui.engine.lens.state import LensState
from lenstui.engine.model.forward import Edit, Site, fill_skipped_layers, forward_for, kv_prefix, stack_sites


@dataclass
class PatchEdit:
    """Replace ``component``'s value of block ``layer`` at ``position`` (head ``head`` of
    the per-head output) with ``value`` (None: zeros)."""

    component: str
    layer: int
    position: int
    value: Optional[torch.Tensor]
    head: Optional[int] = None

    @property
    def site(self) -> Site:
        return Site(self.component, self.layer)

    @property
    def first_block(self) -> int:
        """The first block a resumed run must run: the patched one, or the next one for a
        residual (whose new value is then that block's input)."""
        return self.layer + 1 if self.component == "resid" else self.layer

    def edits(self, start: int, count: int) -> list[Edit]:
        if not start <= self.position < start + count:
            return []  # a later generation step: the patched position is in the cache
        index = self.position - start

        def write(x: torch.Tensor) -> torch.Tensor:
            x = x.clone()
            target = x[:, index] if self.head is None else x[:, index, self.head]
            if self.value is None:
                target.zero_()
            else:
                target.copy_(self.value.to(device=x.device, dtype=x.dtype))
            return x

        return [(self.site, write)]


@dataclass
class SteerEdit:
    """Add ``vector`` to block ``layer``'s output at every position from ``position`` on."""

    layer: int
    position: int
    vector: torch.Tensor  # [d_model]

    @property
    def site(self) -> Site:
        return Site("resid", self.layer)

    @property
    def first_block(self) -> int:
        return self.layer + 1

    def edits(self, start: int, count: int) -> list[Edit]:
        first = max(0, self.position - start)
        if first >= count:
            return []

        def add(x: torch.Tensor) -> torch.Tensor:
            x = x.clone()
            x[:, first:] += self.vector.to(device=x.device, dtype=x.dtype)
            return x

        return [(self.site, add)]


@dataclass
class Intervened:
    values: dict[Site, torch.Tensor]  # per site read: [m, ...] at positions start..
    kv: object  # the cache over every position, the intervened ones included (None without one)
    cost: ForwardCost


def _clean_value(clean: LensState, site: Site, first: int, start: int) -> Optional[torch.Tensor]:
    """A site's value that the intervention cannot have changed (below its first block),
    from the clean run; None when the run must compute it."""
    if site.kind == "resid" and site.layer + 1 < first:
        return clean.residual(site.layer + 1)[start:]
    if site.kind == "mid" and site.layer < first:
        mid = clean.mid_residual(site.layer)
        return None if mid is None else mid[start:]
    return None


def run_intervened(model, clean: LensState, start: int, intervention, reads: Sequence[Site]) -> Intervened:
    """``clean``'s positions ``start..`` under ``intervention``, reading ``reads``: the
    clean KV cache below ``start`` (views) and the clean residual at the intervention's
    first block are reused; blocks below it are skipped where the model allows it
    ("resume"), else run ("prefix"); without a KV cache everything runs ("full")."""
    from transformers import DynamicCache

    started = time.perf_counter()
    ids = clean.ids
    n, n_layers = len(ids), model.n_layers
    m = n - start
    kv = clean.kv_cache
    first = max(0, intervention.first_block)
    values: dict[Site, torch.Tensor] = {}
    for site in reads:
        kept = _clean_value(clean, site, first, start) if kv is not None else None
        if kept is not None:
            values[site] = kept
    needed = [site for site in reads if site not in values]
    forward = forward_for(model, [intervention.site, *needed])
    if kv is None:
        tokens = torch.tensor([ids], device=model.input_device)
        run = forward.run(tokens, edits=intervention.edits(0, n), reads=needed)
        values.update({site: value[0, start:] for site, value in run.values.items()})
        return Intervened(values, None, ForwardCost("full", n, n_layers, time.perf_counter() - started))
    prefix = kv_prefix(kv, start) if start > 0 else DynamicCache()
    tokens = torch.tensor([ids[start:]], device=model.input_device)
    hidden = clean.residual(first)[start:][None] if first > 0 else None
    run = forward.run(
        tokens, kv=prefix, start_block=first, hidden=hidden, edits=intervention.edits(start, m), reads=needed
    )
    values.update({site: value[0] for site, value in run.values.items()})
    if run.skipped or first == 0:  # (from block 0 there is nothing to skip)
        fill_skipped_layers(prefix, kv, first, n)
        cost = ForwardCost("resume", m, n_layers - first, time.perf_counter() - started)
    else:
        cost = ForwardCost("prefix", m, n_layers, time.perf_counter() - started)
    if any(prefix.layers[i].get_seq_length() != n for i in range(len(prefix.layers))):
        raise RuntimeError("the intervened run did not fill the KV cache")
    return Intervened(values, prefix, cost)


def fork(
    model, clean: LensState, start: int, intervention, options: LensOptions, should_stop: Optional[StopCheck]
) -> tuple[LensState, ForwardCost]:
    """A lens state for ``clean``'s ids under ``intervention``, prepared with ``options``:
    positions < ``start`` are the clean run's, the rest computed by :func:`run_intervened`;
    later steps run through the state's own forward with the intervention's edits."""
    forked = clean.fork(start, intervention)
    resid, mid = stack_sites(model.n_layers, clean.mid_residual(0) is not None)
    check_stop(should_stop)
    run = run_intervened(model, clean, start, intervention, resid + mid)
    pre = torch.stack([run.values[site] for site in resid])
    mid_stack = torch.stack([run.values[site] for site in mid]) if mid else None
    forked.extend(clean.ids, pre, mid_stack, run.kv)
    forked.prepare(clean.ids, options, should_stop)
    return forked, run.cost


def _capture_at(model, state: LensState, site: Site, positions: Sequence[int]) -> torch.Tensor:
    """``site``'s clean value at ``positions`` of ``state``'s ids ([len, ...]): the run
    starts at the first of them (the KV cache supplies the rest) and stops after the
    site's block."""
    ids = state.ids
    first = min(positions)
    kv = state.kv_cache
    offset = first if (kv is not None and first > 0) else 0
    tokens = torch.tensor([ids[offset:]], device=model.input_device)
    run = forward_for(model, [site]).run(
        tokens, kv=kv_prefix(kv, first) if offset else None, reads=[site], stop_after=site.layer
    )
    values = run.values[site][0]
    return values[torch.tensor([p - offset for p in positions], device=values.device)]


def _mean_positions(n: int) -> list[int]:
    return list(range(1, n)) if n > 1 else [0]


def source_value(model, spec: PatchSpec, clean: LensState, source: Optional[LensState]) -> Optional[torch.Tensor]:
    """What the patch writes: B's activation at Q, A's mean over positions 1.., or None
    (zeros)."""
    if spec.source == "zero":
        return None
    if spec.source == "prompt":
        state, positions = source, [spec.from_position]
    else:
        state, positions = clean, _mean_positions(len(clean.ids))
    if spec.component == "resid":
        stack = state.residual(spec.layer + 1)
        rows = stack[torch.tensor(positions, device=stack.device)]
    else:
        rows = _capture_at(model, state, Site(spec.component, spec.layer), positions)
        if spec.component == "head":
            rows = rows[:, spec.head]
    return rows.float().mean(dim=0) if spec.source == "mean" else rows[0]
