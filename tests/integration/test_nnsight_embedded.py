"""The nnsight backend on the embedded SmolLM2, held to the native engine on the same
weights: the seahorse question's grid in chat form, a generation step, a patch and a
steer; and what the remote path would send and receive for that grid, measured."""

from __future__ import annotations

import pytest

from lenstui.core.lenses import LensOptions
from lenstui.core.patch_result import PatchSite, SteerSetting
from lenstui.engine import causal as native_causal
from lenstui.engine.backends.nnsight import causal as nnsight_causal
from lenstui.engine.backends.nnsight.model import wrap_local
from lenstui.engine.backends.nnsight.state import NnsightLensState
from lenstui.engine.backends.nnsight.transport import Transport
from lenstui.engine.lens.state import LensState
from lenstui.engine.model.chat import chat_prompt_ids

pytestmark = pytest.mark.integration


def lens(model, prompt, options, **kwargs):
    """The lens through the model's own backend (native, or nnsight)."""
    from lenstui.engine.backends import engine_for

    return engine_for(model).run_lens(model, prompt, options, **kwargs)

SEAHORSE = "Is there a seahorse emoji?"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def nnsight_model():
    """The nnsight backend over its own copy of the embedded model (the shared fixture
    stays untouched by anything nnsight installs)."""
    from lenstui.engine.model.load import load_model

    return wrap_local(load_model(), Transport.simulated())


def same(native, other) -> None:
    assert native.layers == other.layers and [t.id for t in native.targets] == [t.id for t in other.targets]
    worst = 0.0
    for row_a, row_b in zip(native.grid, other.grid, strict=True):
        for a, b in zip(row_a, row_b, strict=True):
            assert [t.id for t in a.top] == [t.id for t in b.top]
            for x, y in ((a.target_rank, b.target_rank), (a.final_top1_rank, b.final_top1_rank)):
                # Exact where it decides the top-k and the depth; thousands deep, two logits
                # a rounding apart may swap (the patched native run resumes from its cache).
                assert x == y if min(x, y) < 100 else abs(x - y) <= 1 + x // 1000
            worst = max(worst, abs(a.target_prob - b.target_prob), *(abs(x.prob - y.prob) for x, y in zip(a.top, b.top)))
            # KL and entropy sum the whole vocabulary in float32, with logits up to ~180 at
            # the embedding row; a patched native run also resumes from its cached prefix
            # (another rounding than a full forward): float32's own error, not a different number.
            for x, y in ((a.kl_to_final, b.kl_to_final), (a.entropy, b.entropy)):
                assert abs(x - y) <= 1e-3 * max(1.0, abs(x))
    assert worst <= TOLERANCE
    assert [d.to_json() for d in native.depth] == [d.to_json() for d in other.depth]


def test_the_seahorse_grid_and_a_step(embedded, nnsight_model):
    ids = chat_prompt_ids(embedded, SEAHORSE)
    options = LensOptions(top_k=10, track=("Ġse",))  # the first token of " seahorse"
    native = lens(embedded, ids, options, slot="b")
    state = NnsightLensState(nnsight_model)
    state.prepare(ids, options)
    got = state.result()
    same(native, got)
    # A generation step: one trace for one column.
    step_ids = ids + [got.next_token.id]
    state.prepare(step_ids, options)
    stepped = state.result()
    same(lens(embedded, step_ids, options, slot="b"), stepped)
    grid, step = nnsight_model.transport.traffic[-2:]
    assert (grid.label, step.label) == ("grid", "step")
    hidden = len(got.layers) * len(got.tokens) * embedded.d_model * 4
    assert grid.response_bytes < hidden / 10  # cells, not the residual stack
    assert step.response_bytes < grid.response_bytes / 5  # one column
    assert step.request_bytes < 20_000


def test_patch_and_steer_on_the_embedded_model(embedded, nnsight_model):
    prompt = "The Eiffel Tower is located in the city of"
    source = "The Colosseum is located in the city of"
    options = LensOptions(top_k=5)
    for site in (PatchSite(layer="L12", position=-1), PatchSite(layer="L10", position=3, component="L10H4")):
        native_state = LensState(embedded)  # (a clean native slot)
        embedded.caches.lens_states["a"] = native_state
        expected = native_causal.patch(embedded, prompt, site, source_prompt=source, options=options)
        got = nnsight_causal.patch(nnsight_model, prompt, site, source_prompt=source, options=options)
        same(expected.patched, got.patched)
        assert max(abs(a - b) for ra, rb in zip(expected.kl, got.kl) for a, b in zip(ra, rb)) <= 1e-4
    setting = SteerSetting(toward=" Rome", layer="L14", alpha=8.0, position=-2)
    expected = native_causal.steer(embedded, prompt, setting, steps=2, options=options)
    got = nnsight_causal.steer(nnsight_model, prompt, setting, steps=2, options=options)
    assert [t.id for t in got.generated] == [t.id for t in expected.generated]
    same(expected.steered, got.steered)
