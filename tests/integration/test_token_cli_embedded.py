"""`lenstui token` on the embedded model: in process and in a real subprocess (a multi-token piece is one sentence)."""

from __future__ import annotations

import json
import os
import subprocess


from testkit.cli import lenstui_command, run_cli


def test_embedded_fish_head_in_process(capsys):
    status, out, err = run_cli(capsys, "token", "--id", "15107", "--json")
    assert status == 0, err
    payload = json.loads(out)
    assert payload["text"] == "ĠðŁ" and payload["bytes_hex"] == "20 f0 9f"
    assert payload["complete_utf8"] is False
    assert payload["utf8_description"] == "space, then the first 2 of 4 bytes of a 4-byte character"
    assert len(payload["neighbors"]) == 10


def test_embedded_subprocess_text_and_multi_token_error():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    ok = subprocess.run(
        [*lenstui_command(), "token", "ĠðŁ", "--neighbors", "3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert "15107" in ok.stdout and "20 f0 9f" in ok.stdout
    assert "space, then the first 2 of 4 bytes" in ok.stdout

    bad = subprocess.run(
        [*lenstui_command(), "token", " 🐠"], capture_output=True, text=True, env=env, timeout=300
    )
    assert bad.returncode == 2
    assert "3 tokens" in bad.stderr and "'ĠðŁ' + 'Ĳ' + 'ł'" in bad.stderr
