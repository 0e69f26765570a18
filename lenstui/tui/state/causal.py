"""The causal lens in the explorer: patches, sweeps and steering (``engine.patching``).

- **Source.** In the compare view, ``m`` marks prompt B at its compared position (the
  table's row is the layer ``p`` will use there) as the patch source.
- **Patch.** ``p`` on a grid cell of A (or on a compare-view row) runs ``RunPatch``: B's
  activation at the cell's layer (the residual by default; the palette switches to the
  attention or MLP output) replaces A's at the cell's position. The grid shows the
  patched run with its causal cone shaded and ``patched: B@Q L3 -> A@P`` in its title;
  ``Esc`` puts the clean run back, from the explorer's own result (nothing recomputed).
  The palette also zero- or mean-ablates the cell (no source needed).
- **Sweep.** ``w`` in the compare view, or the palette, patches at every layer (or every
  position) and plots the target's probability (``screens/sweep.py``).
- **Steer.** The palette's "steer: toward the selected token" adds alpha median residual
  norms of that token's readout direction after the cursor's layer at every position;
  ``+``/``-`` change alpha by ``ALPHA_STEP``; ``Ctrl+N`` generates under the steer; the
  status line names the steer; ``Esc`` clears it (the clean run was never changed).

The state here is plain (``CausalState``); the helpers take the app as a ``CausalHost``.
While a steer is on, every new clean lens answer (a step, an edit, a pin) is steered
again (``CausalFeature``, the lens flow's seam); which run the grid shows, clean, patched
or steered, is decided in one place (``grid_run.py``), so it never flickers to the clean
run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol, Union

from textual.app import SystemCommand

from lenstui.core.lens_result import LensResult
from lenstui.core.patch_result import PatchResult, PatchSite, SteerResult, SteerSetting
from lenstui.core.textfmt import visible
from lenstui.jobs.protocol import Done, Failed, Result, RunLens, RunPatch, RunSteer, RunSweep
from lenstui.tui.host import ExplorerHost
from lenstui.tui.state.grid_run import paint
from lenstui.tui.state.lens_feature import LensFeature

ALPHA_STEP = 0.05  # alpha is in median residual norms: 0.1-0.5 already steer SmolLM2
DEFAULT_ALPHA = 0.25
COMPONENT_NAMES = {"resid": "the residual", "attn": "the attention output", "mlp": "the MLP output"}


@dataclass(frozen=True)
class PatchSource:
    """Prompt B at one position, as the compare view ran it."""

    prompt_ids: tuple[int, ...]
    position: int  # Q
    token_text: str  # B's token at Q
    layer: str  # the row it was marked on


@dataclass
class Steer:
    toward: int
    toward_text: str
    layer: str  # a row label: "embed", "L12"
    alpha: float = DEFAULT_ALPHA
    scale: Optional[float] = None  # the median residual norm, fixed by the first run

    @property
    def label(self) -> str:
        return f"steer {visible(self.toward_text)} ×{self.alpha:g} at {self.layer}"


@dataclass
class CausalState:
    """What the causal lens holds between keys: plain data, no widgets."""

    source: Optional[PatchSource] = None
    component: str = "resid"  # what `p` patches
    steer: Optional[Steer] = None
    shown: Union[PatchResult, SteerResult, None] = None  # the causal run on the grid
    queued_steps: int = 0  # ^n pressed while the steered answer was on its way
    sweeps: list = field(default_factory=list)  # finished sweeps, newest last (tests read them)

    @property
    def steering(self) -> bool:
        return self.steer is not None


class CausalHost(ExplorerHost, Protocol):
    causal: CausalState


# ---------------------------------------------------------------- keys: when they apply

KEYS = ("patch_cell", "restore_clean", "steer_more", "steer_less")


def check_action(host: CausalHost, action: str) -> Optional[bool]:
    """Whether one of the causal keys applies now (None: not one of them). ``p`` is the
    inspector's key unless a source is marked; ``Esc`` focuses the grid unless a patch
    or steer is on show; ``+``/``-`` only steer."""
    if action not in KEYS:
        return None
    state = host.causal
    on_grid = host.screen is host.base_screen
    if action == "patch_cell":
        return on_grid and state.source is not None
    if action == "restore_clean":
        return on_grid and (state.shown is not None or state.steering) and host.grid.has_focus
    return on_grid and state.steering


# ---------------------------------------------------------------- the source and patches


def mark_source(host: CausalHost, prompt_ids, position: int, token_text: str, layer: str) -> None:
    host.causal.source = PatchSource(tuple(prompt_ids), position, token_text, layer)
    key = host.key_for("lenstui.patch")
    host.notify(
        f"Patch source: B@{position} ({visible(token_text)}). {key} on a cell of A patches B's "
        f"{COMPONENT_NAMES.get(host.causal.component, host.causal.component)} at that cell's layer; "
        "w (here) sweeps every layer.",
        title="Patch",
        timeout=6,
    )


def _site(host: CausalHost, layer: str, component: str) -> Optional[tuple[str, str]]:
    """(layer, component) for a row label; a mid row patches that block's attention."""
    block, _, mid = layer.partition(".")
    if mid:
        if component != "attn":
            host.notify(
                f"{layer} is the residual after block {block[1:]}'s attention: patch a block's row, "
                "or switch the palette's patch component to the attention output.",
                severity="warning",
                timeout=6,
            )
            return None
        return block, component
    if layer == "embed" and component != "resid":
        host.notify("The embedding has no attention or MLP output: pick a block's row.", severity="warning", timeout=4)
        return None
    return layer, component


def patch_at(
    host: CausalHost,
    prompt_a,
    layer: str,
    position: int,
    *,
    ablate: Optional[str] = None,
    from_position: Optional[int] = None,
) -> bool:
    """Submit a patch of A's cell (``layer`` row, ``position``): from the marked source,
    or ablated. Returns whether a request went out."""
    state = host.causal
    if ablate is None and state.source is None:
        host.notify("Mark a source first: open the compare view (C), Tab to the table, m.", severity="warning", timeout=5)
        return False
    site = _site(host, layer, state.component)
    if site is None:
        return False
    block, component = site
    source = state.source
    site = PatchSite(
        layer=block,
        position=position,
        component=component,
        from_position=None if ablate is not None else (source.position if from_position is None else from_position),
    )
    request = RunPatch(
        tuple(prompt_a),
        None if ablate is not None else source.prompt_ids,
        site=site,
        ablate=ablate,
        options=host.session.options(),
    )
    host.submit(request)
    host.status.set_causal("patching…")
    return True


def patch_cursor(host: CausalHost, ablate: Optional[str] = None) -> None:
    """``p`` (or the palette's ablations) on the grid's cursor cell."""
    cell = host.grid.current_cell
    result = host.shown_result
    if cell is None or result is None:
        host.notify("Run the lens first, then put the cursor on a cell of A.", severity="warning", timeout=3)
        return
    patch_at(host, result.token_ids, cell.layer, cell.position, ablate=ablate)


def set_component(host: CausalHost, component: str) -> None:
    host.causal.component = component
    host.notify(f"p patches {COMPONENT_NAMES[component]} now.", title="Patch", timeout=3)


def restore_clean(host: CausalHost) -> None:
    """Esc: the clean run back on the grid, from the explorer's own result; a steer ends."""
    state = host.causal
    if state.shown is None and not state.steering:
        host.notify("The grid shows the clean run already.", timeout=2)
        return
    was = "steer cleared" if state.steering else "clean run"
    state.shown = None
    state.steer = None
    state.queued_steps = 0
    host.status.set_causal("")
    paint(host)
    host.notify(f"{was.capitalize()}: the clean grid, from the cache.", timeout=2)


# ---------------------------------------------------------------- sweeps


def sweep(host: CausalHost, prompt_a, position: int, *, mode: str = "layers", layer: Optional[str] = None,
          prompt_b=None, from_position: Optional[int] = None) -> bool:
    state = host.causal
    source = state.source
    if prompt_b is None:
        if source is None:
            host.notify("Mark a source first: open the compare view (C), Tab to the table, m.", severity="warning", timeout=5)
            return False
        prompt_b = source.prompt_ids
        from_position = source.position if from_position is None else from_position
    if mode == "positions" and layer is not None:
        site = _site(host, layer, state.component)
        if site is None:
            return False
        layer = site[0]
    elif mode == "layers":
        layer = None  # every layer
    session = host.session
    host.submit(
        RunSweep(
            tuple(prompt_a),
            tuple(prompt_b),
            mode=mode,
            site=PatchSite(
                layer=layer,
                position=position,
                component=state.component,
                from_position=from_position if mode == "layers" else None,
            ),
            target=session.target,
            track=tuple(session.pins),
        )
    )
    host.notify(f"Sweeping every {'layer' if mode == 'layers' else 'position'}…", title="Patch sweep", timeout=3)
    return True


def sweep_cursor(host: CausalHost, mode: str) -> None:
    cell = host.grid.current_cell
    result = host.shown_result
    if cell is None or result is None:
        host.notify("Run the lens first, then put the cursor on a cell of A.", severity="warning", timeout=3)
        return
    sweep(host, result.token_ids, cell.position, mode=mode, layer=cell.layer)


# ---------------------------------------------------------------- steering


def steer_selected(host: CausalHost, alpha: float = DEFAULT_ALPHA) -> None:
    """The palette's "steer: toward the selected token": the cursor cell's token, after
    the cursor's layer, from position 0."""
    cell = host.grid.current_cell
    if cell is None or host.shown_result is None:
        host.notify("Run the lens first, then select the token to steer toward.", severity="warning", timeout=3)
        return
    if "." in cell.layer:
        host.notify("Steer after a block: put the cursor on a block's row (embed, L0, L1, ...).", severity="warning", timeout=4)
        return
    host.causal.steer = Steer(cell.token_id, cell.text, cell.layer, alpha)
    host.causal.queued_steps = 0
    _submit_steer(host)


def change_alpha(host: CausalHost, delta: float) -> None:
    steer = host.causal.steer
    if steer is None:
        return
    steer.alpha = round(steer.alpha + delta, 6)
    _submit_steer(host)


def _submit_steer(host: CausalHost) -> None:
    steer = host.causal.steer
    result = host.shown_result
    if steer is None or result is None:
        return
    host.status.set_causal(f"{steer.label} (steering…)")
    host.submit(
        RunSteer(
            tuple(result.token_ids),
            SteerSetting(steer.toward, layer=steer.layer, alpha=steer.alpha, scale=steer.scale),
            options=host.session.options(),
        )
    )


def step_under_steer(host: CausalHost) -> bool:
    """^n while steering: append the steered run's next token (once its answer for the
    current prompt is in; until then the step waits). False when not steering."""
    state = host.causal
    if not state.steering:
        return False
    shown = state.shown
    result = host.shown_result
    session = host.session
    if (
        not isinstance(shown, SteerResult)
        or result is None
        or shown.steered.token_ids != result.token_ids
        # The clean run of a step just taken is on its way: the steered answer on show is
        # for the prompt before it (stepping from it would append the same token again).
        or (session.last_request != host.shown_request and not session.last_failed)
    ):
        state.queued_steps += 1
        return True
    token = shown.steered.next_token
    host.session.step(tuple(result.token_ids) + (token.id,), token.text, token.piece, steered=True)
    host.rerun_lens()
    return True


# ---------------------------------------------------------------- the lens and the worker


def _drop_patch(host: CausalHost) -> None:
    """A new clean run of the lens: a patch on show gives way to it."""
    state = host.causal
    if isinstance(state.shown, PatchResult):
        state.shown = None
        host.status.set_causal("")


class CausalFeature(LensFeature):
    """The causal lens on the lens flow's seam (``lens_feature.py``): a new clean
    run drops a patch on show, and is steered again while a steer is on; ^n steps the
    steered run; ``p``, ``Esc``, ``+`` and ``-`` apply at times."""

    def __init__(self, host: CausalHost) -> None:
        self.host = host

    def run_streaming(self) -> None:
        if not self.host.causal.steering:  # (a steered run stays until it is steered again)
            _drop_patch(self.host)

    def run_shown(self, result: LensResult, request: RunLens) -> None:
        if self.host.causal.steering:
            _submit_steer(self.host)  # the grid keeps the steered run until this lands
        else:
            _drop_patch(self.host)

    def take_step(self) -> bool:
        return step_under_steer(self.host)

    def check_action(self, action: str) -> Optional[bool]:
        return check_action(self.host, action)


def on_reply(host: CausalHost, result: Result) -> None:
    """A worker answer to a causal request (stale ones were dropped already)."""
    state = host.causal
    request = result.request
    if isinstance(result, Failed):
        if isinstance(request, RunSteer):
            state.steer = None
            state.queued_steps = 0
            if isinstance(state.shown, SteerResult):  # the last steered grid goes too
                state.shown = None
            paint(host)
        _refresh_status(host)  # whatever is still on show (a failed patch leaves the last one)
        return  # the app has shown the failure as a notice
    if not isinstance(result, Done):
        return
    if isinstance(request, RunPatch):
        _show_patch(host, result.value)
    elif isinstance(request, RunSteer):
        _show_steer(host, request, result.value)
    elif isinstance(request, RunSweep):
        from lenstui.tui.screens.sweep import SweepScreen

        state.sweeps.append(result.value)
        host.push_screen(SweepScreen(result.value))


def _show_patch(host: CausalHost, value: PatchResult) -> None:
    state = host.causal
    if state.steering:  # a steer started meanwhile: it owns the grid
        return
    state.shown = value
    paint(host)
    _refresh_status(host)


def _show_steer(host: CausalHost, request: RunSteer, value: SteerResult) -> None:
    state = host.causal
    steer = state.steer
    setting = request.setting
    if steer is None or setting.toward != steer.toward or setting.alpha != steer.alpha or setting.layer != steer.layer:
        return  # cleared, or changed since: a newer RunSteer is on its way
    if steer.scale is None:
        steer.scale = value.spec.scale
    state.shown = value
    paint(host)
    _refresh_status(host)
    if state.queued_steps and host.shown_result is not None and value.steered.token_ids == host.shown_result.token_ids:
        state.queued_steps -= 1
        step_under_steer(host)


def forget_model(host: CausalHost) -> None:
    """Another model was loaded: the source's ids, a patch and a steer were the old one's."""
    state = host.causal
    state.source = None
    state.shown = None
    state.steer = None
    state.queued_steps = 0
    host.status.set_causal("")


def _refresh_status(host: CausalHost) -> None:
    """The status line's causal part for what is on show."""
    state = host.causal
    shown = state.shown
    key = host.key_for("lenstui.restore_clean")
    if isinstance(shown, PatchResult):
        before, after = shown.target_before[-1][-1], shown.target_after[-1][-1]
        target = visible(shown.patched.targets[-1].text)
        host.status.set_causal(f"patched: {shown.spec.label} · P({target}) {before:.3f}→{after:.3f} · {key} restores")
    elif state.steer is not None and isinstance(shown, SteerResult) and state.steer.scale is not None:
        steer = state.steer
        norm = abs(steer.alpha) * steer.scale
        host.status.set_causal(
            f"{steer.label} · norm {norm:.0f} (median |resid| {steer.scale:.0f}) · +/- alpha · {key} clears"
        )
    else:
        host.status.set_causal("")


# ---------------------------------------------------------------- the palette


def commands(host: CausalHost):
    key = host.key_for
    yield SystemCommand(
        "patch: the cursor's cell from the marked source",
        f"B's activation at the cell's layer replaces A's ({key('lenstui.patch')}; mark B@Q in the compare view with m)",
        lambda: patch_cursor(host),
    )
    yield SystemCommand("patch: zero-ablate the cursor's cell", "its activation set to 0 (the component chosen below)", lambda: patch_cursor(host, "zero"))
    yield SystemCommand("patch: mean-ablate the cursor's cell", "its activation set to its mean over A's positions 1..", lambda: patch_cursor(host, "mean"))
    for component, name in COMPONENT_NAMES.items():
        yield SystemCommand(f"patch: component {component}", f"p patches {name}", lambda c=component: set_component(host, c))
    yield SystemCommand("patch: sweep every layer at the cursor's position", "the target's probability per layer, plotted", lambda: sweep_cursor(host, "layers"))
    yield SystemCommand("patch: sweep every position at the cursor's layer", "prompt B as long as A", lambda: sweep_cursor(host, "positions"))
    yield SystemCommand("patch: restore the clean run", key("lenstui.restore_clean"), lambda: restore_clean(host))
    yield SystemCommand(
        "steer: toward the selected token",
        f"add its readout direction after the cursor's layer (+/- alpha, {key('lenstui.restore_clean')} clears)",
        lambda: steer_selected(host),
    )
    yield SystemCommand("steer: away from the selected token", "the same direction, alpha negative", lambda: steer_selected(host, -DEFAULT_ALPHA))
    yield SystemCommand("steer: clear", key("lenstui.restore_clean"), lambda: restore_clean(host))
