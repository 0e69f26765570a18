"""The model picker as command-palette entries: "model: open <name>" for every model
:mod:`lenstui.model_catalog` finds, plus "model: open <what you typed>" for any spec.

Choosing one posts :class:`ModelChosen` to the app; the app decides how to switch (load
in the worker with progress, keep the prompt, re-run the lens, drop the old model's
caches, keep the old model on failure). Wire it with
``COMMANDS = App.COMMANDS | {ModelCommands}`` and an ``on_model_chosen`` handler.
"""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.message import Message

from lenstui.config import load_config
from lenstui.model_catalog import ModelEntry, discover_models

PREFIX = "model: open "


class ModelChosen(Message):
    """The user picked a model in the palette: ``spec`` is what load_model takes
    ("" for the embedded model)."""

    def __init__(self, spec: str, label: str) -> None:
        super().__init__()
        self.spec = spec
        self.label = label


def _help(entry: ModelEntry) -> str:
    size = f" · {entry.size_text}" if entry.size_bytes is not None else ""
    spec = f" · {entry.spec}" if entry.spec and entry.spec != entry.label else ""
    return f"{entry.where}{size}{spec}"


def typed_spec(query: str) -> str:
    """The spec in what was typed: "model: open ~/m.gguf", "open ~/m.gguf" or "~/m.gguf"."""
    text = query.strip()
    for prefix in (PREFIX.strip(), "model:", "open "):
        if text.lower().startswith(prefix):
            text = text[len(prefix):].strip()
    return text


def looks_like_spec(text: str) -> bool:
    """A path, a .gguf file or an org/name id: worth offering to open as typed."""
    if not text or " " in text.strip():
        return False
    return "/" in text or text.lower().endswith(".gguf") or Path(text).expanduser().exists()


class ModelCommands(Provider):
    """Lists the models on this machine; the folder walk runs off the UI thread."""

    async def startup(self) -> None:
        config, _ = load_config()
        self._entries: list[ModelEntry] = await asyncio.to_thread(discover_models, models_dir=config.models_dir)

    def _choose(self, spec: str, label: str) -> None:
        self.app.post_message(ModelChosen(spec, label))

    async def discover(self) -> Hits:
        for entry in self._entries:
            yield DiscoveryHit(PREFIX + entry.label, partial(self._choose, entry.spec, entry.label), help=_help(entry))

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for entry in self._entries:
            text = PREFIX + entry.label
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), partial(self._choose, entry.spec, entry.label), text=text, help=_help(entry))
        spec = typed_spec(query)
        if looks_like_spec(spec) and not any(e.spec == spec or e.label == spec for e in self._entries):
            # Below the listed models, so a typed path never hides a match.
            yield Hit(0.1, PREFIX + spec, partial(self._choose, spec, spec), text=PREFIX + spec, help="open this spec as typed")
