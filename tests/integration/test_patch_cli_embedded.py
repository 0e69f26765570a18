"""`lenstui patch --sweep layers` on the embedded model, in a real process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PLASMA_A = "Sometimes, when people say plasma, they mean a state of matter. Other times, when people say"

PLASMA_B = PLASMA_A.replace("say plasma,", "say blood,")


def test_plasma_sweep_in_a_real_process():
    run = subprocess.run(
        [sys.executable, "-m", "lenstui.cli", "patch", PLASMA_A, "--from", PLASMA_B, "--sweep", "layers",
         "--target", " plasma", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    payload = json.loads(run.stdout)
    points = {p["layer"]: p for p in payload["points"]}
    assert payload["target"]["text"] == " plasma" and payload["source_clean"]["answer"]["text"] == " blood"
    assert points["L22"]["top"]["text"] == " plasma" and points["L23"]["top"]["text"] == " blood"
    assert points["L23"]["target_prob"] == pytest.approx(0.0136, abs=5e-4)
    assert points["L13"]["target_prob"] == pytest.approx(payload["clean"]["target_prob"], abs=0.02)
