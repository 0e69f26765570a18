"""The wiring check, run on every load (CLI and app): does the lens read the model as the
model reads itself?

One short prompt, three forwards of a few tokens:

- the plain transformers model, no hooks: its own logits;
- the plain model with the blocks above one intermediate block passed through (their
  input comes out as their output), so that its own final norm, unembedding and output
  transforms read the residual after that block: "the model's own head on that residual";
- the lens's own forward (``engine/model/forward.py``: the plain model with hooks, or
  TransformerLens' bridge) and readout (``engine/lens/readout.py``).

``load_checked`` is ``load_model`` followed by the check: the load the CLI and the worker
go through (``engine.backends.open_model``). It is not inside ``load_model`` because the
check runs the lens, and the lens's modules import ``load.py``.

The last row of the lens must give the model's probabilities and the intermediate row the
head's, within ``tolerance``. A mismatch (a bridge that splits a fused QKV the wrong way, a
transform the readout does not apply) is a sentence the user sees on stderr, in ``--json``
and on the app's status line, never silence.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from lenstui.core.wiring import WiringCheck

WIRING_PROMPT = "The Eiffel Tower is in Paris, and the"
MAX_TOKENS = 8


def tolerance(model: Any) -> float:
    """The largest |Δp| that still reads as the same model: float32 rounding moves a
    probability by ~1e-6 (a missed soft-cap or scale by 1e-3 and more); a half-precision
    model computes its own logits in steps several hundred times coarser."""
    return 1e-4 if model.dtype == "float32" else 3e-2


def load_checked(spec: Optional[str] = None, **load_options: Any) -> Any:
    """``load_model(spec, **load_options)`` with its wiring check in ``.wiring``; a check
    that cannot run is the load's failure, in one sentence."""
    from lenstui.core.errors import ModelLoadError
    from lenstui.engine.model.load import describe_spec, first_line, load_model

    progress = load_options.get("progress")
    if progress is not None:  # the load's own steps up to 95%, the check after them
        load_options = {**load_options, "progress": lambda message, fraction=None: progress(
            message, None if fraction is None else 0.95 * fraction)}
    loaded = load_model(spec, **load_options)
    if progress is not None:
        progress("checking the lens against the model", 0.97)
    try:
        loaded.wiring = check_wiring(loaded)
    except ModelLoadError:  # what reads the model would not boot (a family neither path reads)
        raise
    except Exception as err:  # noqa: BLE001 - one sentence, never a traceback
        raise ModelLoadError(
            f"Loading {describe_spec(spec)} failed while holding the lens to the model "
            f"({type(err).__name__}: {first_line(err)})."
        ) from None
    if progress is not None:
        progress("ready", 1.0)
    return loaded


def check_wiring(model: Any) -> WiringCheck:
    """Hold the lens to the model on a short prompt (see the module doc)."""
    from lenstui.core.lenses import LensOptions
    from lenstui.engine.lens.readout import unembedding
    from lenstui.engine.lens.state import LensState

    ids = _probe_ids(model)
    tokens = torch.tensor([ids], device=model.input_device)
    n_layers = model.n_layers
    layer = max(0, n_layers // 2 - 1)  # the intermediate row: the residual after this block
    own_last, own_mid = _own_probs(model, tokens, layer if n_layers > 1 else None)

    state = LensState(model)
    state.prepare(ids, LensOptions(top_k=1))
    unembed = unembedding(model)

    def lens_probs(row: int) -> torch.Tensor:
        logits = unembed.logits(unembed.normalize(state.residual(row)))
        return torch.softmax(logits.double(), dim=-1)

    gaps = {"the last row": float((lens_probs(n_layers) - own_last).abs().max())}
    if own_mid is not None:
        gaps[f"row L{layer}"] = float((lens_probs(layer + 1) - own_mid).abs().max())
    worst_row, worst = max(gaps.items(), key=lambda item: item[1])
    path = "native" if model.anatomy is not None else "bridge"
    ok = worst <= tolerance(model)
    reader = "the plain model" if path == "native" else "TransformerLens' bridge"
    if ok:
        sentence = f"The lens reads {model.name} as the model reads itself (|Δp| ≤ {worst:.1g}, through {reader})."
    else:
        sentence = (
            f"The lens does not read {model.name} as the model reads itself: on {worst_row} its probabilities "
            f"differ from the model's own by up to {worst:.3g} (read through {reader}), so its rows cannot be trusted."
        )
    return WiringCheck(ok=ok, max_abs_dp=worst, sentence=sentence, path=path)


def _probe_ids(model: Any) -> list[int]:
    ids = list(model.tokenizer(WIRING_PROMPT, add_special_tokens=True)["input_ids"])[:MAX_TOKENS]
    ids = [int(i) for i in ids if 0 <= int(i) < model.d_vocab]
    if len(ids) < 2:  # a tokenizer that reads the prompt as one token (or none): ids of its own
        ids = [1, 2, 3, 4] if model.d_vocab > 4 else [0, 0]
    return ids


def _own_probs(model: Any, tokens: torch.Tensor, layer: Optional[int]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """[positions, vocab] float64 probabilities of the plain model, and of its own head on
    the residual after block ``layer`` (None where its blocks cannot be found)."""
    from lenstui.engine.model.anatomy import find_blocks

    hf = model.hf
    found = find_blocks(hf) if layer is not None else None
    form: dict[str, Any] = {}

    def learn(module, args, output):
        form["kind"] = type(output) if isinstance(output, (tuple, list)) else None
        form["length"] = len(output) if form["kind"] else 0

    handle = found[1][-1].register_forward_hook(learn) if found else None
    try:
        with torch.no_grad():
            last = hf(input_ids=tokens, use_cache=False).logits[0]
    finally:
        if handle is not None:
            handle.remove()
    own_last = torch.softmax(last.double(), dim=-1)
    if not found or "kind" not in form:
        return own_last, None

    def passthrough(*args, **kwargs):
        value = args[0] if args else _hidden_kwarg(kwargs)
        return form["kind"]([value, *([None] * (form["length"] - 1))]) if form["kind"] else value

    above = found[1][layer + 1:]
    saved = {block: block.__dict__.get("forward") for block in above}  # (accelerate wraps forward per module)
    for block in above:
        block.forward = passthrough
    try:
        with torch.no_grad():
            mid = hf(input_ids=tokens, use_cache=False).logits[0]
    finally:
        for block, forward in saved.items():
            if forward is None:
                del block.forward
            else:
                block.forward = forward
    return own_last, torch.softmax(mid.double(), dim=-1)


def _hidden_kwarg(kwargs: dict) -> torch.Tensor:
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    return next(v for v in kwargs.values() if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() == 3)
