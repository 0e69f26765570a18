"""Token text in fixed-width cells: legible, and every cell exactly as wide as asked."""

from __future__ import annotations

import unicodedata

import pytest
from rich.cells import cell_len, get_character_cell_size

from lenstui.core.textfmt import EMPTY_MARK, SPACE_MARK, fit, visible, visible_bytes

WIDE = ["東京", "タワー", "🐠", "한국어", "ｆｕｌｌ"]
COMBINING = ["e\u0301", "\u0301", "a\u0308\u0304", "क्षि", "ñ"]
CONTROL = ["\n", "\t", "\x1b[31m", "\x00", "\x7f", "\u0085", "\u200b", "\u2028", "\u00ad"]
RTL = ["שלום", "مرحبا", "abc שלום", "\u202eevil", "a\u200fb", "\u2067x\u2069", "\u061c"]
EMOJI_SEQUENCES = ["👨\u200d👩\u200d👧", "❤\ufe0f", "👍🏽", "🇫🇷", "1\ufe0f\u20e3"]
TRICKY = WIDE + COMBINING + CONTROL + RTL + EMOJI_SEQUENCES + [" ", "  x ", "", "�", "plain"]

BIDI_CONTROLS = {"LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI"}


def per_character_width(text: str) -> int:
    """Width as a terminal without grapheme clustering (plain wcwidth) would draw it."""
    return sum(get_character_cell_size(c) for c in text)


@pytest.mark.parametrize("text", TRICKY)
def test_visible_is_one_line_without_terminal_controls(text):
    shown = visible(text)
    assert "\n" not in shown and "\r" not in shown and "\x1b" not in shown
    for char in shown:
        category = unicodedata.category(char)
        assert category not in ("Cc", "Cf", "Zl", "Zp"), (text, char)
        assert unicodedata.bidirectional(char) not in BIDI_CONTROLS
        assert char not in ("\u200d", "\ufe0f")


@pytest.mark.parametrize("text", TRICKY)
def test_visible_width_does_not_depend_on_grapheme_rules(text):
    # Terminals disagree on ZWJ sequences and emoji presentation; after visible() the
    # grapheme-aware width (Rich, Textual) equals the plain per-character width.
    shown = visible(text)
    assert cell_len(shown) == per_character_width(shown)


@pytest.mark.parametrize("text", TRICKY)
@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 7, 10, 16])
def test_fit_is_exactly_the_width(text, width):
    cell = fit(visible(text), width)
    assert cell_len(cell) == width
    assert per_character_width(cell) == width


def test_grid_rows_keep_their_column_separators_aligned():
    width = 6
    for start in range(0, len(TRICKY), 5):
        row = TRICKY[start : start + 5]
        line = "│".join(fit(visible(t), width) for t in row)
        columns, position = [], 0
        for char in line:
            if char == "│":
                columns.append(position)
            position += get_character_cell_size(char)
        assert columns == [(k + 1) * width + k for k in range(len(row) - 1)], row
        assert cell_len(line) == position == width * len(row) + len(row) - 1


def test_spaces_controls_and_marks_are_legible():
    assert visible(" the") == f"{SPACE_MARK}the"
    assert visible("a\nb\tc") == "a\\nb\\tc"
    assert visible("\x1b[31m") == "\\x1b[31m"
    assert visible("\u202eevil") == "\\u202eevil"
    assert visible("\u0301") == "◌\u0301"
    assert visible("") == EMPTY_MARK
    assert visible("👨\u200d👩") == "👨\\u200d👩"
    assert visible("❤\ufe0f") == "❤\\ufe0f"
    assert visible("👍🏽") == "👍\\U0001f3fd"


def test_right_to_left_letters_stay_readable():
    assert visible("שלום") == "שלום" and cell_len(visible("שלום")) == 4
    assert visible("مرحبا") == "مرحبا"


def test_truncation_never_splits_a_grapheme():
    assert fit("e\u0301e\u0301e\u0301", 3) == "e\u0301e\u0301e\u0301"
    assert fit("e\u0301e\u0301e\u0301", 2) == "e\u0301…"
    assert fit("東京タワー", 4) == "東… "  # a wide character that does not fit leaves a space
    assert fit("東京", 4) == "東京"
    assert fit("abc", 0) == ""


def test_visible_bytes_shows_partial_characters_as_hex():
    assert visible_bytes(b" \xf0\x9f") == f"{SPACE_MARK}⟨f0 9f⟩"
    assert visible_bytes(b"\x90\xa0") == "⟨90 a0⟩"
    assert visible_bytes(b"ab\xffc") == "ab⟨ff⟩c"
    assert visible_bytes(" 🐠".encode()) == f"{SPACE_MARK}🐠"
    assert visible_bytes(b"") == EMPTY_MARK
    assert cell_len(fit(visible_bytes(b" \xf0\x9f"), 5)) == 5
