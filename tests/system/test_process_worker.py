"""The model in its own process (``jobs.process.ProcessWorker``): answers equal to the
in-process engine's, torch never imported on the UI's side, and the boundary's failures:
a worker killed mid-run, a worker that fails to start, a request cancelled mid-stream,
a job that does not yield to its cancel."""

from __future__ import annotations

import os
import queue
import signal
import time

import pytest

from lenstui.core.lenses import LensOptions
from lenstui.core.packed_grid import PackedGrid
from lenstui.engine.lens.run import run_lens
from lenstui.jobs.process import ProcessWorker
from lenstui.jobs.protocol import Done, Failed, LoadModel, Partial, RunLens, Stopped
from lenstui.jobs.transport import dumps, loads
from testkit.procstat import spends_cpu

TIMEOUT = 180
PROMPT = "hello world, hello tokens, hello bytes"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from testkit.models import tiny_llama_hf

    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    hf_model, tokenizer = tiny_llama_hf()
    hf_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def worker():
    results: "queue.Queue" = queue.Queue()
    restarts: list[str] = []
    made = ProcessWorker(results.put, on_restart=restarts.append)
    made.results, made.restart_messages = results, restarts
    yield made
    made.stop()


def final(worker, kind, timeout=TIMEOUT):
    """Results until the next final one of ``kind`` (returned with everything before it)."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        result = worker.results.get(timeout=max(0.1, deadline - time.monotonic()))
        seen.append(result)
        if isinstance(result, (Done, Failed, Stopped)) and isinstance(result.request, kind):
            return result, seen


def test_a_lens_run_in_the_child_equals_the_engine_in_process(worker, tiny_dir):
    from lenstui.engine.model.load import load_model

    worker.start()
    worker.submit(LoadModel(str(tiny_dir)))
    assert isinstance(final(worker, LoadModel)[0], Done)
    seq = worker.submit(RunLens(PROMPT, first_positions=(-1,), options=LensOptions(top_k=5, track=(" hello",))))
    done, seen = final(worker, RunLens)
    assert isinstance(done, Done) and done.seq == seq and worker.is_current(done)
    assert any(isinstance(r, Partial) for r in seen)  # streamed as in-process
    got = done.value
    assert isinstance(got.grid, PackedGrid)  # arrays crossed the pipe, not cells
    want = run_lens(load_model(str(tiny_dir)), PROMPT, LensOptions(top_k=5, track=(" hello",)))
    assert got.layers == want.layers and got.token_ids == want.token_ids
    for got_row, want_row in zip(got.grid, want.grid):
        for a, b in zip(got_row, want_row):  # every field of every cell (columns read in other batches)
            assert [(t.id, t.text, t.piece) for t in a.top] == [(t.id, t.text, t.piece) for t in b.top]
            assert [t.prob for t in a.top] == pytest.approx([t.prob for t in b.top], rel=1e-5, abs=1e-7)
            assert (a.entropy, a.kl_to_final, a.target_prob) == pytest.approx((b.entropy, b.kl_to_final, b.target_prob), rel=1e-4, abs=1e-6)
            assert (a.target_rank, a.final_top1_rank) == (b.target_rank, b.final_top1_rank)
            assert [(t.id, t.rank) for t in a.tracked] == [(t.id, t.rank) for t in b.tracked]
    assert [d.top1 for d in got.depth] == [d.top1 for d in want.depth]
    assert worker.busy_kinds() == set()


def test_packing_keeps_every_field_and_streams_pending_grids_whole(tiny_llama):
    result = run_lens(tiny_llama, PROMPT, LensOptions(top_k=4, track=(" world",)))
    back = loads(dumps(Done(1, RunLens(PROMPT), result)))
    assert isinstance(back.value.grid, PackedGrid)
    assert back.value.to_json() == result.to_json()
    assert loads(dumps(result.placeholders())).grid == result.placeholders().grid  # not packed


def test_the_ui_side_never_imports_torch(tmp_path, tiny_dir):
    from testkit.cli import run_fresh

    done = run_fresh(
        f"""
        import queue, sys
        from lenstui.jobs.process import ProcessWorker
        from lenstui.core.lenses import LensOptions
        from lenstui.jobs.protocol import Done, LoadModel, RunLens
        results = queue.Queue()
        worker = ProcessWorker(results.put).start()
        worker.submit(LoadModel({str(tiny_dir)!r}))
        worker.submit(RunLens("hello world", options=LensOptions(top_k=3)))
        while True:
            result = results.get(timeout=180)
            if isinstance(result, Done) and isinstance(result.request, RunLens):
                break
        cell = result.value.grid[-1][-1]
        worker.stop()
        print(cell.top[0].id >= 0, "torch" in sys.modules, "transformers" in sys.modules)
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False", "False"]


@pytest.mark.integration
def test_a_worker_killed_mid_run_is_a_failure_then_a_restart_with_the_model_reloaded(worker, embedded):
    worker.start()
    worker.submit(LoadModel())
    assert isinstance(final(worker, LoadModel)[0], Done)
    long_prompt = " ".join(["the"] * 1500)  # a forward long enough to kill it inside
    worker.submit(RunLens(long_prompt))
    assert spends_cpu(worker.child_pids[-1], 0.3), "the child never started the run"  # inside the forward now
    os.kill(worker.child_pids[-1], signal.SIGKILL)
    failed, _ = final(worker, RunLens)
    assert isinstance(failed, Failed) and "killed by SIGKILL" in failed.message
    assert worker.restart_messages and "reloading the model" in worker.restart_messages[0]
    assert isinstance(final(worker, LoadModel)[0], Done)  # loaded again by itself
    worker.submit(RunLens("The Eiffel Tower is in"))
    done, _ = final(worker, RunLens)
    assert isinstance(done, Done) and worker.restarts == 1 and len(worker.child_pids) == 2


@pytest.mark.integration
def test_a_cancelled_job_that_does_not_yield_costs_its_process(worker, embedded):
    worker.kill_grace = 0.3
    worker.start()
    worker.submit(LoadModel())
    assert isinstance(final(worker, LoadModel)[0], Done)
    worker.submit(RunLens(" ".join(["the"] * 1500)))  # one forward pass: no place to stop
    assert spends_cpu(worker.child_pids[-1], 0.3), "the child never started the run"  # inside the forward now
    assert worker.cancel(RunLens)
    ended, _ = final(worker, RunLens)
    assert isinstance(ended, Failed) and "did not stop within 0.3 s" in ended.message
    assert worker.restarts == 1


@pytest.mark.integration
def test_a_request_cancelled_mid_stream_ends_stopped(worker, embedded):
    worker.start()
    worker.submit(LoadModel())
    assert isinstance(final(worker, LoadModel)[0], Done)
    worker.submit(RunLens(" ".join(["plasma"] * 400), first_positions=(-1,)))
    while not isinstance(worker.results.get(timeout=TIMEOUT), Partial):
        pass  # the first columns are in: the stream is on its way
    assert worker.cancel(RunLens)
    ended, _ = final(worker, RunLens)
    assert isinstance(ended, Stopped) and worker.restarts == 0 and worker.busy_kinds() == set()


def test_a_worker_that_cannot_start_says_so_and_stops_trying(tmp_path):
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\nexit 3\n")
    broken.chmod(0o755)
    results: "queue.Queue" = queue.Queue()
    worker = ProcessWorker(results.put, python=str(broken)).start()
    try:
        seq = worker.submit(LoadModel())
        deadline = time.monotonic() + 30
        while worker.gave_up is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.gave_up is not None and "exit status 3" in worker.gave_up
        answers = []
        while not results.empty():
            answers.append(results.get())
        assert any(isinstance(r, Failed) and isinstance(r.request, LoadModel) for r in answers), answers
        later = worker.submit(RunLens("hello"))  # answered at once, with the reason
        failed = results.get(timeout=5)
        assert isinstance(failed, Failed) and failed.seq == later > seq and failed.message == worker.gave_up
    finally:
        worker.stop()


def test_an_early_started_worker_keeps_what_comes_before_it_is_attached(tmp_path):
    # cli/app_cmd starts the model's process before Textual is imported; the app attaches
    # to it later. Nothing the child says meanwhile may be lost, or come out of order.
    worker = ProcessWorker(None).start()
    try:
        missing = str(tmp_path / "no-such-model")
        first = worker.submit(LoadModel(missing))
        deadline = time.monotonic() + TIMEOUT
        while worker.busy_kinds() and time.monotonic() < deadline:
            time.sleep(0.05)  # answered, and held: there is no receiver yet
        assert worker.busy_kinds() == set()
        results: "queue.Queue" = queue.Queue()
        worker.attach(results.put)
        second = worker.submit(LoadModel(missing + "-too"))
        answers = [results.get(timeout=TIMEOUT)]
        while not (isinstance(answers[-1], Failed) and answers[-1].seq == second):
            answers.append(results.get(timeout=TIMEOUT))
        finals = [r for r in answers if isinstance(r, (Done, Failed, Stopped))]
        assert [r.seq for r in finals] == [first, second]
        assert all(isinstance(r, Failed) and "no-such-model" in r.message for r in finals)
    finally:
        worker.stop()


def test_the_models_process_runs_below_the_uis_priority(worker):
    # So a key's echo gets a core at once while the model's threads fill every core.
    worker.start()
    child = worker.child_pids[-1]
    deadline = time.monotonic() + 30
    while os.getpriority(os.PRIO_PROCESS, child) == os.getpriority(os.PRIO_PROCESS, 0) and time.monotonic() < deadline:
        time.sleep(0.05)  # it lowers its own priority as it starts
    assert os.getpriority(os.PRIO_PROCESS, child) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
