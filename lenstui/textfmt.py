"""How a token's text is shown in a fixed-width cell: legible and alignment-safe.

No Textual and no tensors here: the CLI tables and the app's grid both use it.
Leading/trailing spaces become a visible "␣", newlines and other control characters
become escapes (\\n, \\t, \\x1b), and the replacement character that a partial UTF-8
byte sequence decodes to is kept as "�" (the inspector shows the real bytes).
Widths are terminal cells (wide CJK/emoji count 2, combining marks 0).
"""

from __future__ import annotations

import unicodedata

from rich.cells import cell_len

SPACE_MARK = "␣"
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def visible(text: str) -> str:
    """A one-line, unambiguous rendering of a token's decoded text."""
    if text == "":
        return "∅"
    out = []
    for char in text:
        if char == " ":
            out.append(SPACE_MARK)
        elif char in _NAMED:
            out.append(_NAMED[char])
        elif unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") or char == "\x7f":
            out.append(f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")
        elif unicodedata.category(char).startswith("M") and not out:
            out.append("◌" + char)  # a combining mark needs a base to sit on
        else:
            out.append(char)
    return "".join(out)


def fit(text: str, width: int) -> str:
    """Pad or truncate (with …) to exactly ``width`` terminal cells."""
    if width <= 0:
        return ""
    if cell_len(text) <= width:
        return text + " " * (width - cell_len(text))
    out, used = [], 0
    for char in text:
        w = cell_len(char)
        if used + w > width - 1:
            break
        out.append(char)
        used += w
    return "".join(out) + "…" + " " * (width - 1 - used)
