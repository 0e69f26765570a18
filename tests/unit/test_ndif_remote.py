"""``--remote`` over a real network connection: lenstui's client (nnsight's RemoteBackend,
with lenstui's key, progress, cancel and sentences) against a loopback server that speaks
NDIF's protocol (``testkit/ndif_server.py``: HTTP POST + websocket, NDIF's status flow and
its refusal sentences, the request run with nnsight's own deserialize). That server is not
NDIF (no queue, Ray or sandbox): what these tests show is the wire and the client.

The model is a tiny one saved in a hub cache made here under a hub id (NDIF names models
by id); the client builds nnsight's meta model from its config and tokenizer only.
"""

from __future__ import annotations

import socket

import pytest

from lenstui.core.errors import Cancelled, LenstuiError, ModelLoadError
from lenstui.core.lenses import LensOptions
from lenstui.core.patch_result import PatchSite, SteerSetting
from lenstui.engine.backends import engine_for, native_model
from lenstui.engine.backends import open_model
from testkit.hub_cache import tiny_hub_cache, use_hub_cache
from testkit.ndif_server import LoopbackNdif


def lens(model, prompt, options, **kwargs):
    """The lens through the model's own backend (native, or nnsight)."""
    from lenstui.engine.backends import engine_for

    return engine_for(model).run_lens(model, prompt, options, **kwargs)

REPO = "lenstui-test/tiny-llama"
KEY = "3f1c2a9e-5b7d-4e21-9a0c-6d2e8f4b1a37"  # NDIF's keys are UUIDs
PROMPT = "The Eiffel Tower is located in the city of"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    return tiny_hub_cache(tmp_path_factory.mktemp("hub"), REPO)


@pytest.fixture(scope="module")
def server(hub):
    """NDIF-protocol server on loopback, serving the model saved under REPO."""
    running = LoopbackNdif.from_hub_cache(hub, REPO, KEY).start()
    yield running
    running.stop()


@pytest.fixture
def remote(server, hub, monkeypatch):
    """Open REPO with --remote against the loopback server, the key in NDIF_API_KEY."""
    use_hub_cache(monkeypatch, hub)
    monkeypatch.setenv("NDIF_API_KEY", KEY)

    def open_it(endpoint=None, **kwargs):
        return open_model(REPO, remote=True, endpoint=endpoint or server.url, **kwargs)

    return open_it


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_grid_comes_back_as_cells(remote, server, hub, monkeypatch):
    model = remote()
    assert model.backend == "nnsight" and model.remote and model.endpoint == server.url
    assert model.local is None and model.hf.device.type == "meta"  # no weights here
    messages = []
    state = engine_for(model).lens_state(model, progress=lambda m, f: messages.append(m))
    options = LensOptions(top_k=4, track=("hello",))
    state.prepare(PROMPT, options)
    got = state.result()
    reference = lens(open_model(REPO), PROMPT, options)  # the same weights, native, here
    for row_a, row_b in zip(reference.grid, got.grid):
        for a, b in zip(row_a, row_b):
            assert [t.id for t in a.top] == [t.id for t in b.top]
            assert max(abs(x.prob - y.prob) for x, y in zip(a.top, b.top)) <= 1e-5
            assert a.final_top1_rank == b.final_top1_rank
    assert [d.to_json() for d in reference.depth] == [d.to_json() for d in got.depth]
    # What crossed the wire, measured on both sides.
    sent = server.requests[-1]
    assert sent["headers"]["ndif-api-key"] == KEY
    assert sent["envelope"].model_key == server.model_key
    traffic = model.transport.traffic[-1]
    assert traffic.request_bytes == sent["blob_bytes"] and traffic.response_bytes == sent["result_bytes"]
    assert traffic.response_bytes < len(got.layers) * len(got.tokens) * model.d_model * 4
    assert any("queued" in m for m in messages) and any("running" in m for m in messages)


def test_a_step_is_one_request_for_one_column(remote, server):
    model = remote()
    options = LensOptions(top_k=3)
    first = lens(model, PROMPT, options)
    before = len(server.requests)
    stepped = lens(model, first.token_ids + [first.next_token.id], options)
    assert len(server.requests) == before + 1
    assert model.transport.traffic[-1].label == "step"
    assert len(stepped.tokens) == len(first.tokens) + 1
    assert stepped.grid[-1][:-1] == first.grid[-1]  # the earlier columns were kept


def test_patch_and_steer_run_remotely(remote):
    model = remote()
    engine = engine_for(model)
    patched = engine.patch(model, PROMPT, PatchSite(layer="L1", position=3), ablate="zero", options=LensOptions(top_k=3))
    assert patched.cone[3] is not None and any(v > 0 for row in patched.kl for v in row)
    steered = engine.steer(model, PROMPT, SteerSetting(toward=" Paris", layer="L0", alpha=8.0), steps=2)
    assert len(steered.generated) == 2
    assert [t.label for t in model.transport.traffic[-2:]] == ["patch", "steer"]


@pytest.mark.parametrize("wrong", ["0" * 8 + KEY[8:], "not-a-uuid-" + KEY], ids=["unknown", "malformed"])
def test_a_rejected_key_is_one_sentence_and_the_session_goes_on(remote, server, wrong):
    model = remote()
    model.transport.api_key = wrong
    with pytest.raises(LenstuiError) as refused:
        lens(model, PROMPT, LensOptions(top_k=3))
    assert "rejected the API key" in str(refused.value)
    assert wrong not in str(refused.value)  # NDIF quotes a malformed key back: not here
    model.transport.api_key = KEY  # the same model, the right key: the next request works
    assert lens(model, PROMPT, LensOptions(top_k=3)).complete


def test_a_model_the_server_does_not_host(remote, server, hub, monkeypatch):
    other = "lenstui-test/other-model"
    tiny_hub_cache(hub, other, seed=1)
    # At open: /status does not list it.
    with pytest.raises(ModelLoadError, match="does not host lenstui-test/other-model"):
        open_model(other, remote=True, endpoint=server.url)
    # At a request (a server whose status does not list models): NDIF's own refusal.
    from lenstui.engine.backends.nnsight.model import open_remote
    from lenstui.engine.backends.nnsight.transport import Transport

    model = open_remote(other, Transport.ndif(server.url, KEY))
    with pytest.raises(LenstuiError, match="could not deploy lenstui-test/other-model .*is not served here"):
        lens(model, PROMPT, LensOptions(top_k=3))


def test_no_network_at_open_is_one_sentence(remote):
    with pytest.raises(ModelLoadError, match="Cannot reach NDIF at http://127.0.0.1"):
        remote(endpoint=f"http://127.0.0.1:{closed_port()}")


def test_a_job_past_its_timeout_and_a_cancel(remote, server):
    model = remote()
    server.delay_s = 3.0
    try:
        model.transport.timeout_s = 0.5
        with pytest.raises(LenstuiError, match="did not finish the request within"):
            lens(model, PROMPT, LensOptions(top_k=3))
        model.transport.timeout_s = 60
        asked = []
        state = engine_for(model).lens_state(model, "b")
        state.prepare(PROMPT, LensOptions(top_k=5))
        with pytest.raises(Cancelled):
            state.result(lambda: bool(asked.append(1)) or len(asked) > 3)
    finally:
        server.delay_s = 0.0
    assert lens(model, PROMPT, LensOptions(top_k=3)).complete  # and the session goes on


def test_what_stays_here_says_so(remote):
    model = remote()
    with pytest.raises(LenstuiError) as refused:
        native_model(model, "The speakability check", vocabulary=True)
    text = str(refused.value)
    assert "whole unembedding (W_U" in text and "stay on NDIF" in text
    with pytest.raises(LenstuiError, match="tuned lens"):
        lens(model, PROMPT, LensOptions(lens="tuned"))


def test_no_key_refuses_before_anything(hub, monkeypatch):
    use_hub_cache(monkeypatch, hub)
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    with pytest.raises(ModelLoadError, match="needs an NDIF API key"):
        open_model(REPO, remote=True, endpoint=f"http://127.0.0.1:{closed_port()}")


def test_the_worker_never_logs_the_key(remote, server, monkeypatch):
    """Through the worker (the app's path): a rejected key's Failed sentence, and a crash
    after a remote answer (its traceback in the crash log), both without the key."""
    from lenstui.engine.backends.nnsight import state as nnsight_state
    from lenstui.jobs.handlers import HANDLERS
    from lenstui.jobs.protocol import Done, Failed, LoadModel, RunLens
    from lenstui.jobs.scheduler import ModelWorker
    from lenstui.store.crash_log import crash_log_path

    wrong = "not-a-uuid-" + KEY
    results = []
    worker = ModelWorker(results.append, handlers=HANDLERS).start()
    try:
        worker.submit(LoadModel(REPO, backend="nnsight", remote=True, endpoint=server.url))
        worker.submit(RunLens(PROMPT))
        _wait(lambda: any(isinstance(r, (Done, Failed)) and isinstance(r.request, RunLens) for r in results))
        info = next(r.value for r in results if isinstance(r, Done) and isinstance(r.request, LoadModel))
        assert (info.backend, info.remote, info.endpoint) == ("nnsight", True, server.url)
        assert info.limits and all(sentence.endswith(".") for sentence in info.limits)
        monkeypatch.setenv("NDIF_API_KEY", wrong)
        worker.submit(LoadModel(REPO, backend="nnsight", remote=True, endpoint=server.url))
        worker.submit(RunLens(PROMPT + " again"))
        _wait(lambda: sum(isinstance(r.request, RunLens) and isinstance(r, (Done, Failed)) for r in results) >= 2)
        failed = [r for r in results if isinstance(r, Failed)]
        assert failed and "rejected the API key" in failed[-1].message
        monkeypatch.setenv("NDIF_API_KEY", KEY)

        def broken(cells):
            raise RuntimeError("the cells could not be read")

        monkeypatch.setattr(nnsight_state, "stats_of", broken)
        worker.submit(LoadModel(REPO, backend="nnsight", remote=True, endpoint=server.url))
        worker.submit(RunLens(PROMPT + " once more"))
        _wait(lambda: sum(isinstance(r.request, RunLens) and isinstance(r, (Done, Failed)) for r in results) >= 3)
    finally:
        worker.stop()
    crash = crash_log_path().read_text()
    assert "the cells could not be read" in crash
    for text in [crash] + [repr(r) for r in results]:
        assert KEY not in text and wrong not in text


def _wait(condition, seconds: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the worker did not answer"
        time.sleep(0.05)
