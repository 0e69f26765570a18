"""The model worker on tiny local models: supersede, stale results, errors, interleaving.

The worker's ``post`` is a plain queue here (no Textual). Handlers that block on
events make the orderings deterministic; the queue timeouts only stop a broken
worker from hanging the suite, they assert nothing about speed.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import ClassVar

import pytest

from lenstui.core.errors import ModelLoadError
from lenstui.core.lens_result import LensResult
from lenstui.jobs.protocol import (
    CheckSpeakable,
    Done,
    Failed,
    InspectToken,
    LoadModel,
    ModelInfo,
    Progress,
    Request,
    RunLens,
    ScanVocabulary,
    Stopped,
)
from lenstui.jobs.scheduler import ModelWorker

PROMPT = "The Eiffel Tower is located in the city of"
TIMEOUT = 120


@dataclass(frozen=True)
class Blocking(Request):
    """A test-only kind whose handler waits until released or stopped."""

    label: str = ""
    needs_model: ClassVar[bool] = False


class Harness:
    def __init__(self, model=None, loader=None):
        self.results: "queue.Queue" = queue.Queue()
        self.seen: list = []
        if loader is None and model is not None:
            loader = lambda spec, **kw: model  # noqa: E731
        self.worker = ModelWorker(self.results.put, loader=loader).start()

    def next(self, predicate=lambda r: True):
        """The next posted result that satisfies ``predicate`` (others are kept in .seen)."""
        while True:
            result = self.results.get(timeout=TIMEOUT)
            self.seen.append(result)
            if predicate(result):
                return result

    def final(self, seq):
        return self.next(lambda r: r.seq == seq and not isinstance(r, Progress))

    def close(self):
        self.worker.stop()


@pytest.fixture
def harness_factory():
    made = []

    def make(**kw):
        h = Harness(**kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def blocking_handler(started: threading.Event, release: threading.Event):
    def handle(model, request, ctx):
        started.set()
        while not release.wait(0.01):
            if ctx.should_stop():
                ctx.checkpoint()  # raises Cancelled
        return request.label

    return handle


def test_load_then_lens(harness_factory, tiny_gpt2):
    h = harness_factory(model=tiny_gpt2)
    load_seq = h.worker.submit(LoadModel())
    loaded = h.final(load_seq)
    assert isinstance(loaded, Done) and isinstance(loaded.value, ModelInfo)
    assert loaded.value.n_layers == 3 and loaded.value.has_chat_template is False
    seq = h.worker.submit(RunLens(PROMPT))
    done = h.final(seq)
    assert isinstance(done, Done) and isinstance(done.value, LensResult)
    assert done.value.layers[-1] == "L2" and h.worker.is_current(done)


def test_requests_sent_before_the_model_loads_run_when_it_is_ready(harness_factory, tiny_gpt2):
    gate = threading.Event()

    def slow_loader(spec, **kw):
        gate.wait(TIMEOUT)
        return tiny_gpt2

    h = harness_factory(loader=slow_loader)
    lens_seq = h.worker.submit(RunLens(PROMPT))  # before the load is even asked for
    load_seq = h.worker.submit(LoadModel())
    gate.set()
    assert isinstance(h.final(load_seq), Done)
    assert isinstance(h.final(lens_seq), Done)


def test_a_newer_request_stops_the_running_one(harness_factory):
    started, release = threading.Event(), threading.Event()
    h = harness_factory()
    h.worker.register(Blocking, blocking_handler(started, release))
    first = h.worker.submit(Blocking("first"))
    assert started.wait(TIMEOUT)
    second = h.worker.submit(Blocking("second"))
    stopped = h.final(first)
    assert isinstance(stopped, Stopped) and not h.worker.is_current(stopped)
    release.set()
    done = h.final(second)
    assert isinstance(done, Done) and done.value == "second" and h.worker.is_current(done)


def test_queued_requests_of_the_same_kind_are_dropped(harness_factory, tiny_gpt2):
    started, release = threading.Event(), threading.Event()
    h = harness_factory(model=tiny_gpt2)
    h.worker.register(Blocking, blocking_handler(started, release))
    h.final(h.worker.submit(LoadModel()))
    h.worker.submit(Blocking("hold the thread"))
    assert started.wait(TIMEOUT)
    stale = [h.worker.submit(RunLens(f"prompt {i}")) for i in range(3)]
    newest = h.worker.submit(RunLens(PROMPT))
    release.set()
    done = h.final(newest)
    assert isinstance(done, Done) and done.value.tokens[0].text.startswith("The")
    assert not any(r.seq in stale for r in h.seen)  # dropped without a result


def test_a_stale_result_is_never_current(harness_factory, tiny_gpt2):
    h = harness_factory(model=tiny_gpt2)
    h.final(h.worker.submit(LoadModel()))
    old = h.final(h.worker.submit(RunLens("hello world")))
    assert h.worker.is_current(old)
    new_seq = h.worker.submit(RunLens(PROMPT))
    assert not h.worker.is_current(old)  # a late arrival of `old` would be dropped by the app
    assert h.worker.is_current(h.final(new_seq))


def test_errors_become_results_and_the_worker_keeps_serving(harness_factory, tiny_llama):
    h = harness_factory(model=tiny_llama)
    h.final(h.worker.submit(LoadModel()))
    empty = h.final(h.worker.submit(RunLens("")))
    assert isinstance(empty, Failed) and "empty" in empty.message

    def broken(model, request, ctx):
        raise RuntimeError("boom")

    h.worker.register(InspectToken, broken)
    crash = h.final(h.worker.submit(InspectToken(3)))
    assert isinstance(crash, Failed) and "RuntimeError" in crash.message
    chat = h.final(h.worker.submit(RunLens(PROMPT, chat=True)))  # no chat template
    assert isinstance(chat, Failed) and "chat template" in chat.message
    missing = h.final(h.worker.submit(CheckSpeakable(3)))  # nobody registered it
    assert isinstance(missing, Failed) and "CheckSpeakable" in missing.message
    assert isinstance(h.final(h.worker.submit(RunLens(PROMPT))), Done)


def test_a_failed_load_fails_waiting_requests_and_a_later_load_recovers(harness_factory, tiny_gpt2):
    def loader(spec, **kw):
        if spec == "/no/such.gguf":
            raise ModelLoadError("No GGUF file at /no/such.gguf: check the path.")
        return tiny_gpt2

    h = harness_factory(loader=loader)
    bad = h.worker.submit(LoadModel("/no/such.gguf"))
    lens = h.worker.submit(RunLens(PROMPT))
    failed = h.final(bad)
    assert isinstance(failed, Failed) and "No GGUF file" in failed.message
    waiting = h.final(lens)
    assert isinstance(waiting, Failed) and "No model is loaded" in waiting.message
    assert isinstance(h.final(h.worker.submit(LoadModel())), Done)
    assert isinstance(h.final(h.worker.submit(RunLens(PROMPT))), Done)


def test_token_ids_prompt_runs_as_given(harness_factory, tiny_gpt2):
    h = harness_factory(model=tiny_gpt2)
    h.final(h.worker.submit(LoadModel()))
    first = h.final(h.worker.submit(RunLens(PROMPT))).value
    stepped = tuple(first.token_ids) + (first.next_token.id,)
    second = h.final(h.worker.submit(RunLens(stepped))).value
    assert second.token_ids == list(stepped)


def test_short_requests_run_between_chunks_of_a_long_scan(harness_factory, tiny_gpt2):
    lens_queued = threading.Event()
    chunks_run = []

    def scan(model, request, ctx):
        for chunk in range(4):
            if chunk == 1:
                assert lens_queued.wait(TIMEOUT)
            ctx.checkpoint()  # the queued lens run happens here, on this thread
            chunks_run.append(chunk)
            ctx.progress(f"chunk {chunk}", (chunk + 1) / 4)
        return list(chunks_run)

    h = harness_factory(model=tiny_gpt2)
    h.worker.register(ScanVocabulary, scan)
    h.final(h.worker.submit(LoadModel()))
    scan_seq = h.worker.submit(ScanVocabulary())
    h.next(lambda r: isinstance(r, Progress) and r.seq == scan_seq)  # the scan is running
    lens_seq = h.worker.submit(RunLens(PROMPT))
    lens_queued.set()
    lens_done = h.final(lens_seq)
    assert isinstance(lens_done, Done)
    scan_done = h.final(scan_seq)
    assert isinstance(scan_done, Done) and scan_done.value == [0, 1, 2, 3]  # never restarted
    order = [r.seq for r in h.seen if not isinstance(r, Progress)]
    assert order.index(lens_seq) < order.index(scan_seq)


def test_load_model_stops_running_jobs(harness_factory, tiny_gpt2):
    started, release = threading.Event(), threading.Event()
    h = harness_factory(model=tiny_gpt2)
    h.worker.register(Blocking, blocking_handler(started, release))
    job = h.worker.submit(Blocking("old model"))
    assert started.wait(TIMEOUT)
    load = h.worker.submit(LoadModel())
    assert isinstance(h.final(job), Stopped)
    assert isinstance(h.final(load), Done)


def test_register_rejects_non_requests():
    worker = ModelWorker(lambda result: None)
    with pytest.raises(TypeError):
        worker.register(dict, lambda *a: None)


def test_a_failed_switch_keeps_the_loaded_model_serving(harness_factory, tiny_gpt2, tiny_llama):
    def loader(spec, **kw):
        if spec == "/no/such.gguf":
            raise ModelLoadError("No GGUF file at /no/such.gguf: check the path.")
        return tiny_llama if spec == "llama" else tiny_gpt2

    h = harness_factory(loader=loader)
    assert isinstance(h.final(h.worker.submit(LoadModel())), Done)
    failed = h.final(h.worker.submit(LoadModel("/no/such.gguf")))
    assert isinstance(failed, Failed) and "No GGUF file" in failed.message
    after = h.final(h.worker.submit(RunLens(PROMPT)))
    assert isinstance(after, Done) and after.value.model == tiny_gpt2.name  # the first model, still loaded
    assert isinstance(h.final(h.worker.submit(LoadModel("llama"))), Done)
    switched = h.final(h.worker.submit(RunLens(PROMPT)))
    assert isinstance(switched, Done) and switched.value.model == tiny_llama.name


def test_scenes_render_one_by_one_current_first_and_let_lens_runs_in(harness_factory, tiny_gpt2):
    from lenstui.jobs.handlers import render_scenes_handler
    from lenstui.jobs.protocol import Partial, RenderScenes, SceneRender
    from lenstui.talks.format import Scene

    lens_queued = threading.Event()

    def render(model, request, ctx):
        # The real handler, with a pause after the first scene so a lens run can queue.
        calls = []
        original = ctx.checkpoint

        def checkpoint():
            if calls:
                assert lens_queued.wait(TIMEOUT)
            calls.append(1)
            original()

        ctx.checkpoint = checkpoint
        return render_scenes_handler(model, request, ctx)

    scenes = (
        Scene(1, title="one", prompt=PROMPT),
        Scene(2, title="two", prompt=PROMPT, steps=2),
        Scene(3, title="too long", prompt_ids=[5] * (tiny_gpt2.n_ctx + 1)),
    )
    h = harness_factory(model=tiny_gpt2)
    h.worker.register(RenderScenes, render)
    h.final(h.worker.submit(LoadModel()))
    seq = h.worker.submit(RenderScenes(scenes, order=(2, 3, 1)))
    first = h.next(lambda r: isinstance(r, Partial) and r.seq == seq)
    lens = h.worker.submit(RunLens(PROMPT))
    lens_queued.set()
    lens_done = h.final(lens)
    done = h.next(lambda r: r.seq == seq and not isinstance(r, (Progress, Partial)))
    assert isinstance(done, Done) and done.value == 3
    partials = [r for r in h.seen if isinstance(r, Partial)]
    assert [p.value.number for p in partials] == [2, 3, 1]  # in the order asked
    finals = [r.seq for r in h.seen if not isinstance(r, (Progress, Partial))]
    assert finals.index(lens) < finals.index(seq)  # the lens run got in between scenes
    two: SceneRender = first.value
    # Scene 2: two greedy steps, checked against the plain lens run's own next tokens.
    prompt_ids = list(lens_done.value.token_ids)
    step1 = lens_done.value.next_token.id
    step2 = h.final(h.worker.submit(RunLens(tuple(prompt_ids + [step1])))).value.next_token.id
    assert two.result.token_ids == prompt_ids + [step1, step2]
    assert two.prompt_length == len(prompt_ids) and two.request == RunLens(tuple(two.result.token_ids))
    too_long = partials[1].value
    assert too_long.result is None and f"reads at most {tiny_gpt2.n_ctx}" in too_long.problem
    one = partials[2].value
    assert one.request == RunLens(PROMPT) and one.result.token_ids == prompt_ids
