"""The speakability geometry's costly summaries (whitening, norms, fingerprint) are kept
on disk, keyed by the raw readout weights, so a later process reads them instead of
computing them again; a damaged or foreign file is computed over."""

from __future__ import annotations

import torch

from lenstui.engine.speak.geometry import readout_for_model, weights_key
from testkit.models import tiny_gpt2, tiny_llama


def test_a_second_process_reads_the_kept_summaries(tmp_path, monkeypatch):
    monkeypatch.setenv("LENSTUI_CACHE_DIR", str(tmp_path))
    first = readout_for_model(tiny_llama())
    computed = {k: v.clone() for k, v in first.whitening().items()}
    norms = (first.max_row_norm, first.max_full_row_norm, first.fingerprint())
    assert first.store.is_file() and first.store.parent == tmp_path / "geometry"

    again = readout_for_model(tiny_llama())  # the same weights, a fresh model: as a new process
    assert again.store == first.store
    assert "whitening" in again._stored()  # read, not recomputed
    for k, v in again.whitening().items():
        assert torch.equal(v, computed[k])
    assert (again.max_row_norm, again.max_full_row_norm, again.fingerprint()) == norms

    other = readout_for_model(tiny_gpt2())
    assert other.store != first.store  # other weights, another file


def test_a_damaged_store_is_computed_over(tmp_path, monkeypatch):
    monkeypatch.setenv("LENSTUI_CACHE_DIR", str(tmp_path))
    readout = readout_for_model(tiny_llama())
    want = readout.whitening()["zca"].clone()
    readout.store.write_bytes(b"PK\x03\x04 not a zip at all")
    fresh = readout_for_model(tiny_llama())
    assert torch.allclose(fresh.whitening()["zca"], want)
    assert "whitening" in readout_for_model(tiny_llama())._stored()  # written whole again


def test_the_key_follows_every_weight():
    rows, bias = torch.randn(10, 4), torch.zeros(10, dtype=torch.float64)
    gain, beta = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    key = weights_key(rows, bias, gain, beta, 1e-5, "RMS")
    assert key == weights_key(rows.clone(), bias, gain, beta, 1e-5, "RMS")
    changed = rows.clone()
    changed[3, 2] += 1e-6
    assert key != weights_key(changed, bias, gain, beta, 1e-5, "RMS")
    assert key != weights_key(rows, bias, gain * 2, beta, 1e-5, "RMS")
    assert key != weights_key(rows, bias, gain, beta, 1e-6, "RMS")
    assert key != weights_key(rows, bias, gain, beta, 1e-5, "LN")
