"""The whole-vocabulary scan: same verdicts as the single check, proofs that re-check,
interruptible and resumable, cached per model, CSV/JSON output."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from lenstui.core.errors import Cancelled
from lenstui.engine.speak import scan as scan_module
from lenstui.engine.speak.check import as_readout, check_speakable
from lenstui.engine.speak.geometry import readout_from_arrays
from lenstui.engine.speak.scan import load_cached_scan, scan_vocabulary
from lenstui.engine.speak.scan_cache import scan_dir


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """Where scans are kept (the data dir: a scan is work a user asked for)."""
    monkeypatch.setenv("LENSTUI_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def assert_scan_matches_single_checks(model, result, ids):
    for t in ids:
        single = check_speakable(model, t)
        assert result.verdict(t) == single.verdict, t
        assert result.is_hard_to_speak(t) == single.hard_to_speak, t
        assert int(result.best_match[t]) == single.best_match.id, t


def assert_certificates_recheck(model, result):
    readout = as_readout(model)
    V = readout.V.numpy()
    c = readout.c.numpy()
    for t in result.unspeakable_ids:
        ids, weights = result.certificates[t]
        weights = np.asarray(weights)
        assert t not in ids and (weights >= 0).all() and abs(weights.sum() - 1) < 1e-12
        residual = V[t] - weights @ V[ids]
        bound = np.sqrt(V.shape[1]) * np.linalg.norm(residual) + c[t] - weights @ c[ids]
        assert bound <= result.certificate_tolerance


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


@pytest.mark.integration
def test_embedded_prefix_of_the_vocabulary(embedded, tmp_path, monkeypatch):
    monkeypatch.setenv("LENSTUI_CACHE_DIR", str(tmp_path / "cache"))  # model already loaded
    result = scan_vocabulary(embedded, limit=700)
    assert result.complete and result.n_scanned == 700
    assert (result.verdicts[700:] == scan_module.PENDING).all()
    # ids 5 and 7..16 are special tokens sharing one unembedding row: ties, never argmax
    assert result.unspeakable_ids == {5, *range(7, 17)}
    assert not result.undetermined_ids
    assert 657 in result.hard_to_speak_ids and result.counts()["hard_to_speak"] > 100
    assert_scan_matches_single_checks(embedded, result, [0, 4, 5, 100, 190, 657, 699])
    assert_certificates_recheck(embedded, result)
    assert not (tmp_path / "cache").exists()  # a --limit scan is never cached


@pytest.mark.integration
def test_embedded_scan_theta_bounds_equal_the_single_token_float64_bound(embedded, monkeypatch):
    """Every theta bound of a scan equals the single-token float64 bound (``cap_lower_bound``,
    no float32 screen) around the same witness axis: the larger of the own and the whitened
    axes for a token said by its own direction. Several chunks, each with tokens said by their
    own direction and tokens still open (their rows of the chunk's products handed over by
    index), and blocks of the batched bounds that divide neither."""
    from lenstui.core.scan_result import METHODS
    from lenstui.core.verdicts import Method
    from lenstui.engine.speak import aim as aim_module
    from lenstui.engine.speak.aim import cap_lower_bound, difference_norms
    from lenstui.engine.speak.check import candidate_directions

    monkeypatch.setattr(scan_module, "CHUNK", 80)
    monkeypatch.setattr(aim_module, "_BATCH_BLOCK", 7)
    result = scan_vocabulary(embedded, limit=240, cache=False)
    readout = as_readout(embedded)
    seen = {}
    for t in np.nonzero(result.verdicts[:240] == scan_module.SPEAKABLE)[0].tolist():
        method = METHODS[result.method[t]]
        index = torch.tensor([t])
        seen[method] = seen.get(method, 0) + 1
        if method == Method.OWN and seen[method] % 3:
            continue  # one in three: two single passes each, and most of the 240 are these
        if method == Method.OWN:
            axes = [readout.full_rows32()[t], candidate_directions(readout, index, Method.WHITENED)[0]]
        elif method == Method.LP:
            axes = [torch.as_tensor(result.lp_witnesses[t])]
        else:
            axes = [candidate_directions(readout, index, method)[0]]
        norms = difference_norms(readout, t)
        # The batched pass's axes are exactly the float32 vectors.
        singles = [cap_lower_bound(readout, t, a.to(torch.float32).to(torch.float64), norms)["robust"] for a in axes]
        expected = math.degrees(max(0.0, *singles))
        assert result.theta_lower[t] == pytest.approx(expected, abs=1e-9), (t, method)
    # Phase 1's own-direction hits and open tokens, phase 2's later families, phase 5's LP.
    assert seen.get(Method.OWN, 0) > 120 and seen.get(Method.WHITENED, 0) > 40, seen
    assert seen.get(Method.PRECISION, 0) and seen.get(Method.LP, 0), seen


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
