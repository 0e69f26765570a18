"""bench/gpu_check.py is the script a device machine runs; here it runs at tiny sizes on the
CPU (--cpu-smoke) so that a change to the engine cannot leave it broken unseen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_check_runs_on_the_cpu_at_tiny_sizes(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--cpu-smoke", "--tokens", "8", "--repeats", "1"],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OUT": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert [row["shape"] for row in rows] == ["1b", "8b", "1b-4bit"]
    for row in rows[:2]:
        assert row["grid_s"] > 0 and row["grid_vs_floor"] > 0 and row["step_vs_floor"] > 0
        assert abs(row["plan_bytes"] - row["weights_bytes"]) <= 0.10 * row["weights_bytes"]
    quantized = rows[2]
    if "skipped" not in quantized:  # bitsandbytes' CPU backend is here: the 4-bit model reads as itself
        assert quantized["last_row_top1_is_own_argmax"] == 1.0
        assert 0.9 <= quantized["plan_vs_resident"] <= 1.1
