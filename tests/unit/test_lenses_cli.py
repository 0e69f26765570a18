"""`lenstui lenses fit|eval|list` and `lenstui lens --lens tuned`, on a tiny model (the
real engine runs; only loading is skipped)."""

from __future__ import annotations

import json

import pytest

from lenstui.cli import main
from testkit.models import CORPUS, tiny_llama


@pytest.fixture(scope="module")
def peaked():
    return tiny_llama(seed=0, initializer_range=0.3, name="tiny-llama-peaked")


@pytest.fixture
def loaded(monkeypatch, peaked):
    import lenstui.cli.lens_cmd as lens_cmd
    import lenstui.cli.lenses_cmd as lenses_cmd

    monkeypatch.setattr(lenses_cmd, "load_from_args", lambda args: peaked)
    monkeypatch.setattr(lens_cmd, "load_from_args", lambda args: peaked)
    return peaked


def test_fit_then_eval_then_read_the_lens(loaded, tmp_path, capsys):
    out = tmp_path / "lens"
    assert main(["lenses", "fit", "--tokens", "300", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "tuned" and report["path"] == str(out) and report["tokens"] == 300
    assert report["source"] == "sampled" and set(report["seconds"]) >= {"collect", "solve", "total"}
    assert (out / "config.json").is_file() and (out / "params.pt").is_file()

    text = tmp_path / "held.txt"
    text.write_text("\n\n".join(CORPUS))
    assert main(["lenses", "eval", str(text), "--lens", "logit,tuned", "--lens-path", str(out), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert list(payload) == ["tokens", "rows", "lenses", "placement", "backend", "remote", "endpoint"]  # (where the model is, who read it)
    assert list(payload["lenses"]) == ["logit", "tuned"]
    for curves in payload["lenses"].values():
        assert list(curves) == ["kl", "top1_agree", "final_rank"]
        assert all(len(curves[k]) == len(payload["rows"]) for k in curves)
    assert sum(payload["lenses"]["tuned"]["kl"]) < sum(payload["lenses"]["logit"]["kl"])

    assert main(["lenses", "eval", str(text), "--lens-path", str(out)]) == 0
    table = capsys.readouterr().out
    assert "logit KL nats/bits" in table and "mean over embed..L1: tuned KL" in table and "x logit)" in table

    assert main(["lens", CORPUS[0], "--lens", "tuned", "--lens-path", str(out), "--json", "--top-k", "2"]) == 0
    lens = json.loads(capsys.readouterr().out)
    assert lens["lens"] == "tuned" and lens["lens_file"]["path"] == str(out.resolve())
    assert lens["lens_file"]["origin"] == "fitted by lenstui on 300 self-sampled tokens"
    assert main(["lens", CORPUS[0], "--lens", "tuned", "--lens-path", str(out)]) == 0
    assert "tuned lens" in capsys.readouterr().out


def test_fit_on_a_text_file_and_the_cache_listing(loaded, tmp_path, capsys):
    text = tmp_path / "train.txt"
    text.write_text("\n\n".join(CORPUS * 3))
    assert main(["lenses", "list"]) == 0
    assert "No lenses fitted for tiny-llama-peaked yet" in capsys.readouterr().out
    assert main(["lenses", "fit", "--text", str(text)]) == 0
    said = capsys.readouterr().out
    assert "tuned lens saved in" in said and str(text) in said
    assert main(["lenses", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [lens["kind"] for lens in listed["lenses"]] == ["tuned"]
    assert "text tokens" in listed["lenses"][0]["origin"]


def test_a_jacobian_fit_on_the_cpu_is_refused_with_its_estimate(loaded, capsys):
    assert main(["lenses", "fit", "--kind", "jacobian", "--prompts", "5"]) == 2
    err = capsys.readouterr().err
    assert "backward passes per prompt" in err and "--allow-cpu" in err
    assert main(["lenses", "fit", "--kind", "jacobian", "--estimate", "--json"]) == 0
    estimate = json.loads(capsys.readouterr().out)
    assert estimate["prompts"] == 100 and estimate["backward_passes"] == 4 and estimate["seconds"] > 0


def test_mistakes_are_one_sentence(loaded, tmp_path, capsys):
    assert main(["lenses", "eval", str(tmp_path / "missing.txt")]) == 2
    assert "Cannot read" in capsys.readouterr().err
    (tmp_path / "t.txt").write_text("hello world")
    assert main(["lenses", "eval", str(tmp_path / "t.txt"), "--lens", "logit,nope"]) == 2
    assert "Unknown lens 'nope'" in capsys.readouterr().err
    assert main(["lenses", "eval", str(tmp_path / "t.txt"), "--lens", "logit,tuned"]) == 2
    assert "No tuned lens for tiny-llama-peaked yet" in capsys.readouterr().err
    assert main(["lenses", "fit", "--tokens", "3"]) == 2
    assert "more text" in capsys.readouterr().err
