"""`lenstui lens`: the headless contract other tools rely on."""

from __future__ import annotations

import json

from lenstui.cli import main


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
