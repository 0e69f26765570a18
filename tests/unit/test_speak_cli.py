"""`lenstui speak` and `lenstui scan`: in process through lenstui.cli.main on a tiny model
saved as a Hugging Face directory (the embedded model: tests/integration/test_speak_cli_embedded.py)."""

from __future__ import annotations

import csv
import json

import pytest

from testkit.cli import run_cli
from testkit.speak_checks import check_contract


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny Llama (RMSNorm, tied embeddings; its padding row 0 is all zeros)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from testkit.models import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    torch.manual_seed(4)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """Where scans are kept (the data dir: a scan is work a user asked for)."""
    monkeypatch.setenv("LENSTUI_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def test_speak_json_unspeakable_zero_row(capsys, tiny_dir):
    status, out, err = run_cli(capsys, "speak", "--id", "0", "--model", tiny_dir, "--device", "cpu", "--json")
    assert status == 0, err
    payload = json.loads(out)
    check_contract(payload, 32)
    assert payload["id"] == 0 and payload["verdict"] == "unspeakable"
    assert abs(sum(e["weight"] for e in payload["certificate"]["combination"]) - 1) < 1e-12


def test_speak_by_text_is_readable(capsys, tiny_dir):
    status, out, err = run_cli(capsys, "speak", "hello", "--model", tiny_dir, "--device", "cpu")
    assert status == 0, err
    assert "hello" in out and not out.lstrip().startswith("{")
    assert "speakable: a witness residual makes it the argmax by" in out
    assert "reachable set: ||z|| < sqrt(d_model)" in out


def test_speak_json_speakable_by_text(capsys, tiny_dir):
    status, out, err = run_cli(capsys, "speak", "hello", "--model", tiny_dir, "--device", "cpu", "--json")
    assert status == 0, err
    payload = json.loads(out)
    check_contract(payload, 32)
    assert payload["text"] == "hello" and payload["verdict"] == "speakable"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["speak"], "Pass exactly one of a token's text or --id N"),
        (["speak", "hello", "--id", "3"], "Pass exactly one of a token's text or --id N"),
        (["speak", "--id", "99999"], "out of range"),
        (["speak", "hello world, hello"], "not one"),
        (["scan", "--out", "result.txt"], "use a .csv or .json file name"),
        (["scan", "--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_bad_input_exits_2_with_a_message(capsys, tiny_dir, argv, message):
    status, out, err = run_cli(capsys, *argv, "--model", tiny_dir, "--device", "cpu")
    assert status == 2 and out == ""
    assert err.startswith("lenstui: ") and message in err and "Traceback" not in err


def test_scan_writes_csv_and_prints_counts(capsys, tiny_dir, cache_dir, tmp_path):
    target = tmp_path / "scan.csv"
    status, out, err = run_cli(capsys, "scan", "--model", tiny_dir, "--device", "cpu", "--out", str(target))
    assert status == 0, err
    assert "speakable" in out and "unspeakable" in out and "hard to speak" in out
    assert "unspeakable: 0 " in out  # the zero padding row, listed by id
    with open(target, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["verdict"] == "unspeakable" and len(rows) > 300
    assert any(cache_dir.glob("scans/*/scan.npz"))
    # a second run finds the cached scan and does no work
    status, out, err = run_cli(capsys, "scan", "--model", tiny_dir, "--device", "cpu", "--json")
    payload = json.loads(out)
    assert payload["complete"] and payload["counts"]["pending"] == 0 and 0 in payload["unspeakable"]


def test_scan_limit_json(capsys, tiny_dir, cache_dir, tmp_path):
    target = tmp_path / "slice.json"
    status, out, err = run_cli(
        capsys, "scan", "--model", tiny_dir, "--device", "cpu", "--limit", "50", "--json", "--out", str(target)
    )
    assert status == 0, err
    payload = json.loads(out)
    assert payload["tokens"] == 50 and payload["complete"] and payload["cache"] is None
    written = json.loads(target.read_text(encoding="utf-8"))
    assert len(written["tokens"]) == 50 and written["counts"]["pending"] == 0
    assert not cache_dir.exists()
