"""The status line: model, device, load progress, what the worker is doing, last run time."""

from __future__ import annotations

from typing import Optional

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from lenstui.core.placement import short_placement
from lenstui.core.textfmt import bar
from lenstui.tui.safety import Guarded

BAR_WIDTH = 10


def progress_bar(fraction: Optional[float]) -> str:
    if fraction is None:
        return ""
    return bar(fraction, BAR_WIDTH, "░") + f" {round(fraction * 100):>3d}%"


class StatusBar(Guarded, Static):
    """One line. ``show_timings=False`` hides every duration and the cache state, which
    vary between runs (snapshot tests need a stable screen)."""

    DEFAULT_CSS = """
    StatusBar {
        height: 1;
        padding: 0 1;
        background: $panel;
        color: $text-muted;
        &.-error { color: $error; }
    }
    """

    model: reactive[str] = reactive("no model")
    state: reactive[str] = reactive("")
    run_info: reactive[str] = reactive("")
    lens_info: reactive[str] = reactive("")  # a learned lens and its file ("" for the built-in lenses)
    job_info: reactive[str] = reactive("")  # a long job's progress (a lens fit)
    causal: reactive[str] = reactive("")  # the patch or steer on show (tui/state/causal.py)
    wiring: reactive[str] = reactive("")  # the wiring check's warning ("" when the lens reads the model true)
    backend: reactive[str] = reactive("")  # who reads the model: "" native, "nnsight · NDIF host", ...

    def __init__(self, *, show_timings: bool = True, id=None) -> None:
        super().__init__("", id=id, markup=False)
        self.show_timings = show_timings

    def seconds(self, value: float) -> str:
        return f" · {value:.2f}s" if self.show_timings else ""

    def set_loading(self, message: str, fraction: Optional[float]) -> None:
        self.remove_class("-error")
        # The bar first: at 80 columns a long message is what gets cut, not the bar.
        self.state = f"loading {progress_bar(fraction)} {message}".replace("  ", " ")

    def set_model(self, name: str, device: str, dtype: str, n_layers: int, load_seconds: float, cached: bool) -> None:
        self.remove_class("-error")
        # Whether the cache was warm varies between machines: hidden with the timings.
        how = " (cached)" if cached and self.show_timings else ""
        precision = "" if dtype == "float32" else f" · {dtype}"
        self.model = f"{name} · {device}{precision} · {n_layers} layers"
        self.state = f"loaded{how}{self.seconds(load_seconds)}"

    def set_backend(self, text: str) -> None:
        """Who reads the model ("" for the native backend): nnsight here, or on NDIF."""
        self.backend = text

    def set_error(self, message: str) -> None:
        self.add_class("-error")
        self.state = message

    def set_running(self, running: bool, progress: str = "", fraction: Optional[float] = None) -> None:
        """The lens is running (with a costly lens's progress: its columns so far), or not."""
        if running:
            self.remove_class("-error")
            self.state = f"running the lens… {progress_bar(fraction)} {progress}" if progress else "running the lens…"
        elif self.state.startswith("running the lens…"):
            self.state = "ready"

    def set_run(self, tokens: int, seconds: float) -> None:
        self.run_info = f"{tokens} tokens{self.seconds(seconds)}"

    def set_lens(self, text: str) -> None:
        """Which learned lens the grid reads, and from which file ("" for none)."""
        self.lens_info = text

    def set_job(self, text: str, fraction: Optional[float] = None) -> None:
        """A long job's line ("" when none runs), with its bar."""
        self.job_info = f"{text} {progress_bar(fraction)}".strip() if text else ""

    def set_causal(self, text: str) -> None:
        """What the grid shows instead of the clean run ("" when it shows the clean run)."""
        self.causal = text

    def set_wiring(self, sentence: str) -> None:
        """The wiring check's sentence when the lens does not read the model true ("": it does)."""
        self.wiring = f"⚠ {sentence}" if sentence else ""

    def render(self) -> Text:
        # A patch or steer on show comes first: at 80 columns the end of the line is cut.
        parts = [p for p in (self.causal, self.wiring, self.model, self.backend, self.state, self.job_info,
                             self.lens_info, self.run_info) if p]
        return Text(" │ ".join(parts), no_wrap=True, overflow="ellipsis")


def where_loaded(info) -> str:
    """Where a loaded model is, for the status line: its device, or per device its blocks
    for a model spread by a device map ("cuda:0 L0-39 · cuda:1 L40-79"), and its
    quantization."""
    where = short_placement(dict(getattr(info, "placement", ()) or ())) or info.device
    quantize = getattr(info, "quantize", None)
    return f"{where} · {quantize}" if quantize else where
