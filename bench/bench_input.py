"""Keystroke-to-echo latency on screen while the model worker is busy, against idle.

The real explorer runs in a pseudo-terminal (testkit/terminal.py); one key is written to
it and the clock stops when the terminal emulator's prompt line shows it. Each sample is
a character typed then erased (two echoes), so the prompt comes back to what it was and
the debounced lens run sees no change. States:

  idle     the model loaded, nothing running
  loading  the worker importing torch/transformers and loading the model
  lens     a 256-token logit lens running (Enter on a long prompt)
  scan     a vocabulary speakability scan running (palette: speak: scan the whole vocabulary)
  fit      a tuned lens being fitted (palette: lens: fit a tuned lens for this model)

Prints median and p99 per state (goal: p99 <= 50 ms). Asserts nothing: the machine's
load decides the absolute numbers.
Run: ``HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_input.py [--in-process]``
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

from testkit.terminal import TerminalApp

LONG = "The quick brown fox jumps over the lazy dog while the cat sleeps. "  # 13 tokens
GOAL_MS = 50.0


def echo_latency(term: TerminalApp, key: str, shown: bool, timeout: float = 10.0) -> float:
    """Write ``key``; seconds until the prompt line ends (``shown``) or stops ending in '#'."""
    start = time.perf_counter()
    term.write(key)
    term.wait_until(lambda _: _prompt(term).endswith("#") == shown, timeout, f"the echo of {key!r}")
    return term.arrived - start  # when the terminal got the echo, not when pyte had parsed it


def _prompt(term: TerminalApp) -> str:
    try:
        return term.prompt()
    except AssertionError:
        return ""


def sample(term: TerminalApp, until, max_samples: int, pause: float = 0.03) -> list[float]:
    """Type-and-erase pairs ('#', then Backspace) until ``until()`` or ``max_samples``."""
    out = []
    while len(out) < max_samples and not until():
        out.append(echo_latency(term, "#", True))
        out.append(echo_latency(term, "\x7f", False))
        time.sleep(pause)
    return out


def describe(label: str, values: list[float]) -> None:
    if not values:
        print(f"  {label:<8}: no samples")
        return
    ms = sorted(v * 1000 for v in values)
    p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
    print(
        f"  {label:<8}: median {statistics.median(ms):7.1f} ms   p99 {p99:7.1f} ms   max {ms[-1]:7.1f} ms"
        f"   n={len(ms):3d}   p99/goal x{p99 / GOAL_MS:.2f}"
    )


def palette(term: TerminalApp, query: str, command: str) -> None:
    term.write(b"\x10")  # ctrl+p: the command palette
    term.wait_for_text("Search for commands", 20)
    term.write(query)
    term.wait_for_text(command, 20)
    term.write("\r")


def main() -> int:
    # --in-process: the model on a thread of the UI's process (LENSTUI_IN_PROCESS=1), as
    # before it had a process of its own: the same run's comparison.
    in_process = "--in-process" in sys.argv[1:]
    where = "on a thread of the UI's process" if in_process else "in its own process"
    print(f"lenstui keystroke -> echo latency in a pty, the model {where} (figures only; no assertions)")
    home = tempfile.mkdtemp(prefix="lenstui-bench-input-")
    env = {"LENSTUI_CONFIG_DIR": home + "/config", "LENSTUI_DATA_DIR": home + "/data", "LENSTUI_LENS_DIR": home + "/lenses"}
    if in_process:
        env["LENSTUI_IN_PROCESS"] = "1"
    results: dict[str, list[float]] = {}
    with TerminalApp(env=env, cols=120, rows=40) as term:
        term.wait_for_text("palette", 120)  # the first frame
        loaded = lambda: "loaded" in term.text()  # noqa: E731
        results["loading"] = sample(term, loaded, 400)
        term.wait_for_text("loaded", 180)
        time.sleep(1.0)
        results["idle"] = sample(term, lambda: False, 60)

        # A 256-token prompt, run with Enter; sample while the status bar says it runs.
        text = (LONG * 20)[: 20 * len(LONG)]
        term.paste(text)
        term.write("\r")
        started = time.perf_counter()
        done = lambda: "tokens ·" in term.lines()[-2] and "running" not in term.lines()[-2]  # noqa: E731
        time.sleep(0.3)
        results["lens"] = sample(term, lambda: time.perf_counter() - started > 20 or done(), 200)
        lens_seconds = time.perf_counter() - started
        term.wait_until(lambda _: done(), 300, "the 256-token lens")

        palette(term, "scan the whole vocabulary", "speak: scan the whole vocabulary")
        term.wait_until(lambda lines: any("scan" in l.lower() and "%" in l for l in lines), 60, "scan progress")
        started = time.perf_counter()
        results["scan"] = sample(term, lambda: time.perf_counter() - started > 15, 200)
        palette(term, "stop the check or scan", "speak: stop the check or scan")  # it resumes later
        time.sleep(1.0)

        palette(term, "fit a tuned lens for this model", "lens: fit a tuned lens for this model")
        term.wait_until(lambda lines: any("lens fit" in l for l in lines), 60, "the fit's progress")
        started = time.perf_counter()
        results["fit"] = sample(term, lambda: time.perf_counter() - started > 15, 200)

    for state in ("idle", "loading", "lens", "scan", "fit"):
        describe(state, results[state])
    print(f"  (the lens run was sampled for {lens_seconds:.1f} s; goal p99 <= {GOAL_MS:.0f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
