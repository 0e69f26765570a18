"""The lens kinds: one object per kind, each turning the residual stack into what the
readout reads (tuned-lens style: a lens transforms a row; the readout is shared).

- ``logit``: the rows as they are, through the final norm (the classic logit lens);
- ``raw``: the rows as they are, without the final norm;
- ``extended``: the last N blocks join the decoder: a row from before block L-N is written
  into block L-N's input and run through the rest of the model (attention over every
  position, rows batched); rows from the cut on read as the model's output (nostalgebraist's
  "extended decoder" for gpt-neo);
- ``tuned`` and ``jacobian``: a fitted translator per row, read from a file
  (``lens/learned.py``);
- ``patchscope``: each row patched into a target prompt's last position, the model run
  on from that row, its output read there (``lens/patchscope.py``).

:func:`make_lens` validates a request's options against the model and returns the kind's
object; a ``LensState`` keeps it while the options stay the same (the extended lens's decoded
stack lives in it, and is dropped when the state switches to another lens).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Sequence

import torch

from lenstui.core.errors import InputError, quoted
from lenstui.core.learned_lens import LensFile
from lenstui.core.lenses import LEARNED_LENSES, LENS_KINDS, LensOptions

# Positions x rows per extended-decoder forward (bounds its activation memory).
EXTENDED_TOKENS_PER_PASS = 4096


class Lens(Protocol):
    """What every lens kind answers (the readout reads what ``rows`` returns)."""

    kind: str
    apply_norm: bool  # read through the model's final norm (raw: no)
    incl_mid: bool  # whether the rows include the mid-block residuals

    @property
    def stamp(self) -> str:
        """What makes its cells differ from another lens object's of the same kind (a
        learned lens's file); "" when nothing does."""

    @property
    def file(self) -> Optional[LensFile]:
        """The file a learned lens reads, else None."""

    def rows(self, state: Any, positions: Sequence[int]) -> torch.Tensor:
        """[rows, len(positions), d]: what the readout reads at ``positions``."""

    # Optional: positions read per pass by a lens that runs the model per cell (absent or
    # None: as many as the readout takes at once). Streams and cancels in parts that size.
    # positions_per_pass: Optional[int]


@dataclass
class LogitLens:
    """The residual stack as it is (mid-block rows interleaved when asked)."""

    incl_mid: bool = False
    kind: str = "logit"
    apply_norm: bool = True
    stamp: str = ""
    file: Optional[LensFile] = None

    def rows(self, state, positions):
        return state.stack(positions, self.incl_mid)


@dataclass
class RawLens(LogitLens):
    kind: str = "raw"
    apply_norm: bool = False


@dataclass
class ExtendedLens:
    blocks: int = 1
    kind: str = "extended"
    apply_norm: bool = True
    incl_mid: bool = False
    stamp: str = ""
    file: Optional[LensFile] = None
    # (the stack's version, its decoded rows): decoded once per forward, for all positions
    _decoded: Optional[tuple[int, torch.Tensor]] = field(default=None, repr=False, compare=False)

    def rows(self, state, positions):
        index = torch.tensor(list(positions), device=state.device)
        return self.decoded(state)[:, index]

    def decoded(self, state) -> torch.Tensor:
        if self._decoded is None or self._decoded[0] != state.version:
            self._decoded = (state.version, extended_decode(state.model, state.ids, state.stack_all(), self.blocks))
        return self._decoded[1]


@dataclass
class TranslatedLens:
    """A learned lens: its translators applied to the block-output rows."""

    learned: Any  # engine.lens.learned.LearnedLens
    kind: str = "tuned"
    apply_norm: bool = True
    incl_mid: bool = False

    @property
    def stamp(self) -> str:
        return self.learned.stamp

    @property
    def file(self) -> Optional[LensFile]:
        return self.learned.file

    def rows(self, state, positions):
        return self.learned.apply(state.stack(positions, False), list(positions))

    def __eq__(self, other) -> bool:
        return isinstance(other, TranslatedLens) and other.kind == self.kind and other.stamp == self.stamp


@dataclass
class PatchscopeLens:
    """The Patchscope: the rows are the target run's last residual after patching."""

    target: str  # the target prompt's text
    kind: str = "patchscope"
    apply_norm: bool = True
    incl_mid: bool = False
    file: Optional[LensFile] = None
    positions_per_pass: int = 8  # a column is ~(L+1)/2 forwards of one token: stream in small parts

    @property
    def stamp(self) -> str:
        return f"patchscope|{self.target}"  # another target: other cells

    def rows(self, state, positions):
        from lenstui.engine.lens.patchscope import patched_rows, patchscope_target

        return patched_rows(state.model, patchscope_target(state.model, self.target), state.stack(positions, False))


def make_lens(model: Any, options: LensOptions, current: Optional[Lens] = None) -> Lens:
    """The lens ``options`` ask for on ``model`` (``current`` when it is the same lens, so
    what it built is kept). Raises InputError for options the model cannot read."""
    kind = options.lens
    if kind not in LENS_KINDS:
        raise InputError(f"Unknown lens {quoted(kind)}: choose one of {', '.join(LENS_KINDS)}.")
    if options.incl_mid:
        from lenstui.engine.model.anatomy import mid_rows_missing

        missing = mid_rows_missing(model)  # parallel attention, SSM blocks: one sentence, what exists instead
        if missing:
            raise InputError(missing)
    if kind == "extended":
        if not 1 <= options.extended_blocks < model.n_layers:
            raise InputError(f"The extended lens needs 1..{model.n_layers - 1} decoder blocks, not {options.extended_blocks}.")
        if options.incl_mid:
            raise InputError("The extended lens reads block outputs only: turn mid-block rows off.")
        lens: Lens = ExtendedLens(options.extended_blocks)
    elif kind in LEARNED_LENSES:
        from lenstui.engine.lens.learned import learned_lens

        if options.incl_mid:
            raise InputError(f"The {kind} lens has translators for block outputs only: turn mid-block rows off.")
        lens = TranslatedLens(learned_lens(model, kind, options.lens_path), kind=kind)
    elif kind == "patchscope":
        from lenstui.engine.lens.patchscope import patchscope_target, target_text

        if options.incl_mid:
            raise InputError("The Patchscope patches block outputs only: turn mid-block rows off.")
        lens = PatchscopeLens(target_text(options.patchscope_target))
        patchscope_target(model, lens.target)  # a target the model cannot read fails here, in one sentence
    elif kind == "raw":
        lens = RawLens(options.incl_mid)
    else:
        lens = LogitLens(options.incl_mid)
    return current if current is not None and current == lens else lens


def extended_decode(model: Any, ids: list[int], pre: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """Rows before the cut run through the last ``n_blocks`` blocks; [rows, pos, d] -> same.

    Row i of the (mid-free) stack is block i's input; rows >= cut already passed the cut
    and read as the model's output. Early rows are batched, a few at a time, each a run of
    the model from the cut (``engine/model/forward.py``) with that row as its input.
    """
    from lenstui.engine.model.forward import Site, forward_for

    n_layers = model.n_layers
    cut = n_layers - n_blocks
    early = list(range(min(cut, pre.shape[0])))
    out = pre.clone()
    out[cut:] = pre[-1]
    if not early:
        return out
    forward = forward_for(model)
    last = Site("resid", n_layers - 1)
    tokens = torch.tensor([ids], device=model.input_device)
    per_pass = max(1, EXTENDED_TOKENS_PER_PASS // len(ids))
    for first in range(0, len(early), per_pass):
        rows = early[first : first + per_pass]
        run = forward.run(tokens.expand(len(rows), -1), start_block=cut, hidden=pre[rows], reads=[last])
        out[rows] = run.values[last].to(out.dtype)
    return out
