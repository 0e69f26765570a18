"""What the explorer's screens, panes and helpers may use of the app: a typed host.

``LenstuiApp`` implements ``ExplorerHost``; the helpers in ``tui/state`` and the screens
take a host, not an untyped ``app``, and never call the app's private methods. A pane
reaches its host with ``explorer(self)``. A part that needs more of the app names it in a
protocol of its own that extends this one: ``state/causal.CausalHost`` (the causal
lens's state), ``state/lens_flow.LensFlowHost`` (the prompt pane, ``lens_settled``),
``state/model_switch.ModelHost`` (the model loads), ``commands.PaletteHost`` (the actions
the palette runs); ``worker_link.LinkOwner`` is what the worker link uses.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol, cast

from textual.screen import Screen
from textual.widget import Widget

from lenstui.core.lens_result import LensResult
from lenstui.core.scan_result import ScanMarks
from lenstui.core.undertrained_result import UndertrainedMarks
from lenstui.core.token_report import TokenReport
from lenstui.jobs.protocol import ModelInfo, Request, RunLens
from lenstui.tui.state.session import LensSession
from lenstui.tui.widgets.grid import LensGrid
from lenstui.tui.widgets.status import StatusBar


class InspectorSide(Protocol):
    """The token inspector pane, as the helpers use it (``panes.inspector.WiredInspector``)."""

    report: Optional[TokenReport]  # the report on show

    def inspect(self, token_id: int, position: Optional[int] = None) -> None: ...

    def forget_model(self) -> None: ...


class SpeakSide(Protocol):
    """The speakability pane, as the helpers use it (``panes.speak.WiredSpeak``)."""

    token_id: Optional[int]
    token_text: str
    aim: Optional[dict]  # the shown token's aim measure, once checked
    undertrained: Optional[UndertrainedMarks]  # verified under-trained tokens, once found

    def check(self, token_id: int, text: str) -> None: ...

    def scan(self) -> None: ...

    def forget_model(self) -> None: ...

    def forget_running(self) -> None: ...


class ExplorerHost(Protocol):
    session: LensSession  # the prompt and settings the next lens run is made of
    shown_result: Optional[LensResult]  # the lens result on screen
    shown_request: Optional[RunLens]  # the request it answered
    model_info: Optional[ModelInfo]
    scan_marks: Optional[ScanMarks]  # the vocabulary scan's marks: held here only

    @property
    def grid(self) -> LensGrid: ...

    @property
    def status(self) -> StatusBar: ...

    @property
    def inspector_pane(self) -> InspectorSide: ...

    @property
    def speak_pane(self) -> SpeakSide: ...

    @property
    def base_screen(self) -> Screen: ...

    @property
    def screen(self) -> Screen: ...

    @property
    def screen_stack(self) -> list[Screen]: ...

    def notify(self, message: str, *, title: str = "", severity: str = "information", timeout: Optional[float] = None, markup: bool = True) -> None: ...

    def push_screen(self, screen: Screen, callback: Optional[Callable] = None) -> object: ...

    def submit(self, request: Request, reply_to: Optional[Widget] = None) -> int: ...

    def cancel(self, kind: type) -> bool:
        """Stop a request of ``kind`` (queued or running); whether there was one."""

    def key_for(self, binding_id: str) -> str: ...

    def rerun_lens(self) -> None:
        """Run the lens again for the session's current state (when there is a prompt)."""


def explorer(widget: Widget) -> ExplorerHost:
    """The host a widget lives in (the running LenstuiApp)."""
    return cast(ExplorerHost, widget.app)
