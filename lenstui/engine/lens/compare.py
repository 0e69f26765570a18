"""Two prompts side by side: per lens row, KL(A || B) between the distributions prompt A
and prompt B read at one position each, beside each row's top tokens and tracked tokens.

Both prompts run through the incremental lens (``lens_state`` slots "a" and "b", so
editing one keeps the other's forward and cells). KL comes from the fused readout with
A's row as the reference of B's row: no ``[rows, vocab]`` distribution is kept.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from lenstui.core.callbacks import StopCheck
from lenstui.core.comparison import Comparison
from lenstui.core.errors import InputError
from lenstui.core.lenses import LensOptions
from lenstui.engine.lens.readout import read_out, unembedding
from lenstui.engine.lens.run import run_lens
from lenstui.engine.lens.state import lens_state
from lenstui.engine.model.load import LoadedModel

Prompt = Union[str, Sequence[int]]


def _position(spec: int, n: int, which: str) -> int:
    if not -n <= spec < n:
        raise InputError(f"Position {spec} is outside prompt {which} ({n} tokens: 0..{n - 1}, or -1 for the last).")
    return spec % n


def compare_rows(
    model: LoadedModel,
    prompt_a: Prompt,
    pos_a: int,
    prompt_b: Prompt,
    pos_b: int,
    options: LensOptions = LensOptions(),
    should_stop: Optional[StopCheck] = None,
) -> Comparison:
    """Run the lens on both prompts (whole grids, incremental) and compare row by row the
    distributions at ``pos_a`` in A and ``pos_b`` in B (negative: from the end)."""
    a = run_lens(model, prompt_a, options, slot="a", should_stop=should_stop)
    b = run_lens(model, prompt_b, options, slot="b", should_stop=should_stop)
    pa = _position(pos_a, len(a.tokens), "A")
    pb = _position(pos_b, len(b.tokens), "B")
    kl = row_kl(model, pa, pb, should_stop=should_stop)
    return Comparison(a=a, b=b, positions=(pa, pb), kl=kl)


def row_kl(model: LoadedModel, pos_a: int, pos_b: int, should_stop=None) -> list[float]:
    """KL(A || B) per lens row between slot "a" at ``pos_a`` and slot "b" at ``pos_b``,
    both states prepared with the same settings."""
    state_a, state_b = lens_state(model, "a"), lens_state(model, "b")
    settings = state_a.settings
    if settings is None or state_b.settings is None:
        raise RuntimeError("run the lens on both prompts first")
    unembed = unembedding(model)
    apply_norm = state_a.lens.apply_norm
    rows_a = state_a.rows_at(pos_a)  # [rows, d]
    rows_b = state_b.rows_at(pos_b)
    normed_a = unembed.normalize(rows_a, apply_norm=apply_norm)
    normed_b = unembed.normalize(rows_b, apply_norm=apply_norm)
    # read_out's KL is KL(reference || vector): the reference is A, the vectors B.
    stats = read_out(unembed, normed_b, top_k=1, reference=normed_a, should_stop=should_stop)
    with torch.no_grad():
        return [float(v) for v in stats.kl.tolist()]
