"""The Patchscope lens: the model itself says what a hidden state holds.

Patchscopes (Ghandeharioun et al., ICML 2024) decode a hidden state by patching it into
a *target* prompt and letting the model continue. lenstui's lens is the paper's
token-identity Patchscope with the same model and layer on both sides: in the paper's
notation (S, i, M, l) -> (T, i*, f, M*, l*) with T the target prompt, i* its last
position, f the identity, M* = M and l* = l; nnterp's ``patchscope_lens`` is the same
with the layer's output.

The cell at (row r, position p) takes the residual of row r at p (row 0, ``embed``: the
embedding output; row k + 1, ``Lk``: block k's output) and writes it over the target's
residual at the same row at the target's last position; the target's forward continues
from block r and the cell reads the model's output distribution at that position (the
readout is the logit lens's: final norm, unembedding). The last row (the last block's
output) reads as the model's own output: nothing runs after it.

Cost, stated up front: the target's prefix (all but its last token) runs once per
(model, target) and its KV cache is kept in the model's caches; a cell is then one token
through blocks r..L-1 over that cache, so a column costs L(L+1)/2 block-steps of one
token, about (L+1)/2 forwards of the prompt's position (the logit lens needs one). Rows
are batched over positions, and neighbouring rows into one forward where reading the
weights again would cost more than running a few blocks for nothing (``row_groups``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from lenstui.core.errors import InputError
from lenstui.core.lenses import DEFAULT_PATCHSCOPE_TARGET
from lenstui.engine.model.forward import Site, forward_for, kv_prefix

# Targets kept per model (each holds its prefix's KV cache: small, the targets are short).
KEPT_TARGETS = 4
# Longest target prompt, in tokens (every cell attends over it).
MAX_TARGET_TOKENS = 256
# Reading one block's weights, in one-token block-steps: a one-token forward is memory-
# bound on a CPU (SmolLM2-135M on 2 cores: ~1.9 ms a block for one token, ~0.16 ms more per
# extra token). What row_groups weighs batching rows against running blocks for nothing.
WEIGHT_COST = 10.0


@dataclass
class PatchscopeTarget:
    """A target prompt prepared once per model: its ids, and the KV cache over all its
    positions but the last (None where the model cannot run from a cache: then the clean
    residual stack of the whole target, to run each cell over every position)."""

    text: str
    ids: list[int]
    prefix_kv: Any = None
    clean: Optional[torch.Tensor] = None  # [n_layers + 1, len(ids), d] without a cache

    @property
    def last_id(self) -> int:
        return self.ids[-1]


def target_text(options_target: Optional[str]) -> str:
    """The target a lens option names (None or blank: the token-identity prompt)."""
    return options_target if options_target and options_target.strip() else DEFAULT_PATCHSCOPE_TARGET


def patchscope_target(model: Any, text: str) -> PatchscopeTarget:
    """The target ``text`` prepared for ``model`` (kept in its caches; the newest
    ``KEPT_TARGETS`` of them). Raises InputError for a target the model cannot read."""
    kept = model.caches.patchscope_targets
    hit = kept.get(text)
    if hit is not None:
        kept[text] = kept.pop(text)  # the newest last
        return hit
    # As the lens encodes a text prompt (a BOS only where the tokenizer adds one).
    ids = list(model.tokenizer(text, add_special_tokens=True)["input_ids"])
    if not ids:
        raise InputError("The Patchscope's target prompt is empty: type a prompt whose last token is read.")
    limit = min(MAX_TARGET_TOKENS, model.n_ctx)
    if len(ids) > limit:
        raise InputError(
            f"The Patchscope's target prompt has {len(ids):,} tokens; keep it under {limit} "
            "(every cell attends over it)."
        )
    target = _prepare(model, text, ids)
    kept[text] = target
    while len(kept) > KEPT_TARGETS:
        kept.pop(next(iter(kept)))
    return target


def _prepare(model: Any, text: str, ids: list[int], use_cache: bool = True) -> PatchscopeTarget:
    from transformers import DynamicCache

    forward = forward_for(model)
    if len(ids) == 1:
        return PatchscopeTarget(text, ids)  # nothing before the patched position
    if use_cache:
        prefix = torch.tensor([ids[:-1]], device=model.input_device)
        kv = DynamicCache()
        forward.run(prefix, kv=kv)
        if kv.get_seq_length() == len(ids) - 1:
            return PatchscopeTarget(text, ids, prefix_kv=kv)
    # The cache did not take (a model the bridge runs without one): keep the target's
    # clean residuals instead and run each cell over the whole target.
    sites = [Site("resid", layer) for layer in range(-1, model.n_layers)]
    run = forward.run(torch.tensor([ids], device=model.input_device), reads=sites)
    clean = torch.stack([run.values[site][0] for site in sites])
    return PatchscopeTarget(text, ids, clean=clean)


def row_groups(n_rows: int, n_layers: int, n_pos: int, weight_cost: float = None) -> list[tuple[int, int]]:
    """The rows' runs, as groups [a, b) of consecutive rows, each one forward from block a.

    A forward from block a costs (n_layers - a) blocks of reading the weights plus, per
    block, its batch of (b - a) * n_pos tokens; a row joined to a lower group runs blocks
    below its own for nothing (its residual is written over at its own block). Reading a
    block's weights costs about ``weight_cost`` one-token steps on a CPU (a one-token
    forward is memory-bound), so the first column (one position) runs best in a few
    large groups and many positions in one row each. Dynamic programming over the splits."""
    weight_cost = WEIGHT_COST if weight_cost is None else weight_cost
    best = [0.0] + [float("inf")] * n_rows  # best[b]: rows 0..b-1 done
    cut = [0] * (n_rows + 1)
    for b in range(1, n_rows + 1):
        for a in range(b):
            cost = best[a] + (n_layers - a) * (weight_cost + (b - a) * n_pos)
            if cost < best[b]:
                best[b], cut[b] = cost, a
    groups, b = [], n_rows
    while b > 0:
        groups.append((cut[b], b))
        b = cut[b]
    return groups[::-1]


def patched_rows(model: Any, target: PatchscopeTarget, stack: torch.Tensor) -> torch.Tensor:
    """[rows, P, d] residuals (block-output rows, no mid rows) -> the target run's last
    residual after patching each one in at its row: what the readout reads."""
    n_layers = model.n_layers
    n_rows, n_pos, _ = stack.shape
    out = stack.clone()  # the last row reads as it is: nothing runs after it
    run_rows = min(n_rows, n_layers)
    for first, end in row_groups(run_rows, n_layers, n_pos):
        value = _run_group(model, target, stack, first, end)  # [(end - first) * P, d]
        out[first:end] = value.reshape(end - first, n_pos, -1).to(device=out.device, dtype=out.dtype)
    return out


def _run_group(model: Any, target: PatchscopeTarget, stack: torch.Tensor, first: int, end: int) -> torch.Tensor:
    """One forward for rows first..end-1 (row-major over positions): every sequence starts
    at block ``first``; row r's sequences get their residual written over at block r."""
    n_layers = model.n_layers
    n_pos = stack.shape[1]
    batch = (end - first) * n_pos
    last = Site("resid", n_layers - 1)
    t = len(target.ids)
    rows = stack[first:end].reshape(batch, -1)  # what each sequence's last position carries

    def overwrite(row: int):
        lo, hi = (row - first) * n_pos, (row - first + 1) * n_pos

        def edit(value: torch.Tensor) -> torch.Tensor:
            value = value.clone()
            value[lo:hi, -1] = rows[lo:hi].to(device=value.device, dtype=value.dtype)
            return value

        return edit

    edits = [(Site("resid", row - 1), overwrite(row)) for row in range(first + 1, end)]
    forward = forward_for(model)
    if target.clean is None:
        kv = kv_prefix(target.prefix_kv, t - 1, batch=batch) if target.prefix_kv is not None else None
        tokens = torch.full((batch, 1), target.last_id, dtype=torch.long, device=model.input_device)
        run = forward.run(tokens, kv=kv, start_block=first, hidden=rows[:, None, :], edits=edits, reads=[last])
    else:  # no cache: the whole target, its last position written over
        hidden = target.clean[first].expand(batch, -1, -1).clone()
        hidden[:, -1] = rows.to(hidden.dtype)
        whole = torch.tensor([target.ids], device=model.input_device).expand(batch, -1)
        run = forward.run(whole, start_block=first, hidden=hidden, edits=edits, reads=[last])
    return run.values[last][:, -1]
