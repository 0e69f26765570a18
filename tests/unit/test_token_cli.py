"""`lenstui token`: in-process through lenstui.cli.main (the embedded model, in process
and in a real subprocess: tests/integration/test_token_cli_embedded.py)."""

from __future__ import annotations

import json

import pytest

from lenstui.cli import main


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny GPT-2 saved as a Hugging Face directory, so --model can load it quickly."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from testkit.models import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    torch.manual_seed(2)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=4,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
    )
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def run_cli(capsys, *argv):
    status = main(["token", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_json_by_id(capsys, tiny_dir):
    status, out, err = run_cli(capsys, "--id", "7", "--model", tiny_dir, "--device", "cpu", "--json", "--neighbors", "3")
    assert status == 0, err
    payload = json.loads(out)
    assert payload["id"] == 7
    assert {"id", "text", "bytes_hex", "complete_utf8", "neighbors"} <= set(payload)
    assert len(payload["neighbors"]) == 3 and 7 not in [n["id"] for n in payload["neighbors"]]
    assert payload["embedding_neighbors"] is not None  # the tiny GPT-2 is untied


def test_text_output_by_piece(capsys, tiny_dir):
    status, out, err = run_cli(capsys, "Ġhello", "--model", tiny_dir, "--device", "cpu", "--neighbors", "2")
    assert status == 0, err
    assert "shows as        ␣hello" in out
    assert "bytes           20 68 65 6c 6c 6f" in out
    assert "nearest by readout direction" in out and "nearest by embedding" in out
    assert max(len(line) for line in out.splitlines()) <= 80


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--id", "100000"], "out of range"),
        (["not-one-token-at-all"], "tokens"),
        (["hello", "--id", "3"], "exactly one"),
        ([], "exactly one"),
        (["--id", "3", "--neighbors", "-2"], "neighbors"),
    ],
)
def test_bad_input_exits_2_with_a_message(capsys, tiny_dir, argv, message):
    status, out, err = run_cli(capsys, *argv, "--model", tiny_dir, "--device", "cpu")
    assert status == 2
    assert out == ""
    assert err.startswith("lenstui: ") and message in err and "Traceback" not in err
