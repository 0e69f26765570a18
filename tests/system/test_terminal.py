"""The explorer as a person meets it: the real app in a pseudo-terminal, keys written the
way a terminal writes them (a key at a time, or many in one write), the screen read back
with a terminal emulator (see testkit/terminal.py).

One app process serves most cases (start-up costs ~10 s); the start-up case needs its
own. What the grid must show is computed here with the ``tokenizers`` library on the
embedded model's own tokenizer file, not through lenstui.
"""

from __future__ import annotations

import time
import unicodedata

import pytest

from testkit.terminal import TerminalApp, embedded_tokenizer

pytestmark = pytest.mark.integration

FRANCE = "The capital of France is the city of"
GERMANY = "Germany is the city of"
EXPECTED = "The capital of FGermany is the city of"  # FRANCE, 20 backspaces, GERMANY
# ~135 tokens: long enough that typing lands while it computes, short enough for the
# suite's time budget (bench/bench_input.py measures a 256-token run).
LONG_PROMPT = "The quick brown fox jumps over the lazy dog while the cat sleeps. " * 9
REALISTIC = 0.03  # seconds between keys: a quick typist


@pytest.fixture(scope="module")
def tokenizer(embedded):
    # Loading the model (the session fixture) fills the cache the tokenizer is read from,
    # so on a fresh machine these tests run rather than skip.
    tok = embedded_tokenizer()
    assert tok is not None, "the embedded model's cached tokenizer.json is missing after a load"
    return tok


def _env(tmp_path) -> dict[str, str]:
    return {
        "LENSTUI_CONFIG_DIR": str(tmp_path / "config"),
        "LENSTUI_DATA_DIR": str(tmp_path / "data"),
        "LENSTUI_LENS_DIR": str(tmp_path / "lenses"),  # no lens fitted on this machine shows up
    }


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """One loaded explorer, 120x40, shared by the cases below (each leaves it usable)."""
    base = tmp_path_factory.mktemp("term")
    term = TerminalApp(env=_env(base))
    term.crash_log = base / "data" / "logs" / "crash.log"  # what the safety net would write
    try:
        term.wait_for_text("loaded", timeout=180)
        yield term
    finally:
        term.close()


# ------------------------------------------------------------------ helpers


def _grid_cells(term: TerminalApp, label: str = "layer") -> list[str]:
    lines = term.lines()
    side = len(lines[0])
    for line in lines:
        if "layer × " in line and "token inspector" in line:
            side = line.index("token inspector") - 1
    for line in lines:
        if line.startswith(label + " "):
            return line[len(label) : side].split()
    return []


def _cell_key(text: str) -> str:
    """A grid cell's token for comparisons: without the depth marker (◆, which takes the
    cell's first column) and cut to what both a marked and an unmarked cell show."""
    return text.removeprefix("◆").rstrip("…")[:7]


def _shown(piece: str) -> str:
    return piece.replace("␣", " ")


def _grid_matches(term: TerminalApp, tokenizer, text: str) -> bool:
    """The grid is the lens of exactly ``text``: its token count and the input tokens the
    grid shows (the last few positions) are ``text``'s."""
    ids = tokenizer.encode(text).ids
    if term.token_count() != len(ids):
        return False
    cells = _grid_cells(term)
    if not cells:
        return False
    expected = [tokenizer.decode([i]) for i in ids[-len(cells) :]]
    for cell, token in zip(cells, expected):
        if not all(c == " " or unicodedata.category(c)[0] in "LNPS" for c in token):
            continue  # partial UTF-8 (U+FFFD), marks and invisible characters are shown escaped
        cell = _shown(cell)
        if cell.endswith("…"):
            if not token.startswith(cell[:-1]):
                return False
        elif cell != token:
            return False
    return True


def _wait_for_grid(term: TerminalApp, tokenizer, text: str, timeout: float = 60) -> None:
    term.wait_until(lambda _: _grid_matches(term, tokenizer, text), timeout, f"the lens of {text!r}")


def _clear_prompt(term: TerminalApp) -> None:
    term.press("ctrl+a", "ctrl+k")
    term.wait_until(lambda _: term.prompt() == "", 10, "an empty prompt")


def _idle(term: TerminalApp) -> bool:
    """No lens run in flight: the status line no longer says one is running."""
    return "running the lens" not in term.text()


def _settled_on(term: TerminalApp, tokenizer, text: str) -> None:
    """The prompt reads ``text`` and the grid shows its lens, and stays so: checked again once
    no run is in flight any more, when no stale answer is left to land."""
    term.wait_until(lambda _: term.prompt() == text, 30, f"the prompt {text!r}")
    _wait_for_grid(term, tokenizer, text)
    term.wait_until(lambda _: _idle(term), 60, "no lens run in flight")
    assert term.prompt() == text
    assert _grid_matches(term, tokenizer, text), term.text()


def _start_long_run(term: TerminalApp, tokenizer, tail: str) -> str:
    """Run a ~135-token prompt (``tail`` makes it differ from the last one, so it really
    runs); returns the prompt while its lens is computing."""
    text = LONG_PROMPT + tail
    _clear_prompt(term)
    term.paste(text)
    term.press("enter")
    assert len(tokenizer.encode(text).ids) >= 128
    return text


# ------------------------------------------------------------------ typing


def test_typing_during_startup_arrives_whole(tmp_path, tokenizer):
    """Keys sent while the worker imports torch and loads the model."""
    with TerminalApp(env=_env(tmp_path)) as term:
        term.wait_until(lambda lines: any("❯" in line for line in lines[:2]), 60, "the first frame")
        term.type(FRANCE)  # one write, as tmux send-keys -l does
        term.press(*["backspace"] * 20, interval=0.01)
        term.type(GERMANY)
        term.wait_for_text("loaded", timeout=180)
        _settled_on(term, tokenizer, EXPECTED)


def test_burst_and_realistic_typing_after_load(app, tokenizer):
    _clear_prompt(app)
    app.write(FRANCE + "\x7f" * 20 + GERMANY)  # everything in one write
    _settled_on(app, tokenizer, EXPECTED)
    _clear_prompt(app)
    app.type(FRANCE, interval=REALISTIC)
    app.press(*["backspace"] * 20, interval=REALISTIC)
    app.type(GERMANY, interval=REALISTIC)
    _settled_on(app, tokenizer, EXPECTED)


def test_typing_during_a_long_lens_run(app, tokenizer):
    _start_long_run(app, tokenizer, "First")
    _clear_prompt(app)
    app.type(FRANCE, interval=REALISTIC)
    app.press(*["backspace"] * 20, interval=REALISTIC)
    app.type(GERMANY)
    _settled_on(app, tokenizer, EXPECTED)


def test_hundred_edits_in_a_second_then_enter(app, tokenizer):
    _clear_prompt(app)
    words = "Paris is the capital of "
    keys = []
    for i in range(50):  # 100 edits: a character typed, then half of them erased again
        keys.append(words[i % len(words)].encode())
        if i % 2:
            keys.append(b"\x7f")
    final = "".join(words[i % len(words)] for i in range(50) if i % 2 == 0)
    for chunk in keys[:75]:
        app.write(chunk)
        time.sleep(0.01)
    app.write(b"".join(keys[75:]) + b"\r")
    _settled_on(app, tokenizer, final)


def test_unusual_characters_in_the_prompt(app, tokenizer):
    for text in (
        "مرحبا بالعالم، عاصمة فرنسا هي",  # right-to-left
        "Cafe\u0301 and nai\u0308ve re\u0301sume\u0301",  # combining marks
        "Is there a seahorse emoji? 🐴🦭🏳️‍🌈",  # wide and joined emoji
    ):
        _clear_prompt(app)
        app.type(text, interval=0.005)
        app.press("enter")
        _wait_for_grid(app, tokenizer, text)
        assert app.alive()
    # Control characters inside a paste must not reach the terminal raw (the layout
    # would break) and must not kill the app.
    _clear_prompt(app)
    app.paste("bell\x07 tab\t escape\x1b[2J end")
    app.press("enter")
    app.wait_until(lambda _: "bell" in app.prompt(), 10, "the pasted text")
    app.wait_until(lambda _: _idle(app), 60, "no lens run in flight")  # its grid drawn, if any
    lines = app.lines()
    assert app.alive()
    assert "palette" in lines[-1], "\n".join(lines)  # the footer is still where it belongs
    assert any("❯" in line for line in lines[:2])


# ------------------------------------------------------------------ generation steps


def test_ctrl_n_ten_times_then_ctrl_b_ten_times(app, tokenizer):
    base = "The Eiffel Tower is located in the city of"
    _clear_prompt(app)
    app.type(base)
    app.press("enter")
    _wait_for_grid(app, tokenizer, base)
    n = len(tokenizer.encode(base).ids)
    app.press(*["ctrl+n"] * 10, interval=0.02)
    app.wait_until(lambda _: app.token_count() == n + 10 and "+10 generated" in app.text(), 90, "10 steps")
    app.wait_until(lambda _: _idle(app), 60, "no lens run in flight")  # no step left to land
    assert app.token_count() == n + 10 and "+10 generated" in app.text()
    # Greedy steps: each generated input token is the last layer's top-1 one position
    # earlier, so a lost, doubled or reordered step breaks this chain.
    inputs, last = _grid_cells(app), _grid_cells(app, "L29")
    assert len(inputs) == len(last) >= 2
    for p in range(len(inputs) - 1):
        assert _cell_key(inputs[p + 1]) == _cell_key(last[p]), (p, inputs, last)
    app.press(*["ctrl+b"] * 10, interval=0.02)
    app.wait_until(lambda _: app.token_count() == n and "generated" not in app.text(), 90, "all steps undone")
    _settled_on(app, tokenizer, base)


# ------------------------------------------------------------------ big input, screen changes


def test_paste_over_the_context_is_kept_with_a_notice(app, tokenizer):
    _clear_prompt(app)
    text = ("All work and no play makes Jack a dull boy. " * 1200)[:50_000]
    app.paste(text)
    app.press("enter")
    app.wait_until(lambda lines: any("reads at most 8192" in l for l in lines), 60, "a notice")
    # Nothing frozen, nothing lost: the end and the start of the text are in the prompt.
    app.press("end")
    app.wait_until(lambda _: app.prompt().endswith(text.rstrip()[-30:]), 20, "the text's end")
    app.press("home")
    app.wait_until(lambda _: app.prompt().startswith(text[:30]), 20, "the text's start")
    _clear_prompt(app)
    app.type("The Eiffel Tower is in")
    app.press("enter")
    _settled_on(app, tokenizer, "The Eiffel Tower is in")


def test_resize_storm_during_a_run(app, tokenizer):
    text = _start_long_run(app, tokenizer, "Then")
    sizes = [(40, 12), (250, 70), (80, 24), (60, 20), (200, 50), (100, 30), (45, 15), (160, 45), (90, 28)]
    for cols, rows in sizes:
        app.resize(cols, rows)
        time.sleep(0.1)
    app.resize(120, 40)
    assert app.alive()
    _wait_for_grid(app, tokenizer, text, timeout=90)
    app.wait_until(lambda lines: "palette" in lines[-1] and "❯" in lines[0], 20, "the 120x40 layout")
    lines = app.lines()
    assert len(lines) == 40 and all(len(line) == 120 for line in lines)
    assert any("token inspector" in line for line in lines)  # the wide layout's side pane


def test_theme_and_view_switches_during_a_run(app, tokenizer):
    text = _start_long_run(app, tokenizer, "Later")
    app.press("f3", "f4", "f3", "f4", "f3", "f4", interval=0.05)
    assert app.alive()
    app.wait_until(lambda _: "layer × top-" in (app.grid_title() or ""), 60, "the top-k view")
    app.press("f4")
    _wait_for_grid(app, tokenizer, text, timeout=90)
    app.press("f3", "f3", "f3")  # back to the theme it started with (three themes)
    assert app.alive()


def test_typing_during_a_vocabulary_scan(app, tokenizer):
    app.press("ctrl+p")
    app.wait_for_text("Search for commands", 20)
    app.type("scan the whole vocabulary")
    app.wait_for_text("speak: scan the whole vocabulary", 20)
    app.press("enter")
    app.wait_until(lambda lines: any("scan" in l.lower() and "%" in l for l in lines), 60, "scan progress")
    _clear_prompt(app)
    app.type(FRANCE, interval=REALISTIC)
    app.press(*["backspace"] * 20, interval=REALISTIC)
    app.type(GERMANY)
    _settled_on(app, tokenizer, EXPECTED)
    app.press("escape")
    app.type("x")  # stop the scan: the rest of the suite needs the CPU


def test_the_whole_session_caught_no_crash(app):
    """Last: nothing above went to the safety net (it keeps the app alive, so a caught
    crash would not show as an exit) and no notice said something went wrong."""
    assert not app.crash_log.exists(), app.crash_log.read_text(encoding="utf-8")[-4000:]
    assert "Something went wrong" not in "\n".join(app.lines())
