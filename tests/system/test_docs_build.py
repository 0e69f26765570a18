"""The docs site builds with `mkdocs build --strict`, as `make docs` serves it.

--strict turns every warning into a failure: a link to a missing page or anchor, a page left
out of the nav, a generated block the hook does not know. The generated pages are checked
against the code they come from (the action registry, the CLI's parsers), and the README's
links into docs/ (which mkdocs never sees) against the files.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MKDOCS = Path(sys.executable).parent / "mkdocs"  # the venv's, as `make docs` runs it
BUILD_TIMEOUT = 300


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(MKDOCS), "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"},
    )


def test_the_site_builds_strict_and_its_generated_pages_follow_the_code(tmp_path):
    from lenstui.cli import SUBCOMMANDS
    from lenstui.tui.actions import EXPLORER_ACTIONS, PRESENTER_ACTIONS

    site = tmp_path / "site"
    result = build(ROOT / "mkdocs.yml", site)
    assert result.returncode == 0, result.stderr[-4000:]

    keys = (site / "reference" / "keys" / "index.html").read_text(encoding="utf-8")
    missing = [a.id for a in (*EXPLORER_ACTIONS, *PRESENTER_ACTIONS) if a.id not in keys]
    # The presenter's ten digits share a row that names the first and the last.
    assert [i for i in missing if not re.fullmatch(r"lenstui\.present\.digit[1-8]", i)] == []
    assert "Reading this on GitHub" not in keys  # the GitHub-only note stays out of the site

    cli = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "usage: lenstui [-h]" in cli
    for command in SUBCOMMANDS:
        assert f"usage: lenstui {command} " in cli, command
    for verb in ("fit", "eval", "list"):
        assert f"usage: lenstui lenses {verb} " in cli, verb


def test_a_broken_link_fails_the_build(tmp_path):
    """What --strict is for: a link to an anchor that does not exist stops the build."""
    copy = tmp_path / "project"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    page = copy / "docs" / "guide" / "lens.md"
    broken = "\nSee [nowhere](explorer.md#no-such-section).\n"
    page.write_text(page.read_text(encoding="utf-8") + broken, encoding="utf-8")
    result = build(copy / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-section" in result.stderr


def test_the_readme_links_into_docs_exist():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(((?:docs/)[^)#\s]+)(?:#[^)]*)?\)", readme)
    assert targets, "the README links to the docs"
    assert [t for t in targets if not (ROOT / t).exists()] == []
