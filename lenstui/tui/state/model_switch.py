"""The loaded model, UI side: every ``LoadModel``'s replies, and switching the model from
the palette ("model: open ...").

``ModelSwitch.on_load_reply`` takes the replies of every load: the start's, a restarted
worker's (``reloading``: the lens runs again once the model is back) and a switch's. A
load's progress goes to the status line; its model's facts to the status line, the side
panes (``ModelLoaded``) and the lens flow's features.

A switch (``begin``, from the app's ``ModelChosen``) submits a ``LoadModel`` and, when
the load lands, drops everything tied to the old model: the scan marks (the new model's
cached scan is loaded as at start, by the speak pane on ``ModelLoaded``), the inspector's
and speak pane's token, the session's ids (generated steps, target, pinned tokens, an id
prompt), the causal lens's source, patch and steer, then re-runs the lens on the same
prompt text. A failed switch leaves the old model loaded in the worker; here the status
line goes back to it and a notice says so.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING, Optional, Protocol

from textual.widget import Widget

from lenstui.core.scan_result import ScanMarks
from lenstui.jobs.protocol import Done, Failed, LoadModel, ModelInfo, Progress, Result
from lenstui.tui.state import causal
from lenstui.tui.state.causal import CausalHost
from lenstui.tui.widgets.events import ModelLoaded
from lenstui.tui.widgets.status import where_loaded

if TYPE_CHECKING:
    from lenstui.tui.state.lens_flow import LensFlow


class ModelHost(CausalHost, Protocol):
    model_request: LoadModel  # the model asked for at start: its device, dtype, placement, download policy
    loaded_request: Optional[LoadModel]  # the load that gave model_info
    model_settled: asyncio.Event  # set once a load has finished, either way

    def side_panes(self) -> list[Widget]:
        """The panes in the side slots: they hear of a new model (``ModelLoaded``)."""

    def set_scan_marks(self, marks: Optional[ScanMarks]) -> None:
        """A vocabulary scan landed (or, None, the model changed): mark its tokens."""


class ModelSwitch:
    def __init__(self, host: ModelHost, lens: "LensFlow") -> None:
        self.app = host
        self.lens = lens
        self.pending: Optional[str] = None  # the label of the model being opened
        self.reloading = False  # a restarted worker is loading the model again

    # ------------------------------------------------------------ every load

    def on_load_reply(self, result: Result) -> None:
        app = self.app
        if isinstance(result, Failed) and self.failed(result):
            return  # the old model is still loaded and in use
        if isinstance(result, Progress):
            app.status.set_loading(result.message, result.fraction)
        elif isinstance(result, Done):
            info: ModelInfo = result.value
            app.model_info = info
            app.loaded_request = result.request
            for note in info.notes:
                app.notify(note, title="Model", severity="warning", timeout=10)
            app.status.set_model(info.name, where_loaded(info), info.dtype, info.n_layers, info.load_seconds, info.from_cache)
            if app.shown_result is None:
                app.grid.show_hint("Type a prompt and press Enter (F2 cycles through presets).")
            for pane in app.side_panes():
                pane.post_message(ModelLoaded(info))
            self.lens.model_loaded(info)
            switched = self.done(info)
            if self.reloading:
                self.reloading = False
                if not switched:
                    self.lens.rerun()
            app.model_settled.set()
        elif isinstance(result, Failed):
            app.status.set_error(f"not loaded: {result.message}")
            app.grid.show_hint(f"No model loaded. {result.message}")
            app.model_settled.set()

    def reload(self, why: str) -> None:
        """A new worker is loading the model again (submitted already)."""
        self.reloading = True
        self.app.model_settled.clear()
        self.app.status.set_loading(why, 0.0)

    # ------------------------------------------------------------ a switch

    def begin(self, spec: str, label: str, flags: Optional[dict] = None) -> None:
        """Load ``spec``; ``flags``: device, dtype and placement typed in the picker for
        this load (``commands.split_placement``), over the start's."""
        app = self.app
        self.pending = label or spec or "the embedded model"
        app.model_settled.clear()
        app.status.set_loading(f"opening {self.pending}", 0.0)
        # The start's device, dtype, placement and download policy, for another spec.
        request = replace(app.model_request, spec=spec or None)
        if flags:
            placement = replace(request.placement, **{k: v for k, v in flags.items() if k not in ("device", "dtype")})
            request = replace(request, device=flags.get("device", request.device),
                              dtype=flags.get("dtype", request.dtype), placement=placement)
        app.submit(request)

    def failed(self, result: Failed) -> bool:
        """True when this was a switch and the old model is still loaded (the app then
        skips its no-model path)."""
        app = self.app
        label, self.pending = self.pending, None
        old: Optional[ModelInfo] = app.model_info
        if label is None or old is None:
            return False
        app.status.set_model(old.name, where_loaded(old), old.dtype, old.n_layers, old.load_seconds, old.from_cache)
        app.notify(f"Could not open {label}; still using {old.name}.", title="Model", severity="warning", timeout=10)
        if app.shown_request != app.session.last_request:  # the load stopped a lens run: redo it
            app.session.failed()
            app.rerun_lens()
        app.model_settled.set()
        return True

    def done(self, info: ModelInfo) -> bool:
        """After the app recorded the new model: forget the old one's state and re-run.
        False when this load was not a switch (the start-up load)."""
        if self.pending is None:
            return False
        self.pending = None
        app = self.app
        app.set_scan_marks(None)
        app.inspector_pane.forget_model()
        app.speak_pane.forget_model()
        app.session.forget_model()
        causal.forget_model(app)  # a marked source, a patch or a steer: the old model's ids
        app.shown_result = None
        app.shown_request = None
        # The old model's cells say nothing about this one (and the cursor's cell must not
        # be attributed or pinned on it): the grid is empty until the new lens lands.
        waiting = "Running the lens on the new model…" if app.session.has_prompt else "Type a prompt and press Enter."
        app.grid.clear(f"{info.name} loaded. {waiting}")
        app.notify(f"Model: {info.name}", timeout=3)
        app.rerun_lens()
        return True
