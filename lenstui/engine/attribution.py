"""Direct logit attribution of one lens cell: which components wrote this token here.

For a prompt, a position ``p``, a lens row ``l`` (an index into the lens' row labels:
0 = "embed", ``k + 1`` = "Lk", the residual after block ``k``) and a token ``t``, the
row's logit for ``t`` (or ``logit(t) - logit(t')`` against a contrast token, or
``logit(t) - mean logit`` without one) is split into the direct contributions of every
component that wrote the residual at row ``l``: the embedding, each block's attention
output and MLP output, and each attention head.

How: TransformerLens 4's ``ActivationCache`` does the decomposition
(``decompose_resid`` for embedding/attention/MLP, ``stack_head_results`` for heads) and
``apply_ln_to_stack`` divides every component by the norm scale measured on the whole
residual at row ``l`` ("frozen"; LayerNorm also centres each component). Then each is
read through the final norm's weight and the unembedding direction of ``t`` (minus that
of ``t'``, or minus the vocabulary's mean direction). With the scale frozen the readout
is linear, so the contributions add up exactly to the row's logit (difference); the
constant terms no component writes (the final norm's bias, the unembedding bias) are an
explicit "bias" component. What the frozen scale does NOT give: a component's number is
not what removing it would change, since removing it would also change the scale.

``direct_logit_attribution`` itself (``transformer_lens.tools.analysis``) is not called:
it refuses a bridge outside compatibility mode (folded norms), and folding the shared
bridge's weights in place would change the model under the other engine modules; it
also reads only the final row. The pieces it is built from are used as it uses them.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence, Union

import torch

from lenstui.core.attribution_result import AttributionResult, Component, HeadAttribution, Source
from lenstui.core.callbacks import StopCheck, check_stop
from lenstui.core.errors import InputError
from lenstui.core.tokens import TokenSpec
from lenstui.engine.model.dispatch import fill_head_results
from lenstui.engine.model.load import LoadedModel
from lenstui.engine.model.vocab import encode_prompt, resolve_token, token_ref

DEFAULT_HEADS = 8
DEFAULT_SOURCES = 3  # source positions listed per head (the strongest by weight)
MAX_HEADS = 64
NORM_TYPES = ("LN", "LNPre", "RMS", "RMSPre", None)


def attribution_hook_names(model: LoadedModel) -> list[str]:
    """The hooks an attribution reads, for every row: a cache holding these (all
    positions, from ``bridge.run_with_cache(tokens, names_filter=...)``) can be passed to
    :func:`attribute` instead of running the model again."""
    n_layers = model.n_layers
    names = ["hook_embed"]
    if getattr(model.bridge.cfg, "positional_embedding_type", "standard") == "standard":
        names.append("hook_pos_embed")  # learned positions are a component of their own
    for layer in range(n_layers):
        block = f"blocks.{layer}"
        names += [
            f"{block}.hook_attn_out",
            f"{block}.hook_mlp_out",
            f"{block}.attn.hook_z",
            f"{block}.attn.hook_pattern",
            f"{block}.ln1.hook_scale",
        ]
    names.append("ln_final.hook_scale")
    return names


def row_label(row: int) -> str:
    return "embed" if row == 0 else f"L{row - 1}"


def check_cell(model: LoadedModel, n_tokens: int, position: int, row: int) -> tuple[int, int]:
    """Position and row as non-negative indices (negative ones count from the end)."""
    if not -n_tokens <= position < n_tokens:
        raise InputError(
            f"Position {position} is outside the prompt, which has positions 0..{n_tokens - 1}."
        )
    n_rows = model.n_layers + 1
    if not -n_rows <= row < n_rows:
        raise InputError(
            f"Layer {row} is out of range: {model.name} has rows 0..{n_rows - 1} "
            f"(embed, L0..L{model.n_layers - 1})."
        )
    return position % n_tokens, row % n_rows


def attribute(
    model: LoadedModel,
    prompt: Union[str, Sequence[int]],
    *,
    position: int = -1,
    layer: int = -1,
    token: Optional[TokenSpec] = None,
    contrast: Optional[TokenSpec] = None,
    heads: int = DEFAULT_HEADS,
    sources: int = DEFAULT_SOURCES,
    cache: Any = None,
    should_stop: Optional[StopCheck] = None,
) -> AttributionResult:
    """Attribute the cell (``position``, lens row ``layer``) to components and heads.

    ``token`` defaults to the cell's top-1; ``contrast`` to none (the mean logit).
    ``cache``: an ``ActivationCache`` of this prompt holding
    :func:`attribution_hook_names` at every position, to skip the forward pass (it is
    read, never changed); without one (or with one that lacks those hooks) the model
    runs once, caching only those hooks and only at ``position``. Raises InputError on bad input, Cancelled when
    ``should_stop()`` turns true between steps.
    """
    from transformer_lens.tools.analysis import logit_readout

    started = time.perf_counter()
    bridge = model.bridge
    cfg = bridge.cfg
    norm_type = getattr(cfg, "normalization_type", None)
    if norm_type not in NORM_TYPES:
        raise InputError(f"Attribution does not know the {norm_type} normalization of {model.name}.")
    if float(getattr(cfg, "output_logits_soft_cap", -1.0) or -1.0) > 0:
        raise InputError(
            f"{model.name} caps its logits (a non-linear readout), so they do not split into "
            "component contributions."
        )
    if not 0 <= heads <= MAX_HEADS:
        raise InputError(f"The number of heads to list must be between 0 and {MAX_HEADS}, not {heads}.")
    ids = encode_prompt(model, prompt)
    position, row = check_cell(model, len(ids), position, layer)
    token_id = None if token is None else resolve_token(model, token)
    contrast_id = None if contrast is None else resolve_token(model, contrast)
    if contrast_id is not None and contrast_id == token_id:
        raise InputError("The token and the contrast token are the same: pick a different --vs.")

    def check_cancel() -> None:
        check_stop(should_stop)

    names = attribution_hook_names(model)
    with torch.no_grad():
        if cache is not None and all(n in cache.cache_dict for n in names):
            cache = _at_position(model, cache, names, position)
        else:
            tokens = torch.tensor([ids], device=model.input_device)
            # Only the hooks needed, and only at the position (attention: the query row).
            _, cache = bridge.run_with_cache(
                tokens, names_filter=names, pos_slice=(position, position + 1)
            )
        check_cancel()

        # [components, batch=1, pos=1, d_model]; its sum is the residual at the row.
        stack, tl_labels = cache.decompose_resid(layer=row, return_labels=True)
        fill_head_results(model, cache)  # (offloaded blocks: each W_O loaded for its own block's heads)
        head_stack = cache.stack_head_results(layer=row)  # [row * heads, 1, 1, d_model]
        residual = stack.sum(dim=0)[0, 0]
        check_cancel()

        # The row's actual logits, read the way the lens reads them (TL's logit_readout).
        row_logits = logit_readout(bridge, residual[None], apply_ln=True, return_type="logits")
        row_logits = row_logits.values[0].double()
        if token_id is None:
            token_id = int(row_logits.argmax())
        if contrast_id == token_id:
            raise InputError(
                "The contrast token is the cell's own top-1 token: pick a different --vs or a --token."
            )
        baseline = row_logits.mean() if contrast_id is None else row_logits[contrast_id]
        total = float(row_logits[token_id] - baseline)

        direction, constant = _readout_direction(model, token_id, contrast_id)
        frozen = cache.apply_ln_to_stack(torch.cat([stack, head_stack], dim=0), layer=row)
        values = (frozen[:, 0, 0].double() @ direction).tolist()
        norm_scale = _frozen_scale(cache, row) if norm_type else 1.0
        check_cancel()

        n_parts = stack.shape[0]
        components = [_component(label, v) for label, v in zip(tl_labels, values[:n_parts])]
        if constant != 0.0:
            components.append(Component("bias", "bias", None, constant))
        n_heads = int(cfg.n_heads)
        flat_heads = values[n_parts:]
        head_grid = [flat_heads[b * n_heads : (b + 1) * n_heads] for b in range(row)]
        attn_by_block = {c.layer: c.contribution for c in components if c.kind == "attn"}
        attn_bias = [attn_by_block[b] - sum(head_grid[b]) for b in range(row)]
        top = sorted(range(len(flat_heads)), key=lambda i: -abs(flat_heads[i]))[:heads]
        head_results = []
        for index in top:
            block, head = divmod(index, n_heads)
            weights = cache[f"blocks.{block}.attn.hook_pattern"][0, head, 0, : position + 1]
            head_results.append(
                _head(model, ids, block, head, flat_heads[index], weights.double().tolist(), sources)
            )
    return AttributionResult(
        model=model.name,
        prompt_tokens=[token_ref(model, i) for i in ids],
        position=position,
        layer=row,
        row_label=row_label(row),
        token=token_ref(model, token_id),
        contrast=None if contrast_id is None else token_ref(model, contrast_id),
        total=total,
        components=components,
        heads=head_results,
        head_grid=head_grid,
        attn_bias=attn_bias,
        norm_scale=norm_scale,
        seconds=time.perf_counter() - started,
    )


def _readout_direction(
    model: LoadedModel, token_id: int, contrast_id: Optional[int]
) -> tuple[torch.Tensor, float]:
    """The d_model direction (float64) a normalized residual is dotted with, and the
    constant term no component writes (final-norm bias and unembedding bias)."""
    bridge = model.bridge
    w_u = bridge.W_U  # [d_model, d_vocab]
    column = w_u[:, token_id].double()
    if contrast_id is None:
        base = _mean_unembedding(model)
    else:
        base = w_u[:, contrast_id].double()
    difference = column - base
    weight, bias = _final_norm_affine(model)
    direction = difference if weight is None else difference * weight
    constant = 0.0 if bias is None else float(bias @ difference)
    b_u = getattr(bridge, "b_U", None)
    if isinstance(b_u, torch.Tensor):
        b_u = b_u.double()
        base_bias = b_u.mean() if contrast_id is None else b_u[contrast_id]
        constant += float(b_u[token_id] - base_bias)
    return direction, constant


def _mean_unembedding(model: LoadedModel) -> torch.Tensor:
    """The vocabulary's mean unembedding column (memoized; float64)."""
    mean = model.caches.attribution_mean_w_u
    if mean is None:
        mean = model.bridge.W_U.float().mean(dim=1).double()
        model.caches.attribution_mean_w_u = mean
    return mean


def _final_norm_affine(model: LoadedModel) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The final norm's learned weight (with Gemma-style +1 offset) and bias, float64."""
    norm = getattr(model.bridge, "ln_final", None)
    if norm is None or getattr(model.bridge.cfg, "normalization_type", None) is None:
        return None, None
    weight = getattr(norm, "weight", None)
    bias = getattr(norm, "bias", None)
    if isinstance(weight, torch.Tensor):
        weight = weight.double()
        if getattr(model.bridge.cfg, "rmsnorm_uses_offset", False):
            weight = weight + 1.0
    else:
        weight = None
    bias = bias.double() if isinstance(bias, torch.Tensor) else None
    return weight, bias


def _at_position(model: LoadedModel, cache: Any, names: list[str], position: int) -> Any:
    """A full-position cache cut down to one position (attention: one query row), as a
    fresh run would cache it. Views, not copies; and TL's head results get computed for
    this position only, never added to the caller's cache for every position."""
    from transformer_lens.ActivationCache import ActivationCache

    sliced = {}
    for name in names:
        value = cache.cache_dict[name]
        dim = value.ndim - 2 if name.endswith("hook_pattern") else 1  # [b, head, query, key]
        sliced[name] = value.narrow(dim, position, 1)
    return ActivationCache(sliced, model.bridge)


def _frozen_scale(cache: Any, row: int) -> float:
    key = "ln_final.hook_scale" if row == cache.model.cfg.n_layers else f"blocks.{row}.ln1.hook_scale"
    return float(cache[key].reshape(-1)[0])


def _component(tl_label: str, value: float) -> Component:
    if tl_label in ("embed", "pos_embed"):
        return Component(tl_label, "embed", None, value)
    block, kind = tl_label.split("_", 1)  # "3_attn_out" / "3_mlp_out"
    kind = kind.removesuffix("_out")
    return Component(f"L{block}.{kind}", kind, int(block), value)


def _head(model, ids, layer, head, contribution, weights, sources) -> HeadAttribution:
    order = sorted(range(len(weights)), key=lambda i: -weights[i])[:sources]
    attends = tuple(Source(i, token_ref(model, ids[i]), weights[i]) for i in order)
    return HeadAttribution(layer, head, contribution, attends, tuple(weights))
