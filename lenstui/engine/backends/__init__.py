"""Who answers the engine's requests for a loaded model: its backend.

- ``native``: the plain transformers model with hooks, or TransformerLens' bridge
  (``engine/model/forward.py``): everything lenstui does, on this machine.
- ``nnsight``: the model wrapped by nnsight (``engine/backends/nnsight``), here or on NDIF
  (``--remote``): the lens, compare, patch, sweep and steer run as nnsight traces that
  reduce on the model's side, so only cells cross the network.

:func:`engine_for` gives the backend's answers to the requests every face makes (a lens
state per slot, compare, patch, sweep, steer, greedy steps); :func:`native_model` gives the
model that the requests no trace computes (the whole-vocabulary ones: the inspector's
neighbours, the speakability check and scan, attribution, fitting a lens) run on, or the one
sentence saying why there is none (the weights stay on NDIF). The views never know which
backend answered: both fill the same ``core`` dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from lenstui.core.backends import cannot_sentence
from lenstui.core.errors import InputError


def backend_of(model: Any) -> str:
    """``"native"`` or ``"nnsight"``."""
    return getattr(model, "backend", "native")


@dataclass(frozen=True)
class Engine:
    """One backend's answers. Every callable takes the model first, as the native
    functions do; ``progress`` is passed to those that report it (the remote path's job
    status) and dropped for the others."""

    name: str
    streams: bool  # whether a grid is worth streaming in chunks of positions (one trace is one request)
    _lens_state: Callable
    _compare: Callable
    _patch: Callable
    _sweep: Callable
    _steer: Callable
    _greedy: Callable
    _progress: bool  # whether the callables take ``progress``

    def lens_state(self, model, slot: str = "a", progress=None):
        state = self._lens_state(model, slot)
        if self._progress:
            state.progress = progress
        return state

    def run_lens(self, model, prompt, options, *, positions=None, slot: str = "a", should_stop=None, progress=None):
        """``engine.lens.run.run_lens`` in this backend's lens state."""
        from lenstui.engine.lens.run import run_lens

        state = self.lens_state(model, slot, progress)
        return run_lens(model, prompt, options, positions=positions, slot=slot, should_stop=should_stop, state=state)

    def _with(self, kwargs: dict, progress) -> dict:
        return {**kwargs, "progress": progress} if self._progress else kwargs

    def compare_rows(self, model, *args, progress=None, **kwargs):
        return self._compare(model, *args, **self._with(kwargs, progress))

    def patch(self, model, *args, progress=None, **kwargs):
        return self._patch(model, *args, **self._with(kwargs, progress))

    def sweep(self, model, *args, **kwargs):
        return self._sweep(model, *args, **kwargs)

    def steer(self, model, *args, progress=None, **kwargs):
        return self._steer(model, *args, **self._with(kwargs, progress))

    def greedy_ids(self, model, ids, steps: int, *, should_stop=None) -> list[int]:
        return self._greedy(model, ids, steps, should_stop=should_stop)


def _native_engine() -> Engine:
    from lenstui.engine.causal import patch, steer, sweep
    from lenstui.engine.lens.compare import compare_rows
    from lenstui.engine.lens.state import lens_state
    from lenstui.engine.model.generate import greedy_ids

    return Engine("native", True, lens_state, compare_rows, patch, sweep, steer, greedy_ids, False)


def _nnsight_engine() -> Engine:
    from lenstui.engine.backends.nnsight import causal
    from lenstui.engine.backends.nnsight.state import greedy_ids, nnsight_lens_state

    return Engine(
        "nnsight", False, nnsight_lens_state, causal.compare_rows, causal.patch, causal.sweep, causal.steer,
        greedy_ids, True,
    )


def engine_for(model: Any) -> Engine:
    """The engine answering for ``model``'s backend."""
    return _nnsight_engine() if backend_of(model) == "nnsight" else _native_engine()


def open_model(
    spec: Optional[str] = None,
    *,
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    placement=None,
    progress=None,
    allow_download: bool = False,
    backend: Optional[str] = None,
    remote: bool = False,
    endpoint: Optional[str] = None,
) -> Any:
    """``engine.model.load.load_model`` for a backend: the native LoadedModel, or (``backend``
    "nnsight", implied by ``remote``) an NnsightModel, here or on NDIF at ``endpoint``.
    Every refusal is a ModelLoadError with its sentence."""
    from lenstui.core.errors import ModelLoadError, quoted

    if backend not in (None, "native", "nnsight"):
        raise ModelLoadError(f"Unknown backend {quoted(backend)}: choose native or nnsight.")
    if remote and backend == "native":
        raise ModelLoadError("--remote runs the model on NDIF through nnsight: drop --backend native.")
    if backend == "nnsight" or remote:
        from lenstui.engine.backends.nnsight.open import open_model as open_nnsight

        return open_nnsight(spec, device=device, dtype=dtype, placement=placement, progress=progress,
                            allow_download=allow_download, remote=remote, endpoint=endpoint)
    from lenstui.engine.model.wiring import load_checked

    return load_checked(spec, device=device, dtype=dtype, placement=placement, progress=progress,
                        allow_download=allow_download)


def native_model(model: Any, what: str, vocabulary: bool = False) -> Any:
    """The model ``what`` (a request no trace computes) runs on: the model itself (native),
    the plain model nnsight wraps (local), or InputError with the sentence saying why not
    (remote: the weights stay on NDIF; ``vocabulary``: it is the unembedding it needs, and
    the sentence gives its size)."""
    if backend_of(model) != "nnsight":
        return model
    if model.local is not None:
        return model.local
    size = unembedding_bytes(model) if vocabulary else 0
    raise InputError(cannot_sentence(what, model.name, size))


def unembedding_bytes(model: Any) -> int:
    """How big the model's unembedding is in its own dtype (what fetching it would cost)."""
    weight = model.hf.get_output_embeddings().weight
    return int(weight.numel()) * int(weight.element_size())

