"""The Textual app: composes the panes, routes worker results, runs the lens.

No torch here and no tensors: the model lives in the scheduler's thread
(``lenstui.jobs.scheduler``). The app submits typed requests (``lenstui.jobs.protocol``)
and gets ``WorkerReply`` messages back (posted thread-safely from the worker), drops any
that ``worker.is_current`` calls stale, and hands the rest to the pane that asked.

The keys come from the action registry (``tui/actions.py``), the palette's entries from
``tui/commands.py``. The panes are composed here directly. The app forwards the grid's
cursor (``TokenFocused``) and ``ModelLoaded`` to the side panes, hands them what they
need (the shown prompt's ids), and handles what they post (``WiredSpeak.ScanMarked``,
``InspectorPane.TargetRequested``). Screens, panes and helpers use the app only through
its typed host protocol (``tui/host.py``). A pane asks the worker with::

    seq = explorer(pane).submit(InspectToken(token_id), reply_to=pane)  # pane gets WorkerReply

No exception ends the app (``tui/safety.py``): actions, message handlers, timers and
callbacks that fail become a notice and a crash-log entry, and a worker thread that died
is noticed, restarted and given the model again, with the prompt and session kept.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Optional

from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Container, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Input

from lenstui.core.lens_result import LensResult
from lenstui.core.scan_result import ScanMarks
from lenstui.jobs.protocol import (
    CheckSpeakable,
    Done,
    Failed,
    FitLens,
    Handler,
    LoadModel,
    ModelInfo,
    Partial,
    Progress,
    Request,
    Result,
    RunLens,
    ScanVocabulary,
)
from lenstui.jobs.process import ProcessWorker
from lenstui.jobs.scheduler import ModelWorker
from lenstui.store.config import load_config
from lenstui.core.errors import quoted
from lenstui.store.export import export_dir, reserve_stem, save_json, save_svg
from lenstui.tui.actions import EXPLORER_ACTIONS, bindings, resting_over_screens, resting_while_typing
from lenstui.tui.commands import ModelChosen, ModelCommands, explorer_commands
from lenstui.tui.panes.inspector import InspectorPane, WiredInspector
from lenstui.tui.panes.prompt import PRESETS, Preset, PromptPane
from lenstui.tui.panes.speak import WiredSpeak
from lenstui.tui.screens.aim import open_aim_distribution
from lenstui.tui.screens.attribution import AttributionScreen, open_attribution
from lenstui.tui.state import causal, lenses, pins, speakability
from lenstui.tui.state.causal import CausalState
from lenstui.tui.state.model_switch import ModelSwitch
from lenstui.tui.safety import Guarded, SafetyNet
from lenstui.tui.state.session import LensSession, Step
from lenstui.tui.theming import DEFAULT_THEME, load_themes
from lenstui.tui.widgets.events import ModelLoaded, TokenFocused
from lenstui.tui.widgets.grid import LensGrid
from lenstui.tui.widgets.status import StatusBar

# Printable keys that belong to the prompt while it has the focus, and the grid's and
# lens's actions that rest while the attribution screen covers the grid.
LETTER_ACTIONS = resting_while_typing(EXPLORER_ACTIONS)
GRID_ACTIONS = resting_over_screens(EXPLORER_ACTIONS)


class WorkerReply(Message, bubble=False):
    """A worker result, delivered on the UI thread."""

    def __init__(self, result: Result) -> None:
        super().__init__()
        self.result = result

    def can_replace(self, message: Message) -> bool:
        # Only progress merges: a burst of load/scan progress collapses to the latest.
        return (
            isinstance(message, WorkerReply)
            and isinstance(self.result, Progress)
            and isinstance(message.result, Progress)
            and message.result.seq == self.result.seq
        )


# How often the app checks that the worker thread is alive (seconds), and how many times
# it starts a new one before it gives up (a worker that dies at once every time).
WORKER_WATCH_SECONDS = 0.5
WORKER_RESTARTS = 5


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
        dtype: str = "float32",
        theme: Optional[str] = None,
        chat: Optional[bool] = None,
        loader: Optional[Callable] = None,
        show_timings: bool = True,
        allow_download: Optional[bool] = None,
        strict_crashes: bool = False,
        in_process: Optional[bool] = None,
        worker: Optional[ProcessWorker] = None,
    ) -> None:
        super().__init__()
        # Unexpected exceptions become notices (strict: also re-raised when a test ends).
        self.safety_net = SafetyNet(self.notify, strict=strict_crashes, on_strict=self._keep_for_run_test)
        self.config, self._startup_problems = load_config()
        self.initial_prompt = prompt
        # Hub ids load from the local cache only, unless --allow-download or the config says so.
        downloads = bool(allow_download or self.config.allow_download)
        self.model_request = LoadModel(model, device, dtype, allow_download=downloads)
        self.loader = loader  # tests pass one that returns an already loaded model
        # The model runs in a child process (jobs/process.py: this process never imports
        # torch and keeps its latency whatever the model does), except for a loader given
        # here (a model built in this process) or when asked (LENSTUI_IN_PROCESS=1, tests
        # that register their own handlers): then on a thread of this process.
        if in_process is None:
            in_process = loader is not None or os.environ.get("LENSTUI_IN_PROCESS", "") not in ("", "0")
        self.in_process = in_process
        # A model process started before the UI was built (cli/app_cmd): the first worker.
        self._early_worker = None if in_process else worker
        self.show_timings = show_timings
        self.model_info: Optional[ModelInfo] = None
        self.loaded_request: Optional[LoadModel] = None  # the load that gave model_info
        self.worker: Optional[ModelWorker | ProcessWorker] = None
        self._extra_handlers: dict[type, Handler] = {}  # register_handler's, kept for a restart
        self._worker_restarts = 0
        self._reloading = False  # a restarted worker is loading the model again
        # What the lens shows next (prompt, steps, target, variant): plain, testable state.
        self.session = LensSession(top_k=self.config.top_k, chat=bool(chat if chat is not None else self.config.chat))
        self.shown_result = None  # the LensResult on screen (plain data)
        self.shown_request: Optional[RunLens] = None
        # Set when no lens run is pending / when the model load has finished either way:
        # tests and the benchmark await these instead of sleeping.
        self.lens_settled = asyncio.Event()
        self.lens_settled.set()
        self.model_settled = asyncio.Event()
        self.worker_stop_timeout = 0.5
        self._reply_to: dict[type, tuple[int, Widget]] = {}
        self._preset_index = -1
        self.scan_marks: Optional[ScanMarks] = None  # once a vocabulary scan exists: held here only
        self.attribution_contrast: Optional[tuple[int, str]] = None  # (id, text) pinned by the palette
        self.causal = CausalState()  # patches, sweeps and steering (tui/state/causal.py)
        self.model_switch = ModelSwitch(self)  # the palette's "model: open ..."
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
        self.worker = self._new_worker()
        self.submit(self.model_request)
        self.set_interval(WORKER_WATCH_SECONDS, self._watch_worker, name="worker watch")
        name = self.model_request.spec or "the embedded SmolLM2-135M-Instruct"
        self.grid.show_hint(f"Loading {name}… type a prompt meanwhile.")
        self.status.model = self.model_request.spec or "embedded model"
        self.status.set_loading("starting", 0.0)
        if self.initial_prompt:
            self.prompt_pane.set_text(self.initial_prompt)
            self._run_text(self.initial_prompt, immediate=True)
        self.prompt_pane.input.focus()
        self._refresh_prompt_info()
        self.safety_net.armed = True  # from now on, no exception ends the app

    def on_unmount(self) -> None:
        self.safety_net.armed = False
        if self.worker is not None:
            self.worker.stop(timeout=self.worker_stop_timeout)

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

    def _new_worker(self) -> ModelWorker | ProcessWorker:
        early, self._early_worker = self._early_worker, None
        if early is not None:
            return early.attach(self._post_from_worker, on_restart=self._process_restarted)
        if not self.in_process:
            return ProcessWorker(self._post_from_worker, on_restart=self._process_restarted).start()
        from lenstui.jobs.handlers import HANDLERS  # the engine's handlers, torch only on use

        worker = ModelWorker(self._post_from_worker, loader=self.loader, handlers=HANDLERS)
        for kind, handler in self._extra_handlers.items():
            worker.register(kind, handler)
        return worker.start()

    def _process_restarted(self, message: str) -> None:
        """The model's process ended (killed, out of memory, a crash in torch) and
        ProcessWorker started another and asked it for the model again (on its reader
        thread): the app forgets what was in flight and runs the lens again once the
        model is back, as after a thread worker's restart."""
        try:
            self.call_from_thread(self._after_process_restart, message)
        except RuntimeError:
            pass  # the app is not running (any more)

    def _after_process_restart(self, message: str) -> None:
        gave_up = isinstance(self.worker, ProcessWorker) and self.worker.gave_up is not None
        self.notify(message, title="Worker", severity="error", timeout=30 if gave_up else 12, markup=False)
        if gave_up:
            self.status.set_error("the model worker keeps failing")
            return
        self._forget_in_flight("restarting the worker")

    def _watch_worker(self) -> None:
        """The worker thread died (a bug in the scheduler itself: handlers' errors are
        results): say so, start a new one and give it the model again. The prompt, the
        session and what is on screen stay; the lens runs again once the model is back."""
        worker = self.worker
        if not isinstance(worker, ModelWorker) or worker.alive or worker.stopping:
            return  # (a ProcessWorker restarts its own child and says so: _process_restarted)
        self._worker_restarts += 1
        where = f" Details in {worker.death}." if worker.death is not None else ""
        if self._worker_restarts > WORKER_RESTARTS:
            worker.stop(timeout=0)  # (marks it stopping: this is said once)
            self.status.set_error("the model worker keeps failing")
            self.notify(
                f"The model worker keeps stopping; quit and start lenstui again.{where}",
                title="Worker",
                severity="error",
                timeout=30,
                markup=False,
            )
            return
        self.notify(
            f"The model worker stopped unexpectedly; restarting it and loading the model again.{where}",
            title="Worker",
            severity="error",
            timeout=12,
            markup=False,
        )
        self.worker = self._new_worker()
        self.submit(self.loaded_request or self.model_request)
        self._forget_in_flight("restarting the worker")

    def _forget_in_flight(self, why: str) -> None:
        """A new worker is loading the model again (submitted already): nothing asked of
        the old one has an answer coming. The prompt, the session and what is on screen
        stay; the lens runs again once the model is back, and open views ask again."""
        self._reply_to.clear()  # their answers died with the old worker
        self._reloading = True
        self.model_settled.clear()
        self.status.set_running(False)
        self.status.set_loading(why, 0.0)
        self.session.last_request = None
        self.session.queued_steps = 0
        self.speak_pane.forget_running()
        for screen in self.screen_stack:  # a view waiting for an answer asks again
            resubmit = getattr(screen, "resubmit", None)
            if callable(resubmit):
                resubmit()
        self._worker_restarted()

    def _worker_restarted(self) -> None:
        """After a new worker was started and the model load submitted (present mode
        computes its scenes again)."""

    # ------------------------------------------------------------ features

    def register_handler(self, kind: type, handler: Handler) -> None:
        """Route requests of ``kind`` to ``handler`` on the worker thread."""
        if self.worker is None:
            raise RuntimeError("register handlers from on_mount or later")
        self._extra_handlers[kind] = handler
        self.worker.register(kind, handler)

    def submit(self, request: Request, reply_to: Optional[Widget] = None) -> int:
        """Send a request to the worker; ``reply_to`` receives its WorkerReply messages."""
        assert self.worker is not None
        seq = self.worker.submit(request)
        # Only the newest request of a kind is ever answered, so one entry per kind
        # (and superseded requests leave nothing behind).
        if reply_to is not None:
            self._reply_to[type(request)] = (seq, reply_to)
        else:
            self._reply_to.pop(type(request), None)
        return seq

    def cancel(self, kind: type) -> bool:
        """Stop a request of ``kind`` (queued or running); whether there was one."""
        return self.worker is not None and self.worker.cancel(kind)

    def _post_from_worker(self, result: Result) -> None:
        # Called on the worker thread; post_message is thread-safe.
        self.post_message(WorkerReply(result))

    # ------------------------------------------------------------ worker results

    def on_worker_reply(self, message: WorkerReply) -> None:
        result = message.result
        if self.worker is None or not self.worker.is_current(result):
            return  # a newer request of the same kind was sent: this answer is stale
        seq, target = self._reply_to.get(result.kind, (None, None))
        if seq != result.seq:
            target = None
        elif not isinstance(result, (Progress, Partial)):
            del self._reply_to[result.kind]
        if isinstance(result, Failed):
            self.notify(result.message, title=result.request.title, severity="error", timeout=10)
        if target is not None:
            target.post_message(WorkerReply(result))
        if isinstance(result.request, LoadModel):
            self._on_load_reply(result)
        elif isinstance(result.request, RunLens):
            self._on_lens_reply(result)
        elif isinstance(result.request, FitLens):
            lenses.fit_reply(self, result)
        elif causal.handles(result.request):
            causal.on_reply(self, result)

    def on_model_chosen(self, message: ModelChosen) -> None:
        self.model_switch.begin(message.spec, message.label)

    def _on_load_reply(self, result: Result) -> None:
        if isinstance(result, Failed) and self.model_switch.failed(result):
            return  # the old model is still loaded and in use
        if isinstance(result, Progress):
            self.status.set_loading(result.message, result.fraction)
        elif isinstance(result, Done):
            info: ModelInfo = result.value
            self.model_info = info
            self.loaded_request = result.request
            for note in info.notes:
                self.notify(note, title="Model", severity="warning", timeout=10)
            self.status.set_model(info.name, info.device, info.dtype, info.n_layers, info.load_seconds, info.from_cache)
            if self.shown_result is None:
                self.grid.show_hint("Type a prompt and press Enter (F2 cycles through presets).")
            if self.session.chat and not info.has_chat_template:
                self.session.chat = False
            for pane in self.side_panes():
                pane.post_message(ModelLoaded(info))
            lenses.model_loaded(self, info)
            self._refresh_prompt_info()
            switched = self.model_switch.done(info)
            if self._reloading:
                self._reloading = False
                if not switched:
                    self.rerun_lens()
            self.model_settled.set()
        elif isinstance(result, Failed):
            self.status.set_error(f"not loaded: {result.message}")
            self.grid.show_hint(f"No model loaded. {result.message}")
            self.model_settled.set()

    def _on_lens_reply(self, result: Result) -> None:
        if isinstance(result, Progress):  # a costly lens's columns so far (the Patchscope)
            if result.request == self.session.last_request:
                self.status.set_running(True, result.message, result.fraction)
            return
        if result.request != self.session.last_request:
            # The answer to a state the session has left without asking the worker again
            # (a talk's scene was put on screen meanwhile, with its own computed grid): it
            # must not paint over what is shown. Nothing else is on its way.
            if not isinstance(result, Partial):
                self.status.set_running(False)
                self.lens_settled.set()
            return
        if isinstance(result, Partial):  # some columns, before the whole grid
            if not causal.lens_partial(self):  # a steered grid stays until it is steered again
                self.grid.show_partial(result.value, result.request)
            self._set_inspector_prompt(result.value.token_ids)  # the prompt on screen now
            return
        self.status.set_running(False)
        stepping = False
        try:
            if isinstance(result, Done):
                self.show_lens_result(result.value, result.request)
                if result.request == self.session.last_request and self.session.take_queued_step():
                    stepping = True
                    self.action_step()  # submits the next run: lens_settled stays clear
            elif isinstance(result, Failed):
                dropped = self.session.failed()
                if self.session.drop_failed_step(result.request):
                    # The prompt line lists the steps shown, not one that could not run.
                    if self.shown_request is not None and self.session.request() == self.shown_request:
                        self.session.submitted(self.shown_request)
                    self._refresh_prompt_info()
                pins.lens_failed(self, dropped)
                if self.grid.result is not None and self.grid.result is not self.shown_result:
                    # Not a half-painted run that will never finish: the last complete one.
                    if self.shown_result is not None:
                        self.grid.show_result(self.shown_result)
                        self._set_inspector_prompt(self.shown_result.token_ids)
                    else:
                        self.grid.clear(result.message)
                if self.shown_result is None:
                    self.grid.show_hint(result.message)
        finally:
            # Even if showing the answer failed (the safety net reports it), the run is over.
            if not (stepping and self._lens_running()):
                self.lens_settled.set()

    def show_lens_result(self, result: LensResult, request: RunLens) -> None:
        """Put a complete lens result on screen: the grid, the inspector's prompt, the
        pins (typed pins become ids), the status line. Every result takes this path: a
        worker's answer and a talk's computed scene alike."""
        self.shown_result = result
        self.shown_request = request
        self._set_inspector_prompt(result.token_ids)
        if not causal.lens_shown(self, result, request):  # a steer shows this run steered
            self.grid.show_result(result)
        pins.lens_answered(self, request, result)
        lenses.show_lens_file(self, result)
        self.status.set_run(len(result.tokens), result.seconds)
        self._refresh_prompt_info()

    def _set_inspector_prompt(self, token_ids) -> None:
        ids = tuple(token_ids)
        for inspector in self.base_screen.query(WiredInspector):
            inspector.prompt_ids = ids

    # ------------------------------------------------------------ running the lens

    def on_input_changed(self, event: Input.Changed) -> None:
        # The prompt pane handled this event first (it bubbles up to the app last): only
        # when it started a debounce is a run on its way. (A Changed of a value the app
        # itself set, arriving after the app set another, starts none; and a debounce that
        # set_text cancels is the app's to settle.)
        if (
            event.input.id == "prompt-input"
            and self.prompt_pane.debounce_pending
            and event.value != self.session.prompt_text
        ):
            self.lens_settled.clear()  # a debounced run is coming

    def on_prompt_pane_run(self, message: PromptPane.Run) -> None:
        self._run_text(message.text, message.immediate)

    def _run_text(self, text: str, immediate: bool) -> None:
        self.session.set_text(text)
        if not text.strip() and not immediate:
            self.lens_settled.set()  # erasing the prompt is not an error worth a notice
            self._refresh_prompt_info()
            return
        self._submit_lens()

    def _submit_lens(self) -> None:
        request = self.session.request()
        self._refresh_prompt_info()
        if not self.session.wants_run(request):
            if self.worker is not None and RunLens not in self.worker.busy_kinds():
                self.lens_settled.set()
            return
        self.session.submitted(request)
        self.lens_settled.clear()
        self.status.set_running(True)
        self.submit(replace(request, first_positions=self.grid.wanted_positions()))

    def on_lens_grid_columns_wanted(self, message: LensGrid.ColumnsWanted) -> None:
        """The view reached columns the running stream has not computed: the same run
        again with those first (the worker reuses every column already computed)."""
        if message.run == self.session.last_request and self._lens_running():
            self.submit(replace(self.session.last_request, first_positions=message.positions))

    def rerun_lens(self) -> None:
        """Run the lens again for the session's current state (when there is a prompt)."""
        if self.session.has_prompt:
            self._submit_lens()

    def _refresh_prompt_info(self) -> None:
        chat_available = self.model_info is None or self.model_info.has_chat_template
        self.prompt_pane.show_info(
            self.session.info(
                chat_available=chat_available,
                chat_key=self.key_for("lenstui.chat"),
                unstep_key=self.key_for("lenstui.unstep"),
                step_key=self.key_for("lenstui.step"),
            )
        )

    # ------------------------------------------------------------ actions

    def action_step(self) -> None:
        if causal.step_under_steer(self):  # the steered run's next token
            self._refresh_prompt_info()
            return
        result = self.shown_result
        if self._lens_running():
            # Each step extends the previous one's answer: queue it (the reply takes it).
            self.session.queue_step()
            self._refresh_prompt_info()
            return
        if result is None or self.shown_request != self.session.last_request:
            why = (
                "The last lens run failed: fix the prompt first."
                if self.session.last_failed
                else "Wait for the lens to finish, then step."
            )
            self.notify(why, severity="warning", timeout=3)
            return
        token = result.next_token
        self.session.step(tuple(result.token_ids) + (token.id,), token.text, token.piece)
        self._submit_lens()

    def _lens_running(self) -> bool:
        """A lens run for the current request is on its way (not failed, not shown yet)."""
        return (
            self.session.last_request is not None
            and self.shown_request != self.session.last_request
            and not self.session.last_failed
            and self.worker is not None
            and RunLens in self.worker.busy_kinds()
        )

    def action_unstep(self) -> None:
        if self.session.take_queued_step():  # undo a step that has not run yet
            self._refresh_prompt_info()
            return
        if not self.session.unstep():
            self.notify("No generated token to undo.", severity="warning", timeout=3)
            return
        self._submit_lens()

    def action_switch_view(self) -> None:
        self.grid.action_switch_view()

    def action_toggle_chat(self) -> None:
        if self.model_info is not None and not self.model_info.has_chat_template:
            self.notify(f"{self.model_info.name} has no chat template.", severity="warning", timeout=4)
            return
        self.session.set_chat(not self.session.chat)
        if self.session.prompt_text.strip():
            self._submit_lens()
        else:
            self._refresh_prompt_info()

    def action_next_preset(self) -> None:
        self._preset_index = (self._preset_index + 1) % len(PRESETS)
        self.apply_preset(PRESETS[self._preset_index])

    def apply_preset(self, preset: Preset) -> None:
        self.session.set_chat(preset.chat and (self.model_info is None or self.model_info.has_chat_template))
        self.prompt_pane.set_text(preset.text)
        self.session.set_text(preset.text)
        self._submit_lens()
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
        applies = causal.check_action(self, action)  # p, Esc, + and - mean more at times
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

