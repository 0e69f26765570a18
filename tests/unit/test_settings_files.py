"""The user's files: shipped and user themes (a broken one is a problem, not a crash), the
config's known keys, and the prompt history (deduplicated, capped, surviving damage)."""

from __future__ import annotations

from pathlib import Path

from lenstui.store.config import load_config
from lenstui.store.history import MAX_ENTRIES, PromptHistory
from lenstui.tui.theming import load_themes, shipped_theme_dir, theme_from_file


def test_the_shipped_themes_load_and_include_dark_light_and_contrast():
    themes = load_themes(user_dir=Path("/nonexistent"))
    assert themes.problems == []
    assert {"lenstui-dark", "lenstui-light", "lenstui-contrast"} <= set(themes.themes)
    assert themes.themes["lenstui-light"].dark is False
    for theme in themes.themes.values():
        assert "lens-heat" in theme.variables


def test_the_top_level_themes_folder_is_the_shipped_one():
    top_level = Path(__file__).resolve().parents[2] / "themes"
    assert top_level.resolve() == shipped_theme_dir().resolve()


def test_user_themes_override_and_broken_files_are_problems(tmp_path):
    (tmp_path / "mine.toml").write_text('name = "lenstui-dark"\nprimary = "red"\n')
    (tmp_path / "typo.toml").write_text('primary = "#fff"\nbackgrund = "#000"\n')
    (tmp_path / "syntax.toml").write_text('primary = "#fff\n')
    (tmp_path / "colour.toml").write_text('primary = "#fff"\naccent = "not-a-colour"\n')
    (tmp_path / "kind.toml").write_text('primary = "#fff"\ndark = "yes"\n')
    themes = load_themes(user_dir=tmp_path)
    assert themes.themes["lenstui-dark"].primary == "red"
    problems = " | ".join(themes.problems)
    assert "unknown key 'backgrund' (did you mean 'background'?)" in problems
    assert "syntax.toml is not valid TOML" in problems
    assert "accent = 'not-a-colour' is not a colour" in problems
    assert "dark must be true or false" in problems
    assert len(themes.problems) == 4


def test_a_theme_needs_a_primary_colour(tmp_path):
    path = tmp_path / "empty.toml"
    path.write_text('dark = true\n')
    try:
        theme_from_file(path)
    except Exception as err:
        assert "primary" in str(err)
    else:
        raise AssertionError("a theme without primary loaded")


def test_config_reads_known_keys_and_reports_the_rest(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(
        'theme = "lenstui-light"\ntop_k = 5\ndebounce_ms = "fast"\ncolour = 3\nchat = true\n'
        '[keymap]\n"lenstui.step" = "f8"\n'
    )
    config, problems = load_config(path)
    assert (config.theme, config.top_k, config.debounce_ms, config.chat) == ("lenstui-light", 5, 350, True)
    assert config.keymap == {"lenstui.step": "f8"}
    assert len(problems) == 2 and "debounce_ms" in problems[0] and "colour" in problems[1]


def test_a_broken_config_file_means_defaults_and_a_problem(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("theme = \n")
    config, problems = load_config(path)
    assert config.theme is None and len(problems) == 1


def test_history_is_deduplicated_capped_and_survives_damage(tmp_path):
    path = tmp_path / "history.jsonl"
    history = PromptHistory(path)
    for prompt in ["a", "b", "a", "multi\nline", "  "]:
        history.add(prompt)
    assert PromptHistory(path).entries == ["b", "a", "multi\nline"]
    with path.open("a") as handle:
        handle.write("{not json\n")
    assert PromptHistory(path).entries == ["b", "a", "multi\nline"]
    for i in range(MAX_ENTRIES + 5):
        history.add(f"p{i}")
    assert len(PromptHistory(path).entries) == MAX_ENTRIES
