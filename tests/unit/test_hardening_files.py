"""No file or disk state gives a traceback: each damaged file is one sentence, nothing is
lost, and two lenstui processes at once do not lose each other's writes.

Damaged files: deeply nested TOML (config, theme, talk), a theme whose variables are
not CSS values, damaged scan caches (truncated, a flipped byte, empty, codes out of
range), ``scan --out`` to a place that cannot be written (checked before the scan),
chat templates that raise. Disk: the umask's mode for new files, symlinks written
through, the crash log private and short, distinct export names, history and scan-cache
writes from two processes. Sizes: error sentences quote ~60 characters of what was
typed; the extended lens's stack and the presenter's computed scenes are bounded.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lenstui.core.lenses import LensOptions
from lenstui.core.errors import InputError, LenstuiError, quoted
from lenstui.store.atomic import write_text_atomic

ROOT = Path(__file__).resolve().parents[2]
DEEP = "x = " + "[" * 100_000 + "]" * 100_000 + "\n"  # tomllib: RecursionError
MEGA = "é" * 1_000_000


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """``umask(mask)`` sets the process umask for the test; restored afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.fixture(scope="module")
def fresh_llama():
    """A tiny Llama of this module's own (its tokenizer's chat template gets changed)."""
    from testkit.models import tiny_llama

    return tiny_llama()


# ---------------------------------------------------------------- the atomic writer


def test_new_files_get_the_umask_mode_and_existing_files_keep_theirs(tmp_path, umask):
    umask(0o022)
    assert _mode(write_text_atomic(tmp_path / "a.json", "{}")) == 0o644  # mkstemp alone: 0600
    umask(0o077)
    assert _mode(write_text_atomic(tmp_path / "b.json", "{}")) == 0o600
    umask(0o002)
    assert _mode(write_text_atomic(tmp_path / "c.json", "{}")) == 0o664
    kept = tmp_path / "d.json"
    kept.write_text("old")
    os.chmod(kept, 0o640)
    write_text_atomic(kept, "new")
    assert _mode(kept) == 0o640 and kept.read_text() == "new"


def test_a_symlink_is_written_through_and_stays_a_link(tmp_path):
    target = tmp_path / "real" / "talk.toml"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "talk.toml"
    link.symlink_to(target)
    chain = tmp_path / "chain.toml"
    chain.symlink_to(link)
    write_text_atomic(chain, "new")
    assert link.is_symlink() and chain.is_symlink()
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["talk.toml"]  # no temporary file


def test_appending_a_scene_to_a_linked_talk_writes_the_target(tmp_path):
    from lenstui.talks.format import Scene, append_scene, load_talk

    real = tmp_path / "talks" / "real.toml"
    real.parent.mkdir()
    real.write_text('[[scene]]\nprompt = "one"\n')
    os.chmod(real, 0o640)
    link = tmp_path / "talk.toml"
    link.symlink_to(real)
    talk = append_scene(link, Scene(number=2, title="saved", prompt="two"))
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert len(talk.scenes) == 2 and len(load_talk(real).scenes) == 2
    assert _mode(real) == 0o640


# ---------------------------------------------------------------- two processes at once


def test_history_appends_from_two_processes_all_survive(tmp_path):
    path = tmp_path / "history.jsonl"
    code = (
        "import sys; from pathlib import Path; from lenstui.store.history import PromptHistory; "
        "h = PromptHistory(Path(sys.argv[1])); [h.add(f'{sys.argv[2]} {i}') for i in range(40)]"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), name], env=_env()) for name in ("left", "right")]
    assert [p.wait(120) for p in procs] == [0, 0]
    from lenstui.store.history import PromptHistory

    entries = PromptHistory(path).entries
    assert sorted(entries) == sorted([f"left {i}" for i in range(40)] + [f"right {i}" for i in range(40)])
    assert [e for e in entries if e.startswith("left")] == [f"left {i}" for i in range(40)]  # each one's order kept


def test_history_keeps_the_other_process_prompts_and_its_own(tmp_path):
    from lenstui.store.history import PromptHistory

    path = tmp_path / "history.jsonl"
    first, second = PromptHistory(path), PromptHistory(path)  # two apps started at once
    first.add("from the first")
    second.add("from the second")
    first.add("the first again")
    assert PromptHistory(path).entries == ["from the first", "from the second", "the first again"]
    assert second.entries[-1] == "from the second"


def test_a_deeply_nested_history_line_is_one_damaged_line(tmp_path):
    from lenstui.store.history import PromptHistory

    path = tmp_path / "history.jsonl"
    path.write_text('"kept"\n' + "[" * 100_000 + "\n")
    history = PromptHistory(path)
    assert history.entries == ["kept"] and "1 damaged line" in history.problems[0]


def test_exports_in_the_same_second_get_distinct_names(tmp_path, monkeypatch):
    from lenstui.store import export

    monkeypatch.setattr(export, "export_stem", lambda: "lenstui-20250101-120000")
    result = SimpleNamespace(to_json=lambda: {"grid": []})
    paths = [export.save_json(result, tmp_path) for _ in range(3)]
    assert [p.name for p in paths] == ["lenstui-20250101-120000.json", "lenstui-20250101-120000-2.json",
                                       "lenstui-20250101-120000-3.json"]
    stem = export.reserve_stem(tmp_path, (".svg", ".json"))  # Ctrl+S: one stem for both files
    assert stem == "lenstui-20250101-120000-4"
    assert export.save_svg("<svg/>", tmp_path, stem).name == f"{stem}.svg"


def test_exports_from_two_processes_in_the_same_second_never_share_a_name(tmp_path):
    code = (
        "import sys; from pathlib import Path; from lenstui.store import export; "
        "export.export_stem = lambda: 'lenstui-20250101-120000'; "
        "[export.save_svg(sys.argv[2], Path(sys.argv[1])) for _ in range(25)]"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), name], env=_env()) for name in ("a", "b")]
    assert [p.wait(120) for p in procs] == [0, 0]
    files = sorted(tmp_path.glob("*.svg"))
    assert len(files) == 50
    assert sorted(f.read_text() for f in files) == ["a"] * 25 + ["b"] * 25  # none overwritten


def test_a_failed_export_leaves_no_empty_file(tmp_path, monkeypatch):
    from lenstui.store import export

    monkeypatch.setattr("lenstui.store.atomic.os.replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError):
        export.save_svg("<svg/>", tmp_path)
    assert [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_scan_cache_writes_from_two_processes_leave_a_whole_cache(tmp_path):
    """Last writer wins, whole: a reader never sees half of one and half of another."""
    code = """
import sys
import numpy as np
from pathlib import Path
from lenstui.core.scan_result import ScanResult
from lenstui.engine.speak.scan_cache import save_scan
n, mark = 5000, int(sys.argv[2])
for round in range(30):
    result = ScanResult(model="m", key="k", n_vocab=n, verdicts=np.full(n, mark, dtype=np.int8),
                        hard=np.zeros(n, dtype=np.int8), best_match=np.zeros(n, dtype=np.int64),
                        margin=np.full(n, float(round)), method=np.zeros(n, dtype=np.int8), tried=np.zeros(n, dtype=np.int16))
    save_scan(result, Path(sys.argv[1]))
"""
    folder = tmp_path / "scan"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(folder), mark], env=_env()) for mark in ("1", "2")]
    from lenstui.engine.speak.scan_cache import read_scan

    seen = set()
    while any(p.poll() is None for p in procs):
        problems: list[str] = []
        result = read_scan(folder, problems=problems)
        assert problems == []
        if result is not None:
            assert len(set(result.verdicts.tolist())) == 1  # one writer's file, whole
            seen.add(int(result.verdicts[0]))
    assert [p.wait(120) for p in procs] == [0, 0]
    final = read_scan(folder)
    assert final is not None and final.margin[0] == 29.0
    assert [p.name for p in folder.iterdir()] == ["scan.npz"]  # no temporary file left


# ---------------------------------------------------------------- the crash log


def test_the_crash_log_is_private_and_cuts_a_request_to_a_few_hundred_characters(tiny_llama, umask):
    import queue

    from lenstui.jobs.protocol import Failed, RunLens
    from lenstui.jobs.scheduler import ModelWorker
    from lenstui.store.crash_log import crash_log_path

    umask(0o022)

    def broken(model, request, ctx):
        raise RuntimeError("a bug " + "x" * 5000)

    results: queue.Queue = queue.Queue()
    worker = ModelWorker(results.put, loader=lambda spec, **kw: tiny_llama, handlers={RunLens: broken}).start()
    try:
        from lenstui.jobs.protocol import LoadModel

        worker.submit(LoadModel())
        results.get(timeout=10)
        worker.submit(RunLens(MEGA))
        failed = results.get(timeout=10)
    finally:
        worker.stop()
    assert isinstance(failed, Failed) and len(failed.message) < 400 and "Details in" in failed.message
    path = crash_log_path()
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    text = path.read_text(encoding="utf-8")
    assert "RunLens(prompt='éééé" in text and "Traceback" in text
    request_line = next(line for line in text.splitlines() if "worker request" in line)
    assert len(request_line) < 400
    assert len(text) < 5_000  # neither the 1 MB prompt nor the 5,000-character message whole


def test_rotated_crash_logs_are_private_too(monkeypatch, umask):
    from lenstui.store import crash_log

    umask(0o022)
    monkeypatch.setattr(crash_log, "CRASH_LOG_BYTES", 300)
    for old in list(crash_log._crash_log.handlers):  # a fresh handler with the small size
        crash_log._crash_log.removeHandler(old)
        old.close()
    for i in range(6):
        crash_log.log_crash(f"entry {i} " + "y" * 200)
    files = sorted(crash_log.crash_log_path().parent.iterdir())
    assert len(files) >= 3
    assert all(_mode(f) == 0o600 for f in files)


def test_short_repr_cuts_long_fields():
    from lenstui.jobs.protocol import RunLens
    from lenstui.store.crash_log import short_repr

    text = short_repr(RunLens(MEGA, options=LensOptions(track=tuple(range(1000)))))
    assert text.startswith("RunLens(prompt='ééé") and len(text) <= 300


# ---------------------------------------------------------------- error sentences quote ~60 characters


def test_quoted_keeps_sentences_short():
    assert quoted("Paris") == "'Paris'"
    long = quoted(MEGA)
    assert len(long) < 100 and "1,000,000 characters" in long
    path = quoted("/very/long/" + "d" * 200 + "/model.gguf", middle=True)
    assert len(path) <= 64 and path.endswith("/model.gguf'")


def test_a_megabyte_token_or_setting_is_not_echoed_whole(tiny_llama, tmp_path):
    from lenstui.engine.model.vocab import resolve_token
    from lenstui.store.config import load_config
    from lenstui.talks.format import parse_talk

    with pytest.raises(InputError) as err:
        resolve_token(tiny_llama, "token " * 200_000)
    assert len(str(err.value)) < 400
    config = tmp_path / "config.toml"
    config.write_text(f'theme = 5\ntop_k = "{"9" * 100_000}"\n"{"k" * 100_000}" = 1\n')
    _, problems = load_config(config)
    assert len(problems) == 3 and all(len(p) < 200 for p in problems)
    talk = parse_talk(f'[[scene]]\nprompt = "hi"\nview = "{"v" * 100_000}"\ntarget = {"1" * 1}\n', tmp_path / "t.toml")
    assert len(talk.scenes[0].problem) < 300


def test_a_megabyte_token_on_the_command_line_is_one_short_line(tiny_llama, monkeypatch, capsys):
    from lenstui.cli import main

    monkeypatch.setattr("lenstui.cli.token_cmd.load_from_args", lambda args: tiny_llama)
    assert main(["token", "word " * 200_000]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 400


# ---------------------------------------------------------------- deeply nested TOML


def test_deeply_nested_toml_in_the_config_is_one_sentence(tmp_path):
    from lenstui.store.config import Config, load_config

    path = tmp_path / "config.toml"
    path.write_text(DEEP)
    config, problems = load_config(path)
    assert config == Config()
    assert problems == [f"{path} was ignored (its tables or lists are nested too deeply to read)."]


def test_deeply_nested_toml_in_a_theme_or_a_talk_is_one_sentence(tmp_path):
    from lenstui.talks.format import load_talk
    from lenstui.tui.theming import load_themes

    themes = tmp_path / "themes"
    themes.mkdir()
    (themes / "deep.toml").write_text(DEEP)
    loaded = load_themes(themes)
    assert loaded.problems == ["deep.toml nests tables or lists too deeply to read."]
    assert "lenstui-dark" in loaded.themes
    talk = tmp_path / "talk.toml"
    talk.write_text(DEEP)
    with pytest.raises(LenstuiError) as err:
        load_talk(talk)
    assert "nests tables or lists too deeply" in str(err.value) and "\n" not in str(err.value)


def test_a_deeply_nested_model_config_is_not_a_model(tmp_path):
    from lenstui.store.model_catalog import is_causal_lm_config

    config = tmp_path / "config.json"
    config.write_text("[" * 100_000 + "]" * 100_000)
    assert is_causal_lm_config(config) is False


def test_present_check_on_a_deeply_nested_talk_exits_2(tmp_path, capsys):
    from lenstui.cli import main

    talk = tmp_path / "talk.toml"
    talk.write_text(DEEP)
    assert main(["present", str(talk), "--check"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# ---------------------------------------------------------------- themes


@pytest.mark.parametrize(
    "body, says",
    [
        ('[variables]\n"lens-heat" = "nonsense"\n', "'lens-heat' = 'nonsense' is not a colour"),
        ('[variables]\n"block-cursor-background" = "12px"\n', "'block-cursor-background' = '12px' is not a colour"),
        ('[variables]\n"block-cursor-text-style" = "#ff0000"\n', "is not a text style"),
        ('[variables]\n"my-own" = "} Screen { display: none"\n', "is not a CSS value"),
        ("luminosity_spread = true\n", "luminosity_spread must be a number, not True"),
        ("text_alpha = false\n", "text_alpha must be a number, not False"),
    ],
)
def test_a_theme_with_bad_variables_or_booleans_is_refused_at_load(tmp_path, body, says):
    from lenstui.tui.theming import load_themes

    themes = tmp_path / "themes"
    themes.mkdir()
    (themes / "mine.toml").write_text('primary = "#884400"\n' + body)
    loaded = load_themes(themes)
    assert "mine" not in loaded.themes
    assert len(loaded.problems) == 1 and says in loaded.problems[0], loaded.problems


def test_good_variables_still_load(tmp_path):
    from lenstui.tui.theming import load_themes

    themes = tmp_path / "themes"
    themes.mkdir()
    (themes / "fine.toml").write_text(
        'primary = "#884400"\nluminosity_spread = 0.2\n[variables]\n"lens-heat" = "#ff8800"\n'
        '"block-cursor-text-style" = "bold"\n"input-selection-background" = "#81a1c1 35%"\n"my-own" = "3"\n'
    )
    loaded = load_themes(themes)
    assert "fine" in loaded.themes and loaded.problems == []


async def test_the_app_starts_with_a_bad_theme_and_a_deep_config(monkeypatch):
    """What crashed at start (a StylesheetParseError from the theme's variables) is a
    notice now; the app runs on the default theme."""
    from lenstui.core.errors import ModelLoadError
    from lenstui.tui.app import LenstuiApp

    config = Path(os.environ["LENSTUI_CONFIG_DIR"])
    (config / "themes").mkdir(parents=True)
    (config / "themes" / "broken.toml").write_text('primary = "#884400"\n[variables]\n"block-cursor-background" = "12px"\n')
    (config / "themes" / "deep.toml").write_text(DEEP)
    (config / "config.toml").write_text(DEEP)

    def no_model(spec, **kw):
        raise ModelLoadError("No model in this test.")

    app = LenstuiApp("", theme="broken", loader=no_model)
    notices: list[str] = []
    monkeypatch.setattr(app, "notify", lambda message, **kw: notices.append(str(message)))
    async with app.run_test() as pilot:
        await pilot.pause()
        assert app.theme == "lenstui-dark"
    text = " ".join(notices)
    assert "broken.toml" in text and "deep.toml" in text and "config.toml" in text and "No theme called 'broken'" in text


# ---------------------------------------------------------------- the scan cache


def _member_data_range(path: Path, name: str) -> tuple[int, int]:
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    with open(path, "rb") as handle:
        handle.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(handle.read(4), dtype="<u2")
    start = info.header_offset + 30 + int(name_len) + int(extra_len)
    return start, start + info.compress_size


def _damage_truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _damage_flip(path: Path) -> None:
    start, end = _member_data_range(path, "verdicts.npy")
    data = bytearray(path.read_bytes())
    data[end - 3] ^= 0xFF  # one verdict byte: the zip's CRC no longer matches
    path.write_bytes(bytes(data))


def _damage_empty(path: Path) -> None:
    path.write_bytes(b"")


def _damage_codes(path: Path) -> None:
    from lenstui.engine.speak.scan_cache import read_scan, save_scan

    result = read_scan(path.parent)
    result.verdicts[3] = 99  # not a verdict code
    save_scan(result, path.parent)


def _damage_offsets(path: Path) -> None:
    from lenstui.engine.speak.scan_cache import read_scan, save_scan

    result = read_scan(path.parent)
    result.best_match[7] = 10**9  # not a token id
    save_scan(result, path.parent)


@pytest.mark.parametrize(
    "damage, why",
    [
        (_damage_truncate, "BadZipFile"),
        (_damage_flip, "Bad CRC-32"),
        (_damage_empty, ""),
        (_damage_codes, "a verdict code is out of range"),
        (_damage_offsets, "a best match is not a token id"),
    ],
)
def test_a_damaged_scan_cache_is_set_aside_with_a_notice_and_rebuilt(tiny_llama, tmp_path, monkeypatch, damage, why):
    from lenstui.engine.speak.check import as_readout
    from lenstui.engine.speak.scan import load_cached_scan, scan_vocabulary
    from lenstui.engine.speak.scan_cache import scan_dir

    monkeypatch.setenv("LENSTUI_DATA_DIR", str(tmp_path / "data"))
    good = scan_vocabulary(tiny_llama)
    path = scan_dir(as_readout(tiny_llama)) / "scan.npz"
    damage(path)
    problems: list[str] = []
    assert load_cached_scan(tiny_llama, problems) is None
    assert len(problems) == 1 and "is damaged" in problems[0] and why in problems[0], problems
    assert "moved to scan.npz.damaged" in problems[0] and "next scan rebuilds it" in problems[0]
    assert not path.exists() and path.with_name("scan.npz.damaged").exists()
    # The app's start-up read says so as a notice (a Failed with that sentence).
    damage_again = scan_vocabulary(tiny_llama)  # rebuilt from the start
    assert damage_again.complete and damage_again.counts() == good.counts()
    assert load_cached_scan(tiny_llama) is not None
    damage(path)
    rebuilt = scan_vocabulary(tiny_llama)
    assert rebuilt.complete and len(rebuilt.notes) == 1 and "is damaged" in rebuilt.notes[0]


def test_the_apps_start_up_read_of_a_damaged_cache_is_a_notice(tiny_llama, tmp_path, monkeypatch):
    from lenstui.engine.speak.check import as_readout
    from lenstui.engine.speak.scan import scan_vocabulary
    from lenstui.engine.speak.scan_cache import scan_dir
    from lenstui.jobs.handlers import scan_marks_handler
    from lenstui.jobs.protocol import ScanVocabulary

    monkeypatch.setenv("LENSTUI_DATA_DIR", str(tmp_path / "data"))
    scan_vocabulary(tiny_llama)
    _damage_empty(scan_dir(as_readout(tiny_llama)) / "scan.npz")
    with pytest.raises(LenstuiError, match="is damaged"):
        scan_marks_handler(tiny_llama, ScanVocabulary(cached_only=True), None)
    assert scan_marks_handler(tiny_llama, ScanVocabulary(cached_only=True), None) is None  # set aside: quiet now


def test_a_scan_cache_is_synced_to_disk(tiny_llama, tmp_path, monkeypatch):
    from lenstui.engine.speak.scan import scan_vocabulary
    from lenstui.store import atomic

    monkeypatch.setenv("LENSTUI_DATA_DIR", str(tmp_path / "data"))
    synced = []
    real = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    scan_vocabulary(tiny_llama)
    assert len(synced) >= 2  # the file, then its folder


# ---------------------------------------------------------------- scan --out


def test_scan_out_to_a_place_that_cannot_be_written_is_refused_before_the_scan(tmp_path, monkeypatch, capsys, tmpfs):
    from lenstui.cli import main

    def no_load(args):
        raise AssertionError("the model was loaded (and the scan run) before --out was checked")

    monkeypatch.setattr("lenstui.cli.speak_cmd.load_from_args", no_load)
    read_only = tmpfs("ro,size=64k")
    for out, says in (
        (tmp_path / "no" / "such" / "dir" / "scan.csv", "there is no folder"),
        (tmp_path, "use a .csv or .json file name"),
        (tmp_path / "scan.txt", "use a .csv or .json file name"),
        (read_only / "scan.csv", "Read-only file system"),
    ):
        assert main(["scan", "--out", str(out)]) == 2, out
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err
    folder_named = tmp_path / "a.csv"
    folder_named.mkdir()
    assert main(["scan", "--out", str(folder_named)]) == 2
    assert "it is a folder" in capsys.readouterr().err


def test_scan_out_on_a_full_disk_is_one_sentence_and_no_empty_file(tiny_llama, tmp_path, tmpfs, monkeypatch, capsys):
    from lenstui.cli import main

    monkeypatch.setenv("LENSTUI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr("lenstui.cli.speak_cmd.load_from_args", lambda args: tiny_llama)
    full = tmpfs("size=8k")
    out = full / "scan.csv"
    assert main(["scan", "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the scan's progress bar
    assert err.startswith(f"lenstui: Cannot write {out} (No space left on device)")
    assert "the same command with another --out writes it without scanning again" in err
    assert list(full.iterdir()) == []  # no 0-byte file, no temporary file
    # As promised: another --out, and the cached scan is written at once.
    good = tmp_path / "scan.json"
    assert main(["scan", "--out", str(good)]) == 0
    assert json.loads(good.read_text())["complete"] is True


def test_scan_out_replaces_an_old_file_atomically(tiny_llama, tmp_path, monkeypatch):
    from lenstui.engine.speak.scan import scan_vocabulary
    from lenstui.store.scan_export import write_scan

    monkeypatch.setenv("LENSTUI_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "scan.csv"
    out.write_text("old\n")
    os.chmod(out, 0o640)
    monkeypatch.setattr("lenstui.store.atomic.os.replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(LenstuiError, match="No space left on device"):
        write_scan(scan_vocabulary(tiny_llama), out)
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["data", "scan.csv"]


# ---------------------------------------------------------------- chat templates


@pytest.fixture
def broken_template(fresh_llama):
    tokenizer = fresh_llama.tokenizer
    old = getattr(tokenizer, "chat_template", None)

    def use(template: str):
        tokenizer.chat_template = template
        return fresh_llama

    yield use
    tokenizer.chat_template = old


@pytest.mark.parametrize(
    "template, says",
    [
        ("{{ raise_exception('Conversation roles must alternate') }}", "Conversation roles must alternate"),
        ("{% if %}", "TemplateSyntaxError"),
        ("{{ messages[5]['content'] }}", "UndefinedError"),
    ],
)
def test_a_chat_template_error_is_an_input_error(broken_template, template, says):
    from lenstui.engine.model.chat import chat_prompt_ids

    model = broken_template(template)
    with pytest.raises(InputError) as err:
        chat_prompt_ids(model, "hello")
    assert says in str(err.value) and "turn the chat toggle off" in str(err.value) and "\n" not in str(err.value)


def test_a_chat_template_error_in_the_app_is_a_notice_not_a_crash_log(broken_template):
    import queue

    from lenstui.jobs.handlers import HANDLERS
    from lenstui.jobs.protocol import Failed, LoadModel, RunLens
    from lenstui.jobs.scheduler import ModelWorker
    from lenstui.store.crash_log import crash_log_path

    model = broken_template("{{ raise_exception('no system role') }}")
    results: queue.Queue = queue.Queue()
    worker = ModelWorker(results.put, loader=lambda spec, **kw: model, handlers=HANDLERS).start()
    try:
        worker.submit(LoadModel())
        results.get(timeout=30)
        worker.submit(RunLens("hello", chat=True))
        while not isinstance(reply := results.get(timeout=30), Failed):
            pass
    finally:
        worker.stop()
    assert reply.error == "InputError" and "no system role" in reply.message
    assert "Details in" not in reply.message and not crash_log_path().exists()


def test_present_check_with_a_broken_chat_template_names_the_scene(broken_template, tmp_path, monkeypatch, capsys):
    from lenstui.cli import main

    model = broken_template("{% if %}")
    monkeypatch.setattr("lenstui.cli.common.load_from_args", lambda args: model)
    talk = tmp_path / "talk.toml"
    talk.write_text('[[scene]]\nprompt = "hello"\nchat = true\n\n[[scene]]\nprompt = "plain"\n')
    assert main(["present", str(talk), "--check", "--with-model"]) == 1
    out = capsys.readouterr().out
    assert "cannot be shown: the chat template of" in out.lower() and "Traceback" not in out


# ---------------------------------------------------------------- memory


def test_switching_away_from_the_extended_lens_frees_its_stack(tiny_llama):
    from lenstui.engine.lens.state import LensState

    import gc
    import weakref

    state = LensState(tiny_llama)
    state.prepare("hello world", LensOptions(lens="extended", extended_blocks=1))
    state.result()
    decoded = weakref.ref(state.lens.decoded(state))  # the extended lens's decoded stack
    state.prepare("hello world", LensOptions(lens="logit"))
    gc.collect()
    assert decoded() is None  # nothing holds it any more
    state.result()
    state.prepare("hello world", LensOptions(lens="extended", extended_blocks=1))  # back: decoded again
    assert state.result().lens == "extended" and state.lens._decoded is not None


def test_the_presenter_keeps_a_bounded_number_of_computed_scenes():
    from lenstui.talks.format import Scene
    from lenstui.tui.presenter import KEEP_BEHIND, MAX_RENDERS, PresenterApp

    talk = SimpleNamespace(scenes=[Scene(number=i + 1, prompt="p") for i in range(60)])
    fake = SimpleNamespace(talk=talk, scene_index=0, renders={})
    fake._window = lambda: PresenterApp._window(fake)
    for index in list(range(60)) + list(range(59, -1, -7)) + [30, 31, 5]:
        fake.scene_index = index
        window = fake._window()
        assert window[0] == index and len(window) == MAX_RENDERS and len(set(window)) == MAX_RENDERS
        assert all(0 <= i < 60 for i in window)
        for i in window:  # as if every scene of the window got computed
            fake.renders[talk.scenes[i].number] = object()
        PresenterApp._drop_far_renders(fake)
        assert len(fake.renders) <= MAX_RENDERS
        assert talk.scenes[index].number in fake.renders
    fake.scene_index = 30
    window = fake._window()
    assert window[: MAX_RENDERS - KEEP_BEHIND] == list(range(30, 30 + MAX_RENDERS - KEEP_BEHIND))
    assert window[MAX_RENDERS - KEEP_BEHIND :] == [29, 28, 27, 26]
    # A short talk keeps all of its scenes, as before (the current one first, wrapping).
    short = SimpleNamespace(talk=SimpleNamespace(scenes=talk.scenes[:5]), scene_index=3)
    assert PresenterApp._window(short) == [3, 4, 0, 1, 2]
