"""What the Pilot tests of the explorer share: apps that keep their notices, and ways to
wait for the worker's answers without sleeping.

The model is loaded once per session (conftest's ``embedded``) and handed to each app
through its ``loader`` (conftest's ``make_app``), so the app still goes through its
worker. The waits await ``app.model_settled`` / ``app.lens_settled`` (asyncio events the
app sets when a result lands); the timeout only keeps a broken build from hanging.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import ClassVar

from lenstui.jobs.handlers import run_lens_handler
from lenstui.jobs.protocol import Request, RunLens
from lenstui.tui.app import LenstuiApp
from lenstui.tui.presenter import PresenterApp
from lenstui.tui.widgets.grid import LensGrid
from lenstui.tui.widgets.status import StatusBar

EIFFEL = "The Eiffel Tower is located in the city of"
SETTLE_TIMEOUT = 300

# About 150 tokens: long enough that the stream has several chunks after the first.
LONG_PROMPT = (
    "The history of the lighthouse begins with fires lit on hilltops to guide ships home. "
    "Later, towers were built of stone, and keepers climbed their stairs every evening to "
    "trim the wicks and polish the lenses. The most famous of the ancient lights stood at "
    "Alexandria, where a great tower rose above the harbour for more than a thousand years. "
    "In the nineteenth century, the Fresnel lens changed everything: a ring of glass prisms "
    "could bend the light of a single lamp into a beam that sailors saw from twenty miles "
    "away. Today most lighthouses run without keepers, their lamps switched by clocks and "
    "sensors, but people still visit them to climb the stairs and look out over the sea, "
    "wondering what the keepers saw on the long nights of winter when storms came in."
)


class KeepsNotices:
    """Mixed into an app: every notice is kept, so tests can read what the user was told."""

    def __init__(self, *args, **kwargs):
        self.notices: list[tuple[str, str]] = []  # (severity, message)
        kwargs.setdefault("strict_crashes", True)  # a crash the safety net caught fails the test
        super().__init__(*args, **kwargs)
        self.worker_stop_timeout = 120  # the next test's worker must not share the model mid-run

    def notify(self, message, *, title="", severity="information", **kwargs):
        self.notices.append((severity, str(message)))
        return super().notify(message, title=title, severity=severity, **kwargs)

    @property
    def notice_texts(self) -> list[str]:
        return [text for _, text in self.notices]


class RecordingApp(KeepsNotices, LenstuiApp):
    pass


class RecordingPresenter(KeepsNotices, PresenterApp):
    pass


async def settle(app: LenstuiApp, pilot) -> None:
    await pilot.pause()  # deliver the messages the last key press posted
    await asyncio.wait_for(app.model_settled.wait(), SETTLE_TIMEOUT)
    await asyncio.wait_for(app.lens_settled.wait(), SETTLE_TIMEOUT)
    await pilot.pause()  # let the grid repaint with what just landed


async def until(pilot, condition, what: str = "the condition") -> None:
    """Let the app process messages until ``condition()`` holds (worker replies arrive
    as messages, so this waits on real work, with a bound against a broken build)."""

    async def poll():
        while not condition():
            await pilot.pause(0.05)

    try:
        await asyncio.wait_for(poll(), SETTLE_TIMEOUT)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@dataclass(frozen=True)
class Drain(Request):
    """Runs after every request queued before it (the largest priority number runs last)."""

    priority: ClassVar[int] = 99
    needs_model: ClassVar[bool] = False


async def drain_worker(app, pilot) -> None:
    """Every request the worker holds now has ended and its answer has reached the app: the
    worker thread posts a job's answer before it takes the next one, so once ``Drain``'s
    handler runs, the earlier answers are in the app's queue, and the Pilot's pause takes them.
    (A long job lets short ones in between its chunks: not for use while one runs.)"""
    passed = threading.Event()
    app.register_handler(Drain, lambda model, request, ctx: passed.set())
    app.submit(Drain())
    await until(pilot, passed.is_set, "the worker past every earlier request")
    await pilot.pause()


def grid_lines(app: LenstuiApp) -> list[str]:
    grid = app.query_one(LensGrid)
    return [grid.render_line(y).text for y in range(grid.scrollable_content_region.height)]


def row(app: LenstuiApp, label: str) -> str:
    return next(line for line in grid_lines(app) if line.split(" ", 1)[0] == label)


class LensGate:
    """A lens handler that can hold a run after its first partial (the columns in view),
    so a test sees the grid while it streams, deterministically:
    ``app.register_handler(RunLens, gate.handler)``, ``gate.hold()``, keys, ``gate.release()``.
    A run with nothing to stream (every column in the first chunk, or a step: its one new
    column) posts no partial: it is held before its answer, still in flight.
    """

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()
        self.holding = threading.Event()  # a run is waiting at the gate now

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def handler(self, model, request, ctx):
        gate = self

        class HeldContext:
            streamed = False

            def __getattr__(self, name):
                return getattr(ctx, name)

            def partial(self, value) -> None:
                ctx.partial(value)
                self.streamed = True
                gate._wait(ctx)

        held = HeldContext()
        value = run_lens_handler(model, request, held)
        if not held.streamed:
            gate._wait(ctx)
        return value

    def _wait(self, ctx) -> None:
        if self._open.is_set():
            return
        self.holding.set()
        # Until released, or until this run is superseded or the worker stops (then the
        # newer run is the one held).
        for _ in range(SETTLE_TIMEOUT * 20):
            if self._open.wait(0.05) or ctx.should_stop():
                break
        self.holding.clear()


def palette_command(app, title: str):
    """The callback of the command palette's entry ``title`` on the current screen."""
    for command in app.get_system_commands(app.screen):
        if command.title == title:
            return command.callback
    raise AssertionError(f"no palette entry {title!r}")


def status_text(app) -> str:
    """The status bar's text as the user reads it."""
    return app.query_one(StatusBar).render().plain


def gate_lens_runs(app) -> "LensGate":
    """A ``LensGate`` that every lens run of ``app`` now goes through."""
    gate = LensGate()
    app.register_handler(RunLens, gate.handler)
    return gate
