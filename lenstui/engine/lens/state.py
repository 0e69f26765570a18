"""What the lens has already computed for a model, so the next run computes only what changed.

One :class:`LensState` per loaded model (``lens_state(model)``) keeps:
- the last run's token ids, the model's KV cache and the residual stack
  ``[rows, positions, d_model]`` (block inputs, the last block's output, and the
  mid-block residuals once they were asked for);
- the cells already read out, per position, for the current readout settings.

In a causal model position p depends on tokens 0..p only, so a new prompt that shares
its first c tokens with the last one keeps positions < c: the forward pass runs for the
new tokens only (the KV cache, cropped to c, supplies the prefix), and only positions
>= c are read out. A generation step is one position; an undo (a prefix of the last
ids) runs nothing at all. Changing top-k, the target or the lens variant keeps the
forward and redoes the readout; the extended lens reruns its decoder blocks over the
cached stack (every position: its early rows attend over the whole prefix) but never the
model's forward.

The API is two-step so the app can paint what is visible first:
``plan = state.prepare(ids, ...)`` (validates, runs the forward for the new tokens),
then ``state.cells(positions)`` -> :class:`LensColumns` for just those positions
(computed or from the cache), and ``state.result()`` -> the whole :class:`LensResult`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch

from lenstui.core.callbacks import StopCheck, check_stop
from lenstui.core.errors import InputError
from lenstui.core.lens_result import LensCell, LensResult, TopToken, TrackedValue
from lenstui.core.learned_lens import LensFile
from lenstui.core.lenses import MAX_TOP_K, MAX_TRACKED, LensOptions
from lenstui.core.tokens import TokenRef
from lenstui.engine.lens.kinds import Lens, make_lens
from lenstui.engine.lens.readout import read_out, unembedding
from lenstui.engine.model.anatomy import has_recurrent_state, mid_label
from lenstui.engine.model.forward import forward_for, kv_prefix, stack_sites
from lenstui.engine.model.load import LoadedModel
from lenstui.engine.model.vocab import encode_prompt, resolve_token, token_ref

# Residual vectors per read_out call: enough to keep the GEMM efficient, few enough that
# a chunk of positions (its [vectors, vocab block] working set) returns quickly.
VECTORS_PER_CHUNK = 512


@dataclass(frozen=True)
class LensSettings:
    """The readout settings; changing any of them keeps the forward, redoes the readout."""

    top_k: int = 10
    lens: str = "logit"
    extended_blocks: int = 0  # 0 unless lens == "extended"
    incl_mid: bool = False
    target_id: Optional[int] = None  # None: each position's own final top-1
    track_ids: tuple[int, ...] = ()  # tokens whose probability and rank every cell reports
    lens_file: str = ""  # a learned lens's file (lens "tuned" or "jacobian"), resolved


@dataclass
class LensPlan:
    """What ``prepare`` settled: the prompt, the rows and which positions are new."""

    model: str
    settings: LensSettings
    tokens: list[TokenRef]
    layers: list[str]
    reused_positions: int  # positions whose cells were kept from the last run
    forward_positions: int  # positions the model's forward pass ran for
    tracked: list[TokenRef] = field(default_factory=list)
    lens_file: Optional[LensFile] = None  # the learned lens's file, when the lens is one
    patchscope_target: Optional[str] = None  # the Patchscope's target prompt, when the lens is one

    @property
    def n_positions(self) -> int:
        return len(self.tokens)

    def result(self, columns: "LensColumns", *, subset: bool = True, seconds: float = 0.0) -> LensResult:
        """The one builder of a LensResult from computed columns: a subset (its
        ``positions`` are the columns; a streamed chunk, ``--positions``) or, with
        ``subset=False``, the whole grid in position order."""
        settings = self.settings
        return LensResult(
            model=self.model,
            lens=settings.lens,
            tokens=self.tokens,
            layers=self.layers,
            grid=columns.cells,
            targets=columns.targets,
            target_is_default=settings.target_id is None,
            seconds=seconds,
            extended_blocks=settings.extended_blocks,
            positions=list(columns.positions) if subset else None,
            tracked=self.tracked,
            top_k=settings.top_k,
            lens_file=self.lens_file,
            patchscope_target=self.patchscope_target,
        )


@dataclass
class LensColumns:
    """Cells for some positions: ``cells[row][i]`` is row ``row`` at ``positions[i]``."""

    positions: list[int]
    cells: list[list[LensCell]]
    targets: list[TokenRef]


def lens_state(model: LoadedModel, slot: str = "a") -> "LensState":
    """The model's lens state for ``slot`` (kept in its caches): slot "a" is the
    explorer's prompt, "b" the compare view's second prompt, each incremental on its own."""
    state = model.caches.lens_states.get(slot)
    if state is None:
        state = model.caches.lens_states[slot] = LensState(model)
    return state


def row_labels(n_layers: int, incl_mid: bool, anatomy=None) -> list[str]:
    """Row labels: "embed", then per block ("L3.attn" mid rows when asked; "L3.conv",
    "L3.ssm" after a block's other first sublayer, per the model's anatomy) "L3"."""
    labels = ["embed"]
    for layer in range(n_layers):
        if incl_mid:
            labels.append(mid_label(anatomy, layer))
        labels.append(f"L{layer}")
    return labels


class LensState:
    def __init__(self, model: LoadedModel, intervention=None):
        self.model = model
        # What every forward of this state rewrites (lenstui.engine.causal: a patch or a
        # steer), asked per forward with ``intervention.edits(start, count)`` for the
        # positions start..start+count-1 it runs. None: the clean model.
        self.intervention = intervention
        # position -> the target id a cell there reads when the settings give none (a
        # patched run reads the clean run's targets); None: each position's own top-1.
        self.fixed_targets: Optional[dict[int, int]] = None
        self._ids: list[int] = []
        self._kv = None  # HF DynamicCache over self._ids, or None
        self._kv_works: Optional[bool] = None  # None until the first incremental forward
        self._capture_mid = False
        self._pre: Optional[torch.Tensor] = None  # [n_layers + 1, pos, d]: block inputs + last output
        self._mid: Optional[torch.Tensor] = None  # [n_layers, pos, d] when captured
        self._version = 0  # bumped whenever the stack changes
        self._lens: Optional[Lens] = None  # the lens kind's object (engine/lens/kinds.py)
        self._settings: Optional[LensSettings] = None
        self._options: Optional[LensOptions] = None  # the options of the last prepare()
        self._plan: Optional[LensPlan] = None  # what the last prepare() settled
        self._columns: dict[int, tuple[list[LensCell], TokenRef]] = {}
        self._final_top1: dict[int, int] = {}  # position -> the model's own top-1 there
        self.forward_count = 0  # forward passes run (tests and benches read it)

    # -- settings and the forward -------------------------------------------------------
    def prepare(
        self,
        prompt: Union[str, Sequence[int]],
        options: LensOptions = LensOptions(),
        should_stop: Optional[StopCheck] = None,
    ) -> LensPlan:
        """Validate, then bring the residual stack up to date for ``prompt`` (the forward
        for new tokens only). Raises InputError on bad input, Cancelled when superseded."""
        model = self.model
        if not 1 <= options.top_k <= min(MAX_TOP_K, model.d_vocab):
            raise InputError(f"top-k must be between 1 and {min(MAX_TOP_K, model.d_vocab)}, not {options.top_k}.")
        lens = make_lens(model, options, self._lens)
        ids = encode_prompt(model, prompt)
        target_id = None if options.target is None else resolve_token(model, options.target)
        track_ids: list[int] = []
        for spec in options.track:
            token_id = resolve_token(model, spec)
            if token_id not in track_ids:
                track_ids.append(token_id)
        if len(track_ids) > MAX_TRACKED:
            raise InputError(f"At most {MAX_TRACKED} tokens can be tracked at once, not {len(track_ids)}.")
        settings = LensSettings(
            top_k=options.top_k,
            lens=lens.kind,
            extended_blocks=options.extended_blocks if lens.kind == "extended" else 0,
            incl_mid=options.incl_mid,
            target_id=target_id,
            track_ids=tuple(track_ids),
            lens_file=lens.stamp,
        )
        check_stop(should_stop)
        kept, ran = self._update_stack(ids, options.incl_mid)
        check_stop(should_stop)
        if settings != self._settings:
            self._columns.clear()
            self._settings = settings
        self._options = options
        # A lens switched away from drops what it built (the extended lens's decoded
        # stack is as big as the residual stack; switching back decodes it again).
        self._lens = lens
        self._plan = LensPlan(
            model=model.name,
            settings=settings,
            tokens=[token_ref(model, i) for i in ids],
            layers=row_labels(model.n_layers, options.incl_mid, model.anatomy),
            reused_positions=len([p for p in self._columns if p < len(ids)]),
            forward_positions=ran,
            tracked=[token_ref(model, i) for i in track_ids],
            lens_file=lens.file,
            patchscope_target=getattr(lens, "target", None) if lens.kind == "patchscope" else None,
        )
        return self._plan

    def _shared_prefix(self, ids: list[int]) -> int:
        """How many leading positions ``ids`` shares with the ids read last."""
        common = 0
        for old, new in zip(self._ids, ids):
            if old != new:
                break
            common += 1
        return common

    def _update_stack(self, ids: list[int], incl_mid: bool) -> tuple[int, int]:
        """Keep what is shared with the last ids, run the forward for the rest.
        Returns (kept positions, positions the forward ran for)."""
        common = self._shared_prefix(ids)
        if incl_mid and not self._capture_mid:
            self._capture_mid = True
            common = 0  # the mid rows were never captured: one full forward adds them
        if self._pre is None:
            common = 0
        if common < len(self._ids):
            self._truncate(common)
        if common == len(ids):
            return common, 0
        # Without a usable KV cache the prefix's forward runs again (its cells are kept).
        start = common if self._kv is not None else 0
        self._forward(ids, start)
        return common, len(ids) - start

    def _truncate(self, keep: int) -> None:
        self._ids = self._ids[:keep]
        if keep == 0 or self._pre is None:
            self._pre = self._mid = None
            self._kv = None
        else:
            self._pre = self._pre[:, :keep]
            if self._mid is not None:
                self._mid = self._mid[:, :keep]
            if self._kv is not None and keep < self._kv.get_seq_length():
                self._kv.crop(keep - self._kv.get_seq_length())  # negative: tokens to drop
        self._version += 1
        for pos in [p for p in self._columns if p >= keep]:
            del self._columns[pos]
        for pos in [p for p in self._final_top1 if p >= keep]:
            del self._final_top1[pos]

    def _forward(self, ids: list[int], start: int) -> None:
        from transformers import DynamicCache

        model = self.model
        use_kv = self._kv_works is not False and not has_recurrent_state(model)  # (an SSM's state has no prefix)
        kv = self._kv if (use_kv and start > 0) else (DynamicCache() if use_kv else None)
        tokens = torch.tensor([ids[start:]], device=model.input_device)
        # The model computes its logits for the new positions anyway: their argmax is
        # each position's own top-1, the default target (as the lens always defined it).
        edits = list(self.intervention.edits(start, len(ids) - start)) if self.intervention is not None else []
        resid, mid = stack_sites(model.n_layers, self._capture_mid)
        forward = forward_for(model, [site for site, _ in edits] + mid)
        run = forward.run(tokens, kv=kv, edits=edits, reads=resid + mid, logits=True)
        logits = run.logits[0]
        self.forward_count += 1
        if kv is not None and kv.get_seq_length() != len(ids):
            if start > 0:
                # The cache did not take: this model cannot run incrementally. Redo from 0.
                self._kv_works = False
                self._kv = None
                self._forward(ids, 0)
                return
            self._kv_works = False
            kv = None
        elif kv is not None and start > 0:
            self._kv_works = True
        for offset, top1 in enumerate(logits.argmax(dim=-1).tolist()):
            self._final_top1[start + offset] = int(top1)
        del logits
        pre = torch.stack([run.values[site][0] for site in resid])
        mid_stack = torch.stack([run.values[site][0] for site in mid]) if mid else None
        self._append(start, pre, mid_stack)
        self._kv = kv
        self._ids = list(ids)

    def _append(self, start: int, pre: torch.Tensor, mid: Optional[torch.Tensor]) -> None:
        """Positions ``start..`` of the stack (and mid rows), float32 on a CPU."""
        if pre.device.type == "cpu":  # (float32 on a CPU, whatever the weights)
            pre = pre.to(torch.float32)
            mid = mid.to(torch.float32) if mid is not None else None
        if start == 0:
            self._pre, self._mid = pre, mid
        else:
            self._pre = torch.cat([self._pre, pre], dim=1)
            if mid is not None:
                self._mid = torch.cat([self._mid, mid], dim=1)
        self._version += 1

    # -- forks (lenstui.engine.causal) ---------------------------------------------------
    def fork(self, keep: int, intervention=None) -> "LensState":
        """A new state that shares this one's first ``keep`` positions (ids, residual
        stack, KV cache, cells and settings) and runs ``intervention`` in its forwards:
        its next ``prepare`` with this state's ids computes positions >= ``keep`` only.
        This state is not changed (the KV cache is shared as views: a DynamicCache
        grows by concatenation, never in place)."""
        keep = max(0, min(int(keep), len(self._ids)))
        other = LensState(self.model, intervention)
        other._kv_works = self._kv_works
        other._capture_mid = self._capture_mid
        other._settings = self._settings
        if keep > 0 and self._pre is not None:
            other._ids = self._ids[:keep]
            other._pre = self._pre[:, :keep]
            other._mid = self._mid[:, :keep] if self._mid is not None else None
            other._kv = kv_prefix(self._kv, keep) if self._kv is not None else None
            other._columns = {p: c for p, c in self._columns.items() if p < keep}
            other._final_top1 = {p: t for p, t in self._final_top1.items() if p < keep}
        return other

    def extend(self, ids: Sequence[int], pre: torch.Tensor, mid: Optional[torch.Tensor], kv) -> None:
        """Append positions ``len(ids so far)..`` computed elsewhere (a patched run
        resumed from a block): ``pre`` [n_layers + 1, new, d] and ``mid`` as the forward
        would capture them, and the KV cache now covering all of ``ids``."""
        start = len(self._ids)
        if list(ids[:start]) != self._ids or pre.shape[1] != len(ids) - start:
            raise ValueError("extend() takes the ids so far plus exactly the new positions")
        self._append(start, pre, mid)
        self._kv = kv
        self._ids = [int(i) for i in ids]

    @property
    def ids(self) -> list[int]:
        """The token ids the stack covers."""
        return list(self._ids)

    @property
    def kv_cache(self):
        """The KV cache over ``ids`` (None when this model runs without one)."""
        return self._kv

    def residual(self, row: int) -> torch.Tensor:
        """[positions, d]: block ``row``'s input (row ``n_layers``: the last block's
        output), i.e. the residual after block ``row - 1``; row 0 is the embedding."""
        return self._pre[row]

    def mid_residual(self, layer: int) -> Optional[torch.Tensor]:
        """[positions, d] after block ``layer``'s attention, when mid rows were captured."""
        return None if self._mid is None else self._mid[layer]

    def next_token_id(self) -> int:
        """The model's greedy next token after ``ids`` (this state's own final top-1)."""
        last = len(self._ids) - 1
        self._read_final_top1([last], None)
        return self._final_top1[last]

    # -- rows -----------------------------------------------------------------------------
    @property
    def version(self) -> int:
        """Bumped whenever the stack changes (what a lens built from it is keyed by)."""
        return self._version

    @property
    def device(self) -> torch.device:
        return self._pre.device

    def stack_all(self) -> torch.Tensor:
        """[n_layers + 1, positions, d]: every block input and the last block's output."""
        return self._pre

    def stack(self, positions: Sequence[int], incl_mid: bool) -> torch.Tensor:
        """[rows, len(positions), d] in row order, the mid residuals interleaved when asked."""
        index = torch.tensor(list(positions), device=self._pre.device)
        pre = self._pre[:, index]
        if not incl_mid:
            return pre
        mid = self._mid[:, index]
        rows = [pre[0]]
        for layer in range(self.model.n_layers):
            rows.append(mid[layer])
            rows.append(pre[layer + 1])
        return torch.stack(rows)

    # -- the readout ----------------------------------------------------------------------
    def computed_positions(self) -> list[int]:
        """Positions whose cells are already read out for the current settings (free to ask)."""
        return sorted(p for p in self._columns if p < len(self._ids))

    def cells(self, positions: Sequence[int], should_stop: Optional[StopCheck] = None) -> LensColumns:
        """The cells at ``positions`` (computed now, or kept from earlier), in that order."""
        if self._settings is None:
            raise RuntimeError("prepare() first")
        n = len(self._ids)
        wanted = []
        for pos in positions:
            pos = int(pos)
            if not 0 <= pos < n:
                raise InputError(f"Position {pos} is outside the prompt (0..{n - 1}).")
            wanted.append(pos)
        missing = sorted({p for p in wanted if p not in self._columns})
        n_rows = len(row_labels(self.model.n_layers, self._settings.incl_mid))
        # Always: the final top-1 is an extra target of every row (prediction depth).
        self._read_final_top1(missing, should_stop)
        per_chunk = max(1, VECTORS_PER_CHUNK // n_rows)
        # A lens that runs the model per cell (the Patchscope) reads a few positions at a
        # time, so a superseding request waits for one small part only.
        per_chunk = min(per_chunk, getattr(self._lens, "positions_per_pass", None) or per_chunk)
        for first in range(0, len(missing), per_chunk):
            check_stop(should_stop)
            self._read_positions(missing[first : first + per_chunk], should_stop)
        columns = [self._columns[p] for p in wanted]
        return LensColumns(
            positions=wanted,
            cells=[[col[0][row] for col in columns] for row in range(n_rows)],
            targets=[col[1] for col in columns],
        )

    def result(self, should_stop: Optional[StopCheck] = None, started: Optional[float] = None) -> LensResult:
        """Every position: the whole grid (cells kept from earlier runs are reused)."""
        columns = self.cells(range(len(self._ids)), should_stop)
        seconds = 0.0 if started is None else time.perf_counter() - started
        return self._plan.result(columns, subset=False, seconds=seconds)

    @property
    def options(self) -> Optional[LensOptions]:
        """The options of the last prepare() (None before the first)."""
        return self._options

    @property
    def lens(self) -> Optional[Lens]:
        """The lens kind's object of the last prepare() (None before the first)."""
        return self._lens

    @property
    def settings(self) -> Optional[LensSettings]:
        """The readout settings of the last prepare() (None before the first)."""
        return self._settings

    def rows_at(self, position: int) -> torch.Tensor:
        """[rows, d]: the residual of every row at one position, for the current settings
        (the extended lens: its decoded rows)."""
        if self._settings is None:
            raise RuntimeError("prepare() first")
        return self._lens.rows(self, [position])[:, 0]

    def _read_final_top1(self, positions: list[int], should_stop: Optional[StopCheck]) -> None:
        """The model's own top-1 at each position (the default targets) where the forward
        did not leave it, all in one readout: ranks are counted during the grid's pass."""
        missing = [p for p in positions if p not in self._final_top1]
        unembed = unembedding(self.model)
        for first in range(0, len(missing), VECTORS_PER_CHUNK):
            chunk = missing[first : first + VECTORS_PER_CHUNK]
            final = self._pre[-1, torch.tensor(chunk, device=self._pre.device)]
            top1 = read_out(unembed, unembed.normalize(final), top_k=1, should_stop=should_stop)
            for pos, tid in zip(chunk, top1.top_ids[:, 0].tolist()):
                self._final_top1[pos] = int(tid)

    def _read_positions(self, positions: list[int], should_stop: Optional[StopCheck]) -> None:
        model = self.model
        settings = self._settings
        unembed = unembedding(model)
        stack = self._lens.rows(self, positions)  # [rows, P, d]
        n_rows, n_pos, d = stack.shape
        final = self._pre[-1, torch.tensor(positions, device=self._pre.device)]
        final_normed = unembed.normalize(final)
        if settings.target_id is None:
            fixed = self.fixed_targets or {}
            target_ids = [fixed.get(p, self._final_top1[p]) for p in positions]
        else:
            target_ids = [settings.target_id] * n_pos
        normed = unembed.normalize(stack.reshape(n_rows * n_pos, d), apply_norm=self._lens.apply_norm)
        # Targets per vector, one readout pass for all: [the target, the final top-1 (for
        # prediction depth), the tracked tokens...].
        per_position = [
            [target_ids[i], self._final_top1[p], *settings.track_ids] for i, p in enumerate(positions)
        ]
        targets = torch.tensor(per_position, device=normed.device).repeat(n_rows, 1)
        stats = read_out(
            unembed,
            normed,
            top_k=settings.top_k,
            targets=targets,
            reference=n_pos if self._lens.apply_norm else final_normed,
            should_stop=should_stop,
        )
        self._store_cells(positions, target_ids, n_rows, stats)


    def _store_cells(self, positions, target_ids, n_rows, stats) -> None:
        """Plain LensCells from the readout's tensors: one tolist per field, cached token refs."""
        model = self.model
        n_pos = len(positions)
        top_ids = stats.top_ids.tolist()
        top_probs = stats.top_probs.tolist()
        top_logits = stats.top_logits.tolist()
        entropy = stats.entropy.tolist()
        kl = stats.kl.tolist()
        all_ranks = stats.target_ranks.tolist()
        all_probs = stats.target_probs.tolist()
        track_ids = self._settings.track_ids
        refs = model.caches.token_refs
        columns: list[list[LensCell]] = [[] for _ in range(n_pos)]
        for vec in range(n_rows * n_pos):
            top = []
            for tid, prob, logit in zip(top_ids[vec], top_probs[vec], top_logits[vec]):
                ref = refs.get(tid) or token_ref(model, tid)
                top.append(TopToken(ref.id, ref.text, ref.piece, prob, logit))
            columns[vec % n_pos].append(
                LensCell(
                    top=tuple(top),
                    entropy=entropy[vec],
                    kl_to_final=kl[vec],
                    target_rank=int(all_ranks[vec][0]),
                    target_prob=all_probs[vec][0],
                    tracked=tuple(
                        TrackedValue(tid, (refs.get(tid) or token_ref(model, tid)).text, all_probs[vec][2 + j], int(all_ranks[vec][2 + j]))
                        for j, tid in enumerate(track_ids)
                    ),
                    final_top1_rank=int(all_ranks[vec][1]),
                )
            )
        for i, pos in enumerate(positions):
            self._columns[pos] = (columns[i], token_ref(model, target_ids[i]))
