"""The model picker's palette entries, in a real Textual app driven by Pilot: the
listed models come from a models folder built here; choosing one posts ModelChosen."""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.command import CommandList, CommandPalette
from textual.widgets import Static

from lenstui.tui.commands import ModelChosen, ModelCommands, looks_like_spec, typed_spec
from testkit.apphelpers import until


class PickerApp(App):
    COMMANDS = App.COMMANDS | {ModelCommands}

    def __init__(self) -> None:
        super().__init__()
        self.chosen: list[tuple[str, str]] = []

    def compose(self) -> ComposeResult:
        yield Static("picker")

    def on_model_chosen(self, message: ModelChosen) -> None:
        self.chosen.append((message.spec, message.label))


def _models_dir(tmp_path, monkeypatch):
    models = tmp_path / "models"
    (models / "quant").mkdir(parents=True)
    (models / "quant" / "tiny-q4.gguf").write_bytes(b"GGUF" + b"\0" * 100)
    config = tmp_path / "config"
    config.mkdir()
    (config / "config.toml").write_text(f'models_dir = "{models}"\n')
    monkeypatch.setenv("LENSTUI_CONFIG_DIR", str(config))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.chdir(tmp_path / "config")  # nothing to find in the current dir
    return models


def _searching(palette: CommandPalette) -> bool:
    return any(
        worker.node is palette and worker.group == CommandPalette._GATHER_COMMANDS_GROUP and not worker.is_finished
        for worker in palette.app.workers
    )


async def _palette_choose(pilot, query: str) -> None:
    await pilot.press("ctrl+p")
    await pilot.pause()
    palette = pilot.app.screen
    assert isinstance(palette, CommandPalette)
    await pilot.press(*query)
    # The search for the whole query has ended and its hits are listed.
    await until(pilot, lambda: palette.query_one(CommandList).option_count > 0 and not _searching(palette), "the hits")
    await pilot.press("down", "enter")
    await pilot.pause()


async def test_a_listed_model_is_chosen_from_the_palette(tmp_path, monkeypatch):
    models = _models_dir(tmp_path, monkeypatch)
    app = PickerApp()
    async with app.run_test() as pilot:
        await _palette_choose(pilot, "tiny-q4")
    assert app.chosen == [(str(models / "quant" / "tiny-q4.gguf"), "quant/tiny-q4.gguf")]


async def test_a_typed_spec_is_offered_as_typed(tmp_path, monkeypatch):
    _models_dir(tmp_path, monkeypatch)
    app = PickerApp()
    async with app.run_test() as pilot:
        await _palette_choose(pilot, "model: open someorg/some-model")
    assert app.chosen == [("someorg/some-model", "someorg/some-model")]


def test_typed_specs():
    assert typed_spec("model: open ~/m.gguf") == "~/m.gguf"
    assert typed_spec("open org/name") == "org/name" and typed_spec("x.gguf") == "x.gguf"
    assert looks_like_spec("org/name") and looks_like_spec("m.GGUF")
    assert not looks_like_spec("tiny") and not looks_like_spec("two words/x") and not looks_like_spec("")
