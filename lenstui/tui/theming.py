"""Theme files (TOML) -> Textual ``Theme`` objects, with every mistake reported, never raised.

Shipped themes live in ``lenstui/themes/*.toml`` (package data, so they install with
the package; the repository's top-level ``themes`` is a symlink to that folder, so the
files are in one place only). Users add their own in ``config_dir()/themes/*.toml``;
a user theme with the same name as a shipped one replaces it.

A file's keys map one to one onto :class:`textual.theme.Theme`; ``name`` defaults to
the file's stem. A typo'd key, a colour that does not parse, a boolean where a number
goes, a ``[variables]`` value that is not a CSS value (or not one of the kind Textual's
own variable of that name takes: ``block-cursor-background = "12px"``), a TOML syntax
error or nesting too deep to read makes that one file a *problem* (a sentence for a
notice, at load) and the others still load: no theme file can stop the app at start.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from textual.color import Color, ColorParseError
from textual.theme import Theme

from lenstui.core.errors import clipped, quoted

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
# lenstui's own theme variables and the CSS property each must fit (Textual's own
# variables are checked against the kind of value Textual gives them).
LENSTUI_VARIABLES = {"lens-heat": "background"}
# Where a variable's value is tried, in order, to learn which kind of value it is.
PROBE_PROPERTIES = ("background", "color", "text-style")
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
        raise ThemeFileError(f"{path.name} is not valid TOML ({clipped(err)}).") from None
    except RecursionError:  # tomllib recurses per nesting level
        raise ThemeFileError(f"{path.name} nests tables or lists too deeply to read.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ThemeFileError(f"Cannot read {path.name} ({clipped(err)}).") from None
    unknown = [key for key in data if key not in ALL_KEYS]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, ALL_KEYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(ALL_KEYS)})"
        raise ThemeFileError(f"{path.name}: unknown key {quoted(key)}{hint}.")
    if "primary" not in data:
        raise ThemeFileError(f"{path.name}: a theme needs at least a 'primary' colour.")
    for key in COLOUR_KEYS:
        if key in data:
            _check_colour(path, key, data[key])
    for key in NUMBER_KEYS:
        if key in data and (not isinstance(data[key], (int, float)) or isinstance(data[key], bool)):
            raise ThemeFileError(f"{path.name}: {key} must be a number, not {quoted(data[key])}.")
    if "dark" in data and not isinstance(data["dark"], bool):
        raise ThemeFileError(f"{path.name}: dark must be true or false, not {quoted(data['dark'])}.")
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
        raise ThemeFileError(f"{path.name}: {clipped(err)}.") from None
    _check_variables(path, theme)
    return theme


def _check_variables(path: Path, theme: Theme) -> None:
    """Each ``[variables]`` value must be what Textual's stylesheet will accept where the
    variable is used: it tokenizes as a CSS value (Textual tokenizes every variable when
    it builds the stylesheet, used or not), and one that Textual (or lenstui) itself
    defines must parse in a declaration that takes the kind of value Textual's own has."""
    from textual.css.tokenize import tokenize_values

    if not theme.variables:
        return
    defaults = Theme(**{**_theme_fields(theme), "variables": {}}).to_color_system().generate()
    values = {**defaults, **theme.variables}
    for name, value in theme.variables.items():
        what = f"{path.name}: [variables] {quoted(name, 40)} = {quoted(value)}"
        try:
            tokenize_values({name: value})
        except Exception:
            raise ThemeFileError(f"{what} is not a CSS value.") from None
        probe = LENSTUI_VARIABLES.get(name) or (_probe_property(name, defaults) if name in defaults else None)
        if probe is not None and not _parses(probe, name, values):
            kind = {"background": "colour", "color": "text colour", "text-style": "text style"}.get(probe, probe)
            raise ThemeFileError(f"{what} is not a {kind}, which ${name} must be.")


def _theme_fields(theme: Theme) -> dict:
    return {key: getattr(theme, key) for key in ("name", *COLOUR_KEYS, *NUMBER_KEYS, "dark")}


_probe_cache: dict[tuple[str, str], Optional[str]] = {}


def _probe_property(name: str, defaults: dict[str, str]) -> Optional[str]:
    """The first CSS property of PROBE_PROPERTIES that takes Textual's own value of
    ``$name`` (None: none of them, so only the tokenizing check applies)."""
    key = (name, defaults[name])
    if key not in _probe_cache:
        _probe_cache[key] = next((prop for prop in PROBE_PROPERTIES if _parses(prop, name, defaults)), None)
    return _probe_cache[key]


def _parses(prop: str, name: str, variables: dict[str, str]) -> bool:
    from textual.css.stylesheet import Stylesheet

    sheet = Stylesheet(variables=variables)
    sheet.add_source(f"Screen {{ {prop}: ${name}; }}", read_from=("theme check", ""))
    try:
        sheet.parse()
    except Exception:  # StylesheetParseError, a tokenizer error, a bad colour: all "no"
        return False
    return True


def _check_colour(path: Path, key: str, value: object) -> None:
    if not isinstance(value, str):
        raise ThemeFileError(f"{path.name}: {key} must be a colour string, not {quoted(value)}.")
    try:
        Color.parse(value)
    except ColorParseError:
        raise ThemeFileError(f"{path.name}: {key} = {quoted(value)} is not a colour.") from None


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
