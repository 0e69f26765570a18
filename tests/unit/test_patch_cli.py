"""`lenstui patch` and `lenstui steer`: the JSON contracts (lens --json plus "patch" and
"effect"; the sweep; the steer), the readable tables, and usage mistakes as one line."""

from __future__ import annotations

import json

import pytest

from lenstui.cli import main

A = "Sometimes, when people say plasma, they mean a state of matter."
B = "Sometimes, when people say matter, they mean a state of matter."  # as long as A in the tiny tokenizer


@pytest.fixture
def tiny_cli(monkeypatch, tiny_llama):
    import lenstui.cli.patch_cmd as patch_cmd
    import lenstui.cli.steer_cmd as steer_cmd

    for module in (patch_cmd, steer_cmd):
        monkeypatch.setattr(module, "load_from_args", lambda args: tiny_llama)  # the real engine runs
    return tiny_llama


def test_patch_json_is_the_lens_json_plus_patch_and_effect(capsys, tiny_cli):
    assert main(["patch", A, "--from", B, "--layer", "L1", "--position", "5", "--json", "--top-k", "3"]) == 0
    payload = json.loads(capsys.readouterr().out)
    for key in ("model", "lens", "tokens", "layers", "grid", "targets", "depth", "patch", "effect"):
        assert key in payload
    n, rows = len(payload["tokens"]), len(payload["layers"])
    assert len(payload["grid"]) == rows and all(len(row) == n for row in payload["grid"])
    patch = payload["patch"]
    assert patch["label"] == "B@5 L1 -> A@5" and patch["component"] == "resid" and patch["layer"] == "L1"
    assert patch["position"] == 5 and patch["from_position"] == 5 and patch["source"] == "prompt"
    assert patch["cone"][:5] == [None] * 5 and patch["cone"][5] == payload["layers"].index("L1")
    assert patch["forward"]["path"] == "resume" and patch["forward"]["positions"] == n - 5
    assert len(patch["from_tokens"]) == n
    effect = payload["effect"]
    for key in ("kl", "target_prob_before", "target_prob_after"):
        assert len(effect[key]) == rows and all(len(row) == n for row in effect[key])
    assert all(v == 0.0 for row in effect["kl"] for v in row[:5])  # outside the cone
    assert payload["grid"][-1][-1]["target_prob"] == effect["target_prob_after"][-1][-1]


def test_patch_positions_head_and_ablation(capsys, tiny_cli):
    assert main(["patch", A, "--ablate", "mean", "--component", "L2H1", "--position", "-1", "--json", "--positions=-2:"]) == 0
    payload = json.loads(capsys.readouterr().out)
    n = len(payload["tokens"])
    assert payload["positions"] == [n - 2, n - 1]
    assert payload["patch"]["label"] == f"mean L2H1 -> A@{n - 1}" and payload["patch"]["head"] == 1
    assert len(payload["effect"]["kl"][0]) == 2 and len(payload["patch"]["cone"]) == n
    assert main(["patch", A, "--ablate", "zero", "--component", "head", "--head", "0", "--layer", "L0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["patch"]["site"] == "L0H0"


def test_patch_table_is_readable(capsys, tiny_cli):
    assert main(["patch", A, "--from", B, "--layer", "embed", "--position", "5", "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "patched: B@5 embed -> A@5 · resume: " in out
    assert "source: B@5 (␣matter) · A@5 (␣plasma)" in out
    rows = out.split("layer by layer")[1].splitlines()
    embed = next(line for line in rows if line.startswith("embed"))
    assert "(outside the cone)" in embed  # at the last position the embedding cannot change
    assert main(["patch", A, "--from", B, "--layer", "embed", "--position", "5", "--show", "5"]) == 0
    rows = capsys.readouterr().out.split("layer by layer")[1].splitlines()
    assert not any("(outside the cone)" in line for line in rows)  # at P everything can


def test_sweep_json_and_table(capsys, tiny_cli):
    assert main(["patch", A, "--from", B, "--sweep", "layers", "--position", "5", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["sweep"] == "layers" and [p["layer"] for p in payload["points"]] == ["embed", "L0", "L1", "L2"]
    answer = payload["source_clean"]["answer"]
    if answer["id"] != payload["target"]["id"]:  # the source's answer is tracked first
        assert all(p["tracked"][0]["id"] == answer["id"] for p in payload["points"])
    assert main(["patch", A, "--from", B, "--sweep", "positions", "--layer", "L1", "--target", " plasma"]) == 0
    out = capsys.readouterr().out
    assert "sweep: B's residual patched every position at L1" in out
    assert out.splitlines()[4].startswith("pos")


def test_steer_json(capsys, tiny_cli):
    assert main(["steer", A, "--token", " plasma", "--layer", "L1", "--alpha", "3", "--steps", "3", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    n_prompt = payload["steer"]["prompt_length"]
    assert len(payload["tokens"]) == n_prompt + 3 and len(payload["generated"]["steered"]) == 3
    assert len(payload["generated"]["clean"]) == 3
    assert payload["steer"]["toward"]["text"] == " plasma" and payload["steer"]["alpha"] == 3.0
    assert payload["steer"]["norm"] == pytest.approx(3 * payload["steer"]["scale"])
    assert payload["steer"]["cone"][0] == payload["layers"].index("L1")
    assert main(["steer", A, "--token", " plasma", "--away", " matter", "--layer", "embed", "--alpha", "-1"]) == 0
    assert "steer toward ␣plasma - ␣matter · alpha -1" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["patch", A, "--layer", "L1"], "--from PROMPT_B, or --ablate zero|mean"),
        (["patch", A, "--from", B, "--ablate", "zero", "--layer", "L1"], "one of them"),
        (["patch", A, "--from", B], "Say which layer"),
        (["patch", A, "--from", B, "--layer", "L7"], "out of range"),
        (["patch", A, "--from", B, "--layer", "L1", "--component", "attention"], "Unknown component"),
        (["patch", A, "--from", B, "--layer", "L1", "--position", "99"], "outside prompt A"),
        (["patch", A, "--from", "short", "--sweep", "positions", "--layer", "L1"], "A has"),
        (["steer", A, "--token", "plasma blood", "--layer", "L1", "--alpha", "1"], "not one"),
    ],
)
def test_mistakes_are_one_line(capsys, tiny_cli, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lenstui: ") and message in err and "Traceback" not in err
