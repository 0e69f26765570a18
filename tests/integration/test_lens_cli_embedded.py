"""`lenstui lens` on the embedded model: the JSON contract in a real process, and the table."""

from __future__ import annotations

import json
import subprocess
import sys


from lenstui.cli import main

EIFFEL = "The Eiffel Tower is located in the city of"


def test_lens_json_contract_in_a_real_process():
    run = subprocess.run(
        [sys.executable, "-m", "lenstui.cli", "lens", EIFFEL, "--json", "--top-k", "3"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    payload = json.loads(run.stdout)
    assert payload["model"] == "SmolLM2-135M-Instruct" and payload["lens"] == "logit"
    assert "".join(t["text"] for t in payload["tokens"]) == EIFFEL
    assert all(isinstance(t["id"], int) for t in payload["tokens"])
    assert payload["layers"][0] == "embed" and payload["layers"][-1] == "L29"
    assert len(payload["grid"]) == len(payload["layers"])
    for row in payload["grid"]:
        assert len(row) == len(payload["tokens"])
        for cell in row:
            probs = [t["prob"] for t in cell["top"]]
            assert len(probs) == 3 and probs == sorted(probs, reverse=True)
            assert all(isinstance(p, float) and 0.0 <= p <= 1.0 for p in probs)
            assert isinstance(cell["entropy"], float) and isinstance(cell["kl_to_final"], float)
    assert payload["grid"][-1][-1]["top"][0]["text"] == " Paris"


def test_lens_table_is_readable(capsys):
    assert main(["lens", EIFFEL, "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "SmolLM2-135M-Instruct · logit lens · 10 tokens" in out
    assert "␣Paris" in out  # leading spaces are visible
    assert out.splitlines()[-1].startswith("L29")
