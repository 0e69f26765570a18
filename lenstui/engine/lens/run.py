"""The logit lens: every residual-stream row x every position, read as a prediction.

Rows are the embedding, then the residual after each block (optionally also the
mid-block residual, after attention and before the MLP). Each row is read through the
model's final norm, ``W_U``, ``b_U`` and any post-unembedding transform by the fused
readout (``lens/readout.py``: how fast), which never holds a ``[vectors, vocab]`` tensor;
``lens/state.py`` keeps what was computed for which ids, so a run computes only the
positions and settings that changed. TransformerLens 4's ``logit_readout`` is the
reference the tests hold it to.

Lens variants:
- ``logit``: final norm, then unembedding (the classic logit lens);
- ``extended``: the last N blocks are part of the decoder: a row from before block
  ``L-N`` is written into block ``L-N``'s input and run through blocks ``L-N..L-1``
  (attention over every position, all rows batched into one forward pass), then read
  as ``logit``; rows from block ``L-N`` on are already past the cut and read as the
  model's own output (nostalgebraist's "extended decoder" for gpt-neo);
- ``raw``: unembedding without the final norm;
- ``tuned`` and ``jacobian``: learned lenses, a fitted translator per row before the
  readout, read from a tuned-lens folder or a TransformerLens J-lens file
  (``lens/learned.py``; fitted by ``lens/fit.py``, measured by ``lens/evaluate.py``).

Per cell: the top-k tokens (probability and logit), the entropy of the row's
distribution, KL(final || row) where "final" is the model's own output distribution,
and the rank and probability of a target token (default: the model's own top-1 at
that position).
"""

from __future__ import annotations

import time
from typing import Optional, Sequence, Union

from lenstui.core.callbacks import StopCheck
from lenstui.core.errors import InputError, quoted
from lenstui.core.lens_result import LensResult
from lenstui.core.lenses import LensOptions
from lenstui.engine.lens.state import lens_state
from lenstui.engine.model.load import LoadedModel


def parse_positions(spec: str, n_tokens: int) -> list[int]:
    """Positions from ``-1``, ``3``, ``5:12`` (end exclusive, like Python) or a comma list
    of those; negative counts from the end. Raises InputError with the accepted forms."""
    chosen: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if ":" in part:
                first, _, last = part.partition(":")
                start = int(first) if first.strip() else 0
                stop = int(last) if last.strip() else n_tokens
                picked = list(range(n_tokens))[start:stop]
            else:
                index = int(part)
                if not -n_tokens <= index < n_tokens:
                    raise InputError(
                        f"Position {index} is outside the prompt ({n_tokens} tokens: 0..{n_tokens - 1}, or -1 for the last)."
                    )
                picked = [index % n_tokens]
        except ValueError:
            raise InputError(
                f"Cannot read positions {quoted(spec)}: use an index (3, -1), a range (5:12) or a comma list of them."
            ) from None
        if not picked:
            raise InputError(f"Positions {quoted(part)} select nothing in a {n_tokens}-token prompt.")
        chosen.extend(p for p in picked if p not in chosen)
    return chosen


def run_lens(
    model: LoadedModel,
    prompt: Union[str, Sequence[int]],
    options: LensOptions = LensOptions(),
    *,
    positions: Union[None, str, Sequence[int]] = None,
    slot: str = "a",
    should_stop: Optional[StopCheck] = None,
    state=None,
) -> LensResult:
    """Run the lens on a prompt (text or token ids): the whole grid, or only the columns
    at ``positions`` (indices, negative from the end, or a spec for :func:`parse_positions`).

    Incremental through the model's :class:`~lenstui.engine.lens.state.LensState`: what
    the last run shares with this one (its token prefix, its forward pass, cells read
    with the same settings) is reused. Raises InputError on bad input and Cancelled when
    ``should_stop()`` turns true between chunks. ``slot``: which of the model's lens
    states to use ("a", "b": two prompts side by side stay incremental). ``state``: the lens
    state to run in instead (another backend's: ``engine.backends.engine_for(model).run_lens``).
    """
    started = time.perf_counter()
    state = lens_state(model, slot) if state is None else state
    plan = state.prepare(prompt, options, should_stop)
    if positions is None:
        return state.result(should_stop, started=started)
    n = plan.n_positions
    if isinstance(positions, str):
        chosen = parse_positions(positions, n)
    else:
        chosen = [int(p) % n if -n <= int(p) < 0 else int(p) for p in positions]
    columns = state.cells(chosen, should_stop)
    return plan.result(columns, seconds=time.perf_counter() - started)
