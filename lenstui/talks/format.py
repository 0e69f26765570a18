"""Talk files: prepared scenes for `lenstui present`, as plain data (no torch, no Textual).

A talk is a TOML file with optional top-level ``title``, ``model`` (a ``--model`` spec)
and ``theme`` (the default for every scene), then one ``[[scene]]`` table per scene::

    title = "What the layers say"

    [[scene]]
    title = "Where is the Eiffel Tower?"
    prompt = "The Eiffel Tower is located in the city of"   # or prompt_ids = [504, 3050]
    chat = false            # wrap the prompt in the chat template
    steps = 0               # greedy generation steps appended to the prompt
    view = "topk"           # positions | topk | trajectories | attribution
    cursor = { layer = "L20", position = -1 }   # a row label or index; -1 = last position
    target = " Paris"       # token text, a vocabulary piece, "#7042" or 7042
    pinned = [" Paris", "#5"]
    lens = "logit"          # logit | extended | raw | tuned | jacobian | patchscope
    extended_blocks = 1     # with lens = "extended"
    patchscope_target = "cat -> cat\n?"  # with lens = "patchscope" (default: token identity)
    theme = "lenstui-contrast"

Loading never stops at a bad scene: it comes back with ``problem`` set (one sentence)
and the rest of the talk is intact. Only a file that cannot be read as a talk at all
raises :class:`LenstuiError`. Whether a prompt fits a model's context, or a token
exists in its vocabulary, needs the model: :mod:`lenstui.talks.resolve`.

:func:`append_scene` adds a scene at the end of a file without rewriting what is there.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from lenstui.core.errors import LenstuiError, clipped, quoted
from lenstui.core.lenses import LENS_KINDS
from lenstui.store.atomic import write_bytes_atomic

VIEWS = ("positions", "topk", "trajectories", "attribution")
LENSES = LENS_KINDS
MAX_STEPS = 1024
TOP_KEYS = ("title", "model", "theme", "scene")
SCENE_KEYS = (
    "title", "prompt", "prompt_ids", "chat", "steps", "view", "cursor", "target", "pinned",
    "lens", "extended_blocks", "patchscope_target", "theme",
)
_LAYER_LABEL = re.compile(r"^(embed|L\d+(\.attn)?)$")
_TOKEN_ID = re.compile(r"^#(\d+)$")
_SCENE_HEADER = re.compile(r"^\s*\[\[\s*scene\s*\]\]", re.MULTILINE)

TokenSpec = Union[str, int]  # what lenstui.engine.model.vocab.resolve_token takes


@dataclass
class Cursor:
    layer: Union[str, int, None] = None  # "embed", "L12", "L3.attn", or a row index (-1 = last)
    position: Optional[int] = None  # a prompt position; negative counts from the end


@dataclass
class Scene:
    number: int  # 1-based, in file order
    title: str = ""
    prompt: Optional[str] = None
    prompt_ids: Optional[list[int]] = None
    chat: bool = False
    steps: int = 0
    view: str = "positions"
    cursor: Cursor = field(default_factory=Cursor)
    target: Optional[TokenSpec] = None  # None: each position's own top-1
    pinned: list[TokenSpec] = field(default_factory=list)
    lens: str = "logit"
    extended_blocks: Optional[int] = None
    patchscope_target: Optional[str] = None  # None: the token-identity prompt
    theme: Optional[str] = None
    line: Optional[int] = None  # where its [[scene]] header is in the file
    problem: Optional[str] = None  # why it cannot be shown; None when it can
    notes: list[str] = field(default_factory=list)  # keys that were ignored

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def prompt_value(self) -> Union[str, list[int], None]:
        """What lenstui.engine.model.vocab.encode_prompt takes: the text or the ids."""
        return self.prompt_ids if self.prompt_ids is not None else self.prompt


@dataclass
class Talk:
    path: Path
    scenes: list[Scene]
    title: Optional[str] = None
    model: Optional[str] = None  # a --model spec; None: whatever the app was started with
    theme: Optional[str] = None
    notes: list[str] = field(default_factory=list)  # top-level keys that were ignored

    @property
    def problems(self) -> list[str]:
        return [f"scene {s.number}: {s.problem}" for s in self.scenes if s.problem]


def token_spec(value: Any) -> TokenSpec:
    """A token as a talk file names it: an int or "#123" is an id, any other string its
    text or vocabulary piece. Raises ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"{quoted(value)} is not a token")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"token id {value} is negative")
        return value
    if isinstance(value, str) and value:
        match = _TOKEN_ID.match(value)
        return int(match.group(1)) if match else value
    raise ValueError(f"{quoted(value)} is not a token (give its text, \"#id\" or an id)")


def token_spec_text(spec: TokenSpec) -> str:
    """How a token spec is written back to a talk file."""
    return f"#{spec}" if isinstance(spec, int) else spec


def parse_scene(data: Any, number: int, default_theme: Optional[str] = None) -> Scene:
    """A Scene from one [[scene]] table; problems become scene.problem, never exceptions."""
    scene = Scene(number=number, title=f"Scene {number}", theme=default_theme)
    if not isinstance(data, dict):
        scene.problem = "is not a table of keys."
        return scene
    problems: list[str] = []

    def bad(message: str) -> None:
        problems.append(message)

    for key in data:
        if key not in SCENE_KEYS:
            scene.notes.append(f"unknown key {quoted(key)} was ignored")
    title = data.get("title", scene.title)
    if isinstance(title, str) and title.strip():
        scene.title = title.strip()
    else:
        bad("title must be a non-empty text")

    has_text, has_ids = "prompt" in data, "prompt_ids" in data
    if has_text == has_ids:
        bad("give exactly one of prompt (text) and prompt_ids (a list of token ids)")
    elif has_text:
        if isinstance(data["prompt"], str) and data["prompt"]:
            scene.prompt = data["prompt"]
        else:
            bad("prompt must be a non-empty text")
    else:
        ids = data["prompt_ids"]
        if isinstance(ids, list) and ids and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            scene.prompt_ids = list(ids)
        else:
            bad("prompt_ids must be a non-empty list of token ids (whole numbers, 0 or more)")

    chat = data.get("chat", False)
    if not isinstance(chat, bool):
        bad("chat must be true or false")
    elif chat and has_ids:
        bad("chat = true needs a text prompt (prompt_ids are used exactly as given)")
    else:
        scene.chat = chat
    steps = data.get("steps", 0)
    if isinstance(steps, int) and not isinstance(steps, bool) and 0 <= steps <= MAX_STEPS:
        scene.steps = steps
    else:
        bad(f"steps must be a whole number from 0 to {MAX_STEPS}")
    view = data.get("view", "positions")
    if view in VIEWS:
        scene.view = view
    else:
        bad(f"view {quoted(view)} is not one of {', '.join(VIEWS)}")
    lens = data.get("lens", "logit")
    if lens in LENSES:
        scene.lens = lens
    else:
        bad(f"lens {quoted(lens)} is not one of {', '.join(LENSES)}")
    blocks = data.get("extended_blocks")
    if blocks is not None:
        if isinstance(blocks, int) and not isinstance(blocks, bool) and blocks >= 1:
            scene.extended_blocks = blocks
        else:
            bad("extended_blocks must be a whole number, 1 or more")
    patch_target = data.get("patchscope_target")
    if patch_target is not None:
        if isinstance(patch_target, str) and patch_target.strip():
            scene.patchscope_target = patch_target
        else:
            bad("patchscope_target must be a prompt (text whose last token is read)")
    theme = data.get("theme", default_theme)
    if theme is None or isinstance(theme, str) and theme:
        scene.theme = theme
    else:
        bad("theme must be a theme's name")

    cursor = data.get("cursor")
    if cursor is not None:
        if not isinstance(cursor, dict) or set(cursor) - {"layer", "position"}:
            bad("cursor must be a table with layer and position, e.g. { layer = \"L12\", position = -1 }")
        else:
            layer, position = cursor.get("layer"), cursor.get("position")
            if layer is not None and not (
                isinstance(layer, int) and not isinstance(layer, bool) or isinstance(layer, str) and _LAYER_LABEL.match(layer)
            ):
                bad(f"cursor layer {quoted(layer)} is not a row label (\"embed\", \"L12\", \"L3.attn\") or a row index")
            elif position is not None and (not isinstance(position, int) or isinstance(position, bool)):
                bad(f"cursor position {quoted(position)} is not a whole number (negative counts from the end)")
            else:
                scene.cursor = Cursor(layer, position)

    if data.get("target") is not None:
        try:
            scene.target = token_spec(data["target"])
        except ValueError as err:
            bad(f"target: {err}")
    pinned = data.get("pinned", [])
    if not isinstance(pinned, list):
        bad("pinned must be a list of tokens")
    else:
        for item in pinned:
            try:
                scene.pinned.append(token_spec(item))
            except ValueError as err:
                bad(f"pinned: {err}")
                break

    if problems:
        scene.problem = "; ".join(problems) + "."
    return scene


def parse_talk(text: str, path: Path) -> Talk:
    """A Talk from a file's text; LenstuiError (one sentence) if it is not a talk at all."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise LenstuiError(f"{path} is not valid TOML ({clipped(err)}): fix that line and try again.") from None
    except RecursionError:  # tomllib recurses per nesting level: [[[[...]]]] deep enough
        raise LenstuiError(f"{path} nests tables or lists too deeply to read: it is not a talk file.") from None
    scenes_data = data.get("scene")
    if scenes_data is None:
        raise LenstuiError(f"{path} has no scenes: add at least one [[scene]] table with a prompt.")
    if not isinstance(scenes_data, list):
        raise LenstuiError(f"{path}: scene must be a list of [[scene]] tables, not a single value or table.")
    talk = Talk(path=path, scenes=[])
    for key in ("title", "model", "theme"):
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, str) and value.strip():
            setattr(talk, key, value.strip() if key == "title" else value)
        else:
            talk.notes.append(f"{key} = {quoted(value)} is not a text and was ignored")
    talk.notes += [f"unknown key {quoted(key)} was ignored" for key in data if key not in TOP_KEYS]
    header_lines = [text.count("\n", 0, m.start()) + 1 for m in _SCENE_HEADER.finditer(text)]
    for index, scene_data in enumerate(scenes_data):
        scene = parse_scene(scene_data, index + 1, talk.theme)
        if len(header_lines) == len(scenes_data):
            scene.line = header_lines[index]
        talk.scenes.append(scene)
    return talk


def load_talk(path: Union[str, Path]) -> Talk:
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LenstuiError(f"No talk file at {path}: check the path.") from None
    except IsADirectoryError:
        raise LenstuiError(f"{path} is a folder, not a talk file (.toml).") from None
    except UnicodeDecodeError:
        raise LenstuiError(f"{path} is not UTF-8 text: save it as UTF-8.") from None
    except OSError as err:
        raise LenstuiError(f"Cannot read {path} ({err.strerror}).") from None
    return parse_talk(text, path)


# --- writing ---------------------------------------------------------------------------

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b", "\f": "\\f"}


def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped, the rest
    (emoji, accents) written as is."""
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to a talk file")


def scene_to_toml(scene: Scene) -> str:
    """One [[scene]] table, every field the scene sets, ending in a newline."""
    lines = ["[[scene]]", f"title = {toml_string(scene.title)}"]
    if scene.prompt_ids is not None:
        lines.append(f"prompt_ids = {_toml_value(scene.prompt_ids)}")
    else:
        lines.append(f"prompt = {toml_string(scene.prompt or '')}")
    lines += [f"chat = {_toml_value(scene.chat)}", f"steps = {scene.steps}", f"view = {toml_string(scene.view)}"]
    cursor = [
        f"{name} = {_toml_value(value)}"
        for name, value in (("layer", scene.cursor.layer), ("position", scene.cursor.position))
        if value is not None
    ]
    if cursor:
        lines.append("cursor = { " + ", ".join(cursor) + " }")
    if scene.target is not None:
        lines.append(f"target = {toml_string(token_spec_text(scene.target))}")
    if scene.pinned:
        lines.append(f"pinned = {_toml_value([token_spec_text(p) for p in scene.pinned])}")
    lines.append(f"lens = {toml_string(scene.lens)}")
    if scene.extended_blocks is not None:
        lines.append(f"extended_blocks = {scene.extended_blocks}")
    if scene.patchscope_target is not None:
        lines.append(f"patchscope_target = {toml_string(scene.patchscope_target)}")
    if scene.theme:
        lines.append(f"theme = {toml_string(scene.theme)}")
    return "\n".join(lines) + "\n"


def append_scene(path: Union[str, Path], scene: Scene) -> Talk:
    """Add ``scene`` at the end of the talk file (created if missing) and return the talk.

    The file's bytes are kept as they are and the scene's text is appended; the result
    is parsed before anything is written, then written to a temporary file in the same
    folder and moved over the original in one step, so a crash or a full disk leaves the
    old file whole. A file that is not a valid talk is left untouched (LenstuiError).
    A talk file that is a symbolic link stays one: the file it points to is written.
    """
    path = Path(path).expanduser()
    if scene.problem:
        raise LenstuiError(f"This scene cannot be saved: {scene.problem}")
    try:
        old = path.read_bytes()
    except FileNotFoundError:
        old = b""
    except OSError as err:
        raise LenstuiError(f"Cannot read {path} ({err.strerror}); the scene was not saved.") from None
    separator = b"" if not old else (b"\n" if old.endswith(b"\n") else b"\n\n")
    new = old + separator + scene_to_toml(scene).encode("utf-8")
    try:
        text = new.decode("utf-8")
    except UnicodeDecodeError:
        raise LenstuiError(f"{path} is not UTF-8 text; the scene was not saved.") from None
    try:
        talk = parse_talk(text, path)
    except LenstuiError as err:
        raise LenstuiError(f"{err} The scene was not saved and the file is unchanged.") from None
    saved = talk.scenes[-1]
    if saved.problem:  # cannot happen for a scene that passed parse_scene; checked anyway
        raise LenstuiError(f"The scene would not read back ({saved.problem}); the file is unchanged.")
    _atomic_write(path, new)
    return talk


def _atomic_write(path: Path, data: bytes) -> None:
    """The file's new bytes in one step, or a sentence and the file as it was."""
    try:
        write_bytes_atomic(path, data)
    except OSError as err:
        raise LenstuiError(f"Cannot write {path} ({err.strerror}); the scene was not saved and the file is unchanged.") from None
