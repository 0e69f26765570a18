"""The causal lens: activation patching, ablation and steering, with the grid they change.

**Patch.** Prompt A runs with one activation replaced: the residual after block L
(``resid``; L = -1 the embedding), block L's attention output (``attn``), its MLP
output (``mlp``) or one attention head's output (``head``: the head's slice of the
attention's ``hook_z``, so per query head even with grouped-query attention) at
position P, taken from prompt B at position Q (``source`` "prompt"), or set to zero
or to its mean over A's positions 1..n-1 ("zero", "mean" ablation; position 0 is left
out of the mean because its residual is the attention sink's, an order of magnitude
larger than the others in most models). TransformerLens 4's hooks on the bridge do it:
``blocks.L.hook_resid_post`` (``blocks.0.hook_resid_pre``), ``blocks.L.hook_attn_out``,
``blocks.L.hook_mlp_out``, ``blocks.L.attn.hook_z``.

**What is recomputed.** Positions before P cannot change, and neither can blocks before
the patched one: a patched run starts from the clean run's KV cache over positions < P
(views, no copy) and its residual at block L, and runs only blocks L.. (L+1.. for a
residual patch) over positions P.. (``ForwardCost.path`` "resume"; for Llama- and
GPT-2-style decoders, whose layers the bridge wraps one by one). Other architectures
run all blocks over positions P.. with that cache ("prefix"), and a model whose KV
cache does not work with the bridge runs everything ("full"). The patched lens grid
then reads only positions >= P (earlier cells are the clean run's).

**Effects.** Per cell: KL(patched || clean) between the two runs' readouts and the
target's probability before and after (the target per position is the clean run's:
``--target``, or the clean run's own top-1 there), plus the causal cone
(``lenstui.core.patch_result``): outside it nothing can change, and the effect there is
exactly 0.

**Sweep.** Patch position P at every layer ("layers") or every position at one layer
("positions") and read the target's probability at A's last position each time; the
readout of all points is one batched pass.

**Steer.** ``alpha x scale x unit(d)`` is added to block L's output at every position
from P on, where ``d`` is a token's effective unembedding row (``inspect.geometry``:
the final norm's gain folded in) or the difference of two tokens' rows and ``scale`` the
median residual norm after block L over the prompt. The steered run is a lens state of
its own (the clean one is never touched, so clearing a steer costs nothing), and greedy
generation steps continue under the steer incrementally.

Everything returns the plain dataclasses of ``lenstui.core.patch_result``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch

from lenstui.core.callbacks import Progress, StopCheck, check_stop
from lenstui.core.errors import InputError
from lenstui.core.lens_result import TopToken, TrackedValue
from lenstui.core.lenses import MAX_TRACKED
from lenstui.core.patch_result import (
    ABLATIONS,
    COMPONENTS,
    SWEEPS,
    ForwardCost,
    PatchResult,
    PatchSpec,
    SteerResult,
    SteerSpec,
    SweepPoint,
    SweepResult,
    in_cone,
    patch_cone,
    steer_cone,
)
from lenstui.core.tokens import TokenSpec
from lenstui.engine.lens.readout import read_out, unembedding
from lenstui.engine.lens.forward import install_cache_shim
from lenstui.engine.lens.state import LensState, kv_prefix, lens_state
from lenstui.engine.model.load import LoadedModel
from lenstui.engine.model.vocab import resolve_token, token_ref

Prompt = Union[str, Sequence[int]]
Hook = tuple[str, Callable]

# HF model types whose decoder layers a patched run can call one by one (the "resume" path).
RESUMABLE = ("llama", "gpt2")
MAX_STEER_STEPS = 1024


# ---------------------------------------------------------------- interventions


def hook_name(component: str, layer: int) -> str:
    """The bridge hook a patch of ``component`` at block ``layer`` writes."""
    if component == "resid":
        return "blocks.0.hook_resid_pre" if layer < 0 else f"blocks.{layer}.hook_resid_post"
    if component == "attn":
        return f"blocks.{layer}.hook_attn_out"
    if component == "mlp":
        return f"blocks.{layer}.hook_mlp_out"
    if component == "head":
        return f"blocks.{layer}.attn.hook_z"
    raise InputError(f"Unknown component {component!r}: choose one of {', '.join(COMPONENTS)}.")


@dataclass
class PatchHook:
    """Replace ``hook``'s value at ``position`` (head ``head`` of a ``hook_z``) with
    ``value`` (None: zeros). An intervention of a ``LensState``."""

    component: str
    layer: int
    position: int
    value: Optional[torch.Tensor]
    head: Optional[int] = None

    @property
    def first_block(self) -> int:
        """The first block a resumed run must run: the patched one, or the next one for
        a residual (whose new value is then that block's input)."""
        return self.layer + 1 if self.component == "resid" else self.layer

    def _write(self, x: torch.Tensor, index: int) -> torch.Tensor:
        x = x.clone()
        target = x[:, index] if self.head is None else x[:, index, self.head]
        if self.value is None:
            target.zero_()
        else:
            target.copy_(self.value.to(device=x.device, dtype=x.dtype))
        return x

    def hooks(self, start: int, count: int) -> list[Hook]:
        if not start <= self.position < start + count:
            return []  # a later generation step: the patched position is in the cache
        index = self.position - start

        def patch(x, hook):
            return self._write(x, index)

        return [(hook_name(self.component, self.layer), patch)]

    def resume_hooks(self, start: int, count: int) -> list[Hook]:
        """The hooks of a run resumed at ``first_block`` (a residual patch is its input)."""
        return [] if self.component == "resid" else self.hooks(start, count)

    def edit_input(self, hidden: torch.Tensor, start: int) -> torch.Tensor:
        """``hidden`` [1, m, d]: block ``first_block``'s input at positions start..."""
        if self.component != "resid" or not start <= self.position < start + hidden.shape[1]:
            return hidden
        return self._write(hidden, self.position - start)


@dataclass
class SteerHook:
    """Add ``vector`` to block ``layer``'s output at every position from ``position`` on."""

    layer: int
    position: int
    vector: torch.Tensor  # [d_model]

    @property
    def first_block(self) -> int:
        return self.layer + 1

    def _add(self, x: torch.Tensor, first: int) -> torch.Tensor:
        x = x.clone()
        x[:, first:] += self.vector.to(device=x.device, dtype=x.dtype)
        return x

    def hooks(self, start: int, count: int) -> list[Hook]:
        first = max(0, self.position - start)
        if first >= count:
            return []

        def add_steer(x, hook):
            return self._add(x, first)

        return [(hook_name("resid", self.layer), add_steer)]

    def resume_hooks(self, start: int, count: int) -> list[Hook]:
        return []

    def edit_input(self, hidden: torch.Tensor, start: int) -> torch.Tensor:
        first = max(0, self.position - start)
        return hidden if first >= hidden.shape[1] else self._add(hidden, first)


# ---------------------------------------------------------------- resumed forwards


def _param_dtype(model: LoadedModel) -> torch.dtype:
    return next(model.bridge.parameters()).dtype


def _decoder(model: LoadedModel):
    """(layers, rotary embedding or None, HF config) when this model's decoder layers can
    be run one by one from a block; None otherwise."""
    if model.memo.get("patch_resume_broken"):
        return None
    hf = getattr(model.bridge, "original_model", None)
    config = getattr(hf, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in RESUMABLE:
        return None
    if model_type == "gpt2":
        base = getattr(hf, "transformer", None)
        layers = getattr(base, "h", None)
    else:
        base = getattr(hf, "model", None)
        layers = getattr(base, "layers", None)
    if layers is None or len(layers) != model.n_layers:
        return None
    return layers, getattr(base, "rotary_emb", None), config


@dataclass
class _Resumed:
    captured: dict[str, torch.Tensor]  # hook name -> [m, ...] at positions start..
    kv: object  # the prefix cache, grown by the blocks that ran (None without one)
    cost: ForwardCost


def _capturing(names: Sequence[str], captured: dict[str, torch.Tensor]) -> list[Hook]:
    def capture(name):
        def hook(x, hook):
            captured[name] = x.detach()[0]

        return hook

    return [(name, capture(name)) for name in names]


def _run_from_block(
    model: LoadedModel,
    clean: LensState,
    start: int,
    intervention,
    names: Sequence[str],
) -> _Resumed:
    """Positions ``start..`` of ``clean``'s ids under ``intervention``, capturing ``names``
    ([m, ...] each at positions start..), reusing what cannot change: the clean KV cache
    below ``start`` (views) and, where the decoder allows it, the clean residual below
    the intervened block ("resume"); else all blocks over positions start.. ("prefix"),
    or, without a KV cache, everything ("full")."""
    from transformers import DynamicCache

    bridge = model.bridge
    ids = clean.ids
    n = len(ids)
    m = n - start
    kv = clean.kv_cache
    started = time.perf_counter()
    decoder = _decoder(model) if kv is not None else None
    if decoder is not None:
        try:
            return _resume(model, clean, start, intervention, names, decoder, started)
        except (TypeError, RuntimeError, ValueError, AttributeError, IndexError, KeyError):
            # A transformers or TransformerLens version whose layers want other
            # arguments: this model takes the generic path from now on.
            model.memo["patch_resume_broken"] = True
    captured: dict[str, torch.Tensor] = {}
    hooks = _capturing(names, captured)
    install_cache_shim(bridge)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # HF renamed past_key_values -> cache
        if kv is not None:
            prefix = kv_prefix(kv, start) if start > 0 else DynamicCache()
            tokens = torch.tensor([ids[start:]], device=model.device)
            bridge.run_with_hooks(
                tokens, return_type=None, fwd_hooks=intervention.hooks(start, m) + hooks, past_key_values=prefix
            )
            return _Resumed(captured, prefix, ForwardCost("prefix", m, model.n_layers, time.perf_counter() - started))
        tokens = torch.tensor([ids], device=model.device)
        bridge.run_with_hooks(tokens, return_type=None, fwd_hooks=intervention.hooks(0, n) + hooks)
    for name in list(captured):
        captured[name] = captured[name][start:]
    return _Resumed(captured, None, ForwardCost("full", n, model.n_layers, time.perf_counter() - started))


def _resume(model, clean: LensState, start: int, intervention, names, decoder, started) -> _Resumed:
    """Blocks ``intervention.first_block``.. over positions ``start..``, called one by one
    (the bridge's own block modules, so its hooks fire), on the clean residual there."""
    from transformers.masking_utils import create_causal_mask

    layers, rotary, config = decoder
    bridge = model.bridge
    n_layers = model.n_layers
    n = len(clean.ids)
    m = n - start
    first = max(0, intervention.first_block)
    kv = clean.kv_cache
    prefix = kv_prefix(kv, start)
    hidden = clean.residual(first)[start:].to(dtype=_param_dtype(model))[None]  # block `first`'s input
    hidden = intervention.edit_input(hidden, start)
    captured: dict[str, torch.Tensor] = {}
    # What the blocks that do not run would have captured is the clean run's (block
    # `first`'s input: the edited one).
    for name in names:
        block_text, _, point = name.partition(".")[2].partition(".")
        block = int(block_text)
        if point == "hook_resid_pre" and block <= first:
            captured[name] = hidden[0] if block == first else clean.residual(block)[start:]
        elif point == "hook_resid_post" and block < first:
            captured[name] = hidden[0] if block == first - 1 else clean.residual(block + 1)[start:]
        elif point == "hook_resid_mid" and block < first:
            captured[name] = clean.mid_residual(block)[start:]
    hooks = _capturing([name for name in names if name not in captured], captured)
    install_cache_shim(bridge)
    if first < n_layers:
        position_ids = torch.arange(start, n, device=hidden.device).unsqueeze(0)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            mask = create_causal_mask(
                config=config,
                inputs_embeds=hidden,
                attention_mask=None,
                cache=prefix,
                position_ids=position_ids,
                layer_idx=first,
            )
            kwargs = dict(attention_mask=mask, cache=prefix, use_cache=True, position_ids=position_ids)
            if rotary is not None:
                kwargs["position_embeddings"] = rotary(hidden, position_ids=position_ids)
            with bridge.hooks(fwd_hooks=intervention.resume_hooks(start, m) + hooks):
                x = hidden
                for index in range(first, n_layers):
                    x = layers[index](x, **kwargs)
                    x = x[0] if isinstance(x, tuple) else x
        for layer in range(first):  # blocks that did not run keep the clean keys and values
            prefix.layers[layer].keys = kv.layers[layer].keys[..., :n, :]
            prefix.layers[layer].values = kv.layers[layer].values[..., :n, :]
        if any(prefix.layers[i].get_seq_length() != n for i in range(n_layers)):
            raise RuntimeError("the resumed blocks did not fill the KV cache")
    else:
        prefix = kv_prefix(kv, n)  # nothing ran: every block's keys and values are the clean ones (views)
    missing = [name for name in names if name not in captured]
    if missing:
        raise RuntimeError(f"hooks did not fire: {missing[:3]}")
    return _Resumed(captured, prefix, ForwardCost("resume", m, n_layers - first, time.perf_counter() - started))


def _stack_names(model: LoadedModel, mid: bool) -> tuple[list[str], list[str]]:
    """The hooks a lens state's stack is made of: block inputs and the last block's
    output, and the mid-block residuals."""
    n_layers = model.n_layers
    names = [f"blocks.{i}.hook_resid_pre" for i in range(n_layers)] + [f"blocks.{n_layers - 1}.hook_resid_post"]
    return names, ([f"blocks.{i}.hook_resid_mid" for i in range(n_layers)] if mid else [])


def _fork(
    model: LoadedModel, clean: LensState, start: int, intervention, options: dict, should_stop: Optional[StopCheck]
) -> tuple[LensState, ForwardCost]:
    """A lens state for ``clean``'s ids under ``intervention``, prepared with ``options``:
    positions < ``start`` are the clean run's, the rest computed by
    :func:`_run_from_block`; later steps run through the state's own forward with the
    intervention's hooks."""
    fork = clean.fork(start, intervention)
    names, mid_names = _stack_names(model, clean.mid_residual(0) is not None)
    check_stop(should_stop)
    run = _run_from_block(model, clean, start, intervention, names + mid_names)
    pre = torch.stack([run.captured[name] for name in names])
    mid = torch.stack([run.captured[name] for name in mid_names]) if mid_names else None
    fork.extend(clean.ids, pre, mid, run.kv)
    fork.prepare(clean.ids, should_stop=should_stop, **options)
    return fork, run.cost


# ---------------------------------------------------------------- sources


def _capture_at(model: LoadedModel, state: LensState, name: str, layer: int, positions: Sequence[int]) -> torch.Tensor:
    """``name``'s clean value at ``positions`` of ``state``'s ids ([len, ...]): the forward
    runs from the first of them (the KV cache supplies the rest) and stops after block
    ``layer``."""
    bridge = model.bridge
    ids = state.ids
    first = min(positions)
    captured: dict[str, torch.Tensor] = {}
    stop = layer + 1 if layer + 1 < model.n_layers else None
    kwargs = {}
    offset = 0
    kv = state.kv_cache
    if kv is not None and first > 0:
        install_cache_shim(bridge)
        kwargs["past_key_values"] = kv_prefix(kv, first)
        offset = first
    tokens = torch.tensor([ids[offset:]], device=model.device)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        bridge.run_with_hooks(
            tokens, return_type=None, fwd_hooks=_capturing([name], captured), stop_at_layer=stop, **kwargs
        )
    values = captured[name]
    return values[torch.tensor([p - offset for p in positions], device=values.device)]


def _mean_positions(n: int) -> list[int]:
    return list(range(1, n)) if n > 1 else [0]


def source_value(
    model: LoadedModel,
    spec: PatchSpec,
    clean: LensState,
    source: Optional[LensState],
) -> Optional[torch.Tensor]:
    """What the patch writes: B's activation at Q, A's mean over positions 1.., or None
    (zeros)."""
    if spec.source == "zero":
        return None
    if spec.source == "prompt":
        state, positions = source, [spec.from_position]
    else:
        state, positions = clean, _mean_positions(len(clean.ids))
    if spec.component == "resid":
        stack = state.residual(spec.layer + 1)
        rows = stack[torch.tensor(positions, device=stack.device)]
    else:
        rows = _capture_at(model, state, hook_name(spec.component, spec.layer), spec.layer, positions)
        if spec.component == "head":
            rows = rows[:, spec.head]
    return rows.float().mean(dim=0) if spec.source == "mean" else rows[0]


# ---------------------------------------------------------------- checks


def _index(spec: int, n: int, what: str) -> int:
    if not -n <= spec < n:
        raise InputError(f"Position {spec} is outside {what} ({n} tokens: 0..{n - 1}, or -1 for the last).")
    return spec % n


def parse_layer(layer: Union[int, str], n_layers: int) -> int:
    """A block from ``L3``, ``3``, ``embed`` (-1) or a negative number (-1 = the last block)."""
    if isinstance(layer, int):
        value = layer
    else:
        text = layer.strip()
        if text == "embed":
            return -1
        text = text[1:] if text[:1] in "lL" else text
        try:
            value = int(text)
        except ValueError:
            raise InputError(f"Unknown layer {layer!r}: write L0..L{n_layers - 1}, a block number, or embed.") from None
    if not -n_layers <= value < n_layers:
        raise InputError(f"Layer {layer} is out of range: the model has blocks L0..L{n_layers - 1} (and embed).")
    return value % n_layers


def parse_site(layer: Union[int, str, None], component: str, n_layers: int) -> tuple[str, int, Optional[int]]:
    """(component, block, head) from a layer (``L3``, ``3``, ``embed``) and a component
    (``resid``, ``attn``, ``mlp``, ``head``, or a head: ``L3H4`` (block 3, head 4) or
    ``H4`` with the layer)."""
    comp = (component or "resid").strip()
    head = None
    if comp not in COMPONENTS:
        text = comp.upper()
        block_text, marker, head_text = text.partition("H")
        if not marker or (block_text and not block_text.startswith("L")):
            raise InputError(f"Unknown component {component!r}: choose resid, attn, mlp or a head like L3H4.")
        try:
            head = int(head_text)
            named = int(block_text[1:]) if block_text else None
        except ValueError:
            raise InputError(f"Cannot read the head {component!r}: write it like L3H4 (block 3, head 4) or H4.") from None
        if named is not None:
            if layer is not None and parse_layer(layer, n_layers) != named:
                raise InputError(f"--component {component} names block {named} but the layer is {layer}.")
            layer = named
        comp = "head"
    if layer is None:
        raise InputError("Say which layer to patch (--layer L3, or embed for the embedding).")
    block = parse_layer(layer, n_layers)
    if block < 0 and comp != "resid":
        raise InputError(f"The embedding has no {comp} output: patch a block's (L0..L{n_layers - 1}) or the resid.")
    return comp, block, head


def _check_head(model: LoadedModel, component: str, head: Optional[int]) -> None:
    n_heads = int(model.bridge.cfg.n_heads)
    if component == "head":
        if head is None:
            raise InputError("Name the head to patch: --component L3H4 (block 3, head 4).")
        if not 0 <= head < n_heads:
            raise InputError(f"Head {head} is out of range: {model.name} has heads 0..{n_heads - 1} per block.")
    elif head is not None:
        raise InputError("A head is named only with the head component (--component L3H4).")


def _resolve_source(source_prompt, ablate) -> str:
    if ablate is not None:
        if ablate not in ABLATIONS:
            raise InputError(f"Unknown ablation {ablate!r}: choose zero or mean.")
        if source_prompt is not None:
            raise InputError("Either patch from a prompt (--from) or ablate (--ablate), not both.")
        return ablate
    if source_prompt is None:
        raise InputError("Say where the patch comes from: --from PROMPT_B, or --ablate zero|mean.")
    return "prompt"


def _from_position(position_spec: int, from_spec: Optional[int], n_b: int) -> int:
    """Q: as given, else P's own spec read in B (-1 is B's last token; 5 is B's 5th)."""
    if from_spec is None and not -n_b <= position_spec < n_b:
        raise InputError(
            f"Position {position_spec} is outside prompt B ({n_b} tokens): give --from-position "
            "for prompts of different lengths."
        )
    return _index(position_spec if from_spec is None else from_spec, n_b, "prompt B")


# ---------------------------------------------------------------- patch


def patch(
    model: LoadedModel,
    prompt: Prompt,
    *,
    source_prompt: Optional[Prompt] = None,
    layer: Union[int, str, None] = None,
    position: int = -1,
    from_position: Optional[int] = None,
    component: str = "resid",
    head: Optional[int] = None,
    ablate: Optional[str] = None,
    top_k: int = 10,
    lens: str = "logit",
    extended_blocks: int = 1,
    incl_mid: bool = False,
    target: Optional[TokenSpec] = None,
    track: Sequence[TokenSpec] = (),
    should_stop: Optional[StopCheck] = None,
) -> PatchResult:
    """Prompt A's lens grid with one activation patched (see the module doc), beside the
    clean grid, with per-cell effects and the causal cone. ``layer``: ``L3``, 3,
    ``embed``; ``component``: resid, attn, mlp, head (with ``head``) or ``L3H4``.
    Positions may be negative (from the end); ``from_position`` defaults to
    ``position`` read in prompt B. Both prompts run in the lens' slots "a" and "b"
    (incremental). Raises InputError on bad input, Cancelled when ``should_stop()``
    turns true."""
    started = time.perf_counter()
    source = _resolve_source(source_prompt, ablate)
    comp, block, parsed_head = parse_site(layer, component, model.n_layers)
    head = parsed_head if parsed_head is not None else head
    _check_head(model, comp, head)
    options = dict(top_k=top_k, lens=lens, extended_blocks=extended_blocks, incl_mid=incl_mid, target=target, track=track)
    state = lens_state(model, "a")
    plan = state.prepare(prompt, should_stop=should_stop, **options)
    clean = state.result(should_stop)
    n = plan.n_positions
    p = _index(position, n, "prompt A")
    source_state = None
    q = None
    if source == "prompt":
        source_state = lens_state(model, "b")
        plan_b = source_state.prepare(source_prompt, should_stop=should_stop, **options)
        q = _from_position(position, from_position, plan_b.n_positions)
    spec = PatchSpec(comp, block, p, source=source, from_position=q, head=head)
    check_stop(should_stop)
    value = source_value(model, spec, state, source_state)
    fork, cost = _fork(model, state, p, PatchHook(comp, block, p, value, head), options, should_stop)
    fork.fixed_targets = {pos: clean.targets[pos].id for pos in range(n)}
    patched = fork.result(should_stop)
    cone = patch_cone(clean.layers, n, component=comp, layer=block, position=p, extended=lens == "extended")
    kl = _cone_kl(model, state, fork, cone, should_stop)
    before = [[cell.target_prob for cell in row] for row in clean.grid]
    after = [
        [patched.grid[r][c].target_prob if in_cone(cone, r, c) else before[r][c] for c in range(n)]
        for r in range(len(clean.layers))
    ]
    seconds = time.perf_counter() - started
    patched.seconds = seconds
    return PatchResult(
        spec=spec,
        clean=clean,
        patched=patched,
        kl=kl,
        target_before=before,
        target_after=after,
        cone=cone,
        source_tokens=None if source_state is None else [token_ref(model, i) for i in source_state.ids],
        cost=cost,
        seconds=seconds,
    )


def _cone_kl(model, clean: LensState, patched: LensState, cone, should_stop) -> list[list[float]]:
    """KL(patched || clean) per cell: the clean rows read against the patched ones as the
    reference, for the cone's cells (0 elsewhere: nothing there can change)."""
    n = len(cone)
    n_rows = clean.rows_at(0).shape[0]
    kl = [[0.0] * n for _ in range(n_rows)]
    cells = [(r, pos) for pos in range(n) if cone[pos] is not None for r in range(cone[pos], n_rows)]
    if not cells:
        return kl
    unembed = unembedding(model)
    apply_norm = clean.settings.lens != "raw"
    rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    clean_rows, patched_rows = [], []
    for r, pos in cells:
        if pos not in rows:
            rows[pos] = (clean.rows_at(pos), patched.rows_at(pos))
        clean_rows.append(rows[pos][0][r])
        patched_rows.append(rows[pos][1][r])
    values: list[float] = []
    chunk = 512
    for first in range(0, len(cells), chunk):
        check_stop(should_stop)
        vectors = unembed.normalize(torch.stack(clean_rows[first : first + chunk]), apply_norm=apply_norm)
        reference = unembed.normalize(torch.stack(patched_rows[first : first + chunk]), apply_norm=apply_norm)
        stats = read_out(unembed, vectors, top_k=1, reference=reference, should_stop=should_stop)
        values += stats.kl.tolist()
    for (r, pos), value in zip(cells, values):
        kl[r][pos] = float(value)
    return kl


# ---------------------------------------------------------------- sweep


def sweep(
    model: LoadedModel,
    prompt: Prompt,
    *,
    source_prompt: Optional[Prompt] = None,
    mode: str = "layers",
    layer: Union[int, str, None] = None,
    position: int = -1,
    from_position: Optional[int] = None,
    component: str = "resid",
    head: Optional[int] = None,
    ablate: Optional[str] = None,
    target: Optional[TokenSpec] = None,
    track: Sequence[TokenSpec] = (),
    should_stop: Optional[StopCheck] = None,
    progress: Optional[Progress] = None,
) -> SweepResult:
    """Where does the prediction come from: patch ``position`` (default the last) at every
    layer (``mode`` "layers": the embedding, then every block; for attn/mlp/head every
    block), or every position at ``layer`` ("positions"; prompt B as long as A, each
    position patched from the same one), reading the target's probability at A's last
    position each time. ``target`` defaults to clean A's top-1 there; with a source
    prompt, clean B's top-1 at its last position (the "source answer") is read too,
    first among the tracked tokens."""
    started = time.perf_counter()
    if mode not in SWEEPS:
        raise InputError(f"Unknown sweep {mode!r}: choose layers or positions.")
    source = _resolve_source(source_prompt, ablate)
    n_layers = model.n_layers
    if mode == "positions" and layer is None:
        raise InputError("A positions sweep patches every position at one layer: say which (--layer L12).")
    probe = layer if layer is not None else 0
    comp, block, parsed_head = parse_site(probe, component, n_layers)
    head = parsed_head if parsed_head is not None else head
    _check_head(model, comp, head)
    state = lens_state(model, "a")
    options = _state_options(state)
    n = state.prepare(prompt, should_stop=should_stop, **options).n_positions
    measured = n - 1
    source_state = None
    n_b = None
    if source == "prompt":
        source_state = lens_state(model, "b")
        n_b = source_state.prepare(source_prompt, should_stop=should_stop, **options).n_positions
    if mode == "layers":
        p = _index(position, n, "prompt A")
        q = _from_position(position, from_position, n_b) if n_b is not None else None
        sites = [(b, p, q) for b in range(-1 if comp == "resid" else 0, n_layers)]
    else:
        if n_b is not None and n_b != n:
            raise InputError(
                f"A positions sweep patches each position of A from the same position of B: "
                f"A has {n} tokens and B {n_b}."
            )
        sites = [(block, p, p if n_b is not None else None) for p in range(n)]
    unembed = unembedding(model)
    clean_final = state.residual(n_layers)[measured].float()
    target_id = resolve_token(model, target) if target is not None else _top1(unembed, clean_final)
    answer_id = None
    if source_state is not None:
        answer_id = _top1(unembed, source_state.residual(n_layers)[len(source_state.ids) - 1].float())
    extra = [answer_id] if answer_id is not None and answer_id != target_id else []
    for spec_token in track:
        token_id = resolve_token(model, spec_token)
        if token_id not in extra and token_id != target_id:
            extra.append(token_id)
    if len(extra) > MAX_TRACKED + 1:
        raise InputError(f"At most {MAX_TRACKED} tokens can be tracked at once.")
    final_name = f"blocks.{n_layers - 1}.hook_resid_post"
    finals, costs = [], []
    for index, (b, p, q) in enumerate(sites):
        check_stop(should_stop)
        if progress is not None:
            progress(f"patching {'embed' if b < 0 else f'L{b}'} @{p}", index / len(sites))
        spec = PatchSpec(comp, b, p, source=source, from_position=q, head=head)
        value = source_value(model, spec, state, source_state)
        run = _run_from_block(model, state, p, PatchHook(comp, b, p, value, head), [final_name])
        finals.append(run.captured[final_name][measured - p].float())
        costs.append(run.cost)
    check_stop(should_stop)
    targets = [target_id, *extra]
    stats = _final_stats(unembed, torch.stack(finals), clean_final, targets, should_stop)
    clean_point = _final_stats(unembed, clean_final[None], clean_final, targets, should_stop)[0]
    points = [
        SweepPoint(
            layer=b,
            position=p,
            from_position=q,
            target_prob=point["probs"][0],
            target_rank=point["ranks"][0],
            top=_top_token(model, point),
            kl=point["kl"],
            tracked=_tracked(model, extra, point),
        )
        for (b, p, q), point in zip(sites, stats)
    ]
    source_target = source_answer = None
    if source_state is not None:
        b_final = source_state.residual(n_layers)[len(source_state.ids) - 1].float()
        b_point = _final_stats(unembed, b_final[None], b_final, [target_id, answer_id], should_stop)[0]
        source_target, source_answer = b_point["probs"][0], b_point["probs"][1]
    return SweepResult(
        model=model.name,
        mode=mode,
        component=comp,
        source=source,
        head=head,
        tokens=[token_ref(model, i) for i in state.ids],
        source_tokens=None if source_state is None else [token_ref(model, i) for i in source_state.ids],
        measured_position=measured,
        target=token_ref(model, target_id),
        clean_target_prob=clean_point["probs"][0],
        clean_target_rank=clean_point["ranks"][0],
        source_answer=None if answer_id is None else token_ref(model, answer_id),
        source_target_prob=source_target,
        source_answer_prob=source_answer,
        clean_tracked=_tracked(model, extra, clean_point),
        points=points,
        cost=ForwardCost(
            costs[0].path,
            sum(c.positions for c in costs),
            sum(c.blocks for c in costs),
            sum(c.seconds for c in costs),
        ),
        seconds=time.perf_counter() - started,
    )


def _state_options(state: LensState) -> dict:
    """The lens state's current readout settings as ``prepare`` options (a sweep reads
    no cells; keeping the settings keeps the cells already read)."""
    settings = state.settings
    if settings is None:
        return {}
    return dict(
        top_k=settings.top_k,
        lens=settings.lens,
        extended_blocks=max(1, settings.extended_blocks),
        incl_mid=settings.incl_mid,
        target=settings.target_id,
        track=settings.track_ids,
    )


def _top1(unembed, vector: torch.Tensor) -> int:
    stats = read_out(unembed, unembed.normalize(vector[None]), top_k=1)
    return int(stats.top_ids[0, 0])


def _final_stats(unembed, finals: torch.Tensor, clean_final: torch.Tensor, targets: list[int], should_stop) -> list[dict]:
    """Per final-row vector: the targets' probabilities and ranks, the top-1 and
    KL(patched || clean), in two batched readouts."""
    normed = unembed.normalize(finals)
    target_tensor = torch.tensor([targets] * finals.shape[0], device=normed.device)
    stats = read_out(unembed, normed, top_k=1, targets=target_tensor, should_stop=should_stop)
    clean_normed = unembed.normalize(clean_final[None]).expand(finals.shape[0], -1).contiguous()
    kl = read_out(unembed, clean_normed, top_k=1, reference=normed, should_stop=should_stop).kl.tolist()
    probs = stats.target_probs.tolist()
    ranks = stats.target_ranks.tolist()
    top_probs = stats.top_probs.tolist()
    return [
        {
            "probs": probs[i],
            "ranks": [int(r) for r in ranks[i]],
            "top_id": int(stats.top_ids[i, 0]),
            "top_prob": float(top_probs[i][0]),
            "top_logit": float(stats.top_logits[i, 0]),
            "kl": float(kl[i]),
        }
        for i in range(finals.shape[0])
    ]


def _top_token(model, stats: dict) -> TopToken:
    ref = token_ref(model, stats["top_id"])
    return TopToken(ref.id, ref.text, ref.piece, stats["top_prob"], stats["top_logit"])


def _tracked(model, extra: list[int], stats: dict) -> tuple[TrackedValue, ...]:
    return tuple(
        TrackedValue(tid, token_ref(model, tid).text, stats["probs"][1 + j], stats["ranks"][1 + j])
        for j, tid in enumerate(extra)
    )


# ---------------------------------------------------------------- steer


def steering_vector(
    model: LoadedModel, toward: TokenSpec, away: Optional[TokenSpec] = None
) -> tuple[int, Optional[int], torch.Tensor]:
    """(toward id, away id, unit direction [d_model] float32): the effective unembedding
    row of ``toward`` (minus ``away``'s)."""
    from lenstui.engine.inspect.geometry import effective_unembedding

    toward_id = resolve_token(model, toward)
    away_id = None if away is None else resolve_token(model, away)
    if away_id == toward_id:
        raise InputError("Steering toward and away from the same token is no direction at all.")
    w_eff, _ = effective_unembedding(model)
    direction = w_eff[toward_id].clone()
    if away_id is not None:
        direction = direction - w_eff[away_id]
    norm = float(direction.norm())
    if norm == 0.0:
        raise InputError("That direction has length 0 in this model's readout: pick another token.")
    return toward_id, away_id, direction / norm


def median_norm(state: LensState, layer: int) -> float:
    """The median residual norm after block ``layer`` over the state's positions."""
    return float(state.residual(layer + 1).float().norm(dim=-1).median())


def steer(
    model: LoadedModel,
    prompt: Prompt,
    *,
    toward: TokenSpec,
    layer: Union[int, str],
    alpha: float,
    away: Optional[TokenSpec] = None,
    position: int = 0,
    steps: int = 0,
    scale: Optional[float] = None,
    top_k: int = 10,
    lens: str = "logit",
    extended_blocks: int = 1,
    incl_mid: bool = False,
    target: Optional[TokenSpec] = None,
    track: Sequence[TokenSpec] = (),
    clean_steps: bool = True,
    should_stop: Optional[StopCheck] = None,
) -> SteerResult:
    """The prompt's lens grid with ``alpha`` median residual norms of the direction toward
    ``toward`` (away from ``away``) added after block ``layer`` from ``position`` on, then
    ``steps`` greedy tokens generated under the steer (and, with ``clean_steps``, as many
    without it). ``scale`` fixes the unit instead of this prompt's median norm (the app
    keeps it while it steps). The steered run is kept in ``model.memo``: the same steer
    asked again for the prompt grown by a step runs that one position only."""
    started = time.perf_counter()
    if not 0 <= steps <= MAX_STEER_STEPS:
        raise InputError(f"Steps must be between 0 and {MAX_STEER_STEPS}, not {steps}.")
    block = parse_layer(layer, model.n_layers)
    options = dict(top_k=top_k, lens=lens, extended_blocks=extended_blocks, incl_mid=incl_mid, target=target, track=track)
    toward_id, away_id, unit = steering_vector(model, toward, away)
    state = lens_state(model, "a")
    plan = state.prepare(prompt, should_stop=should_stop, **options)
    n = plan.n_positions
    if n + steps > model.n_ctx:
        raise InputError(f"The prompt ({n} tokens) plus {steps} steps is more than the {model.n_ctx} tokens {model.name} reads.")
    p = _index(position, n, "the prompt")
    if scale is None:
        scale = median_norm(state, block)
    vector = unit * (float(alpha) * float(scale))
    key = (block, p, toward_id, away_id, float(alpha), float(scale))
    kept = model.memo.get("lens_state:steer")
    cost = None
    if kept is not None and kept[0] == key:
        # The same steer: its lens state runs only what differs from the ids it holds
        # (a generation step: one position), with the steer's hooks.
        steered = kept[1]
        steered.prepare(state.ids, should_stop=should_stop, **options)
    else:
        steered, cost = _fork(model, state, p, SteerHook(block, p, vector), options, should_stop)
    model.memo["lens_state:steer"] = (key, steered)
    ids = list(state.ids)
    generated = []
    for _ in range(steps):
        check_stop(should_stop)
        token = steered.next_token_id()
        ids.append(token)
        generated.append(token)
        steered.prepare(ids, should_stop=should_stop, **options)
    clean_generated: list[int] = []
    if steps and clean_steps:
        clean_run = state.fork(n)  # slot "a" itself stays on the prompt
        clean_ids = list(state.ids)
        for _ in range(steps):
            check_stop(should_stop)
            clean_run.prepare(clean_ids, should_stop=should_stop, **options)
            token = clean_run.next_token_id()
            clean_ids.append(token)
            clean_generated.append(token)
    result = steered.result(should_stop)
    result.seconds = time.perf_counter() - started
    spec = SteerSpec(
        layer=block,
        position=p,
        toward=token_ref(model, toward_id),
        alpha=float(alpha),
        scale=float(scale),
        away=None if away_id is None else token_ref(model, away_id),
    )
    return SteerResult(
        spec=spec,
        steered=result,
        prompt_length=n,
        generated=[token_ref(model, t) for t in generated],
        clean_generated=[token_ref(model, t) for t in clean_generated],
        cone=steer_cone(result.layers, len(result.tokens), layer=block, position=p),
        cost=cost,
        seconds=result.seconds,
    )
