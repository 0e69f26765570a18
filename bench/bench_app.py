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

3. Streamed lens, in-process: a generation step (``^n``) on a 45-token chat
   prompt to the updated grid painted; a character typed at the end of a 256-token
   prompt to the visible cells painted (from the debounced run's submit; the debounce is
   reported beside it); a 2,000-token prompt to its first visible cells painted, beside
   a plain forward pass measured in the same process.

Prints figures; asserts nothing (the machine's load decides the absolute numbers).
Run: ``HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_app.py [--streamed-only]`` (or ``make bench``).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

from testkit.terminal import TerminalApp  # the pty + terminal emulator the tests use

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
            seen[name] = term.arrived - term.started  # when the terminal got it
    return seen


def timed_app_class():
    from lenstui.jobs.protocol import RunLens
    from lenstui.tui.app import LenstuiApp

    class TimedApp(LenstuiApp):
        """Stamps when the app handled the key and when the new grid was painted."""

        def on_input_changed(self, event) -> None:
            self.key_at = time.perf_counter()
            super().on_input_changed(event)

        def on_prompt_pane_run(self, message) -> None:
            if message.immediate:
                self.key_at = time.perf_counter()
            super().on_prompt_pane_run(message)

        def reply_routes(self):
            routes = super().reply_routes()
            on_lens = routes[RunLens]

            def timed(result) -> None:
                on_lens(result)
                # call_after_refresh runs once the screen holding the new grid was drawn.
                self.call_after_refresh(self._painted)

            routes[RunLens] = timed
            return routes

        def _painted(self) -> None:
            self.painted_at = time.perf_counter()
            self.painted.set()

    return TimedApp


async def in_process() -> dict[str, object]:
    from lenstui.engine.model.load import load_model

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


# ---------------------------------------------------------------- the streamed lens

CHAT_QUESTION = "Is there a seahorse emoji?"  # the seahorse preset: 39 tokens with the template
LONG_TEXT = (
    "Sometimes, when people say plasma, they mean a state of matter. Other times, when "
    "people say plasma, they mean the liquid part of blood. The Eiffel Tower is located "
    "in the city of Paris, and the seahorse emoji does not exist. "
)


def stream_app_class():
    from lenstui.jobs.protocol import Done, Partial, RunLens
    from lenstui.tui.app import LenstuiApp

    class StreamTimedApp(LenstuiApp):
        """Stamps each lens submit and when each partial / complete grid was painted."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            submit = self.lens.submit  # every lens submit, the flow's own calls included

            def stamped() -> None:
                self.submitted_at = time.perf_counter()
                submit()

            self.lens.submit = stamped

        def action_step(self) -> None:
            self.key_at = time.perf_counter()
            super().action_step()

        def on_input_changed(self, event) -> None:
            self.key_at = time.perf_counter()
            super().on_input_changed(event)

        def reply_routes(self):
            routes = super().reply_routes()
            on_lens = routes[RunLens]

            def timed(result) -> None:
                on_lens(result)
                if isinstance(result, (Partial, Done)) and self.worker.is_current(result):
                    kind = "partial" if isinstance(result, Partial) else "done"
                    self.call_after_refresh(lambda: self._painted(kind))

            routes[RunLens] = timed
            return routes

        def _painted(self, kind: str) -> None:
            now = time.perf_counter()
            if kind == "partial" and self.first_paint_at is None:
                self.first_paint_at = now
            if kind == "done":
                self.done_at = now
                self.engine_seconds = self.shown_result.seconds
                self.done.set()

        def expect(self) -> None:
            self.first_paint_at = self.done_at = self.engine_seconds = None
            self.done = asyncio.Event()

    return StreamTimedApp


async def streamed_figures(model) -> dict[str, object]:
    from lenstui.engine.model.chat import chat_prompt_ids

    figures: dict[str, object] = {}
    app_class = stream_app_class()

    def fresh(prompt: str, **kwargs):
        model.caches.lens_states.pop("a", None)  # every scenario starts cold
        app = app_class(prompt, loader=lambda spec, **kw: model, **kwargs)
        app.worker_stop_timeout = 120
        app.expect()
        return app

    # A generation step: ^n on a 45-token chat prompt.
    question = CHAT_QUESTION
    while len(chat_prompt_ids(model, question)) < 45:
        question += " Yes or no?"
    figures["chat tokens"] = len(chat_prompt_ids(model, question))
    app = fresh(question, chat=True)
    steps = []
    async with app.run_test(size=(120, 40)) as pilot:
        await app.done.wait()
        for _ in range(REPEATS):
            app.expect()
            await pilot.press("ctrl+n")
            await app.done.wait()
            steps.append((app.first_paint_at - app.key_at, app.done_at - app.key_at, app.engine_seconds))
    figures["step"] = steps

    # A character typed at the end of a 256-token prompt.
    ids = model.tokenizer(LONG_TEXT * 8)["input_ids"][:256]
    text = model.tokenizer.decode(ids)
    figures["typed tokens"] = len(model.tokenizer(text)["input_ids"])
    app = fresh(text)
    typed = []
    async with app.run_test(size=(120, 40)) as pilot:
        await app.done.wait()
        await pilot.press("end")
        for i in range(REPEATS):
            app.expect()
            await pilot.press("xy"[i % 2])
            await app.done.wait()
            typed.append(
                (app.first_paint_at - app.submitted_at, app.done_at - app.submitted_at, app.submitted_at - app.key_at,
                 app.engine_seconds)
            )
    figures["typed"] = typed

    # A 2,000-token prompt: first visible cells vs a plain forward pass.
    import torch

    ids = model.tokenizer(LONG_TEXT * 40)["input_ids"][:2000]
    text = model.tokenizer.decode(ids)
    tokens = torch.tensor([model.tokenizer(text)["input_ids"]])
    figures["long tokens"] = tokens.shape[1]
    with torch.no_grad():
        start = time.perf_counter()
        model.bridge(tokens)
        figures["forward"] = time.perf_counter() - start
    app = fresh(text)
    async with app.run_test(size=(120, 40)):
        while app.first_paint_at is None:  # the rest of the grid is not waited for
            await asyncio.sleep(0.05)
        figures["long"] = app.first_paint_at - app.submitted_at
    return figures


def streamed() -> None:
    from lenstui.engine.model.load import load_model

    model = load_model()
    figures = asyncio.run(streamed_figures(model))
    first = statistics.median(f for f, _, _ in figures["step"])
    done = statistics.median(d for _, d, _ in figures["step"])
    engine = statistics.median(e for _, _, e in figures["step"])
    print(f"  streamed lens (medians of {REPEATS}; goals: step and edit near a forward)")
    print(
        f"  ^n step, {figures['chat tokens']}-token chat prompt -> grid: {done * 1000:6.0f} ms"
        f"  (first cells {first * 1000:.0f} ms; engine {engine * 1000:.0f} ms, app adds {(done - engine) * 1000:.0f} ms;"
        f" goal <= 150 ms: x{done / 0.150:.2f} of it)"
    )
    visible = statistics.median(f for f, _, _, _ in figures["typed"])
    whole = statistics.median(d for _, d, _, _ in figures["typed"])
    debounce = statistics.median(b for _, _, b, _ in figures["typed"])
    engine = statistics.median(e for _, _, _, e in figures["typed"])
    print(
        f"  char typed at the end of {figures['typed tokens']} tokens -> visible cells: {visible * 1000:6.0f} ms"
        f"  (whole grid {whole * 1000:.0f} ms, its engine time {engine * 1000:.0f} ms; goal <= 300 ms: x{visible / 0.300:.2f};"
        f" excluded: key -> debounced run {debounce * 1000:.0f} ms)"
    )
    first = figures["long"]
    forward = figures["forward"]
    print(
        f"  {figures['long tokens']}-token prompt -> first visible cells: {first:6.2f} s"
        f"  (plain forward {forward:.2f} s, {first - forward:+.2f} s; goal <= forward + 0.5 s)"
    )


def main() -> int:
    print("lenstui app benchmark (figures only; no assertions)")
    if "--streamed-only" in sys.argv:
        streamed()
        return 0
    launch = launch_in_pty()
    for name in ("first frame", "first grid"):
        value = launch.get(name)
        print(f"  launch -> {name:<11}: {value:6.2f} s" if value is not None else f"  launch -> {name}: not seen")
    figures = asyncio.run(in_process())
    print(f"  prompt: {figures['tokens']} tokens; medians of {REPEATS}")
    describe("Enter -> updated grid", figures["enter"])
    describe("keystroke -> grid", figures["typed"], f"; includes the {figures['debounce']:.2f} s debounce")
    streamed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
