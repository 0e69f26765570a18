"""The nnsight backend on this machine, held to the native engine on tiny models: the same
grid (max |dp| <= 1e-5, same top-k, ranks and prediction depth), the same patch, sweep,
steer and compare results, and the remote path's serialization (nnsight's own, with
lenstui's modules hidden, and nothing outside NDIF's sandbox whitelist in the payload)."""

from __future__ import annotations

import io
import pickle

import pytest
import torch

from lenstui.core.errors import InputError
from lenstui.core.lenses import LensOptions
from lenstui.core.patch_result import PatchSite, SteerSetting
from lenstui.engine import causal as native_causal
from lenstui.engine.backends import engine_for, native_model
from lenstui.engine.backends.nnsight import causal as nnsight_causal
from lenstui.engine.backends.nnsight.model import wrap_local
from lenstui.engine.backends.nnsight.state import nnsight_lens_state
from lenstui.engine.backends.nnsight.transport import Transport
from lenstui.engine.lens.compare import compare_rows
from testkit.models import tiny_gpt2, tiny_llama


def lens(model, prompt, options, **kwargs):
    """The lens through the model's own backend (native, or nnsight)."""
    from lenstui.engine.backends import engine_for

    return engine_for(model).run_lens(model, prompt, options, **kwargs)

PROMPT = "The Eiffel Tower is located in the city of"
OTHER = "hello world, hello tokens, hello bytes"
TOLERANCE = 1e-5


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def pair(request):
    """(native model, the nnsight backend over its own copy): separate modules, so
    nothing nnsight installs can touch the reference."""
    build = tiny_llama if request.param == "llama" else tiny_gpt2
    return build(), wrap_local(build(), Transport.local())


def assert_same_grid(native, other):
    assert native.layers == other.layers
    assert [t.id for t in native.tokens] == [t.id for t in other.tokens]
    assert [t.id for t in native.targets] == [t.id for t in other.targets]
    for row_a, row_b in zip(native.grid, other.grid, strict=True):
        for a, b in zip(row_a, row_b, strict=True):
            # A cell whose top tokens all tie (a zeroed embedding reads as a uniform
            # distribution) has no order to agree on: its probabilities still must.
            if max(t.prob for t in a.top) - min(t.prob for t in a.top) > 1e-9:
                assert [t.id for t in a.top] == [t.id for t in b.top]
            for x, y in zip(a.top, b.top):
                assert abs(x.prob - y.prob) <= TOLERANCE
                assert abs(x.logit - y.logit) <= 1e-4
            assert abs(a.target_prob - b.target_prob) <= TOLERANCE
            assert a.target_rank == b.target_rank
            assert a.final_top1_rank == b.final_top1_rank
            assert abs(a.entropy - b.entropy) <= TOLERANCE
            assert abs(a.kl_to_final - b.kl_to_final) <= TOLERANCE
            assert [(t.id, t.rank) for t in a.tracked] == [(t.id, t.rank) for t in b.tracked]
            for x, y in zip(a.tracked, b.tracked):
                assert abs(x.prob - y.prob) <= TOLERANCE
    assert [d.to_json() for d in native.depth] == [d.to_json() for d in other.depth]


@pytest.mark.parametrize(
    "options",
    [
        LensOptions(top_k=5),
        LensOptions(top_k=3, lens="raw", incl_mid=True, track=("hello", " the")),
        LensOptions(top_k=4, target=" the"),
    ],
    ids=["logit", "raw-mid-tracked", "target"],
)
def test_grid_matches_the_native_engine(pair, options):
    native, nnsight = pair
    expected = lens(native, PROMPT, options)
    got = lens(nnsight, PROMPT, options)
    assert_same_grid(expected, got)


def test_grid_against_float64_logits(pair):
    """An independent reference: the model's own hidden states (``output_hidden_states``),
    its final norm and unembedding in float64, full softmax."""
    _, nnsight = pair
    result = lens(nnsight, PROMPT, LensOptions(top_k=3))
    hf = nnsight.local.hf
    ids = torch.tensor([result.token_ids])
    with torch.no_grad():
        hidden = hf(ids, output_hidden_states=True).hidden_states  # embed, then each block's output
        norm = nnsight.local.anatomy.final_norm
        w = nnsight.local.anatomy.unembed.weight.double()
        for row, h in enumerate(hidden):
            x = h[0] if row == len(hidden) - 1 else norm(h)[0]  # HF's last entry is already normed
            probs = torch.softmax(x.double() @ w.T, dim=-1)
            for pos, cell in enumerate(result.grid[row]):
                top = probs[pos].topk(3)
                assert [t.id for t in cell.top] == top.indices.tolist()
                assert max(abs(t.prob - p) for t, p in zip(cell.top, top.values.tolist())) <= TOLERANCE


def test_a_step_reads_one_new_position(pair):
    """A generation step (the prompt plus one token) is one trace for one column; the other
    columns are kept; the grid equals the native one."""
    native, nnsight = pair
    options = LensOptions(top_k=3)
    state = nnsight_lens_state(nnsight, "b")
    state.prepare(PROMPT, options)
    first = state.result()
    traces = state.traces
    ids = first.token_ids + [first.next_token.id]
    state.prepare(ids, options)
    stepped = state.result()
    assert state.traces == traces + 1
    assert state.next_token_id() == lens(native, ids, options).next_token.id
    assert_same_grid(lens(native, ids, options), stepped)


@pytest.mark.parametrize(
    "site, source",
    [
        (PatchSite(layer="L1", position=3), dict(source_prompt=OTHER)),
        (PatchSite(layer="embed", position=2), dict(ablate="zero")),
        (PatchSite(layer="L0", position=2, component="mlp"), dict(ablate="mean")),
        (PatchSite(layer="L1", position=4, component="L1H2"), dict(ablate="zero")),
        (PatchSite(layer="L0", position=-1, component="attn"), dict(source_prompt=OTHER)),
    ],
    ids=["resid-from-B", "embed-zero", "mlp-mean", "head-zero", "attn-from-B"],
)
def test_patch_matches_the_native_engine(pair, site, source):
    native, nnsight = pair
    options = LensOptions(top_k=4, track=("hello",))
    expected = native_causal.patch(native, PROMPT, site, options=options, **source)
    got = nnsight_causal.patch(nnsight, PROMPT, site, options=options, **source)
    assert got.spec == expected.spec
    assert got.cone == expected.cone
    assert_same_grid(expected.clean, got.clean)
    assert_same_grid(expected.patched, got.patched)
    for a, b in zip(expected.kl, got.kl, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b)) <= TOLERANCE
    for a, b in zip(expected.target_after, got.target_after, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b)) <= TOLERANCE


def test_steer_matches_the_native_engine(pair):
    native, nnsight = pair
    setting = SteerSetting(toward=" Paris", layer="L0", alpha=6.0, position=2)
    options = LensOptions(top_k=4)
    expected = native_causal.steer(native, PROMPT, setting, steps=3, options=options)
    got = nnsight_causal.steer(nnsight, PROMPT, setting, steps=3, options=options)
    assert got.spec.scale == pytest.approx(expected.spec.scale, rel=1e-6)
    assert [t.id for t in got.generated] == [t.id for t in expected.generated]
    assert [t.id for t in got.clean_generated] == [t.id for t in expected.clean_generated]
    assert got.cone == expected.cone
    assert_same_grid(expected.steered, got.steered)


@pytest.mark.parametrize(
    "mode, site, source",
    [("layers", PatchSite(position=-1), dict(source_prompt=OTHER)), ("positions", PatchSite(layer="L1"), dict(ablate="mean"))],
    ids=["layers-from-B", "positions-mean"],
)
def test_sweep_matches_the_native_engine(pair, mode, site, source):
    native, nnsight = pair
    expected = native_causal.sweep(native, PROMPT, site, mode=mode, track=("hello",), **source)
    got = nnsight_causal.sweep(nnsight, PROMPT, site, mode=mode, track=("hello",), **source)
    assert got.target == expected.target and got.source_answer == expected.source_answer
    assert [(p.layer, p.position, p.from_position, p.top.id, p.target_rank) for p in got.points] == [
        (p.layer, p.position, p.from_position, p.top.id, p.target_rank) for p in expected.points
    ]
    for a, b in zip(expected.points, got.points):
        assert abs(a.target_prob - b.target_prob) <= TOLERANCE and abs(a.kl - b.kl) <= TOLERANCE
    assert [t.id for t in got.clean_tracked] == [t.id for t in expected.clean_tracked]


def test_compare_matches_the_native_engine(pair):
    native, nnsight = pair
    options = LensOptions(top_k=3)
    expected = compare_rows(native, PROMPT, -1, OTHER, -2, options)
    got = engine_for(nnsight).compare_rows(nnsight, PROMPT, -1, OTHER, -2, options)
    assert got.positions == expected.positions
    assert max(abs(a - b) for a, b in zip(expected.kl, got.kl)) <= TOLERANCE
    assert_same_grid(expected.b, got.b)


def test_what_the_backend_cannot_do_says_so(pair):
    _, nnsight = pair
    with pytest.raises(InputError, match="extended lens"):
        lens(nnsight, PROMPT, LensOptions(lens="extended", extended_blocks=1))
    with pytest.raises(InputError, match="Patchscope runs a second prompt"):
        lens(nnsight, PROMPT, LensOptions(lens="patchscope"))
    # Locally the whole-vocabulary work runs on the plain model nnsight wraps.
    assert native_model(nnsight, "The speakability check") is nnsight.local


# ---------------------------------------------------------------- the remote path, serialized

# NDIF's sandbox (the ``ndif`` package, ``services/ray/nn/security``): the modules a request
# may import while it is unpickled and run. nnsight's own modules are all allowed here (the
# server has nnsight; its list names the modules of the release it runs).
NDIF_MODULES = ("builtins", "torch", "collections", "numpy", "math", "typing", "operator", "_operator",
                "enum", "copyreg", "cloudpickle", "pickle", "nnsight", "time", "einops", "_codecs")


class _WhitelistUnpickler(pickle.Unpickler):
    """Lists every module a payload refers to, and every module cloudpickle would import
    while loading it (``subimport``)."""

    def __init__(self, file, persistent):
        super().__init__(file)
        self.persistent = persistent
        self.modules: set[str] = set()

    def persistent_load(self, pid):
        return self.persistent.get(pid, pid)

    def find_class(self, module, name):
        self.modules.add(module)
        found = super().find_class(module, name)
        if name in ("subimport", "dynamic_subimport"):
            def checked(target, *args):
                self.modules.add(target)
                return found(target, *args)
            return checked
        return found


def test_the_request_ships_no_lenstui_code(pair):
    """The simulated transport serializes each trace exactly as nnsight's RemoteBackend
    does, deserializes it with lenstui's modules hidden (nnsight's LocalSimulationBackend)
    and runs it: the cells equal the local ones, and the payload names no module outside
    NDIF's sandbox whitelist (the in-trace code travels as source)."""
    import zstandard
    from nnsight.schema.request import RequestModel

    native, _ = pair
    simulated = wrap_local(tiny_llama() if native.name == "tiny-llama" else tiny_gpt2(), Transport.simulated())
    blobs = []
    original = RequestModel.serialize

    def keep(tracer, compress=False):
        blob = original(tracer, compress)
        blobs.append((blob, compress))
        return blob

    RequestModel.serialize = staticmethod(keep)
    try:
        options = LensOptions(top_k=4, track=("hello",))
        got = lens(simulated, PROMPT, options)
        nnsight_causal.patch(simulated, PROMPT, PatchSite(layer="L1", position=3), source_prompt=OTHER, options=options)
        nnsight_causal.steer(simulated, PROMPT, SteerSetting(toward=" Paris", layer="L0"), steps=2, options=options)
        nnsight_causal.sweep(simulated, PROMPT, PatchSite(position=-1), source_prompt=OTHER)
        engine_for(simulated).compare_rows(simulated, PROMPT, -1, OTHER, -1, options)
        engine_for(simulated).greedy_ids(simulated, got.token_ids, 2)
    finally:
        RequestModel.serialize = original
    assert_same_grid(lens(native, PROMPT, options), got)
    labels = [t.label for t in simulated.transport.traffic]
    assert labels == ["grid", "patch", "steer", "sweep", "grid", "compare", "steps"]
    for blob, compress in blobs:
        raw = zstandard.ZstdDecompressor().decompress(blob) if compress else blob
        # (Its file paths travel, for the server's tracebacks; no lenstui module does.)
        assert b"lenstui.engine" not in raw and b"lenstui.core" not in raw
        reader = _WhitelistUnpickler(io.BytesIO(raw), simulated.lm._remoteable_persistent_objects())
        reader.load()
        outside = {m for m in reader.modules if m.split(".")[0] not in NDIF_MODULES}
        assert not outside, outside


def test_the_cells_cost_less_than_the_hidden_states(pair):
    """What crosses the wire for a grid (measured: the compressed result) against what the
    residual stack alone would be in float32."""
    native, _ = pair
    simulated = wrap_local(tiny_llama() if native.name == "tiny-llama" else tiny_gpt2(), Transport.simulated())
    result = lens(simulated, PROMPT, LensOptions(top_k=10))
    traffic = simulated.transport.traffic[-1]
    hidden_bytes = len(result.layers) * len(result.tokens) * simulated.d_model * 4
    assert 0 < traffic.response_bytes < hidden_bytes
    assert traffic.request_bytes > 0


def test_the_key_never_shows():
    from lenstui.store.ndif import RemoteSettings

    transport = Transport.ndif("http://127.0.0.1:1", "sekrit-key-1234")
    assert "sekrit" not in repr(transport)
    assert "sekrit" not in repr(RemoteSettings("http://x", "sekrit-key-1234"))
    assert transport.scrub("Invalid API key format: 'sekrit-key-1234'.") == "Invalid API key format: '[key]'."
