"""How a token's text is shown in a fixed-width cell: legible and alignment-safe.

No Textual and no tensors here: the CLI tables, the app's grid and the inspector use it.

- Spaces become a visible "␣"; newlines, tabs and other control or format characters
  become escapes (\\n, \\t, \\x1b, \\u200d), so a token can never move the cursor, start
  an escape sequence, or flip the terminal's text direction (the bidi controls U+200E,
  U+202A..U+202E, U+2066..U+2069 are format characters and are escaped too).
- Right-to-left letters (Hebrew, Arabic) are shown as they are: each is one cell.
- A combining mark with nothing to sit on gets a dotted circle "◌".
- Sequences whose width terminals disagree on are taken apart: a zero-width joiner is
  escaped (so 👨‍👩 shows as two 2-cell emoji with \\u200d between), the emoji
  presentation selector U+FE0F (which widens "❤" to 2 cells on some terminals only) is
  shown as \\ufe0f, and so are skin-tone modifiers. What is left measures the same
  under Rich's grapheme rules and a plain per-character wcwidth.
- :func:`visible_bytes` shows bytes that are not whole UTF-8 characters as hex in
  angle brackets (``␣⟨f0 9f⟩`` for ``ĠðŁ``) instead of "�".

Widths are terminal cells as Rich (and so Textual) measures them: wide CJK/emoji count
2, combining marks 0.
"""

from __future__ import annotations

import math
import unicodedata

from rich.cells import cell_len, split_graphemes

from lenstui.core.token_bytes import bytes_hex, utf8_segments

SPACE_MARK = "␣"
EMPTY_MARK = "∅"
BYTES_OPEN, BYTES_CLOSE = "⟨", "⟩"
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
# Characters that glue graphemes together in ways terminals measure differently.
_ESCAPED_JOINERS = {"\u200d", "\ufe0e", "\ufe0f"}
_SKIN_TONES = range(0x1F3FB, 0x1F400)
_ESCAPED_CATEGORIES = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def visible(text: str) -> str:
    """A one-line, unambiguous rendering of a token's decoded text."""
    if text == "":
        return EMPTY_MARK
    out: list[str] = []
    for char in text:
        category = unicodedata.category(char)
        if char == " ":
            out.append(SPACE_MARK)
        elif char in _NAMED:
            out.append(_NAMED[char])
        elif (
            category in _ESCAPED_CATEGORIES
            or char == "\x7f"
            or char in _ESCAPED_JOINERS
            or ord(char) in _SKIN_TONES
        ):
            out.append(_escape(char))
        elif category.startswith("M") and (not out or out[-1].startswith("\\")):
            out.append("◌" + char)  # a combining mark needs a base to sit on
        else:
            out.append(char)
    return "".join(out)


def visible_bytes(data: bytes) -> str:
    """Like :func:`visible`, for raw bytes: whole characters as text, the rest as hex.

    ``b" \\xf0\\x9f"`` -> ``"␣⟨f0 9f⟩"``; ``b"\\x90\\xa0"`` -> ``"⟨90 a0⟩"``.
    """
    if not data:
        return EMPTY_MARK
    parts = []
    for segment in utf8_segments(data):
        if segment.kind == "text":
            parts.append(visible(segment.text))
        else:
            parts.append(BYTES_OPEN + bytes_hex(segment.data) + BYTES_CLOSE)
    return "".join(parts)


def fit(text: str, width: int) -> str:
    """Pad or truncate (with …) to exactly ``width`` terminal cells.

    Truncation cuts between graphemes, never inside one, so a wide character or a
    letter with its combining marks is either shown whole or not at all.
    """
    if width <= 0:
        return ""
    spans, total = split_graphemes(text)
    if total <= width:
        return text + " " * (width - total)
    out, used = [], 0
    for start, end, cells in spans:
        if used + cells > width - 1:
            break
        out.append(text[start:end])
        used += cells
    return "".join(out) + "…" + " " * (width - 1 - used)


def report_rows(report) -> list[tuple[str, str, str]]:
    """A token report (:class:`lenstui.engine.inspect.neighbors.TokenReport`) as labelled rows.

    Each row is ``(label, value, tone)`` with tone one of "", "good", "warn", "bad", so
    the CLI prints the same facts the inspector pane colours.
    """
    shown = visible(report.piece) if report.special else visible_bytes(report.data)
    utf8 = ("complete: " if report.complete_utf8 else "incomplete: ") + report.utf8_description
    rows = [
        ("shows as", shown, ""),
        ("bytes", report.bytes_hex or "(none)", ""),
        ("UTF-8", utf8, "" if report.complete_utf8 else "warn"),
        ("decodes to", repr(report.decoded), ""),
        ("scheme", report.scheme + ("  (control token)" if report.special else ""), ""),
        ("|W_U col|", f"{report.unembed_norm:.4f}", ""),
        ("|W_eff row|", f"{report.effective_norm:.4f}  (final {report.norm_kind} norm gain folded in)", ""),
    ]
    if report.unembed_bias is not None:
        rows.append(("b_U", f"{report.unembed_bias:+.4f}", ""))
    if report.readout_offset is not None:
        rows.append(("readout offset", f"{report.readout_offset:+.4f}  (b_U + W_U·norm bias)", ""))
    if report.own_best_match:
        rows.append(("own best match", f"yes, by {report.self_margin:.3f}", "good"))
    else:
        best = report.best_match
        rows.append(
            (
                "own best match",
                f"no: {best.id} {visible_bytes(best.data)} wins by {-report.self_margin:.3f} (hard to speak)",
                "bad",
            )
        )
    embedding = "tied to the unembedding" if report.tied_embedding else f"untied, |W_E row| {report.embed_norm:.4f}"
    rows.append(("embedding", embedding, ""))
    return rows


def neighbor_row(cosine: float, token_id: int, data: bytes, piece: str) -> str:
    """One neighbour as ``+0.8609  40303  ␣⟨f0 9f 98⟩      ĠðŁĺ`` (45 cells + piece)."""
    return fit(f"{cosine:+.4f}", 9) + fit(str(token_id), 7) + fit(visible_bytes(data), 18) + visible(piece)


def signed_bar(value: float, scale: float, half_width: int) -> str:
    """A bar centred on an axis: ``value / scale`` of ``half_width`` cells, to the right
    when positive, to the left when negative (``"   ██│     "``), exactly
    ``2 * half_width + 1`` cells; eighth blocks show the fraction (coarser on the left,
    where only ▕ and ▐ exist), and a non-zero value never draws as nothing."""
    if half_width <= 0:
        return "│"
    eighths = 0 if scale <= 0 else round(min(1.0, abs(value) / scale) * half_width * 8)
    if value != 0 and eighths == 0:
        eighths = 1
    full, part = divmod(eighths, 8)
    if value >= 0:
        right = "█" * full + (_EIGHTHS[part] if part else "")
        return " " * half_width + "│" + right + " " * (half_width - len(right))
    # Left of the axis only right-aligned eighths exist: ▕ (1/8) and ▐ (1/2).
    left = ("█" if part >= 6 else "▐" if part >= 3 else "▕" if part else "") + "█" * full
    left = left[-half_width:]
    return " " * (half_width - len(left)) + left + "│" + " " * half_width


_EIGHTHS = " ▏▎▍▌▋▊▉"


__all__ = [
    "EMPTY_MARK",
    "aim_lines",
    "SPACE_MARK",
    "cell_len",
    "fit",
    "neighbor_row",
    "report_rows",
    "signed_bar",
    "visible",
    "visible_bytes",
]


def bar(fraction: float, width: int, empty: str) -> str:
    """A progress bar of ``width`` cells: ``█`` for the done part, ``empty`` for the rest
    (the status line and the CLI share it; each keeps its own ``empty`` glyph)."""
    filled = max(0, min(width, round(fraction * width)))
    return "█" * filled + empty * (width - filled)


def aim_lines(aim) -> list[str]:
    """A speak result's ``aim`` field (``engine.aim.speak_aim``) in words, one or two lines;
    ``lenstui speak`` and the speakability pane both print these. [] when there is none."""
    if not aim:
        return []
    theta = aim.get("theta_deg")
    if theta is None:
        return [f"aim: not measured ({aim.get('reason') or 'unknown reason'})"]
    upper = aim.get("theta_upper_deg")
    within = f"{theta:.1f}°" if upper is None or aim.get("exact") or upper - theta < 0.05 else f"{theta:.1f}–{upper:.1f}°"
    offset = aim.get("offset_deg")
    away = f", {offset:.1f}° away from the token's own direction" if offset is not None else ""
    share = aim.get("log10_share_lower")
    if not theta > 0:
        return [f"aim: no certified cap (at most {upper:.2g}°){away}" + (f"; {aim['reason']}" if aim.get("reason") else "")]
    if aim.get("method") == "ball":
        first = f"the model must land in a ball as narrow as a cap of {within} (its largest winning ball){away}"
        second = f"at least 1 in 10^{math.ceil(-share - 1e-9)} of the reachable ball" if share is not None else ""
    else:
        first = f"the model must aim within {within} of one axis{away}"
        second = f"at least 1 in 10^{math.ceil(-share - 1e-9)} directions" if share is not None else ""
    return [first + (";" if second else ""), second] if second else [first]
