"""Prompt history kept across runs: ``data_dir()/history.jsonl``, one JSON string a line
(JSON so prompts with newlines survive), oldest first, de-duplicated, capped.

Two lenstui processes may add prompts at the same time: each ``add`` takes the file's
lock (``history.jsonl.lock``), reads what is on disk now, merges its prompt in and
writes the whole file atomically, so the prompts of both survive."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from lenstui.store.atomic import file_lock, write_text_atomic

MAX_ENTRIES = 500


def history_path() -> Path:
    from lenstui.store.paths import data_dir

    return data_dir() / "history.jsonl"


class PromptHistory:
    def __init__(self, path: Optional[Path] = None):
        self.path = path or history_path()
        self.problems: list[str] = []  # sentences for the user (the app shows them once)
        self.entries: list[str] = self._read()
        self._added: list[str] = []  # what this process added (merged into the file's)

    def _read(self) -> list[str]:
        entries, damaged = self._parse()
        if damaged:
            lines_word = "line" if damaged == 1 else "lines"
            self.problems.append(
                f"Skipped {damaged} damaged {lines_word} in {self.path}; kept the other {len(entries)} prompts."
            )
        return entries[-MAX_ENTRIES:]

    def _parse(self) -> tuple[list[str], int]:
        """(the prompts on disk now, how many lines were damaged)."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return [], 0
        entries = []
        damaged = 0
        for line in lines:
            try:
                value = json.loads(line)
            except (ValueError, RecursionError):
                value = None
            if isinstance(value, str) and value:
                entries.append(value)
            elif line.strip():
                damaged += 1  # a damaged line costs one entry, not the history
        return entries, damaged

    def add(self, prompt: str) -> None:
        """Remember a prompt (moved to the end if already there) and save, merged with
        what other lenstui processes saved meanwhile."""
        if not prompt.strip():
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass
        with file_lock(self.path, timeout=2.0):  # the UI thread waits at most this long
            on_disk, _ = self._parse()
            if prompt in self._added:
                self._added.remove(prompt)
            self._added.append(prompt)
            merged = _merge(on_disk if on_disk else self.entries, self._added, prompt)
            self.entries = merged[-MAX_ENTRIES:]
            try:
                write_text_atomic(self.path, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in self.entries))
            except OSError:
                pass  # an unwritable data dir only loses history, never the session


def _merge(base: list[str], added: list[str], prompt: str) -> list[str]:
    """``base`` (the file's prompts, or this process's when the file is gone) in its
    order, plus what this process ``added`` that another writer's file lacks, then
    ``prompt`` last; nothing twice."""
    merged = list(dict.fromkeys(base))
    present = set(merged)
    merged += [entry for entry in added if entry not in present and entry != prompt]
    if prompt in merged:
        merged.remove(prompt)
    merged.append(prompt)
    return merged
