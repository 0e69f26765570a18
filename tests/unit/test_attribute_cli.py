"""`lenstui attribute`: in-process through lenstui.cli.main (the embedded model in a real
subprocess: tests/integration/test_attribute_cli_embedded.py)."""

from __future__ import annotations

import json

import pytest
import torch

from lenstui.cli import main
from lenstui.engine.attribution import attribute
from lenstui.engine.model.load import load_model

PROMPT = "Sometimes, when people say plasma, they mean a state of matter."


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny GPT-2 with non-zero biases saved as a Hugging Face directory."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from testkit.models import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    torch.manual_seed(4)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=4,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
    )
    hf = GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.2)
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    hf.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def run_cli(capsys, tiny_dir, *argv):
    status = main(["attribute", PROMPT, *argv, "--model", tiny_dir, "--device", "cpu"])
    out, err = capsys.readouterr()
    return status, out, err


def test_json_shape_and_sum(capsys, tiny_dir):
    status, out, err = run_cli(capsys, tiny_dir, "--position", "5", "--layer", "L1", "--heads", "3", "--json")
    assert status == 0, err
    payload = json.loads(out)
    assert {"model", "prompt_tokens", "position", "layer", "token", "contrast", "total", "components", "heads"} <= set(payload)
    assert payload["position"] == 5 and payload["layer"] == 2 and payload["row"] == "L1"
    assert payload["contrast"] is None
    names = [c["name"] for c in payload["components"]]
    assert names == ["embed", "pos_embed", "L0.attn", "L0.mlp", "L1.attn", "L1.mlp", "bias"]
    assert sum(c["contribution"] for c in payload["components"]) == pytest.approx(payload["total"], abs=1e-4)
    assert len(payload["heads"]) == 3
    for head in payload["heads"]:
        assert {"layer", "head", "contribution", "attends_to"} <= set(head)
        assert 0 <= head["layer"] < 2 and 0 <= head["head"] < 4
        for source in head["attends_to"]:
            assert 0 <= source["position"] <= 5 and 0.0 <= source["weight"] <= 1.0
            assert source["token"] == payload["prompt_tokens"][source["position"]]
    # The same numbers as the engine on the same model and cell (the CLI adds nothing).
    model = load_model(tiny_dir, device="cpu")
    direct = attribute(model, PROMPT, position=5, layer=2, heads=3)
    assert payload["token"] == direct.token.text
    assert payload["total"] == pytest.approx(direct.total, abs=1e-6)


def test_layer_by_label_or_index_and_a_contrast(capsys, tiny_dir):
    by_label = run_cli(capsys, tiny_dir, "--layer", "embed", "--json", "--token", " plasma", "--vs", " matter")
    by_index = run_cli(capsys, tiny_dir, "--layer", "0", "--json", "--token", " plasma", "--vs", " matter")
    assert by_label[0] == by_index[0] == 0, by_label[2] + by_index[2]
    first, second = json.loads(by_label[1]), json.loads(by_index[1])
    assert first["components"] == second["components"]
    assert [c["name"] for c in first["components"]] == ["embed", "pos_embed", "bias"]
    assert first["token"] == " plasma" and first["contrast"] == " matter"
    assert first["heads"] == []  # no block has run before the embedding row


def test_text_table_fits_80_columns(capsys, tiny_dir):
    status, out, err = run_cli(capsys, tiny_dir, "--position", "-2", "--sort")
    assert status == 0, err
    assert "parts add to" in out and "components by size" in out
    assert "heads by |contribution|" in out and "frozen norm scale" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    lines = out.splitlines()
    start = lines.index("components by size") + 1
    rows = lines[start : lines.index("", start)]
    values = [abs(float(line[10:19])) for line in rows]
    assert values == sorted(values, reverse=True) and len(values) == 7


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--position", "40"], "Position 40 is outside the prompt"),
        (["--layer", "L7"], "Layer L7 is out of range"),
        (["--layer", "9"], "Layer 9 is out of range"),
        (["--layer", "middle"], "Unknown layer 'middle'"),
        (["--token", "plasma matter"], "not one"),
        (["--token", " plasma", "--vs", " plasma"], "the same"),
    ],
)
def test_bad_input_is_one_sentence_and_status_2(capsys, tiny_dir, argv, message):
    status, out, err = run_cli(capsys, tiny_dir, *argv)
    assert status == 2
    assert out == ""
    assert message in err and err.count("\n") == 1 and err.startswith("lenstui: ")


def test_signed_bar_width_direction_and_scale():
    from lenstui.core.textfmt import signed_bar

    for value in (1.0, 0.5, 0.01, 0.0, -0.01, -0.5, -1.0, 3.0, -3.0):
        assert len(signed_bar(value, 1.0, 6)) == 13
    assert signed_bar(1.0, 1.0, 6) == "      │██████"
    assert signed_bar(-1.0, 1.0, 6) == "██████│      "
    assert signed_bar(0.5, 1.0, 6) == "      │███   "
    assert signed_bar(-0.5, 1.0, 6) == "   ███│      "
    assert signed_bar(0.0, 1.0, 6) == "      │      "
    # Tiny but non-zero values still show, on their own side.
    assert signed_bar(0.001, 1.0, 6).strip() == "│▏" and signed_bar(-0.001, 1.0, 6).strip() == "▕│"
