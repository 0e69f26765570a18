"""Atomic writes (lenstui.store.atomic) and the prompt history that uses them."""

from __future__ import annotations

import json

import pytest

from lenstui.store.atomic import write_text_atomic
from lenstui.store.history import PromptHistory


def test_replaces_the_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    write_text_atomic(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "history.jsonl"
    target.write_text('"kept"\n')

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("lenstui.store.atomic.os.fsync", full_disk)  # fails after the bytes were written
    with pytest.raises(OSError):
        write_text_atomic(target, '"new"\n' * 1000)
    assert target.read_text() == '"kept"\n'
    assert [p.name for p in tmp_path.iterdir()] == ["history.jsonl"]


def test_history_skips_a_damaged_line_with_a_notice_and_keeps_the_rest(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('"first"\n{"truncated\n"second"\n\n42\n"third"\n', encoding="utf-8")
    history = PromptHistory(path)
    assert history.entries == ["first", "second", "third"]
    assert len(history.problems) == 1 and "2 damaged lines" in history.problems[0]
    history.add("fourth")  # the rewrite drops the damaged lines, keeps every prompt
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == ["first", "second", "third", "fourth"]
    assert PromptHistory(path).problems == []


def test_history_save_failure_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "history.jsonl"
    history = PromptHistory(path)
    history.add("one\nwith a newline")
    monkeypatch.setattr("lenstui.store.atomic.os.replace", lambda *a: (_ for _ in ()).throw(OSError("disk gone")))
    history.add("two")  # the session goes on; the file is the last whole one
    assert PromptHistory(path).entries == ["one\nwith a newline"]
    # No temporary file is left; the lock file (two processes merge under it) stays.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.jsonl", "history.jsonl.lock"]
