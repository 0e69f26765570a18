"""Prompt history kept across runs: ``data_dir()/history.jsonl``, one JSON string a line
(JSON so prompts with newlines survive), oldest first, de-duplicated, capped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from lenstui.store.atomic import write_text_atomic

MAX_ENTRIES = 500


def history_path() -> Path:
    from lenstui.store.paths import data_dir

    return data_dir() / "history.jsonl"


class PromptHistory:
    def __init__(self, path: Optional[Path] = None):
        self.path = path or history_path()
        self.problems: list[str] = []  # sentences for the user (the app shows them once)
        self.entries: list[str] = self._read()

    def _read(self) -> list[str]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return []
        entries = []
        damaged = 0
        for line in lines:
            try:
                value = json.loads(line)
            except ValueError:
                value = None
            if isinstance(value, str) and value:
                entries.append(value)
            elif line.strip():
                damaged += 1  # a damaged line costs one entry, not the history
        if damaged:
            lines_word = "line" if damaged == 1 else "lines"
            self.problems.append(
                f"Skipped {damaged} damaged {lines_word} in {self.path}; kept the other {len(entries)} prompts."
            )
        return entries[-MAX_ENTRIES:]

    def add(self, prompt: str) -> None:
        """Remember a prompt (moved to the end if already there) and save."""
        if not prompt.strip():
            return
        if prompt in self.entries:
            self.entries.remove(prompt)
        self.entries.append(prompt)
        del self.entries[:-MAX_ENTRIES]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in self.entries))
        except OSError:
            pass  # an unwritable data dir only loses history, never the session
