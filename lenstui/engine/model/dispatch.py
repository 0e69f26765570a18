"""TransformerLens' bridge over a model accelerate spread or offloaded.

The bridge boots on a twin of the plain model that shares every tensor
(``anatomy.plain_twin``). On a model loaded with a device map, the tensors alone are not
the model: accelerate's hooks (``_hf_hook`` on each placed module) move each block's
input to its device, and load an offloaded block's weights (meta tensors in the model)
from the CPU or the offload folder for the length of its forward. :func:`copy_dispatch`
gives the twin the same hooks, reading the same weights (the hooks' ``weights_map`` is
shared, nothing is copied), and the same ``hf_device_map``, from which TransformerLens
reads where the inputs go (``find_embedding_device``).

TransformerLens 4.3 runs a bridge over GPUs only, or over the CPU with disk offload, but
refuses a map that mixes GPUs with CPU or disk offload (``MIXED_OFFLOAD_GPU_ERROR``):
:func:`bridge_problem` says so in one sentence before anything is booted.
"""

from __future__ import annotations

from typing import Any, Optional


def bridge_problem(model: Any) -> Optional[str]:
    """Why the bridge cannot run ``model`` as it is placed, or None."""
    if model.quantize:
        return (
            f"Attribution and the J-lens need TransformerLens' bridge, which lenstui boots on a plain copy of the "
            f"model's modules, and {model.name}'s {model.quantize} layers cannot be copied that way: open it without "
            "--quantize for them (--device-map auto spreads it instead)."
        )
    device_map = getattr(model.hf, "hf_device_map", None)
    if not device_map:
        return None
    values = [str(value).lower() for value in device_map.values()]
    gpus = any(value.isdigit() or value.startswith(("cuda", "mps")) for value in values)
    offloaded = any(value in ("cpu", "disk") for value in values)
    if gpus and offloaded:
        return (
            f"Attribution and the J-lens need TransformerLens' bridge, which does not run a model split between "
            f"GPUs and CPU or disk offload ({model.name} is on {model.placement_summary}): load it on the GPUs "
            "alone (a larger --max-memory for them, or --quantize 4bit)."
        )
    return None


def copy_dispatch(original: Any, twin: Any) -> None:
    """Give ``twin`` (a plain_twin of ``original``) ``original``'s accelerate hooks and
    device map, so it runs where and as ``original`` does."""
    from accelerate.hooks import add_hook_to_module

    for name, module in original.named_modules():
        hook = getattr(module, "_hf_hook", None)
        if hook is not None:
            add_hook_to_module(twin.get_submodule(name) if name else twin, _clone(hook))
    twin.hf_device_map = dict(original.hf_device_map)


def _clone(hook: Any) -> Any:
    """A new hook doing what ``hook`` does, over the same weights (its ``weights_map`` and
    tied-parameter map are shared, not copied)."""
    from accelerate.hooks import AlignDevicesHook, SequentialHook

    if isinstance(hook, SequentialHook):
        return SequentialHook(*[_clone(inner) for inner in hook.hooks])
    if isinstance(hook, AlignDevicesHook):
        return AlignDevicesHook(
            execution_device=hook.execution_device,
            offload=hook.offload,
            io_same_device=hook.io_same_device,
            weights_map=hook.weights_map,
            offload_buffers=hook.offload_buffers,
            place_submodules=hook.place_submodules,
            skip_keys=hook.skip_keys,
            tied_params_map=hook.tied_params_map,
        )
    import copy

    return copy.copy(hook)


def fill_head_results(model: Any, cache: Any) -> None:
    """Each block's per-head attention results (``blocks.L.attn.hook_result``: its heads'
    ``z`` through their slice of ``W_O``) in ``cache``, one block at a time with that block's
    ``W_O`` loaded, on a model whose blocks are offloaded; nothing on any other model.

    TransformerLens' ``ActivationCache.stack_head_results`` computes them itself, reading
    every block's ``W_O`` at once, which an offloaded block does not have outside its
    forward (and loading all of them at once would hold every block's output projection
    in memory together); it keeps the results found in the cache. The product is its own
    (``_ensure_head_results``: ``einsum("...hd,hdm->...hm", z, W_O)``); the tests hold the
    offloaded attribution to the in-memory one, computed by TransformerLens."""
    projections = out_projections(model, model.n_layers)
    if not projections:
        return
    import torch

    bridge = model.bridge
    for layer, module in enumerate(projections):
        with weights_loaded([module]):
            z = cache[("z", layer, "attn")]
            weights = bridge.blocks[layer].attn.W_O
            if z.dtype != weights.dtype:
                dtype = torch.promote_types(z.dtype, weights.dtype)
                z, weights = z.to(dtype), weights.to(dtype)
            result = torch.einsum("...hd,hdm->...hm", z, weights.to(z.device))
        scale = getattr(bridge.blocks[layer].attn, "_result_contribution_scale", 1.0)
        cache.cache_dict[f"blocks.{layer}.attn.hook_result"] = result if scale == 1.0 else result * scale


def out_projections(model: Any, below: int) -> list[Any]:
    """The attention output projections of blocks ``0..below-1`` in the bridge's twin (what
    TransformerLens' ``W_O`` reads) that are offloaded; empty when none is."""
    if not getattr(model.hf, "hf_device_map", None) or not model.has_bridge:
        return []
    from lenstui.engine.model.anatomy import NATIVE_ARCHITECTURES

    twin = model.bridge.original_model
    layout = NATIVE_ARCHITECTURES.get(type(model.hf).__name__)
    if layout is None or layout.out_proj is None:
        return []
    from accelerate.utils import has_offloaded_params

    wrapped = [twin.get_submodule(f"{layout.blocks}.{index}.{layout.out_proj}") for index in range(below)]
    # The bridge wraps each module it reads (a LinearBridge around the nn.Linear): the
    # hook and the weights are the wrapped module's.
    modules = [getattr(module, "original_component", None) or module for module in wrapped]
    return modules if any(has_offloaded_params(module) for module in modules) else []


class weights_loaded:
    """Offloaded modules' weights loaded for the length of a ``with`` (accelerate's
    ``align_module_device``): what reads a weight outside a forward (TransformerLens'
    ``W_O``) needs it; modules whose weights are resident are left alone."""

    def __init__(self, modules: list[Any]):
        self.modules = modules

    def __enter__(self):
        import contextlib

        from accelerate.utils import align_module_device, has_offloaded_params

        self._stack = contextlib.ExitStack()
        for module in self.modules:
            if has_offloaded_params(module):
                self._stack.enter_context(align_module_device(module))
        return self

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)
