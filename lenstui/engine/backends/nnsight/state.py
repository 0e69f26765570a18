"""The lens state of a model read through nnsight: the same requests as the native
``LensState`` (prepare a prompt, read cells, the whole result, the next token), answered by
traces that reduce on the model's side (``trace.grid``).

What the native state keeps here (the residual stack, the KV cache) stays where the model
runs: a trace returns cells only. What it keeps is the cells per position for the current
settings, so a prompt that grows by a token (a generation step) reads that one position:
one request whose answer is a single column. The forward itself is not incremental (NDIF
keeps nothing between requests): the server runs the whole prompt again, which costs it a
fraction of the network round trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from lenstui.core.callbacks import StopCheck, check_stop
from lenstui.core.errors import InputError
from lenstui.core.lenses import LensOptions
from lenstui.engine.backends.nnsight import trace
from lenstui.engine.backends.nnsight.model import NnsightModel
from lenstui.engine.lens.state import LensPlan, LensState


@dataclass
class _Stats:
    """The trace's arrays in the layout the native readout hands ``_store_cells``:
    ``[rows * positions, ...]`` (row-major)."""

    top_ids: torch.Tensor
    top_logits: torch.Tensor
    top_probs: torch.Tensor
    entropy: torch.Tensor
    kl: torch.Tensor
    target_ranks: torch.Tensor
    target_probs: torch.Tensor


def stats_of(cells: dict) -> _Stats:
    """``reduce.read_rows``'s dict -> the readout's per-vector layout."""
    log_z = cells["log_z"]
    n_rows, n_pos = log_z.shape

    def flat(t):
        return t.reshape(n_rows * n_pos, *t.shape[2:])

    return _Stats(
        top_ids=flat(cells["top_ids"].long()),
        top_logits=flat(cells["top_logits"]),
        top_probs=flat((cells["top_logits"] - log_z[..., None]).exp()),
        entropy=flat(cells["entropy"]),
        kl=flat(cells["kl"]),
        target_ranks=flat(cells["target_ranks"].long()),
        target_probs=flat((cells["target_logits"] - log_z[..., None]).exp()),
    )


def nnsight_lens_state(model: NnsightModel, slot: str = "a") -> "NnsightLensState":
    """The model's lens state for ``slot`` (kept in its caches, like ``lens_state``)."""
    state = model.caches.lens_states.get(slot)
    if state is None:
        state = model.caches.lens_states[slot] = NnsightLensState(model)
    return state


class NnsightLensState(LensState):
    """``LensState``'s bookkeeping (prompt, settings, plan, cells per position), with the
    forward and the readout done by a trace."""

    def __init__(self, model: NnsightModel):
        super().__init__(model)
        self.traces = 0  # traces run (tests read it)
        self.progress = None  # the worker's progress callback, when a handler set one

    def prepare(
        self,
        prompt: Union[str, Sequence[int]],
        options: LensOptions = LensOptions(),
        should_stop: Optional[StopCheck] = None,
    ) -> LensPlan:
        check_lens(self.model, options)
        return super().prepare(prompt, options, should_stop)

    def _update_stack(self, ids: list[int], incl_mid: bool) -> tuple[int, int]:
        """Nothing runs here: the cells of positions that changed are read by the next
        ``cells`` (one trace for all of them). Keeps what is shared with the last ids."""
        common = self._shared_prefix(ids)
        if incl_mid and not self._capture_mid:
            self._capture_mid = True
        if common < len(self._ids):
            self._truncate(common)
        self._ids = list(ids)
        return common, 0

    # ``LensState.cells`` checks the positions, asks ``_read_final_top1`` for the ones it
    # lacks, then ``_read_positions`` chunk by chunk: here the first call reads every
    # missing position's cells in one trace (one request), the model's own top-1 with them.
    def _read_final_top1(self, positions: list[int], should_stop: Optional[StopCheck]) -> None:
        missing = [p for p in positions if p not in self._final_top1 or p not in self._columns]
        if missing:
            check_stop(should_stop)
            self._trace(missing, should_stop)

    def _read_positions(self, positions: list[int], should_stop: Optional[StopCheck]) -> None:
        missing = [p for p in positions if p not in self._columns]
        if missing:
            self._trace(missing, should_stop)

    def _trace(self, positions: list[int], should_stop: Optional[StopCheck]) -> None:
        settings = self._settings
        model = self.model
        if settings.target_id is not None:
            targets = [settings.target_id] * len(positions)
        elif self.fixed_targets is not None:
            targets = [self.fixed_targets[p] for p in positions]
        else:
            targets = None
        label = "step" if len(positions) == 1 and positions[0] == len(self._ids) - 1 and self._columns else "grid"
        cells = trace.grid(
            model,
            self._ids,
            positions,
            top_k=settings.top_k,
            apply_norm=self._lens.apply_norm,
            incl_mid=settings.incl_mid,
            targets=targets,
            track=settings.track_ids,
            translators=translators_for(self._lens, positions, model.n_layers + 1),
            label=label,
            progress=self.progress,
            should_stop=should_stop,
        )
        self.traces += 1
        self.forward_count += 1
        self.store(positions, cells, targets)

    def store(self, positions: list[int], cells: dict, targets: Optional[list[int]]) -> None:
        """Keep a trace's cells for ``positions`` (their targets: as given, else each
        position's own top-1, which the trace read)."""
        final_top1 = [int(t) for t in cells["final_top1"].tolist()]
        for pos, top1 in zip(positions, final_top1):
            self._final_top1[pos] = top1
        target_ids = targets if targets is not None else final_top1
        n_rows = int(cells["log_z"].shape[0])
        self._store_cells(positions, target_ids, n_rows, stats_of(cells))

    # What the native state keeps and this one does not (the residuals stay where the
    # model runs): the native causal and compare code reads these, the nnsight backend's
    # own never does.
    def rows_at(self, position: int):
        raise InputError("The nnsight backend keeps no residuals on this machine: its traces return cells only.")

    residual = stack = stack_all = rows_at


def check_lens(model: NnsightModel, options: LensOptions) -> None:
    """The lens kinds the nnsight backend reads; one sentence for the one it does not."""
    if options.lens == "extended":
        raise InputError(
            "The extended lens runs the last blocks again over every row, which the nnsight backend "
            "does not do: use the logit, raw or tuned lens, or --backend native."
        )
    if options.lens == "patchscope":
        raise InputError(
            "The Patchscope runs a second prompt per row with the row patched in, which the nnsight "
            "backend does not do: use the logit, raw or tuned lens, or --backend native."
        )
    if options.lens in ("tuned", "jacobian") and model.local is None:
        raise InputError(
            f"The {options.lens} lens checks its file against the model's unembedding, which stays on "
            "NDIF: read it locally (--backend native, or nnsight without --remote)."
        )


def translators_for(lens, positions: Sequence[int], n_rows: int):
    """A learned lens's translators as a trace takes them: per row (matrix, bias) or None,
    and the positions it leaves untranslated (``reduce.read_rows``); None for the others."""
    learned = getattr(lens, "learned", None)
    if learned is None:
        return None
    per_row: list = [None] * n_rows
    for j, row in enumerate(learned.rows):
        bias = None if learned.biases is None else learned.biases[j]
        per_row[row] = (learned.matrices[j], bias)
    raw = torch.tensor([p < learned.logit_positions for p in positions], dtype=torch.bool)
    return per_row, raw


def greedy_ids(model: NnsightModel, ids: Sequence[int], steps: int, *, should_stop: Optional[StopCheck] = None) -> list[int]:
    """``engine.model.generate.greedy_ids`` through nnsight (one session for all the steps)."""
    out = [int(i) for i in ids]
    if len(out) + steps > model.n_ctx:
        raise InputError(
            f"The prompt ({len(out)} tokens) plus {steps} steps is more than the {model.n_ctx} tokens {model.name} reads."
        )
    if steps <= 0:
        return out
    return trace.greedy(model, out, steps, should_stop=should_stop)
