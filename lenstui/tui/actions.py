"""The explorer's keys, named once: every binding, and when each one rests.

Harlequin's pattern: one registry of actions feeds the app's ``BINDINGS`` (so the footer
and the keys panel), and the two lists of actions that rest at times:

- ``while_typing=False``: a printable key (``s``, ``P``, ``/``) that belongs to the
  prompt while it has the focus, so typing "speaks" never runs a speakability check;
- ``over_screens=False``: an action on the grid or the lens, off while the attribution
  screen covers the grid, so no key changes what is hidden behind it.

A user's keymap (``[keymap]`` in config.toml) rebinds by ``id``; on-screen hints read
the key through ``LenstuiApp.key_for(id)``, so they follow the keymap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from textual.binding import Binding


@dataclass(frozen=True)
class Action:
    action: str  # "step" runs action_step; may carry parameters: "scene_digit(3)"
    keys: str  # comma-separated, as Textual's Binding takes them
    description: str
    id: str  # the keymap's name for it
    show: bool = True  # in the footer
    priority: bool = False  # before the focused widget's own bindings
    while_typing: bool = True  # False: rests while the prompt (an Input) has the focus
    over_screens: bool = True  # False: rests while a screen covers the grid

    @property
    def name(self) -> str:
        """The action without its parameters (what ``check_action`` is asked about)."""
        return self.action.split("(", 1)[0]

    def binding(self) -> Binding:
        return Binding(self.keys, self.action, self.description, show=self.show, priority=self.priority, id=self.id)


EXPLORER_ACTIONS: tuple[Action, ...] = (
    Action("toggle_help", "f1", "Keys", "lenstui.help"),
    Action("toggle_help", "question_mark", "Keys", "lenstui.help_question", show=False),
    Action("step", "ctrl+n", "Step", "lenstui.step", over_screens=False),
    Action("unstep", "ctrl+b", "Undo", "lenstui.unstep", over_screens=False),
    Action("switch_view", "f4", "View", "lenstui.switch_view", over_screens=False),
    Action("toggle_chat", "ctrl+t", "Chat", "lenstui.chat", over_screens=False),
    Action("next_preset", "f2", "Preset", "lenstui.preset", over_screens=False),
    Action("next_theme", "f3", "Theme", "lenstui.theme"),
    Action("export", "ctrl+s", "Export", "lenstui.export"),
    Action("check_speakable", "s", "Speak?", "lenstui.speak_check", while_typing=False, over_screens=False),
    Action("cancel_speak", "x", "Cancel check", "lenstui.speak_cancel", show=False, while_typing=False, over_screens=False),
    Action("aim_distribution", "A", "Aim distribution", "lenstui.aim_view", show=False, while_typing=False, over_screens=False),
    Action("target_selected", "t", "Target", "lenstui.target", while_typing=False, over_screens=False),
    Action("reset_target", "u", "Default target", "lenstui.target_reset", show=False, while_typing=False, over_screens=False),
    # `p` patches the cursor's cell once a patch source is marked (tui/state/causal.py);
    # until then it inspects the prompt token. The first binding that applies wins.
    Action("patch_cell", "p", "Patch", "lenstui.patch", while_typing=False, over_screens=False),
    Action("inspect_prompt_token", "p", "Inspect prompt token", "lenstui.inspect_prompt", show=False, while_typing=False, over_screens=False),
    # Over the attribution screen, `a` attributes the cell again (the screen refreshes).
    Action("attribute_cell", "a", "Attribute", "lenstui.attribute", show=False, while_typing=False),
    Action("next_lens", "f5", "Lens variant", "lenstui.lens_variant", show=False, over_screens=False),
    Action("focus_prompt", "slash,i", "Edit prompt", "lenstui.focus_prompt", show=False, while_typing=False, over_screens=False),
    # Escape stops waiting for NDIF while it runs a request (a model opened with --remote),
    # and otherwise puts the clean run back while a patch or steer is on the grid.
    Action("cancel_remote", "escape", "Stop NDIF request", "lenstui.cancel_remote", show=False, over_screens=False),
    Action("restore_clean", "escape", "Clean run", "lenstui.restore_clean", over_screens=False),
    Action("focus_grid", "escape", "To the grid", "lenstui.focus_grid", show=False, over_screens=False),
    Action("steer_more", "plus", "Steer +", "lenstui.steer_more", while_typing=False, over_screens=False),
    Action("steer_less", "minus", "Steer -", "lenstui.steer_less", while_typing=False, over_screens=False),
    Action("pin_selected", "P", "Pin", "lenstui.pin", while_typing=False, over_screens=False),
    Action("unpin_all", "U", "Unpin all", "lenstui.unpin_all", show=False, while_typing=False, over_screens=False),
    Action("show_trajectory", "T", "Trajectory", "lenstui.trajectory", while_typing=False, over_screens=False),
    Action("show_compare", "C", "Compare", "lenstui.compare", show=False, while_typing=False, over_screens=False),
    Action("lens_eval", "E", "Lens evaluation", "lenstui.lens_eval", show=False, while_typing=False, over_screens=False),
)

# Present mode's own keys, on top of the explorer's. Priority: PgUp/PgDn/Enter/g also mean
# something to the focused grid. All rest while the prompt has the focus.
PRESENTER_ACTIONS: tuple[Action, ...] = (
    Action("next_scene", "space,pagedown", "Next scene", "lenstui.present.next", priority=True, while_typing=False),
    Action("previous_scene", "backspace,pageup", "Previous scene", "lenstui.present.previous", priority=True, while_typing=False),
    *(
        Action(f"scene_digit({d})", str(d), "Scene number", f"lenstui.present.digit{d}", show=False, priority=True, while_typing=False)
        for d in range(10)
    ),
    Action("jump_scene", "enter", "Go to scene", "lenstui.present.jump", show=False, priority=True, while_typing=False),
    Action("start_jump", "g", "Go to scene…", "lenstui.present.go", show=False, priority=True, while_typing=False),
    Action("cancel_jump", "escape", "Cancel", "lenstui.present.cancel", show=False, priority=True, while_typing=False),
    Action("save_scene", "w", "Save scene", "lenstui.present.save", while_typing=False),
    Action("toggle_stage", "f", "Stage", "lenstui.present.stage", while_typing=False),
)


def bindings(actions: Iterable[Action]) -> list[Binding]:
    return [action.binding() for action in actions]


def resting_while_typing(actions: Iterable[Action]) -> frozenset[str]:
    return frozenset(action.name for action in actions if not action.while_typing)


def resting_over_screens(actions: Iterable[Action]) -> frozenset[str]:
    return frozenset(action.name for action in actions if not action.over_screens)
