"""The real explorer in a pseudo-terminal, read back with a terminal emulator (pyte).

Used by the terminal-level tests (tests/system/test_terminal.py) and the benchmarks
(bench/bench_app.py, bench/bench_input.py): a child process runs ``lenstui`` exactly as
a person starts it, keys are written to the pty's master side as a terminal would send
them (one at a time with a pause, or all in one write), and everything the app draws is
fed to a ``pyte`` screen, so a test asserts on what a person would see.

Nothing here imports Textual, torch or lenstui's engine: the app under test is the only
process that does.
"""

from __future__ import annotations

import collections
import fcntl
import json
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import pyte

ROOT = Path(__file__).resolve().parent.parent

# What a terminal sends for the keys the tests press.
KEYS = {
    "enter": b"\r",
    "backspace": b"\x7f",
    "escape": b"\x1b",
    "tab": b"\t",
    "home": b"\x1b[H",
    "end": b"\x1b[F",
    "left": b"\x1b[D",
    "right": b"\x1b[C",
    "up": b"\x1b[A",
    "down": b"\x1b[B",
    "f2": b"\x1bOQ",
    "f3": b"\x1bOR",
    "f4": b"\x1bOS",
    "f5": b"\x1b[15~",
    "ctrl+a": b"\x01",
    "ctrl+k": b"\x0b",
    "ctrl+b": b"\x02",
    "ctrl+n": b"\x0e",
    "ctrl+p": b"\x10",
    "ctrl+q": b"\x11",
    "ctrl+t": b"\x14",
}
PASTE_START, PASTE_END = b"\x1b[200~", b"\x1b[201~"
PROMPT_MARK = "❯"
PLACEHOLDER = "Type a prompt"


class TerminalApp:
    """``lenstui ARGS`` running in a pty of ``cols`` x ``rows``, drawn onto a pyte screen."""

    def __init__(
        self,
        args: Iterable[str] = (),
        *,
        cols: int = 120,
        rows: int = 40,
        env: Optional[dict[str, str]] = None,
        threads: Optional[int] = 1,  # torch threads in the child (None: leave the env's)
    ) -> None:
        self.cols, self.rows = cols, rows
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self._lock = threading.RLock()  # predicates read the screen while wait_until holds it
        self._changed = threading.Condition(self._lock)
        self.output_bytes = 0
        self.started = time.perf_counter()
        # pyte parses a few hundred kB/s; a terminal, many MB/s. So one thread drains the
        # pty as fast as the app writes (the app never waits on our parsing, as it would
        # not on a real terminal's) and another feeds pyte; ``arrived`` is when the bytes
        # that made the screen what it is now came in (what a benchmark times).
        self._chunks: collections.deque = collections.deque()
        self._chunk_ready = threading.Event()
        self._drained = False
        self.arrived = self.started
        master, slave = os.openpty()
        self._set_size(slave, cols, rows)
        child_env = dict(os.environ)
        child_env.update(
            TERM="xterm-256color",
            COLORTERM="",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
        )
        if threads is not None:
            child_env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        child_env.update(env or {})
        workdir = child_env.get("LENSTUI_DATA_DIR")  # exports land there, not in the checkout
        if workdir:
            Path(workdir).mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lenstui.cli", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=child_env,
            close_fds=True,
            start_new_session=True,
            cwd=workdir or None,
        )
        os.close(slave)
        self.master = master
        self._reader = threading.Thread(target=self._read, name="pty-reader", daemon=True)
        self._reader.start()
        self._parser = threading.Thread(target=self._parse, name="pty-parser", daemon=True)
        self._parser.start()

    # ------------------------------------------------------------ output side

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                self._drained = True
                self._chunk_ready.set()
                return
            self._chunks.append((time.perf_counter(), chunk))
            self._chunk_ready.set()

    def _parse(self) -> None:
        while True:
            self._chunk_ready.wait()
            self._chunk_ready.clear()
            while self._chunks:
                arrived, chunk = self._chunks.popleft()
                with self._changed:
                    self.stream.feed(chunk)
                    self.output_bytes += len(chunk)
                    self.arrived = arrived
                    self._changed.notify_all()
            if self._drained and not self._chunks:
                with self._changed:
                    self._changed.notify_all()
                return

    def lines(self) -> list[str]:
        with self._lock:
            return list(self.screen.display)

    def text(self) -> str:
        return "\n".join(self.lines())

    def wait_until(self, predicate: Callable[[list[str]], object], timeout: float = 60.0, what: str = ""):
        """Wait until ``predicate(lines)`` is truthy; returns its value or raises TimeoutError
        with the screen in the message (so a failing test shows what was on it)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = predicate(list(self.screen.display))
                if value:
                    return value
                left = deadline - time.monotonic()
                finished = self.proc.poll() is not None and self._drained and not self._chunks
                if left <= 0 or finished:
                    screen = "\n".join(self.screen.display)
                    raise TimeoutError(f"waited {timeout:.0f} s for {what or predicate}; screen:\n{screen}")
                self._changed.wait(min(left, 0.2))

    def wait_for_text(self, needle: str, timeout: float = 60.0) -> None:
        self.wait_until(lambda lines: any(needle in line for line in lines), timeout, repr(needle))

    # ------------------------------------------------------------ input side

    def write(self, data: Union[bytes, str]) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        view = memoryview(data)
        while view:  # a big paste may not fit the pty's buffer in one write
            written = os.write(self.master, view)
            view = view[written:]

    def type(self, text: str, interval: float = 0.0) -> None:
        """Type ``text`` one character at a time (``interval`` apart), or all in one write."""
        if interval <= 0:
            self.write(text)
            return
        for char in text:
            self.write(char)
            time.sleep(interval)

    def press(self, *keys: str, interval: float = 0.0) -> None:
        data = [KEYS[key] for key in keys]
        if interval <= 0:
            self.write(b"".join(data))
            return
        for chunk in data:
            self.write(chunk)
            time.sleep(interval)

    def paste(self, text: str) -> None:
        """A bracketed paste, as a terminal sends one."""
        self.write(PASTE_START + text.encode("utf-8") + PASTE_END)

    def resize(self, cols: int, rows: int) -> None:
        with self._lock:
            self.screen.resize(rows, cols)
            self.cols, self.rows = cols, rows
        self._set_size(self.master, cols, rows)
        try:
            os.killpg(self.proc.pid, signal.SIGWINCH)
        except ProcessLookupError:
            pass

    @staticmethod
    def _set_size(fd: int, cols: int, rows: int) -> None:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    # ------------------------------------------------------------ what the explorer shows

    def prompt(self) -> str:
        """The prompt line's text ('' while the placeholder shows)."""
        for line in self.lines():
            if PROMPT_MARK in line:
                text = line.split(PROMPT_MARK, 1)[1].strip()
                return "" if text.startswith(PLACEHOLDER) else text
        raise AssertionError("no prompt line on screen:\n" + self.text())

    def grid_title(self) -> Optional[str]:
        for line in self.lines():
            match = re.search(r"layer × (position|top-)[^─]*", line)
            if match:
                return match.group(0).strip()
        return None

    def token_count(self) -> Optional[int]:
        title = self.grid_title() or ""
        match = re.search(r"(\d+) tokens", title)
        return int(match.group(1)) if match else None

    def grid_row(self, label: str) -> list[str]:
        """The cells of the grid's row called ``label`` ('layer' is the input tokens)."""
        for line in self.lines():
            if line.startswith(label + " "):
                return line[len(label):].split("│")[0].split("  ")
        return []

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> Optional[int]:
        if self.alive():
            try:
                self.write(KEYS["ctrl+q"])
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=10)
        try:
            os.close(self.master)
        except OSError:
            pass
        return self.proc.returncode

    def __enter__(self) -> "TerminalApp":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def embedded_tokenizer():
    """The embedded model's tokenizer straight from the ``tokenizers`` library (not through
    lenstui), so a test can say which tokens a prompt must have. None if not cached yet."""
    from tokenizers import Tokenizer

    cache = Path(os.environ.get("LENSTUI_CACHE_DIR") or _user_cache()) / "gguf"
    for config in sorted(cache.glob("*/config.json")):
        try:
            info = json.loads(config.read_text())
        except (OSError, ValueError):
            continue
        if info.get("vocab_size") == 49152 and info.get("num_hidden_layers") == 30:
            path = config.parent / "tokenizer.json"
            if path.is_file():
                return Tokenizer.from_file(str(path))
    return None


def _user_cache() -> str:
    from platformdirs import user_cache_dir

    return user_cache_dir("lenstui")
