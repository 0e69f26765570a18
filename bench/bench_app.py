"""How fast the explorer feels: launch -> first frame -> first grid, and keystroke -> grid.

1. ``lenstui "<Eiffel prompt>"`` runs in a pseudo-terminal (120x40, 256 colours) the way
   a person starts it; the clock stops when the first frame (the footer) and then the
   first grid (" Paris" in a cell) reach the terminal. The embedded model's cache must
   be warm (run ``lenstui lens hi`` once).
2. In-process (headless Pilot) on a 32-token prompt: from the app handling Enter to the
   updated grid painted, and from a typed character to the grid painted through the
   debounce. Each figure is set against the engine's
   own time for that same run (``LensResult.seconds``, measured on the worker thread), so
   what the app adds shows even when other processes make the engine's time swing.

Prints figures; asserts nothing (the machine's load decides the absolute numbers).
Run: ``HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_app.py`` (or ``make bench``).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from terminal import TerminalApp  # noqa: E402  (the pty + terminal emulator the tests use)

EIFFEL = "The Eiffel Tower is located in the city of"
# 32 tokens with SmolLM2's tokenizer (checked below; the figure is reported either way).
PROMPT_32 = (
    "Sometimes, when people say plasma, they mean a state of matter. Other times, "
    "when people say plasma, they mean the pale yellow part of our blood that"
)
REPEATS = 5


def launch_in_pty(timeout: float = 180.0) -> dict[str, float]:
    """Seconds from the launch to the first frame and to the first grid, on screen."""
    marks = {"first frame": "palette", "first grid": "␣Paris"}
    seen: dict[str, float] = {}
    with TerminalApp([EIFFEL], threads=None) as term:
        for name, needle in marks.items():
            try:
                term.wait_for_text(needle, timeout=max(1.0, timeout - (time.perf_counter() - term.started)))
            except TimeoutError:
                break
            seen[name] = time.perf_counter() - term.started
    return seen


def timed_app_class():
    from lenstui.app import LenstuiApp

    class TimedApp(LenstuiApp):
        """Stamps when the app handled the key and when the new grid was painted."""

        def on_input_changed(self, event) -> None:
            self.key_at = time.perf_counter()
            super().on_input_changed(event)

        def on_prompt_pane_run(self, message) -> None:
            if message.immediate:
                self.key_at = time.perf_counter()
            super().on_prompt_pane_run(message)

        def _on_lens_reply(self, result) -> None:
            super()._on_lens_reply(result)
            # call_after_refresh runs once the screen holding the new grid was drawn.
            self.call_after_refresh(self._painted)

        def _painted(self) -> None:
            self.painted_at = time.perf_counter()
            self.painted.set()

    return TimedApp


async def in_process() -> dict[str, object]:
    from lenstui.engine.models import load_model

    model = load_model()
    tokens = len(model.tokenizer(PROMPT_32)["input_ids"])
    app = timed_app_class()(PROMPT_32, loader=lambda spec, **kw: model)
    app.painted = asyncio.Event()
    app.worker_stop_timeout = 60
    enter, typed = [], []  # (key -> painted seconds, the engine's own seconds for that run)
    async with app.run_test(size=(120, 40)) as pilot:
        await app.model_settled.wait()
        await app.painted.wait()

        async def measure(keys, into) -> None:
            app.painted.clear()
            await pilot.press(*keys)
            await app.painted.wait()
            into.append((app.painted_at - app.key_at, app.shown_result.seconds))

        # Each press replaces the last character with one that differs from the previous
        # prompt's, so every run is a real change (an unchanged prompt is not re-run).
        for i in range(REPEATS):
            await measure(("backspace", "st"[i % 2], "enter"), enter)
        for i in range(REPEATS):
            await measure(("backspace", "yz"[i % 2]), typed)
        debounce = app.config.debounce_ms / 1000
    return {"tokens": tokens, "enter": enter, "typed": typed, "debounce": debounce}


def describe(label: str, runs: list[tuple[float, float]], note: str = "") -> None:
    wall = statistics.median(w for w, _ in runs)
    engine = statistics.median(e for _, e in runs)
    overhead = statistics.median(w - e for w, e in runs)
    print(
        f"  {label:<22}: {wall:6.2f} s  (engine {engine:.2f} s, app adds {overhead:.2f} s,"
        f" x{wall / engine:.2f}{note})"
    )


def main() -> int:
    print("lenstui app benchmark (figures only; no assertions)")
    launch = launch_in_pty()
    for name in ("first frame", "first grid"):
        value = launch.get(name)
        print(f"  launch -> {name:<11}: {value:6.2f} s" if value is not None else f"  launch -> {name}: not seen")
    figures = asyncio.run(in_process())
    print(f"  prompt: {figures['tokens']} tokens; medians of {REPEATS}")
    describe("Enter -> updated grid", figures["enter"])
    describe("keystroke -> grid", figures["typed"], f"; includes the {figures['debounce']:.2f} s debounce")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
