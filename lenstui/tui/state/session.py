"""What the explorer's lens shows next: the prompt, its generated steps and the lens settings.

``LensSession`` is plain state (no Textual, no torch) that produces the next
``RunLens``. The app feeds it what the user did (typed text, stepped, picked a target
or a lens variant) and submits ``session.request()`` when ``session.wants_run``
says the request is new; the tests drive it without a screen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from lenstui.core.errors import quoted
from lenstui.core.lenses import BLOCK_OUTPUT_LENSES, LEARNED_LENSES, LENS_KINDS, MAX_TRACKED, LensOptions
from lenstui.core.textfmt import visible
from lenstui.jobs.protocol import RunLens

# The prompt line lists at most this many generated tokens (the newest ones).
SHOWN_STEPS = 12
# Pinned tokens followed through the layers: as many as one lens run tracks.
MAX_PINS = MAX_TRACKED


@dataclass(frozen=True)
class Step:
    """One generation step: the prompt's ids after appending ``text``'s token."""

    ids: tuple[int, ...]
    text: str  # the token decoded (U+FFFD alone for a partial UTF-8 token)
    piece: str  # the token's vocabulary piece
    steered: bool = False  # the steered model's next token (tui/state/causal.py), not the clean one's

    @property
    def label(self) -> str:
        # A partial UTF-8 token decodes to U+FFFD alone: its vocabulary piece says more.
        return self.piece if "\ufffd" in self.text else visible(self.text)


@dataclass
class LensSession:
    """The prompt and settings the grid's rows depend on, and what was last asked."""

    top_k: int = 10
    chat: bool = False
    prompt_text: str = ""
    steps: list[Step] = field(default_factory=list)
    # A prompt given as token ids (a talk scene's prompt_ids): run as ids while the
    # text shown for it is unchanged.
    prompt_ids: Optional[tuple[int, ...]] = None
    target: Optional[int] = None  # None: each position's own top-1
    lens_kind: str = "logit"
    incl_mid: bool = False
    last_request: Optional[RunLens] = None
    last_failed: bool = False
    # Steps asked for (^n) while the run they extend was still on its way: each lens
    # answer takes one, so a quick burst of ^n appends that many tokens, in order.
    queued_steps: int = 0
    # Pinned tokens (ids, or what was typed until a run resolves it), in pinning order:
    # the RunLens's ``track``, so every cell reports their probability and rank.
    pins: list[Union[int, str]] = field(default_factory=list)
    # A typed pin not yet resolved by a run: dropped again if that run fails on it.
    unresolved_pin: Optional[str] = None
    # The compare view's second prompt ("" until set).
    prompt_b: str = ""
    # Learned lenses: the files chosen by hand, per kind (else the one fitted for the
    # model), and the kinds the model has a file for (cycling skips the others).
    lens_paths: dict[str, str] = field(default_factory=dict)
    learned_available: frozenset[str] = frozenset()
    # The Patchscope's target prompt (None: the token-identity prompt).
    patchscope_target: Optional[str] = None

    # ---------------------------------------------------------------- the request

    def options(self) -> LensOptions:
        """How the lens reads now: every lens-reading request of the app carries these."""
        return LensOptions(
            top_k=self.top_k,
            lens=self.lens_kind,
            incl_mid=self.incl_mid,
            target=self.target,
            track=tuple(self.pins),
            lens_path=self.lens_paths.get(self.lens_kind),
            patchscope_target=self.patchscope_target if self.lens_kind == "patchscope" else None,
        )

    def request(self) -> RunLens:
        """The RunLens for the current state: the last step's ids, else the text."""
        if self.steps:
            return RunLens(self.steps[-1].ids, options=self.options())
        if self.prompt_ids is not None:
            return RunLens(self.prompt_ids, options=self.options())
        return RunLens(self.prompt_text, chat=self.chat, options=self.options())

    def wants_run(self, request: RunLens) -> bool:
        """The same request again is not re-run (the debounce and Enter often both fire),
        unless it failed last time: then Enter is how a user retries."""
        return request != self.last_request or self.last_failed

    def submitted(self, request: RunLens) -> None:
        self.last_request = request
        self.last_failed = False

    def failed(self) -> Optional[str]:
        """The last run failed. Returns the typed pin it dropped, if one was to blame."""
        self.last_failed = True
        self.queued_steps = 0  # they would extend a run that has no answer
        dropped = self.unresolved_pin
        if dropped is not None and dropped in self.pins:
            self.pins.remove(dropped)
            self.last_failed = False  # a run without it is new anyway
        self.unresolved_pin = None
        return dropped

    def drop_failed_step(self, request: RunLens) -> bool:
        """The run of ``request`` failed: if it was the last generation step's (a step past
        the model's context, say), that step is not added after all. Whether it was."""
        if not self.steps or request.prompt != self.steps[-1].ids:
            return False
        self.steps.pop()
        return True

    # ---------------------------------------------------------------- pins

    def pin(self, token: Union[int, str]) -> str:
        """Pin a token id (from a cell) or a typed token. Returns what happened, as a
        sentence for a notice; a duplicate or a ninth pin changes nothing."""
        if token in self.pins:
            return f"{quoted(token)} is already pinned."
        if len(self.pins) >= MAX_PINS:
            return f"At most {MAX_PINS} tokens can be pinned: unpin one first."
        self.pins.append(token)
        if isinstance(token, str):
            self.unresolved_pin = token
        return f"Pinned {'token ' + str(token) if isinstance(token, int) else quoted(token)}."

    def unpin(self, token: Union[int, str]) -> bool:
        if token not in self.pins:
            return False
        self.pins.remove(token)
        return True

    def toggle_pin(self, token_id: int) -> str:
        if self.unpin(token_id):
            return f"Unpinned token {token_id}."
        return self.pin(token_id)

    def unpin_all(self) -> int:
        count = len(self.pins)
        self.pins.clear()
        self.unresolved_pin = None
        return count

    def pins_resolved(self, request: RunLens, tracked_ids: list[int]) -> None:
        """A run for ``request`` answered with ``tracked_ids`` for its pins: typed pins
        become ids (the same token typed twice is then one pin). When that request was
        the last one asked, it stays "asked" in its id form, so nothing re-runs."""
        self.unresolved_pin = None
        if request.options.track != tuple(self.pins):
            return  # the pins changed since: the next run resolves those
        self.pins = list(tracked_ids)
        if self.last_request == request:
            self.last_request = self.request()
    @property
    def has_prompt(self) -> bool:
        """Whether there is anything to run the lens on."""
        return bool(self.prompt_text.strip() or self.steps or self.prompt_ids)

    # ---------------------------------------------------------------- what the user does

    def set_text(self, text: str) -> None:
        """A new prompt text: the generated steps belonged to the old one."""
        if text != self.prompt_text:
            self.steps.clear()
            self.queued_steps = 0
            self.prompt_ids = None
            self.prompt_text = text

    def step(self, ids: tuple[int, ...], text: str, piece: str, *, steered: bool = False) -> None:
        self.steps.append(Step(ids, text, piece, steered))

    def queue_step(self) -> None:
        self.queued_steps += 1

    def take_queued_step(self) -> bool:
        """One queued step is due (a lens answer arrived); False when none is queued."""
        if not self.queued_steps:
            return False
        self.queued_steps -= 1
        return True

    def unstep(self) -> bool:
        """Drop the last generated token; False when there is none."""
        if not self.steps:
            return False
        self.steps.pop()
        return True

    def forget_model(self) -> None:
        """Another model was loaded: every id here was the old tokenizer's (the generated
        steps, an id prompt, the target, the pins); the prompt text stays."""
        self.steps.clear()
        self.prompt_ids = None
        self.target = None
        self.pins.clear()
        self.last_request = None
        self.lens_paths.clear()  # a learned lens belongs to one model
        if not self.lens_ready(self.lens_kind):
            self.lens_kind = "logit"

    def restore(
        self,
        request: RunLens,
        *,
        text: str,
        chat: bool,
        prompt_ids: Optional[tuple[int, ...]],
        steps: list[Step],
        target: Optional[int],
        pins: list[Union[int, str]],
        lens: str,
    ) -> None:
        """Take a whole state at once, as if typed, stepped and picked (a talk's scene);
        ``request`` is the lens run that state is, already answered."""
        self.prompt_text = text
        self.chat = chat
        self.prompt_ids = prompt_ids
        self.steps = list(steps)
        self.target = target
        self.pins = list(pins)
        self.lens_kind = lens
        self.incl_mid = request.options.incl_mid
        if lens == "patchscope":
            self.patchscope_target = request.options.patchscope_target
        self.submitted(request)

    def set_chat(self, chat: bool) -> None:
        self.chat = chat
        self.steps.clear()
        self.queued_steps = 0

    def set_target(self, token_id: Optional[int]) -> None:
        self.target = token_id

    def set_lens(self, kind: str) -> None:
        self.lens_kind = kind
        if kind in BLOCK_OUTPUT_LENSES:
            self.incl_mid = False  # the extended decoder, the learned lenses and the Patchscope read block outputs only

    def lens_ready(self, kind: str) -> bool:
        """Whether a run of ``kind`` has a file to read (always, for the built-in lenses)."""
        return kind not in LEARNED_LENSES or kind in self.learned_available or kind in self.lens_paths

    def next_lens(self) -> str:
        """The lens variant after the current one (cycling; learned lenses without a file
        are skipped)."""
        start = LENS_KINDS.index(self.lens_kind)
        for step in range(1, len(LENS_KINDS) + 1):
            kind = LENS_KINDS[(start + step) % len(LENS_KINDS)]
            if self.lens_ready(kind):
                return kind
        return self.lens_kind

    def set_patchscope_target(self, text: Optional[str]) -> None:
        """Read the Patchscope through ``text`` from now on (None: the default target)."""
        self.patchscope_target = text or None
        self.set_lens("patchscope")

    def use_lens_file(self, kind: str, path: str) -> None:
        """Read the learned lens ``kind`` from ``path`` from now on (and show it)."""
        self.lens_paths[kind] = path
        self.set_lens(kind)

    def toggle_mid(self) -> None:
        self.incl_mid = not self.incl_mid
        if self.incl_mid and self.lens_kind in BLOCK_OUTPUT_LENSES:
            self.lens_kind = "logit"

    # ---------------------------------------------------------------- what the prompt line says

    def info(self, *, chat_available: bool, chat_key: str, unstep_key: str, step_key: str) -> str:
        """The line under the prompt: chat template state and the generated steps."""
        parts = []
        if chat_available:
            parts.append(f"chat template {'on' if self.chat else 'off'} ({chat_key})")
        if self.steps:
            shown = " ".join(step.label for step in self.steps[-SHOWN_STEPS:])
            more = "… " if len(self.steps) > SHOWN_STEPS else ""
            parts.append(f"+{len(self.steps)} generated: {more}{shown} ({unstep_key} undo)")
        if self.queued_steps:
            plural = "s" if self.queued_steps > 1 else ""
            parts.append(f"{self.queued_steps} more step{plural} queued")
        if not self.steps and not self.queued_steps:
            parts.append(f"{step_key} appends the model's next token")
        return " · ".join(parts)
