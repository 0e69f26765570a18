"""The explorer never crashes: the two crashes of issue 18 at their root, and the safety
net that turns any other unexpected exception into a notice and a crash-log entry.

The streamed grid is made deterministic with ``testkit.apphelpers.LensGate``: the lens run stops
after its first partial (the columns in view), or before its answer when it has nothing to
stream, until the test lets it go on, so the keys below land while the grid still holds
``PENDING`` columns (or the run is still in flight), every time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from lenstui.core.lens_result import PENDING
from lenstui.jobs.protocol import Request, RunLens
from lenstui.tui.screens.attribution import AttributionScreen
from testkit.apphelpers import drain_worker, gate_lens_runs, grid_lines, settle, until

# The tiny tokenizer was trained on these words: about 20 tokens.
PROMPT = "The Eiffel Tower is located in the city of Paris. Sometimes, when people say plasma"


# ---------------------------------------------------------------- 1: the top-k header


async def test_the_top_k_header_of_a_streamed_grid_whose_first_column_is_pending(make_tiny_app):
    """Issue 18's first crash: F4, then an edit of the first token (Home, X, Enter). The
    new run streams the cursor's column first; column 0 is a placeholder, and the top-k
    header used to read ``grid[0][0].top`` (AttributeError)."""
    app = make_tiny_app(PROMPT)
    async with app.run_test(size=(120, 40)) as pilot:
        gate = gate_lens_runs(app)
        await settle(app, pilot)
        n = len(app.shown_result.tokens)
        await pilot.press("f4")
        assert app.grid.view == "topk"
        gate.hold()
        await pilot.press("home", "X", "enter")
        await until(pilot, lambda: gate.holding.is_set() and app.grid.streaming, "the streamed grid")
        grid = app.grid
        assert grid.result.grid[0][0] is PENDING and grid.result.targets[0] is PENDING
        lines = grid_lines(app)  # drawing the header and the rows of a streamed grid
        assert "#1 " in lines[0] and "#2 " in lines[0]
        assert "top-10 at position" in grid.border_title
        await pilot.press("escape", "home", "left", "end", "pageup", "pagedown", "[", "f4", "f4")
        grid_lines(app)
        gate.release()
        await settle(app, pilot)
        assert [t.text for t in app.grid.result.tokens][0].startswith("X")
        assert len(app.grid.result.tokens) >= n
        assert all(cell is not PENDING for row in app.grid.result.grid for cell in row)
        assert not app.crashes


async def test_the_title_of_a_streamed_top_k_view_on_a_pending_position(make_tiny_app):
    """The top-k view's title names the position's target: a placeholder has none yet."""
    app = make_tiny_app(PROMPT)
    async with app.run_test(size=(120, 40)) as pilot:
        gate = gate_lens_runs(app)
        await settle(app, pilot)
        await pilot.press("escape", "v")
        gate.hold()
        app.prompt_pane.set_text("Y" + PROMPT)
        app.session.set_text("Y" + PROMPT)
        app.rerun_lens()
        await until(pilot, lambda: gate.holding.is_set() and app.grid.streaming, "the streamed grid")
        await pilot.press("home", "g")
        app.grid.action_position(-1000)  # onto column 0: not computed yet
        assert app.grid.result.targets[app.grid.cursor_pos] is PENDING
        assert "target …" in app.grid.border_title
        grid_lines(app)
        gate.release()
        await settle(app, pilot)
        assert not app.crashes


# ---------------------------------------------------------------- 2: a cell that outlived its result


async def test_attribution_takes_the_cell_from_the_result_on_screen(make_tiny_app):
    """Issue 18's second crash: the grid shows a longer prompt, streaming in, while the last
    complete result is the shorter one; ``a`` read ``shown_result.tokens[cell.position]``
    (IndexError). The cell and its prompt now come from the same result: the one on screen.
    (The issue met it after a step; a step no longer streams, its one new column comes
    whole, so here a longer prompt edited at its start, every column new, streams.)"""
    app = make_tiny_app(PROMPT)
    async with app.run_test(size=(120, 40)) as pilot:
        gate = gate_lens_runs(app)
        await settle(app, pilot)
        n = len(app.shown_result.tokens)
        gate.hold()
        await pilot.press("home", "B", "i", "g", "space", "enter")
        streaming_longer = lambda: gate.holding.is_set() and app.grid.streaming and len(app.grid.result.tokens) > n  # noqa: E731
        await until(pilot, streaming_longer, "the longer prompt's streamed grid")
        m = len(app.grid.result.tokens)
        await pilot.press("escape")
        assert app.grid.cursor_pos == m - 1  # the cursor follows the prompt's end
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, AttributionScreen), "the attribution screen")
        request = app.screen.request
        assert request.position == m - 1
        assert request.prompt_ids == tuple(app.grid.result.token_ids)  # the prompt on screen
        gate.release()
        await settle(app, pilot)
        await until(pilot, lambda: app.screen.result is not None, "the attribution")
        await pilot.press("escape")
        assert not app.crashes


async def test_steps_undos_and_view_switches_keep_every_key_on_a_real_cell(make_tiny_app):
    """The other sequences of the issue: ^n, ^b, F4, Home, Backspace and `a`/`T`/`p`/`s`/`P`
    mixed while the grid streams; each key reads the cell on screen."""
    app = make_tiny_app(PROMPT)
    async with app.run_test(size=(120, 40)) as pilot:
        gate = gate_lens_runs(app)
        await settle(app, pilot)
        await pilot.press("escape")
        for keys in (("ctrl+n",), ("ctrl+n",), ("ctrl+b",), ("f4",), ("ctrl+b",), ("f4", "end")):
            gate.hold()
            await pilot.press(*keys)
            await pilot.pause()
            if gate.holding.is_set():
                for key in ("a", "escape", "T", "escape", "p", "P", "P", "s", "x", "home", "left"):
                    await pilot.press(key)
                grid_lines(app)
            gate.release()
            await settle(app, pilot)
        await pilot.press("i", "end", "backspace", "backspace", "enter")
        await settle(app, pilot)
        assert not app.crashes


# ---------------------------------------------------------------- 3: the safety net


def _crash_notices(app) -> list[str]:
    return [text for severity, text in app.notices if text.startswith("Something went wrong: ")]


def _logged() -> str:
    from lenstui.store.crash_log import crash_log_path

    path = crash_log_path()
    return path.read_text(encoding="utf-8") if path.exists() else ""


async def _explored(app, pilot) -> tuple:
    """Run the prompt with Enter (so it is in the history), step once: what must survive."""
    await settle(app, pilot)
    await pilot.press("end", "enter")
    await settle(app, pilot)
    await pilot.press("escape", "ctrl+n")
    await settle(app, pilot)
    return app.prompt_pane.text, list(app.prompt_pane.history.entries), list(app.session.steps)


async def _still_whole(app, pilot, kept: tuple) -> None:
    assert app.is_running and app.return_code is None
    assert (app.prompt_pane.text, list(app.prompt_pane.history.entries), list(app.session.steps)) == kept
    await pilot.press("ctrl+b")  # and the explorer still answers keys and runs the lens
    await settle(app, pilot)
    assert len(app.session.steps) == len(kept[2]) - 1


async def test_an_exception_in_a_key_binding_is_a_notice_not_an_exit(make_tiny_app, monkeypatch):
    from lenstui.store.crash_log import crash_log_path

    app = make_tiny_app(PROMPT, strict_crashes=False)
    async with app.run_test(size=(120, 40)) as pilot:
        kept = await _explored(app, pilot)

        def boom() -> None:
            raise RuntimeError("a bug in the theme action")

        monkeypatch.setattr(app, "action_next_theme", boom)
        await pilot.press("f3")
        await pilot.pause()
        notices = _crash_notices(app)
        assert notices == [
            f"Something went wrong: RuntimeError: a bug in the theme action. Details in {crash_log_path()}."
        ]
        assert len(app.crashes) == 1 and "next_theme" in app.crashes[0].where
        logged = _logged()
        assert "Traceback (most recent call last)" in logged and 'raise RuntimeError("a bug in the theme action")' in logged
        monkeypatch.undo()
        await _still_whole(app, pilot, kept)


async def test_an_exception_in_a_palette_command_is_a_notice(make_tiny_app, monkeypatch):
    app = make_tiny_app(PROMPT, strict_crashes=False)
    async with app.run_test(size=(120, 40)) as pilot:
        kept = await _explored(app, pilot)

        def boom() -> None:
            raise KeyError("palette")

        monkeypatch.setattr(app, "action_toggle_mid", boom)
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"lens: toggle mid-block rows")
        await until(pilot, lambda: app.screen.query("CommandList") and app.screen.query_one("CommandList").option_count, "hits")
        await pilot.press("enter")
        await until(pilot, lambda: app.crashes, "the crash")
        assert _crash_notices(app)[0].startswith("Something went wrong: KeyError: 'palette'. Details in ")
        monkeypatch.undo()
        await _still_whole(app, pilot, kept)


async def test_an_exception_in_a_widget_handler_leaves_the_widget_working(make_tiny_app, monkeypatch):
    """Textual stops a node's message loop after an exception in one of its handlers: the
    pane would never update again. The net catches it in the node's own dispatch."""
    from lenstui.tui.panes.inspector import WiredInspector

    app = make_tiny_app(PROMPT, strict_crashes=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("escape")
        original = WiredInspector.on_token_focused
        calls = []

        def failing(self, message):
            calls.append(message)
            if len(calls) == 1:
                raise ValueError("the inspector tripped")
            original(self, message)

        monkeypatch.setattr(WiredInspector, "on_token_focused", failing)
        await pilot.press("up")
        await until(pilot, lambda: app.crashes, "the crash")
        assert "WiredInspector handling the TokenFocused message" in app.crashes[0].where
        await pilot.press("up")
        await until(pilot, lambda: len(calls) == 2, "the second message")
        await settle(app, pilot)
        cell = app.grid.current_cell
        await until(pilot, lambda: app.inspector_pane.report is not None and app.inspector_pane.report.id == cell.token_id, "the report")
        assert len(app.crashes) == 1


async def test_an_exception_while_showing_a_worker_reply_keeps_the_lens_usable(make_tiny_app, monkeypatch):
    from lenstui.tui.widgets.status import StatusBar

    app = make_tiny_app(PROMPT, strict_crashes=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        original = StatusBar.set_run
        monkeypatch.setattr(StatusBar, "set_run", lambda self, *a: (_ for _ in ()).throw(OSError("status")))
        await pilot.press("end", "!", "enter")
        await settle(app, pilot)  # the run is over even though showing it failed
        assert len(app.crashes) == 1 and "worker reply" in app.crashes[0].where
        monkeypatch.setattr(StatusBar, "set_run", original)
        await pilot.press("?", "enter")
        await settle(app, pilot)
        assert app.grid.result.tokens[-1].text.endswith("?")


async def test_timers_and_drawing_failures_are_notices_told_once(make_tiny_app, monkeypatch):
    from lenstui.tui.widgets.grid import LensGrid

    app = make_tiny_app(PROMPT, strict_crashes=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)

        def tick() -> None:
            raise ZeroDivisionError("in a timer")

        app.set_timer(0.01, tick)
        await until(pilot, lambda: app.crashes, "the timer's crash")
        assert "ZeroDivisionError: in a timer" in _crash_notices(app)[0]
        monkeypatch.setattr(LensGrid, "_row_line", lambda self, row: 1 / 0)
        app.grid.refresh()
        lines = grid_lines(app)  # every row fails: blank lines, the header still drawn
        assert lines[0].strip() and lines[1].startswith("depth")  # the header still drawn
        assert not "".join(lines[2:]).strip()  # every row failed: blank lines
        await pilot.pause()
        zero = [text for text in _crash_notices(app) if "ZeroDivisionError: division by zero" in text]
        assert len(zero) == 1  # a failure on every line and frame is told once
        assert len(app.crashes) > 2
        assert app.is_running


async def test_quitting_still_quits(make_tiny_app):
    app = make_tiny_app(PROMPT)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("ctrl+q")
        await pilot.pause()
    assert app.return_code == 0 and not app.crashes


def test_keyboard_interrupt_and_system_exit_pass_through_the_net():
    import asyncio

    from lenstui.tui.safety import Guarded, SafetyNet

    net = SafetyNet(lambda *a, **k: None)
    net.armed = True

    class Node:
        def __init__(self, error):
            self.error = error
            self.app = type("FakeApp", (), {"safety_net": net})()

        async def _dispatch_message(self, message):
            raise self.error

    class GuardedNode(Guarded, Node):
        pass

    for error in (KeyboardInterrupt(), SystemExit(3), asyncio.CancelledError()):
        with pytest.raises(type(error)):
            asyncio.run(GuardedNode(error)._dispatch_message(object()))
    asyncio.run(GuardedNode(LookupError("caught"))._dispatch_message(object()))
    assert [type(c.error) for c in net.crashes] == [LookupError]
    net.armed = False  # before the app is up (or once it shuts down): Textual's handling
    with pytest.raises(LookupError):
        asyncio.run(GuardedNode(LookupError("not yet"))._dispatch_message(object()))


def test_every_app_screen_and_widget_class_of_the_tui_is_guarded():
    import importlib
    import inspect
    import pkgutil

    from textual.message_pump import MessagePump

    import lenstui.tui
    from lenstui.tui.safety import Guarded

    unguarded = []
    for info in pkgutil.walk_packages(lenstui.tui.__path__, "lenstui.tui."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, MessagePump) and obj.__module__ == module.__name__:
                if not issubclass(obj, Guarded):
                    unguarded.append(f"{module.__name__}.{name}")
    assert not unguarded, f"add the safety net's Guarded mixin to: {unguarded}"


# ---------------------------------------------------------------- 4: the worker


async def test_a_dead_worker_thread_is_restarted_and_the_model_loaded_again(make_tiny_app):
    from lenstui.store.crash_log import crash_log_path

    app = make_tiny_app(PROMPT, strict_crashes=False)
    async with app.run_test(size=(120, 40)) as pilot:
        kept = await _explored(app, pilot)
        old = app.worker
        shown = app.grid.result

        def broken(**kwargs):
            raise RuntimeError("the scheduler's own bug")

        old._take = broken  # the loop itself fails (a handler's errors are only results)
        app.submit(RunLens("anything"))
        await until(pilot, lambda: not old.alive, "the worker to die")
        await until(pilot, lambda: app.worker is not old and app.model_settled.is_set(), "the restart")
        await settle(app, pilot)
        notices = [t for t in app.notice_texts if t.startswith("The model worker stopped unexpectedly")]
        assert notices == [
            f"The model worker stopped unexpectedly; restarting it and loading the model again. Details in {crash_log_path()}."
        ]
        assert "the scheduler's own bug" in _logged()
        assert app.worker.alive
        # The same prompt, history and steps; the lens ran again on the new worker.
        assert (app.prompt_pane.text, list(app.prompt_pane.history.entries), list(app.session.steps)) == kept
        assert app.grid.result is not shown and app.grid.result.token_ids == shown.token_ids
        await _still_whole(app, pilot, kept)


@dataclass(frozen=True)
class Leave(Request):
    """A test-only request whose handler leaves as it is told."""

    how: str = "exit"
    needs_model: ClassVar[bool] = False


def test_the_worker_survives_a_base_exception_from_a_handler():
    import queue

    from lenstui.jobs.protocol import Done, Failed
    from lenstui.jobs.scheduler import ModelWorker

    def leave(model, request, ctx):
        if request.how == "exit":
            raise SystemExit(2)  # a library calling sys.exit() on this thread
        if request.how == "interrupt":
            raise KeyboardInterrupt
        return "still here"

    results: "queue.Queue" = queue.Queue()
    worker = ModelWorker(results.put).start()
    try:
        worker.register(Leave, leave)
        for how in ("exit", "interrupt"):
            worker.submit(Leave(how))
            failed = results.get(timeout=30)
            assert isinstance(failed, Failed) and failed.error in ("SystemExit", "KeyboardInterrupt")
            assert worker.alive
        worker.submit(Leave("fine"))
        done = results.get(timeout=30)
        assert isinstance(done, Done) and done.value == "still here"
    finally:
        worker.stop()
    assert worker.death is None


# ---------------------------------------------------------------- 5: found by the random walk


TINY_TALK = '''title = "two scenes"

[[scene]]
title = "Eiffel"
prompt = "The Eiffel Tower is located in the city of"
target = "#9"

[[scene]]
title = "Two steps on"
prompt = "hello world, hello"
steps = 2
'''


async def test_a_lens_run_in_flight_never_paints_over_the_scene_shown(tmp_path, tiny_llama):
    """Found by the walk in present mode: `u` (a lens run of scene 1 without its target),
    then PgDn before that run answered: the run's answer replaced scene 2's grid, so the
    grid showed scene 1's prompt under scene 2's prompt line and steps."""
    from lenstui.talks.format import load_talk
    from testkit.apphelpers import RecordingPresenter

    path = tmp_path / "talk.toml"
    path.write_text(TINY_TALK, encoding="utf-8")
    app = RecordingPresenter(load_talk(path), loader=lambda spec, **kw: tiny_llama)
    async with app.run_test(size=(120, 40)) as pilot:
        gate = gate_lens_runs(app)
        await until(pilot, lambda: app.scene_settled.is_set() and len(app.renders) == 2, "both scenes")
        await settle(app, pilot)
        gate.hold()
        await pilot.press("u")  # the lens again, without the target: held in flight
        await until(pilot, lambda: gate.holding.is_set(), "the held run")
        await pilot.press("pagedown")
        await until(pilot, lambda: app.scene_index == 1 and app.scene_settled.is_set(), "scene 2")
        scene = list(app.grid.result.token_ids)
        gate.release()
        await settle(app, pilot)
        await drain_worker(app, pilot)  # the released run's answer has landed (and painted nothing)
        assert app.prompt_pane.text == "hello world, hello" and len(app.session.steps) == 2
        assert list(app.grid.result.token_ids) == scene == list(app.session.steps[-1].ids)
        assert not app.crashes


async def test_a_scene_shown_while_a_typed_prompt_waits_for_its_debounce_settles(tmp_path, tiny_llama):
    """Found by the walk in present mode: a key typed in the prompt (its debounced run
    pending), then Escape and PgDn before the pause ran out. The scene's prompt replaced
    the typed one and cancelled the debounce, so no run came, and the app waited for one
    forever (lens_settled never set again: tests and the benchmark hang on it)."""
    import asyncio

    from lenstui.talks.format import load_talk
    from testkit.apphelpers import RecordingPresenter

    path = tmp_path / "talk.toml"
    path.write_text(TINY_TALK, encoding="utf-8")
    app = RecordingPresenter(load_talk(path), loader=lambda spec, **kw: tiny_llama, stage=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.scene_settled.is_set() and len(app.renders) == 2, "both scenes")
        await settle(app, pilot)
        app.prompt_pane.debounce = 5.0  # a slow typist's pause: the scene comes first
        await pilot.press("i", "end", "x")
        assert app.prompt_pane.debounce_pending and not app.lens_settled.is_set()
        await pilot.press("escape", "pagedown")
        await until(pilot, lambda: app.scene_index == 1, "scene 2")
        await asyncio.wait_for(app.lens_settled.wait(), 10)
        assert app.prompt_pane.text == "hello world, hello" and not app.prompt_pane.debounce_pending
        assert not app.crashes
