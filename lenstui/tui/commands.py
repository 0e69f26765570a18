"""The command palette's entries, read "category: action".

- ``explorer_commands(app)``: everything the explorer can do, grid to export (the keys'
  hints on the right follow the user's keymap);
- ``ModelCommands``: the model picker, "model: open <name>" for every model
  :mod:`lenstui.store.model_catalog` finds, plus "model: open <what you typed>" for any
  spec. Choosing one posts :class:`ModelChosen` to the app; the app decides how to switch
  (load in the worker with progress, keep the prompt, re-run the lens, drop the old
  model's caches, keep the old model on failure). Wired with
  ``COMMANDS = App.COMMANDS | {ModelCommands}`` and an ``on_model_chosen`` handler.
"""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol

from textual.app import SystemCommand
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.message import Message

from lenstui.core.lenses import LENS_DESCRIPTIONS, LENS_KINDS
from lenstui.store.config import load_config
from lenstui.store.model_catalog import ModelEntry, discover_models
from lenstui.tui.host import ExplorerHost
from lenstui.tui.panes.prompt import PRESETS, Preset
from lenstui.tui.state import causal, lenses, pins, speakability

PREFIX = "model: open "


class ModelChosen(Message):
    """The user picked a model in the palette: ``spec`` is what load_model takes
    ("" for the embedded model); ``placement``: the flags typed after it (None: the
    start's)."""

    def __init__(self, spec: str, label: str, placement: Optional[dict] = None) -> None:
        super().__init__()
        self.spec = spec
        self.label = label
        self.placement = placement


# The load flags the picker takes after a typed spec, as the command line spells them.
PLACEMENT_FLAGS = {"--device": "device", "--dtype": "dtype", "--device-map": "device_map",
                   "--max-memory": "max_memory", "--offload-dir": "offload_dir", "--quantize": "quantize"}


def split_placement(text: str) -> tuple[str, dict]:
    """ "meta-llama/Llama-3.3-70B-Instruct --device-map auto --quantize 4bit" -> (the spec,
    {"device_map": "auto", "quantize": "4bit"}); words that are not such a flag and its
    value stay in the spec."""
    words = text.split()
    spec, flags, index = [], {}, 0
    while index < len(words):
        word = words[index]
        name, _, value = word.partition("=")
        if name in PLACEMENT_FLAGS and (value or index + 1 < len(words)):
            if not value:
                index += 1
                value = words[index]
            flags[PLACEMENT_FLAGS[name]] = value
        else:
            spec.append(word)
        index += 1
    return " ".join(spec), flags


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

    def _choose(self, spec: str, label: str, placement: Optional[dict] = None) -> None:
        self.app.post_message(ModelChosen(spec, label, placement))

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
        spec, flags = split_placement(typed_spec(query))
        typed = PREFIX + typed_spec(query)
        if flags and spec:
            # "model: open SPEC --device-map auto --max-memory 0=70GiB,1=70GiB ...": this load only.
            where = ", ".join(f"{key.replace('_', '-')} {value}" for key, value in flags.items())
            yield Hit(0.1, typed, partial(self._choose, spec, spec, flags), text=typed, help=f"open it with {where}")
        elif looks_like_spec(spec) and not any(e.spec == spec or e.label == spec for e in self._entries):
            # Below the listed models, so a typed path never hides a match.
            yield Hit(0.1, PREFIX + spec, partial(self._choose, spec, spec), text=PREFIX + spec, help="open this spec as typed")


class PaletteHost(ExplorerHost, Protocol):
    """The app's actions the palette runs (LenstuiApp has them all)."""

    lenstui_theme_names: list[str]
    action_switch_view: Callable[[], None]
    action_step: Callable[[], None]
    action_unstep: Callable[[], None]
    action_toggle_chat: Callable[[], None]
    action_target_selected: Callable[[], None]
    action_reset_target: Callable[[], None]
    action_toggle_mid: Callable[[], None]
    action_inspect_prompt_token: Callable[[], None]
    action_check_speakable: Callable[[], None]
    action_scan_vocabulary: Callable[[], None]
    action_aim_distribution: Callable[[], None]
    action_cancel_speak: Callable[[], None]
    action_attribute_cell: Callable[[], None]
    action_attribute_contrast: Callable[[], None]
    action_attribute_no_contrast: Callable[[], None]
    action_toggle_help: Callable[[], None]
    export_json: Callable[[], object]
    export_svg: Callable[[], object]

    def apply_preset(self, preset: Preset) -> None: ...

    def switch_theme(self, name: str) -> None: ...

    def set_lens(self, kind: str) -> None: ...


def explorer_commands(app: PaletteHost) -> Iterator[SystemCommand]:
    key = app.key_for
    yield SystemCommand("grid: switch view", "layer × position ⇄ layer × top-k", app.action_switch_view)
    yield SystemCommand("grid: stride layers", "show every 1st/2nd/3rd/4th layer (the last always)", app.grid.action_stride)
    yield SystemCommand("generate: step one token", "append the model's greedy next token", app.action_step)
    yield SystemCommand("generate: undo step", "remove the last generated token", app.action_unstep)
    yield SystemCommand("prompt: toggle chat template", "wrap the prompt as a user turn", app.action_toggle_chat)
    for preset in PRESETS:
        yield SystemCommand(f"prompt: preset {preset.name}", preset.text, lambda p=preset: app.apply_preset(p))
    for name in app.lenstui_theme_names:
        yield SystemCommand(f"theme: {name}", "switch to this theme", lambda n=name: app.switch_theme(n))
    yield SystemCommand("lens: target the selected token", f"rank this token at every cell ({key('lenstui.target')})", app.action_target_selected)
    yield SystemCommand("lens: default target", f"each position's own top-1 ({key('lenstui.target_reset')})", app.action_reset_target)
    for kind in LENS_KINDS:
        yield SystemCommand(f"lens: {kind} lens", LENS_DESCRIPTIONS[kind], lambda k=kind: app.set_lens(k))
    yield from lenses.commands(app)
    yield SystemCommand("lens: toggle mid-block rows", "also read the residual after each attention", app.action_toggle_mid)
    yield SystemCommand("inspect: prompt token at the cursor", f"the input token, not the prediction ({key('lenstui.inspect_prompt')})", app.action_inspect_prompt_token)
    yield SystemCommand("speak: check the selected token", f"certified LP check ({key('lenstui.speak_check')}; {key('lenstui.speak_cancel')} cancels)", app.action_check_speakable)
    yield SystemCommand("speak: scan the whole vocabulary", "every token a verdict; resumable, cached per model", app.action_scan_vocabulary)
    yield SystemCommand("speak: aim distribution", f"θ over the scanned vocabulary, the selected token marked ({key('lenstui.aim_view')})", app.action_aim_distribution)
    yield from speakability.commands(app)
    yield SystemCommand("speak: stop the check or scan", key("lenstui.speak_cancel"), app.action_cancel_speak)
    yield SystemCommand("attribute: the selected cell", f"which components and heads wrote its token ({key('lenstui.attribute')})", app.action_attribute_cell)
    yield SystemCommand("attribute: contrast with the selected token", "attribute logit(token) - logit(this one)", app.action_attribute_contrast)
    yield SystemCommand("attribute: no contrast", "attribute logit(token) - mean logit", app.action_attribute_no_contrast)
    yield from pins.commands(app)
    yield from causal.commands(app)
    info = getattr(app, "model_info", None)
    if info is not None:
        where = info.placement_summary or info.device
        quant = f", {info.quantize}" if info.quantize else ""
        yield SystemCommand(
            "model: where it is", f"{where}{quant}",
            lambda: app.notify(f"{info.name}: {where} ({info.dtype}{quant})", title="Model", timeout=10),
        )
    yield SystemCommand("export: grid as JSON", "same shape as `lenstui lens --json`", app.export_json)
    yield SystemCommand("export: screen as SVG", "a screenshot for slides", app.export_svg)
    yield SystemCommand("keys: show or hide bindings", "the keys panel (F1 or ?)", app.action_toggle_help)
