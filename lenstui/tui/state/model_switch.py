"""Switching the loaded model from the palette ("model: open ..."), UI side.

The app hands :class:`ModelSwitch` the ``ModelChosen`` message; it submits a
``LoadModel`` (the worker shows progress in the status line) and, when the load
lands, drops everything tied to the old model: the scan marks (the new model's cached
scan is loaded as at start, by the speak pane on ``ModelLoaded``), the inspector's and
speak pane's token, the session's ids (generated steps, target, pinned tokens, an id
prompt), then re-runs the lens on the same prompt text. A failed load leaves the old
model loaded in the worker; here the status line goes back to it and a notice says so.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

from lenstui.jobs.protocol import Failed, ModelInfo
from lenstui.tui.host import ExplorerHost
from lenstui.tui.state import causal
from lenstui.tui.widgets.status import where_loaded


class ModelSwitch:
    def __init__(self, host: ExplorerHost) -> None:
        self.app = host
        self.pending: Optional[str] = None  # the label of the model being opened

    def begin(
        self, spec: str, label: str, flags: Optional[dict] = None, backend: Optional[str] = None, remote: bool = False
    ) -> None:
        """Load ``spec``; ``flags``: device, dtype and placement typed in the picker for
        this load (``commands.split_placement``), over the start's; ``backend``/``remote``:
        the backend the picker named ("... through nnsight", "... on NDIF")."""
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
        if backend is not None:
            request = replace(request, backend=backend, remote=remote)
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
        if hasattr(app, "causal"):  # a marked source, a patch or a steer: the old model's ids
            causal.forget_model(app)
        app.shown_result = None
        app.shown_request = None
        # The old model's cells say nothing about this one (and the cursor's cell must not
        # be attributed or pinned on it): the grid is empty until the new lens lands.
        waiting = "Running the lens on the new model…" if app.session.has_prompt else "Type a prompt and press Enter."
        app.grid.clear(f"{info.name} loaded. {waiting}")
        app.notify(f"Model: {info.name}", timeout=3)
        app.rerun_lens()
        return True
