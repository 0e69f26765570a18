"""`lenstui attribute` on the embedded model, in a real subprocess: JSON, and a bad position's one sentence."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from testkit.cli import lenstui_command

PLASMA = (
    "Sometimes, when people say plasma, they mean a state of matter. "
    "Other times, when people say plasma"
)


def test_embedded_subprocess_json_and_bad_position():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    ok = subprocess.run(
        [*lenstui_command(), "attribute", PLASMA, "--position", "19", "--token", " plasma", "--heads", "4", "--json"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    payload = json.loads(ok.stdout)
    assert payload["prompt_tokens"][19] == " say" and payload["token"] == " plasma"
    assert payload["layer"] == 30 and payload["row"] == "L29"
    assert len(payload["components"]) == 61 and len(payload["heads"]) == 4
    assert sum(c["contribution"] for c in payload["components"]) == pytest.approx(payload["total"], abs=1e-3)

    bad = subprocess.run(
        [*lenstui_command(), "attribute", PLASMA, "--position", "21"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == "lenstui: Position 21 is outside the prompt, which has positions 0..20."
