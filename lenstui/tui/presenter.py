"""`lenstui present FILE.toml`: the explorer walking through a talk's prepared scenes.

``PresenterApp`` is the explorer (every pane, key and palette command) plus a talk:

- **Moving.** Space/PgDn next scene, Backspace/PgUp previous, digits then Enter (or
  ``g``, digits, Enter) jump to a scene by number. These keys are off while the prompt
  has the focus (Escape leaves it), so typing is never hijacked.
- **Computed ahead.** One ``RenderScenes`` request computes every scene in the
  background, the current one first, and hands each back as it is done (``Partial``
  results); they land in ``renders``, keyed by scene number. Moving to a computed scene
  shows it at once, with no new lens run. Moving to one that is not computed yet puts
  it first in line (a new ``RenderScenes`` that skips what is done). A long talk keeps
  at most ``MAX_RENDERS`` computed scenes, those around the current one
  (``KEEP_BEHIND`` before it, the rest after): moving on computes the next ones and
  drops those left far behind, so memory stays bounded however many scenes a talk has.
- **Problems.** A scene the file gets wrong, or that does not fit the model (prompt
  longer than the context, an unknown token), shows its sentence where the grid is;
  the rest of the talk goes on.
- **Saving.** ``w`` appends the current state (prompt, steps, view, cursor, target,
  pinned, lens, theme) to the talk file as a new scene (``scenes.append_scene``: atomic,
  what is in the file stays byte for byte).
- **Stage layout.** The screen class ``-stage`` hides the prompt, the side panes and
  the footer: the grid gets the whole screen under a ``N/total · title`` line. On by
  default; ``f`` toggles it.
"""

from __future__ import annotations

import asyncio
from typing import Optional

from textual.widgets import Input, Static

from lenstui.core.errors import LenstuiError
from lenstui.jobs.protocol import Done, Failed, LoadModel, Partial, RenderScenes, Result, RunLens, SceneRender, Stopped
from lenstui.talks.format import Cursor, Scene, Talk, append_scene
from lenstui.tui.actions import PRESENTER_ACTIONS, bindings, resting_while_typing
from lenstui.tui.app import LenstuiApp
from lenstui.tui.safety import Guarded
from lenstui.tui.screens.attribution import AttributionScreen, open_attribution
from lenstui.tui.state.session import Step
from lenstui.tui.widgets.grid import VIEWS as GRID_VIEWS
from lenstui.tui.worker_link import ReplyRoute

# Present mode's keys rest while the prompt has the focus (typing is typing).
RESTING_WHILE_TYPING = resting_while_typing(PRESENTER_ACTIONS)
# Computed scenes kept at once (each holds a whole lens grid), and how many of them are
# behind the current scene; a talk with at most MAX_RENDERS scenes keeps all of them.
MAX_RENDERS = 20
KEEP_BEHIND = 4


class SceneBanner(Guarded, Static):
    """``N/total · title`` above everything, in present mode."""

    DEFAULT_CSS = """
    SceneBanner {
        height: 1;
        padding: 0 1;
        background: $primary;
        color: $text;
        text-style: bold;
    }
    """


class SceneMessage(Guarded, Static):
    """Where the grid goes, for a scene that cannot be shown (or is still computing)."""

    DEFAULT_CSS = """
    SceneMessage {
        display: none;
        width: 1fr;
        height: 1fr;
        padding: 1 2;
        background: $surface;
        color: $text-muted;
        &.-problem { color: $error; text-style: bold; }
    }
    """


class PresenterApp(LenstuiApp):
    CSS = """
    #body.-scene-message > #grid { display: none; }
    #body.-scene-message > SceneMessage { display: block; }
    Screen.-stage #side, Screen.-stage #prompt, Screen.-stage Footer { display: none; }
    """

    # The explorer's own keys too: key_for() reads this list for on-screen hints.
    BINDINGS = LenstuiApp.BINDINGS + bindings(PRESENTER_ACTIONS)

    def __init__(self, talk: Talk, *, stage: bool = True, **kwargs) -> None:
        kwargs.setdefault("theme", talk.theme)
        super().__init__("", **kwargs)
        self.talk = talk
        self.stage = stage
        self.scene_index = 0
        self.renders: dict[int, SceneRender] = {}  # computed scenes, by number (current model)
        self._render_seq: Optional[int] = None  # the RenderScenes whose partials count
        self._render_order: tuple[int, ...] = ()  # what that request computes, in order
        self._digits: Optional[str] = None  # a scene number being typed
        # Set once the current scene is on screen (computed, or its problem shown).
        self.scene_settled = asyncio.Event()

    # ------------------------------------------------------------ start

    def on_mount(self) -> None:
        # Runs before LenstuiApp.on_mount (Textual calls each class's handler, subclass
        # first): mount the banner and message, then start the talk once the worker is up.
        self.mount(SceneBanner("", id="scene-banner"), before="#prompt")
        self.query_one("#body").mount(SceneMessage("", id="scene-message"), before="#grid")
        self.screen.set_class(self.stage, "-stage")
        self.call_later(self._start_talk)

    def _start_talk(self) -> None:
        self.show_scene(0)
        if self.stage:
            self.grid.focus()

    @property
    def scene(self) -> Scene:
        return self.talk.scenes[self.scene_index]

    # ------------------------------------------------------------ worker

    def _window(self) -> list[int]:
        """Indices of the scenes to keep computed, in the order to compute them: every
        scene from the current one onwards (wrapping) for a short talk; for a long one
        the current scene, the next ones, then the few before it (MAX_RENDERS in all)."""
        count, here = len(self.talk.scenes), self.scene_index
        if count <= MAX_RENDERS:
            return [(here + i) % count for i in range(count)]
        behind = min(KEEP_BEHIND, here)
        ahead = min(count - here, MAX_RENDERS - behind)
        behind = min(here, MAX_RENDERS - ahead)
        return list(range(here, here + ahead)) + list(range(here - 1, here - 1 - behind, -1))

    def _drop_far_renders(self) -> None:
        """Forget computed scenes outside the window (a long talk's memory stays bounded)."""
        if len(self.renders) <= MAX_RENDERS and len(self.talk.scenes) <= MAX_RENDERS:
            return
        keep = {self.talk.scenes[i].number for i in self._window()}
        for number in [n for n in self.renders if n not in keep]:
            del self.renders[number]

    def _submit_renders(self) -> None:
        """Compute every scene of the window not computed yet, the current one first."""
        self._drop_far_renders()
        order = tuple(
            scene.number
            for scene in (self.talk.scenes[i] for i in self._window())
            if scene.ok and scene.number not in self.renders
        )
        if not order:
            return
        if self._render_seq is not None and self._next_in_flight() == order[0]:
            return  # the request in flight already does this scene next
        self._render_order = order
        self._render_seq = self.submit(
            RenderScenes(tuple(self.talk.scenes), order, top_k=self.session.top_k, incl_mid=self.session.incl_mid)
        )

    def _next_in_flight(self) -> Optional[int]:
        return next((n for n in self._render_order if n not in self.renders), None)

    def reply_routes(self) -> dict[type, ReplyRoute]:
        routes = super().reply_routes()
        on_load = routes[LoadModel]
        routes[LoadModel] = lambda result: self._on_load_reply(on_load, result)
        routes[RenderScenes] = self._on_render_reply
        return routes

    def _on_render_reply(self, result: Result) -> None:
        if result.seq != self._render_seq:
            return
        if isinstance(result, Partial):
            render: SceneRender = result.value
            if render.number not in {self.talk.scenes[i].number for i in self._window()}:
                return  # computed for a window the talk has moved away from
            self.renders[render.number] = render
            if render.number == self.scene.number:
                self.show_scene(self.scene_index)
        elif isinstance(result, (Done, Failed, Stopped)):
            self._render_seq = None
            self._render_order = ()
            if isinstance(result, Failed) and self.scene.number not in self.renders and self.scene.ok:
                self._show_message(f"Scene {self.scene.number} could not be computed: {result.message}", problem=True)

    def worker_restarted(self, why: str) -> None:
        super().worker_restarted(why)
        # The RenderScenes in flight died with the old worker: compute what is left again.
        self._render_seq = None
        self._render_order = ()
        self._submit_renders()

    def _on_load_reply(self, on_load: ReplyRoute, result: Result) -> None:
        switching = self.model_switch.pending is not None
        on_load(result)
        if isinstance(result, Done) and switching:
            # Another model (or the first): what was computed belongs to the old one.
            self.renders.clear()
            self._render_seq = None
            self._render_order = ()
            self.show_scene(self.scene_index)
        elif isinstance(result, Failed) and self.model_info is not None:
            self._render_seq = None  # the load stopped the running RenderScenes
            self._submit_renders()

    # ------------------------------------------------------------ showing a scene

    def show_scene(self, index: int) -> None:
        self.scene_index = index
        scene = self.scene
        self.scene_settled.clear()
        self._update_banner()
        if isinstance(self.screen, AttributionScreen):
            self.pop_screen()  # the previous scene's attribution view
            # Popping gives focus back to what had it (maybe the hidden prompt, where
            # the scene keys rest): the talk goes on from the grid.
            self.call_after_refresh(self.grid.focus)
        if scene.theme and scene.theme != self.theme:
            if scene.theme in self.available_themes:
                self.theme = scene.theme
            else:
                self.notify(f"Scene {scene.number}: no theme called {scene.theme!r}.", severity="warning", timeout=4)
        if not scene.ok:
            self._show_message(f"Scene {scene.number} cannot be shown: {scene.problem}", problem=True)
            self.scene_settled.set()
            return
        render = self.renders.get(scene.number)
        if render is None:
            self._show_message(f"Computing scene {scene.number}…", problem=False)
            self._submit_renders()
            return
        if render.problem:
            self._show_message(f"Scene {scene.number} cannot be shown: {render.problem}", problem=True)
        else:
            self._apply(scene, render)
        self.scene_settled.set()
        self._submit_renders()  # keep computing the rest

    def _apply(self, scene: Scene, render: SceneRender) -> None:
        """Put a computed scene on screen and make it the session's state, as if the
        speaker had typed the prompt, stepped, and picked the target and lens."""
        result, request = render.result, render.request
        self.cancel(RunLens)  # a lens run of the state being left: its answer is not wanted
        ids = tuple(result.token_ids)
        text = scene.prompt if scene.prompt is not None else "".join(t.text for t in result.tokens[: render.prompt_length])
        self.session.restore(
            request,
            text=text,
            chat=scene.chat,
            prompt_ids=tuple(scene.prompt_ids) if scene.prompt_ids is not None else None,
            steps=[
                Step(ids[: i + 1], result.tokens[i].text, result.tokens[i].piece)
                for i in range(render.prompt_length, len(ids))
            ],
            target=render.target_id,
            pins=list(render.pinned_ids),
            lens=scene.lens,
        )
        self.prompt_pane.set_text(text)
        self._hide_message()
        self.lens.show(result, request)
        if scene.view in GRID_VIEWS:
            self.grid.view = scene.view
        else:
            self.grid.view = "positions"
            if scene.view != "attribution":
                self.notify(f"view {scene.view} not available yet", title=f"Scene {scene.number}", severity="warning", timeout=4)
        self.grid.place_cursor(render.cursor_layer, render.cursor_position)
        if not self.lens.running():
            self.lens_settled.set()  # the scene's grid is the answer (a debounce set_text cancelled included)
        if scene.view == "attribution":
            # The cursor's cell, attributed as the `a` key would (the target, when set).
            open_attribution(self, self.grid.result, self.grid.current_cell, self.attribution_contrast)

    def _show_message(self, text: str, *, problem: bool) -> None:
        message = self.query_one(SceneMessage)
        message.update(text)
        message.set_class(problem, "-problem")
        self.query_one("#body").add_class("-scene-message")

    def _hide_message(self) -> None:
        self.query_one("#body").remove_class("-scene-message")

    def _update_banner(self) -> None:
        scenes = self.talk.scenes
        text = f"{self.scene_index + 1}/{len(scenes)} · {self.scene.title}"
        if self._digits is not None:
            text += f"   go to scene: {self._digits}_ (Enter)"
        self.query_one(SceneBanner).update(text)

    # ------------------------------------------------------------ keys

    def check_action(self, action: str, parameters: tuple) -> Optional[bool]:
        if action in RESTING_WHILE_TYPING and isinstance(self.focused, Input):
            return False
        if action in ("jump_scene", "cancel_jump") and self._digits is None:
            return False  # Enter selects a cell, Escape leaves the prompt, as usual
        return super().check_action(action, parameters)

    def action_next_scene(self) -> None:
        if self.scene_index + 1 >= len(self.talk.scenes):
            self.notify("That was the last scene.", timeout=2)
            return
        self.show_scene(self.scene_index + 1)

    def action_previous_scene(self) -> None:
        if self.scene_index == 0:
            self.notify("This is the first scene.", timeout=2)
            return
        self.show_scene(self.scene_index - 1)

    def action_start_jump(self) -> None:
        self._digits = ""
        self._update_banner()

    def action_scene_digit(self, digit: int) -> None:
        self._digits = (self._digits or "") + str(digit)
        self._update_banner()

    def action_cancel_jump(self) -> None:
        self._digits = None
        self._update_banner()

    def action_jump_scene(self) -> None:
        typed, self._digits = self._digits, None
        count = len(self.talk.scenes)
        if not typed or not 1 <= int(typed) <= count:
            self._update_banner()
            self.notify(f"No scene {typed or '?'}: the talk has scenes 1 to {count}.", severity="warning", timeout=3)
            return
        self.show_scene(int(typed) - 1)

    def action_toggle_stage(self) -> None:
        self.stage = not self.stage
        self.screen.set_class(self.stage, "-stage")
        if self.stage and isinstance(self.focused, Input):
            self.grid.focus()

    # ------------------------------------------------------------ saving

    def current_scene(self) -> Scene:
        """What is on screen now, as a scene for the talk file."""
        session = self.session
        number = len(self.talk.scenes) + 1
        scene = Scene(number=number, title=f"Scene {number} (saved)")
        if session.prompt_ids is not None:
            scene.prompt_ids = list(session.prompt_ids)
        else:
            scene.prompt = session.prompt_text
            scene.chat = session.chat
        scene.steps = len(session.steps)
        scene.view = self.grid.view
        grid = self.grid
        if grid.result is not None and grid.cursor_layer is not None:
            # The cursor of the grid on screen (its cell may still be streaming in).
            last = len(grid.result.tokens) - 1
            scene.cursor = Cursor(grid.cursor_layer, -1 if grid.cursor_pos >= last else grid.cursor_pos)
        scene.target = session.target
        scene.pinned = list(session.pins)
        scene.lens = session.lens_kind
        if session.lens_kind == "patchscope":
            scene.patchscope_target = session.patchscope_target
        scene.theme = self.theme
        return scene

    def action_save_scene(self) -> None:
        if not self.session.has_prompt:
            self.notify("Nothing to save: there is no prompt.", severity="warning", timeout=3)
            return
        scene = self.current_scene()
        try:
            self.talk = append_scene(self.talk.path, scene)
        except LenstuiError as err:
            self.notify(str(err), title="Save scene", severity="error", timeout=10)
            return
        self._update_banner()
        self.notify(f"Saved as scene {scene.number} in {self.talk.path}", title="Save scene", timeout=6)
        self._submit_renders()
