"""`lenstui lens`: the headless contract other tools rely on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lenstui.cli import main

EIFFEL = "The Eiffel Tower is located in the city of"


@pytest.mark.integration
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


@pytest.mark.integration
def test_lens_table_is_readable(capsys):
    assert main(["lens", EIFFEL, "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "SmolLM2-135M-Instruct · logit lens · 10 tokens" in out
    assert "␣Paris" in out  # leading spaces are visible
    assert out.splitlines()[-1].startswith("L29")


def test_empty_prompt_exits_2_with_a_message(capsys, monkeypatch, tiny_llama):
    import lenstui.cli.lens_cmd as lens_cmd

    monkeypatch.setattr(lens_cmd, "load_from_args", lambda args: tiny_llama)  # skip loading; the real engine runs
    assert main(["lens", ""]) == 2
    assert "lenstui: The prompt is empty" in capsys.readouterr().err


def test_unknown_model_exits_2_without_traceback(capsys):
    assert main(["lens", "hi", "--model", "/no/such/file.gguf"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lenstui: No GGUF file at /no/such/file.gguf") and "Traceback" not in err


def test_extended_lens_option_reaches_the_engine(capsys, monkeypatch, tiny_llama):
    import lenstui.cli.lens_cmd as lens_cmd

    monkeypatch.setattr(lens_cmd, "load_from_args", lambda args: tiny_llama)
    assert main(["lens", "hello world", "--lens", "extended", "--extended-blocks", "2", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["lens"] == "extended" and payload["extended_blocks"] == 2


def _tiny_cli(monkeypatch, model):
    import lenstui.cli.lens_cmd as lens_cmd

    monkeypatch.setattr(lens_cmd, "load_from_args", lambda args: model)  # skip loading; the real engine runs


def test_positions_compute_only_those_columns(capsys, monkeypatch, tiny_llama):
    _tiny_cli(monkeypatch, tiny_llama)
    prompt = "hello world, the city of Paris"
    assert main(["lens", prompt, "--json", "--top-k", "3"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert "positions" not in full  # the whole-grid JSON is unchanged
    n = len(full["tokens"])
    for spec, expected in (("-1", [n - 1]), ("3", [3]), ("2:5", [2, 3, 4]), ("0,-1", [0, n - 1])):
        assert main(["lens", prompt, "--json", "--top-k", "3", "--positions", spec]) == 0
        part = json.loads(capsys.readouterr().out)
        assert part["positions"] == expected and part["tokens"] == full["tokens"]
        assert [t["id"] for t in part["targets"]] == [full["targets"][p]["id"] for p in expected]
        for row_part, row_full in zip(part["grid"], full["grid"], strict=True):
            assert [[t["id"] for t in c["top"]] for c in row_part] == [
                [t["id"] for t in row_full[p]["top"]] for p in expected
            ]


def test_position_picks_a_computed_column_for_the_table(capsys, monkeypatch, tiny_llama):
    _tiny_cli(monkeypatch, tiny_llama)
    prompt = "hello world, the city of Paris"
    assert main(["lens", prompt, "--positions", "2:5", "--position", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 positions computed" in out and "\nposition 3 (" in out
    assert main(["lens", prompt, "--positions", "2:5"]) == 0
    assert "\nposition 4 (" in capsys.readouterr().out  # default: the last computed
    assert main(["lens", prompt, "--positions", "2:5", "--position", "7"]) == 2
    assert "--position 7 was not computed: pick one of 2, 3, 4" in capsys.readouterr().err
    assert main(["lens", prompt, "--positions", "x:"]) == 2
    assert "Cannot read positions 'x:'" in capsys.readouterr().err
    assert main(["lens", prompt, "--positions", "40"]) == 2
    assert "Position 40 is outside the prompt" in capsys.readouterr().err
