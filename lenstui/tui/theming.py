"""Theme files (TOML) -> Textual ``Theme`` objects, with every mistake reported, never raised.

Shipped themes live in ``lenstui/themes/*.toml`` (package data, so they install with
the package; the repository's top-level ``themes`` is a symlink to that folder, so the
files are in one place only). Users add their own in ``config_dir()/themes/*.toml``;
a user theme with the same name as a shipped one replaces it.

A file's keys map one to one onto :class:`textual.theme.Theme`; ``name`` defaults to
the file's stem. A typo'd key, a colour that does not parse or a TOML syntax error
makes that one file a *problem* (a sentence for a notice) and the others still load.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from textual.color import Color, ColorParseError
from textual.theme import Theme

DEFAULT_THEME = "lenstui-dark"
COLOUR_KEYS = (
    "primary",
    "secondary",
    "accent",
    "foreground",
    "background",
    "surface",
    "panel",
    "boost",
    "success",
    "warning",
    "error",
)
NUMBER_KEYS = ("luminosity_spread", "text_alpha")
ALL_KEYS = ("name", "dark", "variables", *COLOUR_KEYS, *NUMBER_KEYS)


class ThemeFileError(Exception):
    """A theme file that cannot become a Theme; str() is a sentence for a notice."""


@dataclass
class ThemeSet:
    themes: dict[str, Theme]  # by name, shipped first, user themes overriding
    problems: list[str]  # one sentence per file that did not load


def shipped_theme_dir() -> Path:
    return Path(__file__).parent / "themes"


def user_theme_dir() -> Path:
    from lenstui.store.paths import config_dir

    return config_dir() / "themes"


def theme_from_file(path: Path) -> Theme:
    """Parse and check one theme file; raise ThemeFileError saying what is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ThemeFileError(f"{path.name} is not valid TOML ({err}).") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ThemeFileError(f"Cannot read {path.name} ({err}).") from None
    unknown = [key for key in data if key not in ALL_KEYS]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, ALL_KEYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(ALL_KEYS)})"
        raise ThemeFileError(f"{path.name}: unknown key {key!r}{hint}.")
    if "primary" not in data:
        raise ThemeFileError(f"{path.name}: a theme needs at least a 'primary' colour.")
    for key in COLOUR_KEYS:
        if key in data:
            _check_colour(path, key, data[key])
    for key in NUMBER_KEYS:
        if key in data and not isinstance(data[key], (int, float)):
            raise ThemeFileError(f"{path.name}: {key} must be a number, not {data[key]!r}.")
    if "dark" in data and not isinstance(data["dark"], bool):
        raise ThemeFileError(f"{path.name}: dark must be true or false, not {data['dark']!r}.")
    variables = data.get("variables", {})
    if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
        raise ThemeFileError(f"{path.name}: [variables] must map names to strings.")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise ThemeFileError(f"{path.name}: name must be a non-empty string.")
    fields = {key: data[key] for key in (*COLOUR_KEYS, *NUMBER_KEYS, "dark") if key in data}
    theme = Theme(name=name.strip(), variables=dict(variables), **fields)
    try:  # the colour system derives shades from these; make it fail here, not mid-draw
        theme.to_color_system().generate()
    except Exception as err:
        raise ThemeFileError(f"{path.name}: {err}.") from None
    return theme


def _check_colour(path: Path, key: str, value: object) -> None:
    if not isinstance(value, str):
        raise ThemeFileError(f"{path.name}: {key} must be a colour string, not {value!r}.")
    try:
        Color.parse(value)
    except ColorParseError:
        raise ThemeFileError(f"{path.name}: {key} = {value!r} is not a colour.") from None


def _load_folder(folder: Path, themes: dict[str, Theme], problems: list[str]) -> None:
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.toml")):
        try:
            theme = theme_from_file(path)
        except ThemeFileError as err:
            problems.append(str(err))
            continue
        themes[theme.name] = theme


def load_themes(user_dir: Optional[Path] = None) -> ThemeSet:
    themes: dict[str, Theme] = {}
    problems: list[str] = []
    _load_folder(shipped_theme_dir(), themes, problems)
    _load_folder(user_dir if user_dir is not None else user_theme_dir(), themes, problems)
    return ThemeSet(themes=themes, problems=problems)
