"""The aim views' parts that need no embedded model: the inspector's aim lines, and a scan cache
of an older format upgraded (its theta column added) while an unknown format is ignored."""

from __future__ import annotations

import json
import shutil

import numpy as np

from lenstui.core.scan_result import SPEAKABLE
from lenstui.engine.speak.check import as_readout
from lenstui.engine.speak.scan import scan_vocabulary
from lenstui.engine.speak.scan_cache import read_scan, scan_dir


def test_aim_lines_say_why_when_not_measured():
    from lenstui.core.textfmt import aim_lines

    assert aim_lines(None) == []
    assert aim_lines({"theta_deg": None, "reason": "no batched bound"}) == ["aim: not measured (no batched bound)"]
    two = aim_lines({"theta_deg": 7.5, "theta_upper_deg": 7.9, "offset_deg": 70.0, "log10_share_lower": -300.2, "method": "cap"})
    assert two == ["the model must aim within 7.5–7.9° of one axis, 70.0° away from the token's own direction;", "at least 1 in 10^301 directions"]


def test_an_old_format_cache_is_upgraded_and_an_unknown_one_ignored(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("LENSTUI_DATA_DIR", str(tmp_path / "data"))
    fresh = scan_vocabulary(tiny_llama)
    assert fresh.has_theta
    folder = scan_dir(as_readout(tiny_llama))
    path = folder / "scan.npz"
    original = tmp_path / "original.npz"
    shutil.copy(path, original)

    def rewrite(format_number: int, keep_theta: bool) -> None:
        with np.load(original) as data:
            arrays = {k: data[k] for k in data.files if keep_theta or k != "theta_lower"}
        meta = json.loads(str(arrays["meta"]))
        meta["format"] = format_number
        arrays["meta"] = np.array(json.dumps(meta))
        np.savez(path, **arrays)

    rewrite(1, keep_theta=False)  # as lenstui wrote it before theta existed
    old = read_scan(folder)
    assert old is not None and old.complete and np.isnan(old.theta_lower).all()
    upgraded = scan_vocabulary(tiny_llama)  # resumes: only the theta phase runs
    np.testing.assert_array_equal(upgraded.verdicts, fresh.verdicts)
    np.testing.assert_allclose(upgraded.theta_lower, fresh.theta_lower, rtol=0, atol=1e-9, equal_nan=True)
    assert np.isfinite(read_scan(folder).theta_lower[fresh.verdicts == SPEAKABLE]).all()
    rewrite(99, keep_theta=True)  # a format this lenstui does not know: never misread
    assert read_scan(folder) is None
