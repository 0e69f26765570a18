"""The Textual app: the explorer's layout, its keys and their one-line actions.

The app composes the panes and holds the parts that do the work, one object each:

- ``link`` (``tui/worker_link.py``): the model worker and its restarts. The model runs in
  a child process (``jobs/process.py``: this process never imports torch), or on a
  thread of this one (``jobs/scheduler.py``) for a loader given to the app or under
  LENSTUI_IN_PROCESS=1. Requests go out typed (``jobs/protocol.py``); replies come back
  as ``WorkerReply`` messages, stale ones are dropped, the pane that asked gets its own,
  and ``reply_routes`` is the one table from request type to the part that handles it.
- ``lens`` (``tui/state/lens_flow.py``): the lens runs, from typing, Enter and ^n to the
  grid. The features that ride on them (the causal lens, pins, learned lenses) hear of
  them through one seam (``tui/state/lens_feature.py``); one place decides whether the
  grid shows the clean, patched or steered run (``tui/state/grid_run.py``).
- ``session`` (``tui/state/session.py``): what the next lens run is made of;
  ``model_switch`` (``tui/state/model_switch.py``): every model load's replies, and the
  palette's "model: open ..."; ``causal`` (``tui/state/causal.py``): patches, sweeps and
  steering.

The keys come from the action registry (``tui/actions.py``), the palette's entries from
``tui/commands.py``. The app forwards the grid's cursor (``TokenFocused``) and
``ModelLoaded`` to the side panes and handles what they post (``WiredSpeak.ScanMarked``,
``InspectorPane.TargetRequested``). Screens, panes and helpers use the app only through
its typed host protocol (``tui/host.py``). A pane asks the worker with::

    seq = explorer(pane).submit(InspectToken(token_id), reply_to=pane)  # pane gets WorkerReply

No exception ends the app (``tui/safety.py``): actions, message handlers, timers and
callbacks that fail become a notice and a crash-log entry, and a model worker that died
is restarted and given the model again, with the prompt and session kept.
"""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Optional

from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Container, Vertical
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Input

from lenstui.core.errors import quoted
from lenstui.core.lens_result import LensResult
from lenstui.core.placement import PlacementOptions
from lenstui.core.scan_result import ScanMarks
from lenstui.jobs.protocol import (
    CheckSpeakable,
    FitLens,
    Handler,
    LoadModel,
    ModelInfo,
    Request,
    RunCompare,
    RunLens,
    RunPatch,
    RunSteer,
    RunSweep,
    ScanVocabulary,
)
from lenstui.jobs.process import ProcessWorker
from lenstui.jobs.scheduler import ModelWorker
from lenstui.store.config import load_config
from lenstui.store.export import export_dir, reserve_stem, save_json, save_svg
from lenstui.tui.actions import EXPLORER_ACTIONS, bindings, resting_over_screens, resting_while_typing
from lenstui.tui.commands import ModelChosen, ModelCommands, explorer_commands
from lenstui.tui.panes.inspector import InspectorPane, WiredInspector
from lenstui.tui.panes.prompt import PRESETS, Preset, PromptPane
from lenstui.tui.panes.speak import WiredSpeak
from lenstui.tui.safety import Guarded, SafetyNet
from lenstui.tui.screens.aim import open_aim_distribution
from lenstui.tui.screens.attribution import AttributionScreen, open_attribution
from lenstui.tui.state import causal, lenses, pins, speakability
from lenstui.tui.state.causal import CausalState
from lenstui.tui.state.lens_flow import LensFlow
from lenstui.tui.state.model_switch import ModelSwitch
from lenstui.tui.state.session import LensSession, Step
from lenstui.tui.theming import DEFAULT_THEME, load_themes
from lenstui.tui.widgets.events import TokenFocused
from lenstui.tui.widgets.grid import LensGrid
from lenstui.tui.widgets.status import StatusBar
from lenstui.tui.worker_link import WORKER_WATCH_SECONDS, ReplyRoute, WorkerLink, WorkerReply, runs_in_process

# Printable keys that belong to the prompt while it has the focus, and the grid's and
# lens's actions that rest while the attribution screen covers the grid.
LETTER_ACTIONS = resting_while_typing(EXPLORER_ACTIONS)
GRID_ACTIONS = resting_over_screens(EXPLORER_ACTIONS)


# The requests a model on NDIF answers through the network (Esc stops waiting for them).
REMOTE_KINDS = (RunLens, RunCompare, RunPatch, RunSweep, RunSteer)


class ExplorerScreen(Guarded, Screen):
    """The explorer's own (first) screen: Textual's default screen, with the safety net."""


class LenstuiApp(Guarded, App):
    CSS_PATH = Path(__file__).parent / "app.tcss"  # absolute: subclasses live elsewhere
    TITLE = "lenstui"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (30, "-tall")]
    COMMANDS = App.COMMANDS | {ModelCommands}  # "model: open ..." in the palette

    BINDINGS = bindings(EXPLORER_ACTIONS)

    def __init__(
        self,
        prompt: str = "",
        *,
        model: Optional[str] = None,
        device: Optional[str] = None,
        dtype: Optional[str] = None,
        placement: Optional[PlacementOptions] = None,
        theme: Optional[str] = None,
        chat: Optional[bool] = None,
        loader: Optional[Callable] = None,
        show_timings: bool = True,
        allow_download: Optional[bool] = None,
        strict_crashes: bool = False,
        in_process: Optional[bool] = None,
        worker: Optional[ProcessWorker] = None,
        backend: Optional[str] = None,
        remote: bool = False,
        endpoint: Optional[str] = None,
    ) -> None:
        super().__init__()
        # Unexpected exceptions become notices (strict: also re-raised when a test ends).
        self.safety_net = SafetyNet(self.notify, strict=strict_crashes, on_strict=self._keep_for_run_test)
        self.config, self._startup_problems = load_config()
        self.initial_prompt = prompt
        # Hub ids load from the local cache only, unless --allow-download or the config says so.
        downloads = bool(allow_download or self.config.allow_download)
        # Who reads the model (--backend, else the config's; --remote: nnsight on NDIF).
        if backend is None and not remote and self.config.backend != "native":
            backend = self.config.backend
        # Where models load: the command line's, else config.toml's (device, dtype, placement keys).
        self.model_request = LoadModel(
            model, device or self.config.device, dtype or self.config.dtype, allow_download=downloads,
            placement=placement or self.config.placement(), backend=backend, remote=remote, endpoint=endpoint,
        )
        self.show_timings = show_timings
        self.model_info: Optional[ModelInfo] = None
        self.loaded_request: Optional[LoadModel] = None  # the load that gave model_info
        # The model's worker: a child process (a model process started before the UI was
        # built, cli/app_cmd, when given), or a thread of this one (``loader``: tests pass
        # one that returns an already loaded model).
        self.in_process = runs_in_process(loader, in_process)
        self.link = WorkerLink(self, in_process=self.in_process, loader=loader, early=worker)
        # What the lens shows next (prompt, steps, target, variant): plain, testable state.
        self.session = LensSession(top_k=self.config.top_k, chat=bool(chat if chat is not None else self.config.chat))
        self.shown_result: Optional[LensResult] = None  # the LensResult on screen (plain data)
        self.shown_request: Optional[RunLens] = None
        # Set when no lens run is pending / when the model load has finished either way:
        # tests and the benchmark await these instead of sleeping.
        self.lens_settled = asyncio.Event()
        self.lens_settled.set()
        self.model_settled = asyncio.Event()
        self.worker_stop_timeout = 0.5
        self._preset_index = -1
        self.scan_marks: Optional[ScanMarks] = None  # once a vocabulary scan exists: held here only
        self.attribution_contrast: Optional[tuple[int, str]] = None  # (id, text) pinned by the palette
        self.causal = CausalState()  # patches, sweeps and steering (tui/state/causal.py)
        features = (causal.CausalFeature(self), pins.PinFeature(self), lenses.LearnedLensFeature(self))
        self.lens = LensFlow(self, self.link, features)  # the lens runs (tui/state/lens_flow.py)
        self.model_switch = ModelSwitch(self, self.lens)  # every load's replies; the palette's "model: open ..."
        self.link.routes.update(self.reply_routes())
        self._install_themes(theme)
        if self.config.keymap:
            self.set_keymap(self.config.keymap)

    # ------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield PromptPane(id="prompt", debounce_ms=self.config.debounce_ms)
        with Container(id="body"):
            yield LensGrid(id="grid")
            with Container(id="side"):
                with Vertical(id="inspector", classes="pane") as slot:
                    slot.border_title = "token inspector"
                    inspector = WiredInspector(id="inspector-pane")
                    inspector.show_timings = self.show_timings
                    yield inspector
                with Vertical(id="speak", classes="pane") as slot:
                    slot.border_title = "speakability"
                    yield WiredSpeak(
                        check_key=self.key_for("lenstui.speak_check"),
                        cancel_key=self.key_for("lenstui.speak_cancel"),
                        show_timings=self.show_timings,
                        id="speak-pane",
                    )
        yield StatusBar(id="status", show_timings=self.show_timings)
        yield Footer(compact=True)

    def key_for(self, binding_id: str) -> str:
        """How the key bound to ``binding_id`` reads on screen (``^t``, ``s``), after the
        user's keymap: on-screen hints name the key that really does it."""
        for binding in self.BINDINGS:
            if binding.id == binding_id:
                keys = (self.config.keymap or {}).get(binding_id, binding.key)
                first = keys.split(",")[0].strip()
                return self.get_key_display(Binding(first, binding.action, binding.description))
        raise KeyError(binding_id)

    def get_default_screen(self) -> Screen:
        return ExplorerScreen(id="_default")

    @property
    def crashes(self):
        """Every unexpected exception the safety net caught (``safety.Crash``)."""
        return self.safety_net.crashes

    @property
    def base_screen(self) -> Screen:
        """The explorer's own screen (the trajectory and compare views are pushed over it)."""
        return self.screen_stack[0] if self.screen_stack else self.screen

    @property
    def grid(self) -> LensGrid:
        return self.base_screen.query_one(LensGrid)

    @property
    def prompt_pane(self) -> PromptPane:
        return self.base_screen.query_one(PromptPane)

    @property
    def status(self) -> StatusBar:
        return self.base_screen.query_one(StatusBar)

    @property
    def chat(self) -> bool:
        return self.session.chat

    @property
    def steps(self) -> list[Step]:
        return self.session.steps

    @property
    def inspector_pane(self) -> WiredInspector:
        return self.base_screen.query_one("#inspector-pane", WiredInspector)

    @property
    def speak_pane(self) -> WiredSpeak:
        return self.base_screen.query_one("#speak-pane", WiredSpeak)

    def side_panes(self) -> list[Widget]:
        """What sits in the side slots (``#inspector``, ``#speak``): they get the cursor
        and model news."""
        return [pane for slot in self.base_screen.query("#side > .pane") for pane in slot.children]

    def on_mount(self) -> None:
        for problem in self._startup_problems:
            self.notify(problem, title="Settings", severity="warning", timeout=10)
        for problem in self.prompt_pane.history.problems:
            self.notify(problem, title="History", severity="warning", timeout=10)
        self.link.start()
        self.submit(self.model_request)
        self.set_interval(WORKER_WATCH_SECONDS, self.link.watch, name="worker watch")
        name = self.model_request.spec or "the embedded SmolLM2-135M-Instruct"
        self.grid.show_hint(f"Loading {name}… type a prompt meanwhile.")
        self.status.model = self.model_request.spec or "embedded model"
        self.status.set_loading("starting", 0.0)
        if self.initial_prompt:
            self.prompt_pane.set_text(self.initial_prompt)
            self.lens.run_text(self.initial_prompt, immediate=True)
        self.prompt_pane.input.focus()
        self.lens.show_prompt_info()
        self.safety_net.armed = True  # from now on, no exception ends the app

    def on_unmount(self) -> None:
        self.safety_net.armed = False
        self.link.stop(self.worker_stop_timeout)

    # ------------------------------------------------------------ the safety net (tui/safety.py)

    async def _dispatch_action(self, namespace, action_name: str, params) -> bool:
        # Every action runs here: key bindings, the footer, run_action.
        try:
            return await super()._dispatch_action(namespace, action_name, params)
        except Exception as error:
            if not self.safety_net.armed:
                raise
            self.safety_net.report(error, f"the {action_name!r} action of {type(namespace).__name__}")
            return True

    def _handle_exception(self, error: Exception) -> None:
        # Where Textual sends what nobody caught (timers, callbacks, compose, drawing):
        # it would exit. Once the app is up, it is a notice instead.
        if self.safety_net.armed and not self._exit:
            self.safety_net.report(error, "Textual (a timer, a callback, composing or drawing)")
            return
        super()._handle_exception(error)

    def _keep_for_run_test(self, error: BaseException) -> None:
        # strict_crashes (tests): the Pilot's run_test raises the first caught error when
        # the test ends; until then the app runs on, as it would for a user.
        if self._exception is None:
            self._exception = error

    # ------------------------------------------------------------ the worker (tui/worker_link.py)

    @property
    def worker(self) -> Optional[ModelWorker | ProcessWorker]:
        """The model worker the app talks to now (a restart replaces it)."""
        return self.link.worker

    def register_handler(self, kind: type, handler: Handler) -> None:
        """Route requests of ``kind`` to ``handler`` on the worker thread."""
        self.link.register(kind, handler)

    def submit(self, request: Request, reply_to: Optional[Widget] = None) -> int:
        """Send a request to the worker; ``reply_to`` receives its WorkerReply messages."""
        return self.link.submit(request, reply_to)

    def cancel(self, kind: type) -> bool:
        """Stop a request of ``kind`` (queued or running); whether there was one."""
        return self.link.cancel(kind)

    def reply_routes(self) -> dict[type, ReplyRoute]:
        """The one table from request type to what handles its replies (after the pane
        that asked, if one did, got them; a failure's sentence is a notice already)."""
        on_causal = partial(causal.on_reply, self)
        return {
            LoadModel: self.model_switch.on_load_reply,
            RunLens: self.lens.on_reply,
            FitLens: partial(lenses.fit_reply, self),
            RunPatch: on_causal,
            RunSteer: on_causal,
            RunSweep: on_causal,
        }

    def on_worker_reply(self, message: WorkerReply) -> None:
        self.link.deliver(message.result)

    def reload_request(self) -> LoadModel:
        """What a new worker thread loads: the model loaded last, else the one asked for."""
        return self.loaded_request or self.model_request

    def worker_restarted(self, why: str) -> None:
        """A new worker is loading the model again: nothing asked of the old one has an
        answer coming. The prompt, the session and what is on screen stay; the lens runs
        again once the model is back, and open views ask again."""
        self.model_switch.reload(why)
        self.lens.forget_in_flight()
        self.speak_pane.forget_running()
        for screen in self.screen_stack:  # a view waiting for an answer asks again
            resubmit = getattr(screen, "resubmit", None)
            if callable(resubmit):
                resubmit()

    def on_model_chosen(self, message: ModelChosen) -> None:
        self.model_switch.begin(message.spec, message.label, message.placement, message.backend, message.remote)

    # ------------------------------------------------------------ the lens (tui/state/lens_flow.py)

    def on_input_changed(self, event: Input.Changed) -> None:
        self.lens.input_changed(event)

    def on_prompt_pane_run(self, message: PromptPane.Run) -> None:
        self.lens.run_text(message.text, message.immediate)

    def on_lens_grid_columns_wanted(self, message: LensGrid.ColumnsWanted) -> None:
        self.lens.columns_wanted(message)

    def rerun_lens(self) -> None:
        """Run the lens again for the session's current state (when there is a prompt)."""
        self.lens.rerun()

    # ------------------------------------------------------------ actions

    def action_step(self) -> None:
        self.lens.step()

    def action_unstep(self) -> None:
        self.lens.unstep()

    def action_switch_view(self) -> None:
        self.grid.action_switch_view()

    def action_toggle_chat(self) -> None:
        if self.model_info is not None and not self.model_info.has_chat_template:
            self.notify(f"{self.model_info.name} has no chat template.", severity="warning", timeout=4)
            return
        self.session.set_chat(not self.session.chat)
        if self.session.prompt_text.strip():
            self.lens.submit()
        else:
            self.lens.show_prompt_info()

    def action_next_preset(self) -> None:
        self._preset_index = (self._preset_index + 1) % len(PRESETS)
        self.apply_preset(PRESETS[self._preset_index])

    def apply_preset(self, preset: Preset) -> None:
        self.session.set_chat(preset.chat and (self.model_info is None or self.model_info.has_chat_template))
        self.prompt_pane.set_text(preset.text)
        self.session.set_text(preset.text)
        self.lens.submit()
        self.notify(f"Preset: {preset.name}", timeout=2)

    def action_next_theme(self) -> None:
        names = self.lenstui_theme_names
        index = names.index(self.theme) + 1 if self.theme in names else 0
        self.switch_theme(names[index % len(names)])

    def switch_theme(self, name: str) -> None:
        self.theme = name
        self.notify(f"Theme: {name}", timeout=2)

    def action_toggle_help(self) -> None:
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    def action_focus_prompt(self) -> None:
        self.prompt_pane.input.focus()

    def action_focus_grid(self) -> None:
        self.grid.focus()

    def check_action(self, action: str, parameters: tuple) -> Optional[bool]:
        # Letters like "i", "s" and "t" belong to the prompt while typing.
        if action in LETTER_ACTIONS and isinstance(self.focused, Input):
            return False
        if action == "cancel_remote":  # Esc stops a request NDIF is running, else means what it did
            info = self.model_info
            return bool(info is not None and info.remote and any(self.link.busy(kind) for kind in REMOTE_KINDS))
        for feature in self.lens.features:  # p, Esc, + and - mean more at times
            applies = feature.check_action(action)
            if applies is not None:
                return applies
        if action in GRID_ACTIONS and isinstance(self.screen, AttributionScreen):
            return False  # the grid is behind the attribution screen: its keys rest
        return True

    # ------------------------------------------------------------ inspector, target, speakability

    def _no_cell(self, what: str) -> None:
        """The notice for a key that needs the cursor's cell when there is none."""
        if self.grid.cursor_pending:
            self.notify("That cell is not computed yet: it appears in a moment.", severity="warning", timeout=3)
        else:
            self.notify(f"Run the lens first, then pick a token to {what}.", severity="warning", timeout=3)

    def action_check_speakable(self) -> None:
        cell = self.grid.current_cell
        if cell is None:
            self._no_cell("check")
            return
        self.speak_pane.check(cell.token_id, cell.text)

    def action_cancel_speak(self) -> None:
        # `|`, not `or`: both kinds must be cancelled, whichever of them is running.
        if not (self.cancel(CheckSpeakable) | self.cancel(ScanVocabulary) | speakability.cancel_running(self)):
            self.notify("No speakability check or scan is running.", timeout=2)

    def action_scan_vocabulary(self) -> None:
        self.speak_pane.scan()

    def action_aim_distribution(self) -> None:
        open_aim_distribution(self)

    def on_wired_speak_scan_marked(self, message: WiredSpeak.ScanMarked) -> None:
        self.set_scan_marks(message.marks)

    def set_scan_marks(self, marks: Optional[ScanMarks]) -> None:
        """A vocabulary scan landed: mark its tokens in the grid (the inspector and the
        speakability pane read ``scan_marks``, held here only). None: no scan (another
        model was loaded)."""
        self.scan_marks = marks
        if marks is None:
            self.grid.set_marks(frozenset(), frozenset())
        else:
            self.grid.set_marks(marks.unspeakable, marks.hard_to_speak)

    def action_target_selected(self) -> None:
        report = self.inspector_pane.report
        cell = self.grid.current_cell
        token_id = report.id if report is not None else (cell.token_id if cell else None)
        if token_id is None:
            self.notify("Select a token first.", severity="warning", timeout=3)
            return
        self.set_target(token_id)

    def on_inspector_pane_target_requested(self, message: InspectorPane.TargetRequested) -> None:
        self.set_target(message.token_id)

    def set_target(self, token_id: Optional[int]) -> None:
        """The one way the lens target changes (the key, the inspector, the palette)."""
        self.session.set_target(token_id)
        what = "each position's own top-1" if token_id is None else f"token {token_id}"
        self.notify(f"Lens target: {what}", timeout=2)
        self.rerun_lens()

    def action_reset_target(self) -> None:
        self.set_target(None)

    def action_inspect_prompt_token(self) -> None:
        # The prompt's tokens are known in every column, computed or not: the result on screen.
        result, position = self.grid.result, self.grid.cursor_pos
        if result is None or not 0 <= position < len(result.tokens):
            return
        self.inspector_pane.inspect(result.token_ids[position], position)

    def action_next_lens(self) -> None:
        self.set_lens(self.session.next_lens())

    def set_lens(self, kind: str) -> None:
        if not self.session.lens_ready(kind):  # a learned lens with no file for this model
            self.notify(lenses.missing_lens_sentence(kind), severity="warning", timeout=6)
            return
        self.session.set_lens(kind)
        self.notify(lenses.lens_notice(kind, self.model_info), timeout=6 if kind == "patchscope" else 2)
        self.rerun_lens()

    def action_toggle_mid(self) -> None:
        if not self.session.incl_mid and self.model_info is not None and self.model_info.mid_rows:
            self.notify(self.model_info.mid_rows, severity="warning", timeout=8)  # parallel attention, SSM blocks
            return
        self.session.toggle_mid()
        self.notify(f"Mid-block rows {'on' if self.session.incl_mid else 'off'}", timeout=2)
        self.rerun_lens()

    # ------------------------------------------------------------ attribution (lenstui.tui.screens.attribution)

    def action_attribute_cell(self) -> None:
        # The cell and the prompt it is attributed in come from the same result: the one on
        # screen (a streamed run's, maybe), never a cell of one run with another's tokens.
        if self.grid.result is not None and self.grid.cursor_pending:
            self._no_cell("attribute")
            return
        open_attribution(self, self.grid.result, self.grid.current_cell, self.attribution_contrast)

    def action_attribute_contrast(self) -> None:
        cell = self.grid.current_cell
        if cell is None:
            self._no_cell("contrast with")
            return
        self.attribution_contrast = (cell.token_id, cell.text)
        self.notify(f"Attribution contrast: {cell.text!r} (the palette's \"attribute: no contrast\" clears it)", timeout=4)

    def action_attribute_no_contrast(self) -> None:
        self.attribution_contrast = None
        self.notify("Attribution contrast: none (the mean logit)", timeout=3)

    # ------------------------------------------------------------ pins, trajectory, compare (tui/state/pins.py)

    def action_pin_selected(self) -> None:
        pins.pin_selected(self)

    def action_unpin_all(self) -> None:
        pins.unpin_all(self)

    def action_pin_typed(self) -> None:
        pins.ask_pin(self)

    def action_show_trajectory(self) -> None:
        pins.show_trajectory(self)

    def action_show_compare(self) -> None:
        pins.show_compare(self)

    # ------------------------------------------------------------ learned lenses (tui/state/lenses.py)

    def action_lens_eval(self) -> None:
        lenses.show_eval(self)

    # ------------------------------------------------------------ the causal lens (tui/state/causal.py)

    def action_patch_cell(self) -> None:
        causal.patch_cursor(self)

    def action_cancel_remote(self) -> None:
        """Esc while NDIF runs a request: stop waiting for it (its answer is dropped)."""
        stopped = [kind for kind in REMOTE_KINDS if self.cancel(kind)]
        if stopped:
            self.status.set_job("")
            self.notify("Stopped waiting for NDIF; the grid shows the last answer.", title="NDIF", timeout=4)

    def action_restore_clean(self) -> None:
        causal.restore_clean(self)

    def action_steer_more(self) -> None:
        causal.change_alpha(self, causal.ALPHA_STEP)

    def action_steer_less(self) -> None:
        causal.change_alpha(self, -causal.ALPHA_STEP)

    # ------------------------------------------------------------ export

    def export_dir(self) -> Path:
        return export_dir(self.config.export_dir)

    def export_json(self, stem: Optional[str] = None) -> Optional[Path]:
        if self.shown_result is None:
            self.notify("Nothing to export yet: run the lens first.", severity="warning")
            return None
        path = save_json(self.shown_result, self.export_dir(), stem)
        self.notify(f"Grid saved as JSON: {path}", title="Export", timeout=8)
        return path

    def export_svg(self, stem: Optional[str] = None) -> Path:
        path = save_svg(self.export_screenshot(), self.export_dir(), stem)
        self.notify(f"Screen saved as SVG: {path}", title="Export", timeout=8)
        return path

    def action_export(self) -> None:
        try:
            # One name for both files, never one another export (this second, or another
            # lenstui's) already has.
            suffixes = (".svg", ".json") if self.shown_result is not None else (".svg",)
            stem = reserve_stem(self.export_dir(), suffixes)
            self.export_svg(stem)
            self.export_json(stem)
        except OSError as err:
            self.notify(f"Export failed: {err.strerror or err}", severity="error")

    # ------------------------------------------------------------ grid -> panes

    def on_lens_grid_cell_highlighted(self, message: LensGrid.CellHighlighted) -> None:
        selected = isinstance(message, LensGrid.CellSelected)
        for pane in self.side_panes():
            pane.post_message(TokenFocused(message.cell, selected=selected))

    # ------------------------------------------------------------ themes & palette

    def _install_themes(self, requested: Optional[str]) -> None:
        themes = load_themes()
        self._startup_problems += [f"Theme file skipped: {p}" for p in themes.problems]
        for theme in themes.themes.values():
            self.register_theme(theme)
        self.lenstui_theme_names = sorted(themes.themes) or [self.theme]
        wanted = requested or self.config.theme or DEFAULT_THEME
        if wanted not in self.available_themes:
            fallback = DEFAULT_THEME if DEFAULT_THEME in self.available_themes else "textual-dark"
            self._startup_problems.append(
                f"No theme called {quoted(wanted)}; using {fallback}. "
                f"Available: {', '.join(self.lenstui_theme_names)}."
            )
            wanted = fallback
        self.theme = wanted

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from explorer_commands(self)
        yield from (c for c in super().get_system_commands(screen) if c.title not in ("Theme", "Screenshot", "Keys"))

