"""The whole-vocabulary scan: same verdicts as the single check, proofs that re-check,
interruptible and resumable, cached per model, CSV/JSON output."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from lenstui.core.errors import Cancelled
from lenstui.engine.speak import scan as scan_module
from lenstui.engine.speak.check import as_readout
from lenstui.engine.speak.geometry import readout_from_arrays
from lenstui.engine.speak.scan import load_cached_scan, scan_vocabulary
from lenstui.engine.speak.scan_cache import scan_dir
from testkit.speak_checks import assert_certificates_recheck, assert_scan_matches_single_checks


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """Where scans are kept (the data dir: a scan is work a user asked for)."""
    monkeypatch.setenv("LENSTUI_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_tiny_models_whole_vocabulary(which, request, cache_dir):
    model = request.getfixturevalue(which)
    result = scan_vocabulary(model)
    assert result.complete and result.n_scanned == model.d_vocab
    counts = result.counts()
    assert counts["pending"] == 0
    assert counts["speakable"] + counts["unspeakable"] + counts["undetermined"] == model.d_vocab
    assert_scan_matches_single_checks(model, result, range(model.d_vocab))
    speakable = result.verdicts == scan_module.SPEAKABLE
    assert (result.margin[speakable] > result.speak_tolerance * 0.99).all()
    assert_certificates_recheck(model, result)
    if which == "tiny_llama":
        assert 0 in result.unspeakable_ids  # the zero padding row
    # cached under this model's key; a different model never reuses it
    cached = load_cached_scan(model)
    assert cached is not None and cached.complete
    assert np.array_equal(cached.verdicts, result.verdicts)
    assert scan_dir(as_readout(model)).name.startswith(model.name)


def test_cache_keys_differ_between_models(tiny_llama, tiny_gpt2, cache_dir):
    from testkit.models import tiny_llama as build

    other = build(seed=1)  # same name, same architecture, different weights
    keys = {scan_dir(as_readout(m)) for m in (tiny_llama, tiny_gpt2, other)}
    assert len(keys) == 3
    scan_vocabulary(tiny_llama)
    assert load_cached_scan(other) is None


def test_interrupt_keeps_what_is_done_and_resume_finishes(tiny_gpt2, cache_dir, monkeypatch):
    monkeypatch.setattr(scan_module, "CHUNK", 40)  # several chunks on a 386-token vocabulary
    calls = {"n": 0}

    def stop_after_three():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        scan_vocabulary(tiny_gpt2, should_stop=stop_after_three)
    partial = load_cached_scan(tiny_gpt2)
    assert partial is not None and not partial.complete
    done = int((partial.hard >= 0).sum())
    assert 0 < done < tiny_gpt2.d_vocab

    seen = []
    resumed = scan_vocabulary(tiny_gpt2, progress=lambda m, f: seen.append((f, m)))
    assert resumed.complete
    # the resumed run only did the remaining tokens' first phase
    first_phase = [m for f, m in seen if m.startswith("own direction")]
    assert first_phase and first_phase[-1].endswith(f"/{tiny_gpt2.d_vocab - done:,}")
    fresh = scan_vocabulary(tiny_gpt2, resume=False, cache=False)
    assert np.array_equal(fresh.verdicts, resumed.verdicts)
    assert np.array_equal(fresh.hard, resumed.hard)
    assert np.array_equal(fresh.best_match, resumed.best_match)


def test_ctrl_c_in_the_middle_saves_the_partial_scan(tiny_llama, cache_dir, monkeypatch):
    monkeypatch.setattr(scan_module, "CHUNK", 64)
    seen = []

    def progress(message, fraction):
        seen.append(message)
        if len(seen) == 3:
            raise KeyboardInterrupt  # what Ctrl-C looks like inside the scan loop

    with pytest.raises(KeyboardInterrupt):
        scan_vocabulary(tiny_llama, progress=progress)
    partial = load_cached_scan(tiny_llama)
    assert partial is not None and not partial.complete and (partial.hard >= 0).sum() == 3 * 64
    assert scan_vocabulary(tiny_llama).complete


def test_constructed_cloud_matches_hull_membership(cache_dir):
    from scipy.optimize import linprog

    rng = np.random.default_rng(3)
    rows = rng.normal(size=(300, 5)) + 2.0
    readout = readout_from_arrays(rows, kind="RMS")
    result = scan_vocabulary(readout)
    assert result.complete
    for t in range(0, 300, 3):
        others = np.delete(rows, t, axis=0)
        A_eq = np.vstack([others.T, np.ones(len(others))])
        inside = linprog(np.zeros(len(others)), A_eq=A_eq, b_eq=np.append(rows[t], 1.0), bounds=(0, None)).status == 0
        assert result.verdict(t) == ("unspeakable" if inside else "speakable"), t
    assert result.unspeakable_ids  # a 5-d cloud of 300 points has interior points
    assert_certificates_recheck(readout, result)


def test_layernorm_with_bias_whole_vocabulary(cache_dir):
    from testkit.models import tiny_gpt2 as build

    model = build(seed=5)
    with torch.no_grad():
        norm = model.bridge.ln_final.original_component
        torch.manual_seed(5)
        norm.bias.copy_(torch.randn_like(norm.bias) * 0.5)
    result = scan_vocabulary(model, cache=False)
    assert result.complete
    assert_scan_matches_single_checks(model, result, range(0, model.d_vocab, 5))
    assert_certificates_recheck(model, result)


def test_writes_csv_and_json(tiny_llama, cache_dir, tmp_path):
    from lenstui.store.scan_export import write_scan

    result = scan_vocabulary(tiny_llama)
    write_scan(result, tmp_path / "scan.csv")
    write_scan(result, tmp_path / "scan.json")
    with open(tmp_path / "scan.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == tiny_llama.d_vocab
    assert rows[0]["verdict"] == "unspeakable" and rows[0]["certificate"]
    assert {r["verdict"] for r in rows} <= {"speakable", "unspeakable", "undetermined"}
    payload = json.loads((tmp_path / "scan.json").read_text(encoding="utf-8"))
    assert payload["counts"] == result.counts() and payload["complete"]
    assert len(payload["tokens"]) == tiny_llama.d_vocab
    zero = payload["tokens"][0]
    assert zero["verdict"] == "unspeakable" and zero["certificate"]["combination"]
    assert payload["tokens"][5]["text"] == tiny_llama.decode(5)


def test_worker_handlers_run_checks_and_scans(tiny_llama, cache_dir):
    """The handlers the app registers, on the real model worker thread."""
    import queue

    from lenstui.jobs.handlers import scan_handler, speak_handler
    from lenstui.jobs.protocol import CheckSpeakable, Done, LoadModel, ScanVocabulary
    from lenstui.jobs.scheduler import ModelWorker

    results: "queue.Queue" = queue.Queue()
    worker = ModelWorker(results.put, loader=lambda spec, **kw: tiny_llama).start()
    try:
        worker.register(CheckSpeakable, speak_handler)
        worker.register(ScanVocabulary, scan_handler)
        worker.submit(LoadModel())
        check_seq = worker.submit(CheckSpeakable(token_id=0))
        scan_seq = worker.submit(ScanVocabulary())
        done = {}
        while len(done) < 2:
            result = results.get(timeout=120)
            if isinstance(result, Done) and result.seq in (check_seq, scan_seq):
                done[result.seq] = result.value
            assert type(result).__name__ != "Failed", result
        assert done[check_seq].verdict == "unspeakable"
        assert done[scan_seq].complete and 0 in done[scan_seq].unspeakable_ids
        cached_seq = worker.submit(ScanVocabulary(cached_only=True))
        while True:
            result = results.get(timeout=120)
            if isinstance(result, Done) and result.seq == cached_seq:
                assert result.value.complete
                break
    finally:
        worker.stop()
