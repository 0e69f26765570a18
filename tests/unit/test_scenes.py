"""Talk files: parsing with per-scene problems, appending without losing a byte,
`lenstui present --check`, and scenes checked against real models."""

from __future__ import annotations

import json
import os
import stat
import tomllib
from pathlib import Path

import pytest
import torch

from lenstui.cli import main
from lenstui.core.errors import LenstuiError
from lenstui.store import atomic
from lenstui.talks import format as scenes
from lenstui.talks.format import Cursor, Scene, append_scene, load_talk, parse_scene, scene_to_toml, token_spec

ROOT = Path(__file__).resolve().parents[2]
SEEDS = ROOT / "talks" / "seeds.toml"


def _write(tmp_path: Path, text: str, name: str = "talk.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- reading -------------------------------------------------------------------------

def test_the_seeds_talk_reads_as_written():
    talk = load_talk(SEEDS)
    assert talk.title.startswith("What the layers say") and talk.notes == [] and talk.problems == []
    assert [s.number for s in talk.scenes] == [1, 2, 3, 4]
    seahorse, later, plasma, unspeakable = talk.scenes
    assert (seahorse.prompt, seahorse.chat, seahorse.view, seahorse.steps) == ("Is there a seahorse emoji?", True, "topk", 0)
    assert (seahorse.cursor.layer, seahorse.cursor.position) == ("L24", -1)
    assert seahorse.pinned == [" Yes", "There", "ĠðŁ"]
    assert later.steps == 8 and later.target == "ĠðŁ"
    assert plasma.target == " plasma" and plasma.cursor.position == -2 and not plasma.chat
    assert unspeakable.prompt is None and unspeakable.prompt_ids[0] == 5
    assert unspeakable.target == 5 and unspeakable.pinned == [9, 11, 36743]
    # The talk's theme is every scene's default; the lens defaults to the logit lens.
    assert {s.theme for s in talk.scenes} == {"lenstui-contrast"} and {s.lens for s in talk.scenes} == {"logit"}
    # Line numbers point at each [[scene]] header.
    lines = SEEDS.read_text(encoding="utf-8").splitlines()
    assert all(lines[s.line - 1].strip() == "[[scene]]" for s in talk.scenes)


def test_a_broken_scene_is_reported_and_the_talk_goes_on(tmp_path):
    path = _write(tmp_path, """
title = "demo"
[[scene]]
prompt = "first"

[[scene]]
title = "two problems"
prompt = "x"
prompt_ids = [1, 2]
view = "sideways"

[[scene]]
prompt_ids = [1, -3]
[[scene]]
prompt = "fine again"
lens = "raw"
cursor = { layer = 3, position = 0 }
promt = "typo"
""")
    talk = load_talk(path)
    first, broken, bad_ids, last = talk.scenes
    assert first.ok and first.title == "Scene 1" and first.prompt == "first"
    assert not broken.ok and "exactly one of prompt" in broken.problem and "'sideways'" in broken.problem
    assert broken.problem.count(".") == 1  # one sentence, problems joined
    assert "prompt_ids" in bad_ids.problem
    assert last.ok and last.lens == "raw" and last.cursor == Cursor(3, 0)
    assert last.notes == ["unknown key 'promt' was ignored"]
    assert talk.problems == [f"scene 2: {broken.problem}", f"scene 3: {bad_ids.problem}"]


@pytest.mark.parametrize(
    "table, fragment",
    [
        ({"prompt": ""}, "prompt must be a non-empty text"),
        ({}, "exactly one of prompt"),
        ({"prompt_ids": [1, 2], "chat": True}, "chat = true needs a text prompt"),
        ({"prompt": "x", "chat": "yes"}, "chat must be true or false"),
        ({"prompt": "x", "steps": -1}, "steps must be a whole number"),
        ({"prompt": "x", "steps": True}, "steps must be a whole number"),
        ({"prompt": "x", "cursor": {"layer": "layer 3"}}, "cursor layer 'layer 3'"),
        ({"prompt": "x", "cursor": {"row": 3}}, "cursor must be a table"),
        ({"prompt": "x", "cursor": {"position": 1.5}}, "cursor position 1.5"),
        ({"prompt": "x", "target": ""}, "target:"),
        ({"prompt": "x", "pinned": " Paris"}, "pinned must be a list"),
        ({"prompt": "x", "pinned": [-1]}, "negative"),
        ({"prompt": "x", "lens": "nope"}, "lens 'nope'"),
        ({"prompt": "x", "extended_blocks": 0}, "extended_blocks"),
        ({"prompt": "x", "title": ""}, "title must be"),
    ],
)
def test_each_scene_problem_is_named(table, fragment):
    scene = parse_scene(table, 7)
    assert not scene.ok and fragment in scene.problem and scene.problem.endswith(".")


def test_token_specs():
    assert token_spec("#5") == 5 and token_spec(7042) == 7042
    assert token_spec(" Paris") == " Paris" and token_spec("#x") == "#x" and token_spec("ĠðŁ") == "ĠðŁ"
    for bad in (True, -1, "", 1.5, None):
        with pytest.raises(ValueError):
            token_spec(bad)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('[[scene]]\nprompt = "unclosed\n', "is not valid TOML"),
        ('title = "no scenes"\n', "has no scenes"),
        ('scene = "one"\n', "must be a list of [[scene]] tables"),
    ],
)
def test_a_file_that_is_not_a_talk_is_one_sentence(tmp_path, text, fragment):
    path = _write(tmp_path, text)
    with pytest.raises(LenstuiError) as err:
        load_talk(path)
    assert fragment in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_unreadable_talk_files(tmp_path):
    with pytest.raises(LenstuiError, match="No talk file"):
        load_talk(tmp_path / "missing.toml")
    with pytest.raises(LenstuiError, match="is a folder"):
        load_talk(tmp_path)
    (tmp_path / "latin1.toml").write_bytes('[[scene]]\nprompt = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(LenstuiError, match="not UTF-8"):
        load_talk(tmp_path / "latin1.toml")


# --- writing -------------------------------------------------------------------------

TRICKY = 'a "quoted" \\ back\\slash\nnew line\ttab \x1b[31m esc \x7f del · 🐠 café'


def test_strings_round_trip_through_toml():
    for text in (TRICKY, "", "plain", "\u2028 separator", "#5"):
        assert tomllib.loads(f"x = {scenes.toml_string(text)}")["x"] == text


def test_append_keeps_every_byte_and_adds_a_scene_that_reads_back(tmp_path):
    # Comments, odd spacing, a CRLF line and no final newline: all must survive as bytes.
    original = (
        b"# my talk  \r\n"
        b'title="mine"   # trailing comment\n\n'
        b"[[scene]]\n"
        b'prompt   =   "first"  # keep me\n'
        b'pinned = [ " Paris" ,"#5" ]'
    )
    path = tmp_path / "talk.toml"
    path.write_bytes(original)
    os.chmod(path, 0o640)
    scene = Scene(
        number=0, title="saved · 🐠", prompt=TRICKY, chat=True, steps=3, view="topk",
        cursor=Cursor("L3.attn", -2), target=5, pinned=[" Paris", 11], lens="extended",
        extended_blocks=2, theme="lenstui-light",
    )
    talk = append_scene(path, scene)
    data = path.read_bytes()
    assert data.startswith(original) and data[len(original):].startswith(b"\n\n[[scene]]\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["talk.toml"]  # no temporary file left
    saved = load_talk(path).scenes[-1]
    assert len(talk.scenes) == 2 and saved.ok and saved.number == 2
    for name in ("title", "prompt", "chat", "steps", "view", "cursor", "target", "pinned", "lens", "extended_blocks", "theme"):
        assert getattr(saved, name) == getattr(scene, name), name
    # A second append lands after the first, which is still there.
    append_scene(path, Scene(number=0, title="third", prompt_ids=[1, 2, 3]))
    again = load_talk(path)
    assert [s.title for s in again.scenes] == ["Scene 1", "saved · 🐠", "third"]
    assert again.scenes[2].prompt_ids == [1, 2, 3] and path.read_bytes().startswith(data)


def test_append_creates_a_missing_file(tmp_path):
    path = tmp_path / "new.toml"
    append_scene(path, Scene(number=0, title="only", prompt="hello"))
    assert path.read_text(encoding="utf-8") == scene_to_toml(Scene(number=0, title="only", prompt="hello"))
    assert load_talk(path).scenes[0].prompt == "hello"


def test_append_to_a_broken_file_changes_nothing(tmp_path):
    original = b'[[scene]]\nprompt = "unclosed\n'
    path = tmp_path / "talk.toml"
    path.write_bytes(original)
    with pytest.raises(LenstuiError, match="not saved and the file is unchanged"):
        append_scene(path, Scene(number=0, title="x", prompt="y"))
    assert path.read_bytes() == original
    # A static array of scenes cannot take a [[scene]] table after it: refused the same way.
    path.write_bytes(b'scene = [{ prompt = "a" }]\n')
    with pytest.raises(LenstuiError, match="unchanged"):
        append_scene(path, Scene(number=0, title="x", prompt="y"))
    assert path.read_bytes() == b'scene = [{ prompt = "a" }]\n'


def test_a_failed_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = _write(tmp_path, '[[scene]]\nprompt = "a"\n')

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", refuse)  # the one atomic writer
    with pytest.raises(LenstuiError, match="No space left"):
        append_scene(path, Scene(number=0, title="x", prompt="y"))
    assert path.read_text() == '[[scene]]\nprompt = "a"\n'
    assert [p.name for p in tmp_path.iterdir()] == ["talk.toml"]


def test_a_scene_with_a_problem_is_not_saved(tmp_path):
    path = tmp_path / "talk.toml"
    with pytest.raises(LenstuiError, match="cannot be saved"):
        append_scene(path, parse_scene({"prompt": ""}, 1))
    assert not path.exists()


# --- lenstui present --check -----------------------------------------------------------

def test_present_check_prints_every_scene(capsys):
    assert main(["present", str(SEEDS), "--check"]) == 0
    out = capsys.readouterr().out
    assert "4 scenes" in out and "all can be shown" in out
    assert "Plasma: copied, or rebuilt from scratch? (line 33)" in out
    assert "cursor L29@-2 · target ' plasma'" in out


def test_present_check_exit_codes(tmp_path, capsys):
    path = _write(tmp_path, '[[scene]]\nprompt = "ok"\n[[scene]]\nview = "nope"\nprompt = "x"\n')
    assert main(["present", str(path), "--check"]) == 1
    out = capsys.readouterr().out
    assert "1 cannot be shown" in out and "cannot be shown: view 'nope' is not one of" in out
    assert main(["present", str(path), "--check", "--json"]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert [s["problem"] is None for s in payload["scenes"]] == [True, False]
    bad = _write(tmp_path, "[[scene]\n", "bad.toml")
    assert main(["present", str(bad), "--check"]) == 2
    assert "is not valid TOML" in capsys.readouterr().err
    # Presenting a file that is not there is one sentence and status 2, before any screen.
    assert main(["present", str(tmp_path / "missing.toml")]) == 2
    assert "No talk file at" in capsys.readouterr().err


# --- against a model -------------------------------------------------------------------

def test_scenes_resolve_on_a_model_and_problems_are_collected(tiny_llama):
    from lenstui.talks.resolve import resolve_scene, scene_problem

    tokenizer = tiny_llama.tokenizer
    text = "The Eiffel Tower is located in the city of"
    expected_ids = tokenizer(text)["input_ids"]  # the HF tokenizer, directly
    piece = next(p for p, i in tokenizer.get_vocab().items() if len(p) > 2 and p.startswith("Ġ"))
    scene = parse_scene(
        {"prompt": text, "steps": 2, "cursor": {"layer": -1, "position": -1}, "target": piece, "pinned": ["#3"]}, 1
    )
    resolved = resolve_scene(tiny_llama, scene)
    assert resolved.prompt_ids == expected_ids and resolved.total_tokens == len(expected_ids) + 2
    assert resolved.target_id == tokenizer.get_vocab()[piece] and resolved.pinned_ids == [3]
    assert resolved.cursor_layer == f"L{tiny_llama.n_layers - 1}"
    assert resolved.cursor_position == len(expected_ids) + 1

    # Too long for the context, a token the model lacks, a layer and a position it lacks:
    # all named in one sentence.
    broken = parse_scene(
        {"prompt_ids": [1] * (tiny_llama.n_ctx - 3), "steps": 5, "target": "#999999",
         "cursor": {"layer": "L40", "position": 500}}, 2
    )
    problem = scene_problem(tiny_llama, broken)
    assert f"more than the {tiny_llama.n_ctx} tokens" in problem
    assert "target '#999999'" in problem and "L40 does not exist" in problem and "cursor position 500" in problem
    assert problem.count("\n") == 0
    chat = scene_problem(tiny_llama, parse_scene({"prompt": "hi", "chat": True}, 3))
    assert "no chat template" in chat


def test_greedy_steps_match_the_hf_models_own_greedy_loop(tiny_llama):
    """The ids a scene's steps append are the plain transformers model's argmax tokens."""
    from lenstui.core.errors import Cancelled
    from lenstui.engine.model.generate import greedy_ids
    from testkit.models import tiny_llama_hf

    hf_model, _ = tiny_llama_hf()  # same seed, same weights as the wrapped tiny_llama
    ids = [1, 2, 3, 4]
    expected = list(ids)
    with torch.no_grad():
        for _ in range(5):
            expected.append(int(hf_model(torch.tensor([expected])).logits[0, -1].argmax()))
    assert greedy_ids(tiny_llama, ids, 5) == expected
    assert greedy_ids(tiny_llama, ids, 0) == ids
    with pytest.raises(Cancelled):
        greedy_ids(tiny_llama, ids, 3, should_stop=lambda: True)
    with pytest.raises(LenstuiError, match="more than the"):
        greedy_ids(tiny_llama, [1] * tiny_llama.n_ctx, 1)
