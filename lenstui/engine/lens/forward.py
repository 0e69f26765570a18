"""One forward pass that leaves the lens its residual stack: every block's input, the last
block's output and (when asked) each block's mid residual, plus the logits.

On a model whose anatomy is known (``engine/model/anatomy.py``) it runs the plain
transformers model with forward pre-hooks on the blocks, their post-attention norms and
the final norm; otherwise TransformerLens' bridge with its hook points. Both give the
same tensors (the plain model runs eager attention, as the bridge does; tests hold them
to each other). ``cache`` is a transformers ``DynamicCache`` covering the positions
before ``tokens``; it is extended in place.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch


@dataclass
class Captured:
    pre: torch.Tensor  # [n_layers + 1, n, d]: block inputs, then the last block's output
    mid: Optional[torch.Tensor]  # [n_layers, n, d] when captured
    logits: torch.Tensor  # [n, d_vocab]


def capture_forward(
    model: Any, tokens: torch.Tensor, cache: Any, capture_mid: bool, extra_hooks: Sequence = ()
) -> Captured:
    """Run ``tokens`` [1, n] (after what ``cache`` holds) and capture the residuals.

    ``extra_hooks``: TransformerLens (name, hook) pairs that run before the captures (a
    patch or a steer, ``engine/patching.py``); a forward with any runs on the bridge."""
    if model.anatomy is not None and not extra_hooks:
        return _plain_forward(model, tokens, cache, capture_mid)
    return _bridge_forward(model, tokens, cache, capture_mid, extra_hooks)


def _plain_forward(model: Any, tokens: torch.Tensor, cache: Any, capture_mid: bool) -> Captured:
    anatomy = model.anatomy
    n_layers = len(anatomy.blocks)
    pre: list[Optional[torch.Tensor]] = [None] * (n_layers + 1)
    mid: list[Optional[torch.Tensor]] = [None] * n_layers

    def grab(store: list, index: int):
        def hook(module, args, kwargs):
            value = args[0] if args else kwargs["hidden_states"]
            store[index] = value.detach()[0]

        return hook

    handles = [block.register_forward_pre_hook(grab(pre, i), with_kwargs=True) for i, block in enumerate(anatomy.blocks)]
    handles.append(anatomy.final_norm.register_forward_pre_hook(grab(pre, n_layers), with_kwargs=True))
    if capture_mid:
        handles += [norm.register_forward_pre_hook(grab(mid, i), with_kwargs=True) for i, norm in enumerate(anatomy.mid_norms)]
    try:
        with torch.no_grad():
            out = model.hf(input_ids=tokens, cache=cache, use_cache=cache is not None)
    finally:
        for handle in handles:
            handle.remove()
    return Captured(torch.stack(pre), torch.stack(mid) if capture_mid else None, out.logits[0])


def _bridge_forward(model: Any, tokens: torch.Tensor, cache: Any, capture_mid: bool, extra_hooks: Sequence = ()) -> Captured:
    bridge = model.bridge
    n_layers = model.n_layers
    names = [f"blocks.{i}.hook_resid_pre" for i in range(n_layers)]
    names.append(f"blocks.{n_layers - 1}.hook_resid_post")
    mid_names = [f"blocks.{i}.hook_resid_mid" for i in range(n_layers)] if capture_mid else []
    captured: dict[str, torch.Tensor] = {}

    def capture(name):
        def hook(resid, hook):
            captured[name] = resid.detach()[0]

        return hook

    if cache is not None:
        install_cache_shim(bridge)
    kwargs = {"past_key_values": cache} if cache is not None else {}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # HF renamed past_key_values -> cache
        logits = bridge.run_with_hooks(
            tokens,
            return_type="logits",
            fwd_hooks=[*extra_hooks, *((name, capture(name)) for name in names + mid_names)],
            **kwargs,
        )
    pre = torch.stack([captured[name] for name in names])
    mid = torch.stack([captured[name] for name in mid_names]) if mid_names else None
    return Captured(pre, mid, logits[0])


def install_cache_shim(bridge) -> None:
    """Let the bridge's attention see HF's KV cache under the name it reads.

    transformers 5 passes the layer cache as ``cache=``; TransformerLens 4.3's attention
    bridges look for ``past_key_values`` (or ``layer_past``) and otherwise skip the cache
    update, so an incremental forward would attend to its own tokens only. A forward
    pre-hook copies the one name to the other; LensState checks the cache's length after
    every forward and falls back to full forwards if a model still does not fill it.
    """
    if getattr(bridge, "_lenstui_cache_shim", False):
        return

    def copy_cache_kwarg(module, args, kwargs):
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
            kwargs["past_key_values"] = kwargs["cache"]
        return args, kwargs

    for block in getattr(bridge, "blocks", []):
        attn = getattr(block, "attn", None)
        if isinstance(attn, torch.nn.Module):
            attn.register_forward_pre_hook(copy_cache_kwarg, with_kwargs=True)
    bridge._lenstui_cache_shim = True


def run_from_block(model: Any, tokens: torch.Tensor, block: int, replacement: torch.Tensor) -> torch.Tensor:
    """The last block's output [b, n, d] when block ``block``'s input is ``replacement``
    [b, n, d] (``tokens`` [b, n] give the positions and the attention's inputs below; the
    blocks before ``block`` run but their output is overwritten)."""
    if model.anatomy is None:
        return _bridge_run_from_block(model, tokens, block, replacement)
    anatomy = model.anatomy
    captured: dict[str, torch.Tensor] = {}

    def write(module, args, kwargs):
        value = replacement.to(dtype=(args[0] if args else kwargs["hidden_states"]).dtype)
        if args:
            return (value, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": value}

    def read(module, args, kwargs):
        captured["resid"] = (args[0] if args else kwargs["hidden_states"]).detach()

    handles = [
        anatomy.blocks[block].register_forward_pre_hook(write, with_kwargs=True),
        anatomy.final_norm.register_forward_pre_hook(read, with_kwargs=True),
    ]
    try:
        with torch.no_grad():
            model.hf(input_ids=tokens, use_cache=False, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    return captured["resid"]


def _bridge_run_from_block(model: Any, tokens: torch.Tensor, block: int, replacement: torch.Tensor) -> torch.Tensor:
    captured: dict[str, torch.Tensor] = {}

    def write_rows(resid: torch.Tensor, hook) -> torch.Tensor:
        return replacement.to(dtype=resid.dtype, device=resid.device)

    def read_out_resid(resid: torch.Tensor, hook) -> None:
        captured["resid"] = resid.detach()

    with torch.no_grad():
        model.bridge.run_with_hooks(
            tokens,
            return_type=None,
            fwd_hooks=[
                (f"blocks.{block}.hook_resid_pre", write_rows),
                (f"blocks.{model.n_layers - 1}.hook_resid_post", read_out_resid),
            ],
        )
    return captured["resid"]
