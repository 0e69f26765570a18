"""The lens runs of the explorer: from what the user typed or pressed to the grid.

``LensFlow`` turns the session's state (``session.py``) into ``RunLens`` requests and
their answers into what is on screen:

- **Typing.** A prompt edit starts the prompt pane's debounce; the run it sends
  (``PromptPane.Run``) or Enter reaches ``run_text``. ``submit`` asks the worker only for
  a request the session has not asked already (or one that failed: Enter retries).
- **Streaming.** The worker answers a run in ``Partial`` chunks (the columns in view
  first) before its ``Done``; ``columns_wanted`` asks the same run again with the columns
  the view reached first.
- **Stepping.** ^n appends the shown run's next token and runs the lens again; a ^n
  pressed while that run is on its way is queued, and each answer takes one; ^b drops the
  last step (or a queued one).
- **Settling.** ``host.lens_settled`` is set whenever no lens run is on its way: tests
  and the benchmarks await it instead of sleeping.

What the grid shows (the clean run, or a patched or steered one) is decided in one place,
``grid_run.py``. The features that ride on the lens runs (the causal lens, pins, learned
lenses) hear about them through one seam, ``lens_feature.LensFeature``: the model
loaded, a run streaming in, a run answered or failed, and ^n, which they may take over.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Protocol, Sequence

from textual.widgets import Input

from lenstui.core.lens_result import LensResult
from lenstui.jobs.protocol import Done, Failed, ModelInfo, Partial, Progress, Result, RunLens
from lenstui.tui.panes.inspector import WiredInspector
from lenstui.tui.panes.prompt import PromptPane
from lenstui.tui.state.causal import CausalHost
from lenstui.tui.state.grid_run import grid_run, paint
from lenstui.tui.state.lens_feature import LensFeature
from lenstui.tui.widgets.grid import LensGrid
from lenstui.tui.worker_link import WorkerLink


class LensFlowHost(CausalHost, Protocol):
    lens_settled: asyncio.Event  # set while no lens run is on its way

    @property
    def prompt_pane(self) -> PromptPane: ...


class LensFlow:
    def __init__(self, host: LensFlowHost, link: WorkerLink, features: Sequence[LensFeature]) -> None:
        self.host = host
        self.link = link
        self.features = tuple(features)

    # ------------------------------------------------------------ typing

    def input_changed(self, event: Input.Changed) -> None:
        # The prompt pane handled this event first (it bubbles up to the app last): only
        # when it started a debounce is a run on its way. (A Changed of a value the app
        # itself set, arriving after the app set another, starts none; and a debounce that
        # set_text cancels is the app's to settle.)
        host = self.host
        if (
            event.input.id == "prompt-input"
            and host.prompt_pane.debounce_pending
            and event.value != host.session.prompt_text
        ):
            host.lens_settled.clear()  # a debounced run is coming

    def run_text(self, text: str, immediate: bool) -> None:
        """The prompt pane's text, debounced (or at once: Enter)."""
        session = self.host.session
        session.set_text(text)
        if not text.strip() and not immediate:
            self.host.lens_settled.set()  # erasing the prompt is not an error worth a notice
            self.show_prompt_info()
            return
        self.submit()

    # ------------------------------------------------------------ running

    def submit(self) -> None:
        """Run the lens for the session's state, unless that run was asked already."""
        host, session = self.host, self.host.session
        request = session.request()
        self.show_prompt_info()
        if not session.wants_run(request):
            if self.link.worker is not None and not self.link.busy(RunLens):
                host.lens_settled.set()
            return
        session.submitted(request)
        host.lens_settled.clear()
        host.status.set_running(True)
        self.link.submit(replace(request, first_positions=host.grid.wanted_positions()))

    def rerun(self) -> None:
        """Run the lens again for the session's current state (when there is a prompt)."""
        if self.host.session.has_prompt:
            self.submit()

    def running(self) -> bool:
        """A lens run for the current request is on its way (not failed, not shown yet)."""
        host, session = self.host, self.host.session
        return (
            session.last_request is not None
            and host.shown_request != session.last_request
            and not session.last_failed
            and self.link.busy(RunLens)
        )

    def columns_wanted(self, message: LensGrid.ColumnsWanted) -> None:
        """The view reached columns the running stream has not computed: the same run
        again with those first (the worker reuses every column already computed)."""
        session = self.host.session
        if message.run == session.last_request and self.running():
            self.link.submit(replace(session.last_request, first_positions=message.positions))

    # ------------------------------------------------------------ stepping

    def step(self) -> None:
        """^n: append the shown run's next token (queued while its run is on its way)."""
        host, session = self.host, self.host.session
        if any(feature.take_step() for feature in self.features):  # the steered run's next token
            self.show_prompt_info()
            return
        result = host.shown_result
        if self.running():
            # Each step extends the previous one's answer: queue it (the reply takes it).
            session.queue_step()
            self.show_prompt_info()
            return
        if result is None or host.shown_request != session.last_request:
            why = (
                "The last lens run failed: fix the prompt first."
                if session.last_failed
                else "Wait for the lens to finish, then step."
            )
            host.notify(why, severity="warning", timeout=3)
            return
        token = result.next_token
        session.step(tuple(result.token_ids) + (token.id,), token.text, token.piece)
        self.submit()

    def unstep(self) -> None:
        """^b: drop a queued step, else the last generated token."""
        session = self.host.session
        if session.take_queued_step():  # undo a step that has not run yet
            self.show_prompt_info()
            return
        if not session.unstep():
            self.host.notify("No generated token to undo.", severity="warning", timeout=3)
            return
        self.submit()

    # ------------------------------------------------------------ answers

    def on_reply(self, result: Result) -> None:
        """A worker answer to a RunLens (stale ones were dropped already)."""
        host, session = self.host, self.host.session
        if isinstance(result, Progress):  # a costly lens's columns so far (the Patchscope)
            if result.request == session.last_request:
                host.status.set_running(True, result.message, result.fraction)
            return
        if result.request != session.last_request:
            # The answer to a state the session has left without asking the worker again
            # (a talk's scene was put on screen meanwhile, with its own computed grid): it
            # must not paint over what is shown. Nothing else is on its way.
            if not isinstance(result, Partial):
                host.status.set_running(False)
                host.lens_settled.set()
            return
        if isinstance(result, Partial):  # some columns, before the whole grid
            for feature in self.features:
                feature.run_streaming()
            if grid_run(host.causal) == "clean":  # a steered grid stays until it is steered again
                host.grid.show_partial(result.value, result.request)
            self._set_inspector_prompt(result.value.token_ids)  # the prompt on screen now
            return
        host.status.set_running(False)
        stepping = False
        try:
            if isinstance(result, Done):
                self.show(result.value, result.request)
                if result.request == session.last_request and session.take_queued_step():
                    stepping = True
                    self.step()  # submits the next run: lens_settled stays clear
            elif isinstance(result, Failed):
                self._failed(result)
        finally:
            # Even if showing the answer failed (the safety net reports it), the run is over.
            if not (stepping and self.running()):
                host.lens_settled.set()

    def _failed(self, result: Failed) -> None:
        host, session = self.host, self.host.session
        dropped = session.failed()
        if session.drop_failed_step(result.request):
            # The prompt line lists the steps shown, not one that could not run.
            if host.shown_request is not None and session.request() == host.shown_request:
                session.submitted(host.shown_request)
            self.show_prompt_info()
        for feature in self.features:
            feature.run_failed(dropped)
        # Not a half-painted run that will never finish: the last complete one (or the
        # failure's sentence where the grid goes, when there is none).
        paint(host, hint=result.message)
        if host.shown_result is not None:
            self._set_inspector_prompt(host.shown_result.token_ids)

    def show(self, result: LensResult, request: RunLens) -> None:
        """Put a complete lens result on screen: the grid, the inspector's prompt, the
        features (typed pins become ids, a steer runs on it), the status line. Every
        result takes this path: a worker's answer and a talk's computed scene alike."""
        host = self.host
        host.shown_result = result
        host.shown_request = request
        self._set_inspector_prompt(result.token_ids)
        for feature in self.features:
            feature.run_shown(result, request)
        paint(host)
        host.status.set_run(len(result.tokens), result.seconds)
        self.show_prompt_info()

    def _set_inspector_prompt(self, token_ids) -> None:
        ids = tuple(token_ids)
        for inspector in self.host.base_screen.query(WiredInspector):
            inspector.prompt_ids = ids

    # ------------------------------------------------------------ the model and the worker

    def model_loaded(self, info: ModelInfo) -> None:
        """A model is ready: the features hear of it; the prompt line says what it has."""
        session = self.host.session
        if session.chat and not info.has_chat_template:
            session.chat = False
        for feature in self.features:
            feature.model_loaded(info)
        self.show_prompt_info()

    def forget_in_flight(self) -> None:
        """A new worker is loading the model again: no lens answer is coming, and a step
        queued for one is dropped. (The lens runs again once the model is back.)"""
        self.host.status.set_running(False)
        self.host.session.last_request = None
        self.host.session.queued_steps = 0

    # ------------------------------------------------------------ the prompt line

    def show_prompt_info(self) -> None:
        """The line under the prompt: the chat template's state and the generated steps."""
        host = self.host
        chat_available = host.model_info is None or host.model_info.has_chat_template
        host.prompt_pane.show_info(
            host.session.info(
                chat_available=chat_available,
                chat_key=host.key_for("lenstui.chat"),
                unstep_key=host.key_for("lenstui.unstep"),
                step_key=host.key_for("lenstui.step"),
            )
        )
