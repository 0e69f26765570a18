"""A random walk through the whole explorer: a Hypothesis state machine driving the real
``LenstuiApp`` with the Pilot (``tests/app/test_random_walk.py`` runs it).

Each example is one app, started in its own thread with its own asyncio loop (``Driver``)
and kept running between the steps, as a user's app runs between their keys: timers
fire, the lens streams, worker replies land. The state machine lives in the test's
thread and hands the driver one coroutine at a time (a key, a palette command, a check).

The rules are what a person does: the keys of issue 18 (F4, arrows, Home/End, PgUp/PgDn,
^n, ^b, Enter, Backspace, Tab, F2, F3, ^t, P, T, C, a, A, U, s, Escape, letters) and every
other key of the explorer and its screens, typed text, palette commands, model switches,
resizes and pauses. After every step:

- **no exception**: the safety net caught nothing (a caught crash is still a bug) and the
  app is running;
- **the cursor is inside the shown result** (the grid's row, position and rank; the
  trajectory view's position and row; the attribution screen's cell);
- **the prompt line is what was typed**: the walk keeps its own copy of the line, edited
  the way each key edits an input (the input's selection read just before the key, since
  focusing it selects all), plus the presets F2 puts there and the history Up/Down walks;

and when the explorer is idle (``check_idle``, a rule of its own, and at the end), **the
grid equals a fresh ``run_lens``** of the prompt on screen (its text, chat-templated when
the prompt line says so, plus the generated steps, each checked to be the model's greedy
token), computed in a lens state of its own, never the app's result objects.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from lenstui.core.lenses import LensOptions
from lenstui.core.errors import InputError
from lenstui.core.lens_result import PENDING
from lenstui.jobs import handlers
from lenstui.tui.commands import ModelChosen
from lenstui.tui.panes.prompt import PRESETS
from lenstui.tui.screens.attribution import AttributionScreen
from lenstui.tui.screens.trajectory import TrajectoryScreen
from testkit.apphelpers import RecordingApp

CHECK_EVERY = 3  # steps between idle checks at least (the teardown checks too)
STEP_TIMEOUT = 120  # seconds one step may take before the walk calls the app stuck
REFERENCE_SLOT = "random-walk-reference"  # the fresh lens state the grid is checked against
PROB_TOL = 2e-4  # |p_app - p_reference|: two float32 computations of the same softmax
LOGIT_TOL = 2e-3

# The keys, as Pilot names them. Quitting (ctrl+q), suspending (ctrl+z) and the input's
# clipboard keys are left out: the walk explores the app, it does not leave it.
MOVES = ("up", "down", "left", "right", "home", "end", "pageup", "pagedown")
ISSUE_KEYS = (
    "f4", "ctrl+n", "ctrl+b", "enter", "backspace", "tab", "f2", "f3", "ctrl+t",
    "P", "T", "C", "a", "A", "U", "s", "escape",
)
OTHER_KEYS = (
    "shift+tab", "delete", "f1", "f5", "ctrl+s", "?", "x", "v", "S", "t", "u", "p", "i",
    "/", "[", "]", "g", "G", "h", "j", "k", "l", "r", "q", "ctrl+o", "{", "}", " ",
)
LETTERS = ("e", "X", "o", "n", ",", ".", "w", "f")
KEYS = MOVES * 3 + ISSUE_KEYS * 2 + OTHER_KEYS + LETTERS * 2
TYPED = st.text(alphabet="aeiou XYZ,.?éß🐠", min_size=1, max_size=6)
PAUSES = st.sampled_from((0.0, 0.0, 0.0, 0.01, 0.05, 0.2))
PALETTE_QUERIES = ("grid: switch view", "lens: raw lens", "theme: lenstui-light", "generate: step one token", "pin: unpin all")


# ---------------------------------------------------------------- the app's thread


class Driver:
    """One app, run by ``app.run_test()`` in a thread of its own for a whole example."""

    def __init__(self, make_app: Callable[[], Any], size: tuple[int, int]) -> None:
        self._make_app = make_app
        self._size = size
        self._ready: concurrent.futures.Future = concurrent.futures.Future()
        self._ended: concurrent.futures.Future = concurrent.futures.Future()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._inbox: Optional[asyncio.Queue] = None
        self._thread = threading.Thread(target=self._main, name="random-walk app", daemon=True)
        self._thread.start()
        self.app, self.pilot = self._ready.result(STEP_TIMEOUT)

    def _main(self) -> None:
        try:
            asyncio.run(self._drive())
        except BaseException as error:  # what run_test raised: a strict app's caught crash
            if not self._ready.done():
                self._ready.set_exception(error)
            self._ended.set_exception(error)
        else:
            self._ended.set_result(None)

    async def _drive(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._inbox = asyncio.Queue()
        app = self._make_app()
        async with app.run_test(size=self._size) as pilot:
            self._ready.set_result((app, pilot))
            while True:
                item = await self._inbox.get()
                if item is None:
                    break
                step, done = item
                try:
                    done.set_result(await step(app, pilot))
                except BaseException as error:
                    done.set_exception(error)

    def run(self, step: Callable[[Any, Any], Awaitable[Any]]) -> Any:
        """Run ``await step(app, pilot)`` on the app's loop; its value (or its exception)."""
        if not self._thread.is_alive():
            raise AssertionError("the app is not running any more")
        done: concurrent.futures.Future = concurrent.futures.Future()
        self._loop.call_soon_threadsafe(self._inbox.put_nowait, (step, done))
        try:
            return done.result(STEP_TIMEOUT)
        except concurrent.futures.TimeoutError:
            raise AssertionError(f"the app did not finish a step within {STEP_TIMEOUT} s") from None

    def close(self) -> None:
        """End the app (``run_test`` exits) and re-raise what it raised."""
        if self._thread.is_alive() and self._loop is not None:
            self._loop.call_soon_threadsafe(self._inbox.put_nowait, None)
        self._ended.result(STEP_TIMEOUT)
        self._thread.join(STEP_TIMEOUT)


# ---------------------------------------------------------------- the prompt line, as typed


@dataclass
class TypedLine:
    """The walk's own copy of the prompt line and its history (``PromptInput``'s rules)."""

    text: str = ""
    history: list[str] = field(default_factory=list)
    browse: Optional[int] = None
    draft: str = ""

    def key(self, key: str, selection: tuple[int, int]) -> None:
        """``key`` pressed in the focused prompt, its selection (start, end) just before."""
        start, end = sorted(selection)
        if len(key) == 1:  # a printable key types itself (Pilot's name for it is the character)
            self.text = self.text[:start] + key + self.text[end:]
        elif key == "backspace":
            if start != end:
                self.text = self.text[:start] + self.text[end:]
            elif start > 0:
                self.text = self.text[: start - 1] + self.text[start:]
        elif key == "delete":
            if start != end:
                self.text = self.text[:start] + self.text[end:]
            else:
                self.text = self.text[:start] + self.text[start + 1 :]
        elif key == "enter":
            self.browse = None
            if self.text.strip():
                if self.text in self.history:
                    self.history.remove(self.text)
                self.history.append(self.text)
        elif key in ("up", "down"):
            self._walk_history(-1 if key == "up" else 1)

    def _walk_history(self, step: int) -> None:
        entries = self.history
        if not entries:
            return
        if self.browse is None:
            if step > 0:
                return
            self.draft = self.text
            index = len(entries) - 1
        else:
            index = self.browse + step
        if index >= len(entries):
            self.browse = None
            self.text = self.draft
        else:
            self.browse = max(0, index)
            self.text = entries[self.browse]


@dataclass
class EditedLine:
    """A line and its cursor under the editing keys of an input without a selection."""

    text: str
    cursor: int

    def key(self, key: str) -> None:
        text, at = self.text, self.cursor
        if len(key) == 1:
            self.text, self.cursor = text[:at] + key + text[at:], at + 1
        elif key == "backspace" and at > 0:
            self.text, self.cursor = text[: at - 1] + text[at:], at - 1
        elif key == "delete":
            self.text = text[:at] + text[at + 1 :]
        elif key == "left":
            self.cursor = max(0, at - 1)
        elif key == "right":
            self.cursor = min(len(text), at + 1)
        elif key == "home":
            self.cursor = 0
        elif key == "end":
            self.cursor = len(text)


EDITING_KEYS = ("a", "X", " ", "é", "🐠", ",", "backspace", "backspace", "delete", "left", "right", "home", "end")


# ---------------------------------------------------------------- checks, on the app's thread


def check_cursor(app) -> None:
    """The grid's cursor (and a pushed view's) points into the result it shows."""
    grid = app.grid
    result = grid.result
    if result is not None:
        n_rows, n_pos = len(result.layers), len(result.tokens)
        assert grid._rows and all(0 <= r < n_rows for r in grid._rows), (grid._rows, n_rows)
        assert 0 <= grid.cursor_row < len(grid._rows), (grid.cursor_row, len(grid._rows))
        assert 0 <= grid.cursor_pos < n_pos, (grid.cursor_pos, n_pos)
        assert 0 <= grid.cursor_k < max(1, grid._top_k), (grid.cursor_k, grid._top_k)
        assert all(len(row) == n_pos for row in result.grid) and len(result.targets) == n_pos
        cell = grid.current_cell
        assert cell is not None or grid.cursor_pending, "a cursor on no cell"
        if cell is not None:
            assert cell.position == grid.cursor_pos and result.layers[cell.layer_index] == cell.layer
    for screen in app.screen_stack:
        if isinstance(screen, TrajectoryScreen):
            assert 0 <= screen.position < len(screen.result.tokens)
            assert 0 <= screen.row < len(screen.result.layers)
        if isinstance(screen, AttributionScreen):
            assert 0 <= screen.request.position < len(screen.request.prompt_ids)


def is_idle(app) -> bool:
    """Nothing the grid depends on is on its way: no debounce, no lens run, no load."""
    worker = app.worker
    return (
        app.model_settled.is_set()
        and app.lens_settled.is_set()
        and app.prompt_pane._timer is None
        and worker is not None
        and worker.alive
        and not worker.busy_kinds()
        and not app.session.queued_steps
        and app.grid._stream_run is None
        and getattr(app, "_render_seq", None) is None  # present mode: no scene computing
    )


def idle_report(app) -> dict:
    """Each condition of ``is_idle``, for the message of a walk that never settled."""
    worker = app.worker
    return {
        "model settled": app.model_settled.is_set(),
        "lens settled": app.lens_settled.is_set(),
        "debounce pending": app.prompt_pane._timer is not None,
        "worker alive": worker is not None and worker.alive,
        "worker busy": sorted(k.__name__ for k in worker.busy_kinds()) if worker else None,
        "queued steps": app.session.queued_steps,
        "streaming": app.grid._stream_run is not None,
        "scenes computing": getattr(app, "_render_seq", None) is not None,
        "last request": app.session.last_request,
        "shown request": app.shown_request,
        "last failed": app.session.last_failed,
    }


def _cells_match(got, want, where: str) -> None:
    """Two lens cells agree: the same top-k (two tokens whose logits are within
    ``LOGIT_TOL`` may trade places), probabilities, target rank, tracked tokens."""
    assert got is not PENDING, f"{where}: still a placeholder"
    assert len(got.top) == len(want.top), where
    for r, (a, b) in enumerate(zip(got.top, want.top)):
        assert math.isclose(a.logit, b.logit, abs_tol=LOGIT_TOL, rel_tol=1e-5), (where, r, a, b)
        assert math.isclose(a.prob, b.prob, abs_tol=PROB_TOL), (where, r, a, b)
        if a.id != b.id:  # only a near tie may change the order
            neighbours = [t.logit for t in want.top[max(0, r - 1) : r + 2] if t is not b]
            last = r == len(want.top) - 1
            assert last or any(abs(x - b.logit) <= LOGIT_TOL for x in neighbours), (where, r, a, b)
    assert math.isclose(got.target_prob, want.target_prob, abs_tol=PROB_TOL), (where, got.target_prob, want.target_prob)
    assert abs(got.target_rank - want.target_rank) <= (0 if got.target_prob > 1e-3 else 2), (where, got.target_rank, want.target_rank)
    assert math.isclose(got.entropy, want.entropy, abs_tol=1e-3), where
    assert math.isclose(got.kl_to_final, want.kl_to_final, abs_tol=1e-3, rel_tol=1e-5), where  # float32 sums: KLs in the thousands (a raw lens on the first position) differ in the 6th digit
    assert [t.id for t in got.tracked] == [t.id for t in want.tracked], where
    for a, b in zip(got.tracked, want.tracked):
        assert math.isclose(a.prob, b.prob, abs_tol=PROB_TOL), (where, a, b)


def fresh_reference(model, prompt, session):
    """``run_lens`` of ``prompt`` with the session's settings, in a lens state of its own."""
    from lenstui.engine.lens.run import run_lens

    model.caches.lens_states.pop(REFERENCE_SLOT, None)
    try:
        return run_lens(model, prompt, LensOptions(top_k=min(session.top_k, model.d_vocab), lens=session.lens_kind, incl_mid=session.incl_mid, target=session.target, track=tuple(session.pins), lens_path=session.lens_paths.get(session.lens_kind)), slot=REFERENCE_SLOT)
    finally:
        model.caches.lens_states.pop(REFERENCE_SLOT, None)


def check_grid_against_a_fresh_run(app, model) -> str:
    """Idle: the grid is ``run_lens`` of the prompt on screen. Returns what was checked."""
    from lenstui.engine.model.chat import chat_prompt_ids
    from lenstui.engine.model.vocab import encode_prompt

    text = app.prompt_pane.text
    info = str(app.prompt_pane.query_one("#prompt-info").render())
    session = app.session
    assert session.prompt_text == text, "idle, yet the lens did not take the prompt line"
    steps = len(session.steps)
    assert (f"+{steps} generated" in info) == bool(steps), (steps, info)
    chat = "chat template on" in info
    if not text.strip() and not steps:
        return "empty"  # nothing to run: the grid keeps what it had
    try:
        if session.prompt_ids is not None:  # a talk's scene given as ids: shown as their text
            ids = list(session.prompt_ids)
        else:
            ids = chat_prompt_ids(model, text) if chat else encode_prompt(model, text)
    except InputError:
        assert session.last_failed or app.shown_request != session.last_request, "a prompt that cannot run ran"
        return "cannot run"
    shown = app.grid.result
    causal_run = app.causal.shown
    if causal_run is not None:
        # A patched or steered run is on the grid (the causal lens: tests/unit/test_patching.py
        # holds its numbers to independent hooks); the clean run under it must still be
        # the prompt's lens, which is what is checked here.
        causal_grid = getattr(causal_run, "patched", None) or getattr(causal_run, "steered", None)
        assert shown is causal_grid, "the grid shows neither the clean run nor the causal one"
        assert shown.token_ids == app.shown_result.token_ids, "the causal run is of another prompt"
        shown = app.shown_result
    if steps:
        # The generated tokens are the model's greedy continuation of this text: each is
        # the final row's top-1 (or within a near tie of it) at the position before it
        # (under a steer: of the steered model, so not checked against the clean one).
        assert shown is not None and len(shown.tokens) == len(ids) + steps
        assert shown.token_ids[: len(ids)] == ids, "the steps do not extend the prompt on screen"
        prompt = list(shown.token_ids)
    else:
        prompt = ids
    try:
        want = fresh_reference(model, prompt, session)
    except InputError:
        assert session.last_failed, "the reference cannot run the prompt, and the app did"
        return "cannot run"
    assert not session.last_failed, "the app's run failed where the reference ran"
    assert shown is not None and shown.complete
    assert shown.token_ids == want.token_ids, (shown.token_ids, want.token_ids)
    assert shown.layers == want.layers and shown.lens == want.lens
    assert [t.id for t in shown.tracked] == [t.id for t in want.tracked]
    steered = any(step.steered for step in session.steps)
    for position in range(len(ids), 0 if steered else len(want.tokens)):
        final = want.grid[-1][position - 1]
        token = want.token_ids[position]
        assert token == final.top[0].id or any(
            t.id == token and abs(t.logit - final.top[0].logit) <= LOGIT_TOL for t in final.top
        ), f"step {position - len(ids) + 1} is not the greedy token"
    for row in range(len(want.layers)):
        for pos in range(len(want.tokens)):
            _cells_match(shown.grid[row][pos], want.grid[row][pos], f"{want.layers[row]}@{pos}")
    return "checked"


# ---------------------------------------------------------------- the machine


class ExplorerWalk(RuleBasedStateMachine):
    """Set by the test: ``make_app()``, ``models`` (name -> LoadedModel) and the sizes."""

    make_app: Callable[[str], Any] = None  # type: ignore[assignment]
    models: dict = {}
    specs: tuple[str, ...] = ("",)  # model specs the walk may switch to ("" = the first)
    sizes: tuple[tuple[int, int], ...] = ((120, 40), (80, 24))
    idle_timeout = 60.0
    skip_commands: tuple[str, ...] = ()  # palette titles to leave out (the embedded model's scan)
    stats: dict = {}  # steps, examples, checks: what the suite reports

    def __init__(self) -> None:
        super().__init__()
        self.driver: Optional[Driver] = None
        self.line = TypedLine()
        self.since_check = 0  # steps since the last idle check
        self.scenes_seen = 0  # present mode: the app's scenes_applied when last looked at
        self.stats = type(self).stats
        self.stats["examples"] = self.stats.get("examples", 0) + 1

    # ------------------------------------------------------------ helpers

    def _run(self, step, name: str = ""):
        self.stats["steps"] = self.stats.get("steps", 0) + 1  # rules run, idle checks included
        self.since_check += 1
        started = time.perf_counter()

        async def then_settle(app, pilot):
            value = await step(app, pilot)
            await self.between_keys(app, pilot)
            self._adopt_scene(app)
            return value

        try:
            return self.driver.run(then_settle)
        finally:
            seconds = self.stats.setdefault("seconds", {})
            seconds[name or step.__name__] = seconds.get(name or step.__name__, 0.0) + time.perf_counter() - started

    def _press(self, keys: tuple[str, ...], pause: float = 0.0) -> None:
        line = self.line
        stats = self.stats
        stats["keys"] = stats.get("keys", 0) + len(keys)

        async def press(app, pilot):
            for key in keys:
                if app.grid._stream_run is not None:
                    stats["keys while the lens streams"] = stats.get("keys while the lens streams", 0) + 1
                where = stats.setdefault("keys by screen", {})
                where[type(app.screen).__name__] = where.get(type(app.screen).__name__, 0) + 1
                prompt = app.prompt_pane.input
                typing = app.focused is prompt and app.screen is app.base_screen
                selection = tuple(prompt.selection)
                preset = app._preset_index
                self._adopt_scene(app)
                await press_key(app, pilot, key)
                if typing:
                    line.key(key, selection)
                if app._preset_index != preset:  # F2 put a preset there (wherever the focus was)
                    line.text = PRESETS[app._preset_index].text
                self._adopt_scene(app)
                await self.between_keys(app, pilot)
                if pause:
                    await asyncio.sleep(pause)
                    await settle_queues(pilot)

        self._run(press)

    async def between_keys(self, app, pilot) -> None:
        """After each key and each step (present mode waits for its scenes here)."""

    def _adopt_scene(self, app) -> None:
        """A talk's scene was put on screen since the last look: its prompt is the line's."""
        applied = getattr(app, "scenes_applied", 0)
        if applied != self.scenes_seen:
            self.stats["scenes shown"] = self.stats.get("scenes shown", 0) + applied - self.scenes_seen
            self.scenes_seen = applied
            self.line.text = app.prompt_pane.text

    # ------------------------------------------------------------ start

    @initialize(
        prompt=st.sampled_from((
            "The Eiffel Tower is located in the city of",
            "hello world, hello tokens, hello bytes. Sometimes, when people say plasma",
            "",
        )),
        size=st.sampled_from(((120, 40), (80, 24))),
    )
    def start(self, prompt: str, size) -> None:
        started = time.perf_counter()
        self.driver = Driver(lambda: type(self).make_app(prompt), size)
        seconds = self.stats.setdefault("seconds", {})
        seconds["start"] = seconds.get("start", 0.0) + time.perf_counter() - started
        self.line.text = prompt
        self.line.history = list(self.driver.run(_history))

    def teardown(self) -> None:
        if self.driver is None:
            return
        started = time.perf_counter()
        try:
            if self.driver._thread.is_alive():
                self.check_idle()
        finally:
            self.driver.close()
            seconds = self.stats.setdefault("seconds", {})
            seconds["teardown"] = seconds.get("teardown", 0.0) + time.perf_counter() - started

    # ------------------------------------------------------------ rules

    @rule(key=st.sampled_from(KEYS), pause=PAUSES)
    def press(self, key: str, pause: float) -> None:
        self._press((key,), pause)

    @rule(keys=st.lists(st.sampled_from(KEYS), min_size=2, max_size=8))
    def burst(self, keys) -> None:
        """Keys that arrive together (a fast typist, a terminal multiplexer)."""
        self._press(tuple(keys))

    @rule(text=TYPED, pause=PAUSES)
    def type_text(self, text: str, pause: float) -> None:
        self._press(tuple(text), pause)

    @rule(keys=st.lists(st.sampled_from(EDITING_KEYS), min_size=2, max_size=12))
    def typing_burst(self, keys) -> None:
        """Editing keys that all arrive before the app handles the first (a fast typist, a
        terminal multiplexer): they must apply in order. With the prompt focused and no
        selection the line's edits follow from the keys alone (``EditedLine``)."""
        line = self.line
        self.stats["keys"] = self.stats.get("keys", 0) + len(keys)

        async def run(app, pilot):
            prompt = app.prompt_pane.input
            if app.focused is not prompt or app.screen is not app.base_screen or not prompt.selection.is_empty:
                return False
            edited = EditedLine(line.text, prompt.cursor_position)
            for key in keys:
                await post_key(app, key)
                edited.key(key)
            await settle_queues(pilot)
            line.text = edited.text
            return True

        if self._run(run, "typing_burst"):
            self.stats["typing bursts"] = self.stats.get("typing bursts", 0) + 1

    @rule(index=st.integers(min_value=0, max_value=200))
    def palette_command(self, index: int) -> None:
        """A palette command, run the way the palette runs it (``app.call_later``)."""

        async def run(app, pilot):
            skip = type(self).skip_commands
            commands = [
                c
                for c in app.get_system_commands(app.screen)
                if "quit" not in c.title.lower() and not any(c.title.startswith(t) for t in skip)
            ]
            command = commands[index % len(commands)]
            app.call_later(command.callback)
            await pause(pilot)
            return command.title

        title = self._run(run, "palette_command")
        for preset in PRESETS:  # the palette's presets put their text on the prompt line
            if title == f"prompt: preset {preset.name}":
                self.line.text = preset.text
        self.stats.setdefault("commands", set()).add(title)

    @rule(query=st.sampled_from(PALETTE_QUERIES), escape=st.booleans())
    def palette_by_keys(self, query: str, escape: bool) -> None:
        """ctrl+p, the command's title typed, then Enter (or Escape)."""

        async def run(app, pilot):
            await press_key(app, pilot, "ctrl+p")
            for char in query:  # typed as one burst, as a paste of keys would arrive
                await post_key(app, char)
            await settle_queues(pilot)
            top = ""
            for _ in range(100):  # until the search has answered this query, not the discovery list
                lists = app.screen.query("CommandList")
                if lists and lists.first().option_count:
                    top = str(lists.first().get_option_at_index(0).prompt)
                    if top.startswith(query):
                        break
                await pause(pilot, 0.02)
            # Enter only on the command asked for (never on a discovery hit such as "Quit":
            # the walk explores the app, it does not leave it).
            leave = escape or not top.startswith(query)
            await press_key(app, pilot, "escape" if leave else "enter")
            await pause(pilot)
            if app.screen.__class__.__name__ == "CommandPalette":
                await press_key(app, pilot, "escape")

        self._run(run, "palette_by_keys")

    @precondition(lambda self: len(type(self).specs) > 1)
    @rule(index=st.integers(min_value=0, max_value=10))
    def switch_model(self, index: int) -> None:
        """The palette's "model: open …" (what choosing one posts), including one that
        cannot be opened."""
        specs = type(self).specs
        spec = specs[index % len(specs)]

        async def run(app, pilot):
            app.post_message(ModelChosen(spec, spec or "the first model"))
            await pause(pilot)

        self._run(run, "switch_model")

    @rule(size=st.sampled_from(((120, 40), (80, 24), (60, 20), (140, 30))))
    def resize(self, size) -> None:
        async def run(app, pilot):
            from textual.drivers.headless_driver import HeadlessDriver
            from textual.events import Resize
            from textual.geometry import Size

            # pilot.resize_terminal, without its wait for an idle CPU.
            if isinstance(app._driver, HeadlessDriver):
                app._driver._size = Size(*size)
            app.post_message(Resize(Size(*size), Size(*size)))
            await pause(pilot)

        self._run(run, "resize")

    @rule(seconds=st.sampled_from((0.05, 0.3)))
    def wait(self, seconds: float) -> None:
        """A pause: streams go on, debounced runs fire."""

        async def run(app, pilot):
            await pause(pilot, seconds)

        self._run(run, "wait")

    @precondition(lambda self: self.since_check >= CHECK_EVERY)
    @rule()
    def check_idle(self) -> None:
        """Wait until nothing is on its way, then hold the grid against a fresh run (at
        most every ``CHECK_EVERY`` steps: a check waits for the lens, keys do not)."""
        self.since_check = 0
        models = type(self).models
        timeout = type(self).idle_timeout

        async def run(app, pilot):
            started = time.monotonic()
            while not is_idle(app):
                if time.monotonic() - started > timeout:
                    raise AssertionError(f"the explorer never settled: {idle_report(app)}")
                await pause(pilot, 0.02)
            await pause(pilot)
            if not is_idle(app):
                return "busy again"
            name = app.model_info.name if app.model_info else None
            if name not in models:
                return "no model"
            return check_grid_against_a_fresh_run(app, models[name])

        outcome = self._run(run, "check_idle")
        self.stats.setdefault("idle checks", {}).setdefault(outcome, 0)
        self.stats["idle checks"][outcome] += 1

    # ------------------------------------------------------------ after every step

    @invariant()
    def nothing_went_wrong(self) -> None:
        if self.driver is None:
            return
        line = self.line

        async def run(app, pilot):
            crashes = [f"{c.where}:\n{c.text}" for c in app.crashes]
            assert not crashes, "the safety net caught:\n" + "\n".join(crashes)
            assert not app._exit and app.return_code is None, "the app is exiting"
            check_cursor(app)
            assert app.prompt_pane.text == line.text, (app.prompt_pane.text, line.text)

        started = time.perf_counter()
        self.driver.run(run)
        seconds = self.stats.setdefault("seconds", {})
        seconds["invariants"] = seconds.get("invariants", 0.0) + time.perf_counter() - started


def key_event(key: str):
    """The Key event a terminal sends for ``key`` (a Pilot name or a character). Pilot's own
    conversion drops the character of an emoji (no input would type it)."""
    import unicodedata

    from textual import events
    from textual.keys import REPLACED_KEYS, _character_to_key, _get_unicode_name_from_key

    if len(key) == 1:
        return events.Key(key if key.isalnum() else _character_to_key(key), key)
    try:
        char = unicodedata.lookup(_get_unicode_name_from_key(REPLACED_KEYS.get(key, key)))
    except KeyError:
        char = None
    return events.Key(key, char)


async def press_key(app, pilot, key: str) -> None:
    """Send ``key`` as the terminal would and wait until the screen has handled it.

    Not ``pilot.press``: that waits for the whole process to be idle (CPU time), so with
    the worker computing a lens every key would wait for the lens; a user's keys do not.
    Here a key waits only for the app's and the screen's message queues."""
    await post_key(app, key)
    await settle_queues(pilot)


async def post_key(app, key: str) -> None:
    """Put ``key`` on the app's queue now (the driver would schedule it for later)."""
    event = key_event(key)
    event.set_sender(app)
    await app._post_message(event)


async def pause(pilot, seconds: float = 0.0) -> None:
    """Let the app run for ``seconds``, then handle what is queued (never a CPU-idle wait)."""
    if seconds:
        await asyncio.sleep(seconds)
    await settle_queues(pilot)


async def settle_queues(pilot) -> None:
    """Every message queued on the app and the screen's nodes is handled, and what those
    posted in turn (a key travels from the app to the focused widget and bubbles back up,
    a queue at a time), until no queue holds anything."""
    app = pilot.app
    for _ in range(50):
        await pilot._wait_for_screen()
        nodes = [app, *app.screen.walk_children(with_self=True)]
        if all(node._message_queue.empty() for node in nodes):
            return


async def _history(app, pilot) -> list[str]:
    return list(app.prompt_pane.history.entries)


# ---------------------------------------------------------------- present mode

SCENE_KEYS = (" ", "pagedown", "pageup", "backspace", "1", "2", "3", "4", "enter", "g", "escape", "w", "f", "home")


class PresenterWalk(ExplorerWalk):
    """The same walk in present mode (``lenstui present``), with the scene keys too.

    ``make_app`` returns a presenter whose ``scenes_applied`` counts the scenes put on
    screen (each sets the prompt line). Every scene is computed before the next key is
    sent (``between_keys``): a scene applied later, by a worker reply landing between two
    keys, would rewrite the line under a key the walk had already predicted."""

    @initialize(size=st.sampled_from(((120, 40), (80, 24))))
    def start(self, size) -> None:
        started = time.perf_counter()
        self.driver = Driver(lambda: type(self).make_app(""), size)
        seconds = self.stats.setdefault("seconds", {})
        seconds["start"] = seconds.get("start", 0.0) + time.perf_counter() - started
        self.line.history = list(self.driver.run(_history))
        self.driver.run(self._first_scene_shown)

    async def _first_scene_shown(self, app, pilot) -> None:
        started = time.monotonic()
        while not app.scene_settled.is_set():
            if time.monotonic() - started > type(self).idle_timeout:
                raise AssertionError("the talk's first scene was never shown")
            await pause(pilot, 0.02)
        await self.between_keys(app, pilot)
        self._adopt_scene(app)

    async def between_keys(self, app, pilot) -> None:
        started = time.monotonic()
        while app._render_seq is not None or not app.model_settled.is_set():
            if time.monotonic() - started > type(self).idle_timeout:
                raise AssertionError("the talk's scenes were never computed")
            await pause(pilot, 0.02)
        await settle_queues(pilot)

    @rule(keys=st.lists(st.sampled_from(SCENE_KEYS), min_size=1, max_size=4), pause=PAUSES)
    def scene_keys(self, keys, pause: float) -> None:
        self._press(tuple(keys), pause)


# ---------------------------------------------------------------- running a walk (tests/app/test_random_walk.py,
# tests/integration/test_random_walk_embedded.py)

PACE_SECONDS = 0.03  # after each partial: the tiny model's lens streams for a while
UNOPENABLE = "no/such-model"


def walk_settings(examples: int, steps: int) -> settings:
    random = bool(os.environ.get("LENSTUI_WALK_RANDOM"))
    return settings(
        max_examples=int(os.environ.get("LENSTUI_WALK_EXAMPLES", examples)),
        stateful_step_count=int(os.environ.get("LENSTUI_WALK_STEPS", steps)),
        deadline=None,
        derandomize=not random,
        database=None,
        print_blob=True,
        # Shrinking restarts the app for every attempt (minutes): on for a long run, off in
        # the suite, where the failing steps are printed as they were.
        phases=(Phase.explicit, Phase.reuse, Phase.generate) + ((Phase.shrink,) if random else ()),
        suppress_health_check=list(HealthCheck),
    )


def paced_lens(model, request, ctx):
    class Paced:
        def __getattr__(self, name):
            return getattr(ctx, name)

        def partial(self, value) -> None:
            ctx.partial(value)
            time.sleep(PACE_SECONDS)

    return handlers.run_lens_handler(model, request, Paced())


def walk_machine(models: dict, first, *, examples: int, steps: int, **options):
    """(machine class, Hypothesis settings) for these models for these models: ``first`` at start, every spec switchable."""
    by_spec = {None: first, **{name: model for name, model in models.items()}}

    def loader(spec, **kwargs):
        if spec not in by_spec:
            raise InputError(f"No model called {spec!r} here.")
        return by_spec[spec]

    def make_app(prompt: str):
        return RecordingApp(prompt, loader=loader, show_timings=False)

    attributes = dict(
        make_app=staticmethod(make_app),
        models={model.name: model for model in (first, *models.values())},
        specs=("", *models, UNOPENABLE) if models else ("",),
        stats={},
        **options,
    )
    machine = type("Walk", (ExplorerWalk,), attributes)
    return machine, walk_settings(examples, steps)


def report_walk(name: str, machine, started: float) -> None:
    stats = machine.stats
    seconds = time.perf_counter() - started
    print(
        f"\n{name}: {stats.get('examples', 0)} examples, {stats.get('steps', 0)} steps "
        f"({stats.get('keys', 0)} keys, {len(stats.get('commands', ()))} distinct palette commands), "
        f"idle checks {stats.get('idle checks', {})}, {seconds:.0f} s"
    )
    print(
        f"  keys while the lens streams: {stats.get('keys while the lens streams', 0)}; "
        f"typing bursts: {stats.get('typing bursts', 0)}; scenes shown: {stats.get('scenes shown', 0)}; "
        f"keys by screen: {stats.get('keys by screen', {})}"
    )
    spent = sorted(stats.get("seconds", {}).items(), key=lambda item: -item[1])
    print("  seconds per kind of step: " + ", ".join(f"{name} {s:.1f}" for name, s in spent))


