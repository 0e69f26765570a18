"""Greedy generation steps on token ids (a scene's ``steps``), kept as ids.

The app's Ctrl+N appends the lens's own next token one run at a time; a prepared scene
needs its steps before its single lens run, so this runs the plain model (with its KV
cache: each step is one token). Ids
stay ids: an emoji split over several tokens stays exactly what the model produced.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from lenstui.core.callbacks import StopCheck, check_stop
from lenstui.core.errors import InputError
from lenstui.engine.model.load import LoadedModel


def greedy_ids(
    model: LoadedModel,
    ids: Sequence[int],
    steps: int,
    *,
    should_stop: Optional[StopCheck] = None,
) -> list[int]:
    """``ids`` plus ``steps`` tokens, each the argmax of the model's next-token logits.
    Raises InputError when the result would not fit the context, Cancelled between steps."""
    out = [int(i) for i in ids]
    if len(out) + steps > model.n_ctx:
        raise InputError(
            f"The prompt ({len(out)} tokens) plus {steps} steps is more than the {model.n_ctx} tokens {model.name} reads."
        )
    from transformers import DynamicCache

    cache = DynamicCache()  # each step runs the new token only
    fresh = out
    for _ in range(steps):
        check_stop(should_stop)
        with torch.no_grad():
            logits = model.hf(input_ids=torch.tensor([fresh], device=model.input_device), cache=cache, use_cache=True).logits
        fresh = [int(logits[0, -1].argmax())]
        out.append(fresh[0])
    return out
