"""`lenstui speak` and `lenstui scan` on the embedded model: in a real process, and a limited scan in process."""

from __future__ import annotations

import json
import subprocess
import sys

from testkit.cli import run_cli
from testkit.speak_checks import check_contract


def test_embedded_speak_in_a_real_process():
    run = subprocess.run(
        [sys.executable, "-m", "lenstui.cli", "speak", "--id", "657", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    payload = json.loads(run.stdout)
    check_contract(payload, 576)
    assert payload["text"] == " It" and payload["verdict"] == "speakable" and payload["hard_to_speak"]
    assert payload["best_match"]["id"] != 657


def test_embedded_scan_limit_in_process(capsys, tmp_path):
    status, out, err = run_cli(capsys, "scan", "--limit", "300", "--out", str(tmp_path / "slice.csv"))
    assert status == 0, err
    assert "300 tokens" in out
    assert "unspeakable" in out and "5 <file_sep>" in out
