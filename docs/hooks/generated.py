"""MkDocs hook: pages that are generated from the code at build time, so they cannot drift.

A page asks for a generated block with an HTML comment on a line of its own:

- ``<!-- generated: keys -->``: the explorer's and the presenter's keys, from the action
  registry (``lenstui.tui.actions``), then the keys each screen, pane and widget binds
  itself (every class under ``lenstui.tui`` with a ``BINDINGS`` list of its own);
- ``<!-- generated: cli-help lens -->``: ``lenstui lens --help`` as argparse prints it
  (``cli-help`` alone: ``lenstui --help``; ``cli-help lenses fit``: a verb's help).

Text between ``<!-- github-only -->`` and ``<!-- /github-only -->`` is for readers of the
Markdown file on GitHub (where nothing is generated) and is left out of the site.

Declared under ``hooks:`` in mkdocs.yml. A marker this hook does not know fails the build,
as does a subcommand the CLI does not have.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
from contextlib import contextmanager

from mkdocs.exceptions import PluginError

MARKER = re.compile(r"^<!-- generated: ([\w-]+)((?: [\w-]+)*) -->$", re.MULTILINE)
GITHUB_ONLY = re.compile(r"^<!-- github-only -->$.*?^<!-- /github-only -->$\n?", re.MULTILINE | re.DOTALL)
HELP_COLUMNS = "96"  # argparse wraps at $COLUMNS; fixed, so the pages do not depend on the terminal

# How keys read on the page: Textual's key names as a person would type them.
KEY_NAMES = {
    "escape": "Esc", "enter": "Enter", "space": "Space", "backspace": "Backspace", "tab": "Tab",
    "pageup": "PgUp", "pagedown": "PgDn", "home": "Home", "end": "End",
    "up": "↑", "down": "↓", "left": "←", "right": "→",
}


def on_page_markdown(markdown: str, page, config, files) -> str:
    def expand(match: re.Match) -> str:
        kind, args = match.group(1), match.group(2).split()
        if kind == "keys" and not args:
            return keys_markdown()
        if kind == "cli-help":
            return "```text\n" + cli_help(args) + "```"
        raise PluginError(f"{page.file.src_uri}: unknown generated block {match.group(0)!r}")

    return MARKER.sub(expand, GITHUB_ONLY.sub("", markdown))


# --- keys --------------------------------------------------------------------------


def key_text(key: str) -> str:
    from textual.keys import format_key

    *modifiers, name = key.split("+")
    if len(name) == 1:
        shown = name.upper() if modifiers else name  # Ctrl+N, as keyboards and manuals write it
    elif name in KEY_NAMES:
        shown = KEY_NAMES[name]
    elif re.fullmatch(r"f\d+", name):
        shown = name.upper()
    else:
        shown = format_key(name)
    return "+".join([m.capitalize() for m in modifiers] + [shown])


def keys_cell(keys: str) -> str:
    return " ".join(f"`{key_text(key.strip())}`" for key in keys.split(","))


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def action_table(actions) -> str:
    rows = ["| keys | does | footer | rests | keymap id |", "| --- | --- | --- | --- | --- |"]
    for group in runs_of_alike(actions):
        first, last = group[0], group[-1]
        keys = keys_cell(first.keys) if len(group) == 1 else f"{keys_cell(first.keys)} … {keys_cell(last.keys)}"
        ids = f"`{first.id}`" if len(group) == 1 else f"`{first.id}` … `{last.id}`"
        resting = {"typing": not first.while_typing, "screens": not first.over_screens}
        rests = ", ".join(when for when, rests_then in resting.items() if rests_then)
        footer = "✓" if first.show else ""
        rows.append(f"| {keys} | {cell(first.description)} | {footer} | {rests} | {ids} |")
    return "\n".join(rows)


def runs_of_alike(actions) -> list[list]:
    """Consecutive actions that differ only in their key and id (the presenter's digits
    0..9) share a row."""
    groups: list[list] = []
    for action in actions:
        previous = groups[-1][-1] if groups else None
        if previous is not None and previous.name == action.name and previous.description == action.description and (
            previous.show, previous.while_typing, previous.over_screens
        ) == (action.show, action.while_typing, action.over_screens):
            groups[-1].append(action)
        else:
            groups.append([action])
    return groups


def binding_table(bindings) -> str:
    rows = ["| keys | does | keymap id |", "| --- | --- | --- |"]
    for binding in bindings:
        if isinstance(binding, tuple):  # Textual also takes (key, action, description)
            keys, description, binding_id = binding[0], binding[2] if len(binding) > 2 else "", ""
        else:
            keys, description, binding_id = binding.key, binding.description, binding.id or ""
        rows.append(f"| {keys_cell(keys)} | {cell(description)} | {f'`{binding_id}`' if binding_id else ''} |")
    return "\n".join(rows)


def classes_with_own_bindings():
    """(module, class) for every class under lenstui.tui that declares BINDINGS itself,
    except the apps (their keys are the registry's)."""
    import lenstui.tui
    from lenstui.tui.app import LenstuiApp

    found = []
    for info in pkgutil.walk_packages(lenstui.tui.__path__, "lenstui.tui."):
        if info.name.startswith("lenstui.tui.serve"):
            continue  # the browser's server and driver bind no keys
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or "BINDINGS" not in cls.__dict__:
                continue
            if issubclass(cls, LenstuiApp):
                continue
            found.append((module.__name__, cls))
    return sorted(found, key=lambda item: (item[0], item[1].__name__))


def first_line(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def keys_markdown() -> str:
    from lenstui.tui.actions import EXPLORER_ACTIONS, PRESENTER_ACTIONS

    from textual.app import App

    parts = [
        "## The explorer",
        "From `EXPLORER_ACTIONS` in `lenstui/tui/actions.py`. Two keys bound twice (`p`, `Esc`) "
        "do the first of their actions that applies at the moment.",
        action_table(EXPLORER_ACTIONS),
        "Textual's own keys, which every lenstui app keeps: the command palette "
        f"({keys_cell(App.COMMAND_PALETTE_BINDING)}) and these:",
        binding_table([b for b in App.BINDINGS if b.description]),
        "## Present mode",
        "`lenstui present FILE.toml` adds `PRESENTER_ACTIONS` to the explorer's keys.",
        action_table(PRESENTER_ACTIONS),
        "## Screens, panes and widgets",
        "Keys a part of the app binds itself: they work while it has the focus or is on top.",
    ]
    for module, cls in classes_with_own_bindings():
        summary = first_line(cls.__doc__)
        parts.append(f"### {cls.__name__}")
        parts.append(f"`{module}`" + (f": {summary}" if summary else ""))
        parts.append(binding_table(cls.__dict__["BINDINGS"]))
    return "\n\n".join(parts) + "\n"


# --- the CLI's help ----------------------------------------------------------------


@contextmanager
def columns(width: str):
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = width
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def cli_help(args: list[str]) -> str:
    import argparse

    from lenstui.cli import SUBCOMMANDS, build_parser

    command, verbs = (args[0], args[1:]) if args else (None, [])
    if command is not None and command not in SUBCOMMANDS:
        raise PluginError(f"lenstui has no subcommand {command!r}")
    with columns(HELP_COLUMNS):
        parser = build_parser(command)
        for verb in verbs:
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            if verb not in sub.choices:
                raise PluginError(f"lenstui {command} has no verb {verb!r}")
            parser = sub.choices[verb]
        return parser.format_help()
