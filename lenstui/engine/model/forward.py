"""One forward machinery: every run of the model the engine makes goes through ``run``.

The lens's forward (the residual stack of a prompt, incremental over a KV cache), a run
resumed from a block (a patched or steered run starts where the intervention lands, the
extended lens's decoder and the Patchscope's target run too), the value of one activation
(a patch's source), a fit's sampler: each is one call of :meth:`Forward.run` with

- ``tokens`` [b, m] after what the KV cache ``kv`` holds (positions ``kv_len..``);
- ``start_block`` and ``hidden`` [b, m, d]: block ``start_block``'s input is ``hidden``
  (``start_block`` = n_layers: the final norm's; 0: the embedding's output is replaced); the
  blocks below it are skipped where the model allows it, else run and overwritten;
- ``edits``: (site, function) pairs that rewrite an activation (a patch, a steer);
- ``reads``: the sites whose values come back ([b, m, ...] each);
- ``logits``: whether the model's own logits come back (else the run stops at the final
  norm: no unembedding is computed);
- ``stop_after``: the run ends once block ``stop_after`` has run (a source activation needs
  nothing above it).

A :class:`Site` names an activation the way the causal lens does: ``resid`` L is the
residual after block L (L = -1: the embedding, block 0's input), ``mid`` L the residual
after block L's attention (read only), ``attn`` / ``mlp`` L that sublayer's output, ``head``
L the attention's per-head output before its output projection ([.., n_heads, d_head]).

Two machines answer it. :class:`NativeForward` runs the plain transformers model with
PyTorch hooks on the modules its anatomy names (``engine/model/anatomy.py``): no
TransformerLens, every family the anatomy knows. :class:`BridgeForward` runs
TransformerLens' bridge with its hook points, for the models and sites the anatomy does not
know. :func:`forward_for` picks one per run; both give the same tensors (the plain model
runs eager attention, as the bridge does: tests/unit/test_native_model.py holds them to each
other).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

SITE_KINDS = ("resid", "mid", "attn", "mlp", "head")


@dataclass(frozen=True)
class Site:
    kind: str  # one of SITE_KINDS
    layer: int  # the block (resid: -1 is the embedding)


# An edit rewrites one site's value for the positions of the run: [b, m, ...] -> same shape.
Edit = tuple[Site, Callable[[torch.Tensor], torch.Tensor]]


def stack_sites(n_layers: int, mid: bool = False) -> tuple[list[Site], list[Site]]:
    """The sites a lens state's residual stack is made of: the embedding and every block's
    output (rows 0..n_layers), and, with ``mid``, each block's mid residual."""
    resid = [Site("resid", layer) for layer in range(-1, n_layers)]
    return resid, ([Site("mid", layer) for layer in range(n_layers)] if mid else [])


@dataclass
class RunOutput:
    values: dict[Site, torch.Tensor]  # [b, m, ...] per site read (detached)
    logits: Optional[torch.Tensor]  # [b, m, d_vocab] when asked
    kv: Any  # the cache passed in, grown by the blocks that ran (None without one)
    skipped: bool = False  # the blocks below start_block did not run


class _StopForward(Exception):
    """Raised in a hook to end a forward once everything asked for is read."""


@dataclass
class Forward:
    """The common part of both machines; ``run`` is theirs."""

    model: Any
    n_layers: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_layers = self.model.n_layers

    def supports(self, site: Site) -> bool:
        return True

    def run(
        self,
        tokens: torch.Tensor,
        *,
        kv: Any = None,
        start_block: int = 0,
        hidden: Optional[torch.Tensor] = None,
        edits: Sequence[Edit] = (),
        reads: Sequence[Site] = (),
        logits: bool = False,
        stop_after: Optional[int] = None,
    ) -> RunOutput:
        raise NotImplementedError

    def _plan(self, start_block, hidden, edits, reads, stop_after) -> dict[Site, list]:
        """Per site, what happens there in order: the start's input, the edits, the reads."""
        if start_block and hidden is None:
            raise ValueError("a run from a block needs that block's input (hidden)")
        plan: dict[Site, list] = {}
        if hidden is not None:  # (start_block 0: the embedding's output is replaced)
            plan.setdefault(Site("resid", start_block - 1), []).append(("start", hidden))
        for site, edit in edits:
            plan.setdefault(site, []).append(("edit", edit))
        for site in reads:
            plan.setdefault(site, []).append(("read", None))
        if stop_after is not None:
            plan.setdefault(Site("resid", stop_after), []).append(("stop", None))
        return plan


def _gathered(values: dict[Site, torch.Tensor], model: Any) -> dict[Site, torch.Tensor]:
    """A model spread over devices (accelerate's device map) leaves each site's value on
    its block's device: they come back on the unembedding's, where the lens stacks and
    reads them (residuals move, never weights)."""
    if not getattr(model, "dispatched", False):
        return values
    home = model.output_device
    return {site: value.to(home) for site, value in values.items()}


def _apply(steps: list, value: torch.Tensor, site: Site, read: dict[Site, torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """Run a site's plan on its value. -> (the value to pass on, whether to stop here)."""
    stop = False
    for action, arg in steps:
        if action == "start":
            value = arg.to(device=value.device, dtype=value.dtype)
        elif action == "edit":
            value = arg(value)
        elif action == "read":
            read[site] = value.detach()
        else:
            stop = True
    return value, stop


# ---------------------------------------------------------------- the plain model


def _first_name(kwargs: dict) -> str:
    """The keyword a module got its hidden states by ("hidden_states"; RecurrentGemma's
    blocks say "activations"): the first 3-d float tensor among the keywords."""
    if "hidden_states" in kwargs:
        return "hidden_states"
    for name, value in kwargs.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() == 3:
            return name
    raise KeyError("hidden_states")


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs[_first_name(kwargs)]


def _with_first(args: tuple, kwargs: dict, value: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (value, *args[1:]), kwargs
    return args, {**kwargs, _first_name(kwargs): value}


class NativeForward(Forward):
    """The plain transformers model with PyTorch hooks on its anatomy's modules."""

    def __post_init__(self) -> None:
        super().__post_init__()
        # How a decoder block returns its output ("tensor", or a tuple's length): a
        # skipped block must answer in the same form. Learned from the first run.
        self._block_output: Optional[Any] = None
        # False once skipping blocks gave another answer than running them (a family
        # whose forward loop reads the blocks' outputs in a way a passthrough breaks).
        self.skipping_works: Optional[bool] = None

    @property
    def anatomy(self):
        return self.model.anatomy

    def supports(self, site: Site) -> bool:
        if site.kind == "resid":
            return True
        anatomy = self.anatomy
        per_block = {"mid": anatomy.mids, "attn": anatomy.attns, "mlp": anatomy.mlps,
                     "head": anatomy.out_projs}[site.kind]
        return 0 <= site.layer < len(per_block) and per_block[site.layer] is not None

    def _module(self, site: Site) -> tuple[torch.nn.Module, str]:
        """(module, "pre" | "post" | "proj"): where a site's value flows."""
        anatomy = self.anatomy
        if site.kind == "resid":  # the next block's input; the last block's output (a family may have no final norm)
            after = site.layer + 1
            return (anatomy.blocks[after], "pre") if after < self.n_layers else (anatomy.blocks[-1], "post")
        if site.kind == "mid":  # a pre-norm block: the norm's input; a post-norm block: its output
            return anatomy.mids[site.layer]
        if site.kind == "attn":
            return anatomy.attns[site.layer], "post"
        if site.kind == "mlp":
            return anatomy.mlps[site.layer], "post"
        return anatomy.out_projs[site.layer], "proj"

    def run(self, tokens, *, kv=None, start_block=0, hidden=None, edits=(), reads=(), logits=False, stop_after=None):
        if logits:
            stop_after = None  # the logits are past every block
        elif stop_after is None:
            stop_after = self.n_layers - 1  # nothing past the final norm's input is wanted
        plan = self._plan(start_block, hidden, edits, reads, stop_after)
        skip = start_block > 0 and self.skipping_works is not False and self._block_output is not None
        if skip and self.skipping_works is None:
            return self._check_skipping(tokens, kv, start_block, hidden, edits, reads, logits, stop_after)
        return self._run(tokens, kv, plan, start_block if skip else 0, logits)

    def _check_skipping(self, tokens, kv, start_block, hidden, edits, reads, logits, stop_after) -> RunOutput:
        """The first run of a model that could skip blocks runs both ways and compares: a
        family whose forward loop does not take a skipped block runs every block from then
        on (correct, only slower)."""
        plan = self._plan(start_block, hidden, edits, reads, stop_after)
        spare = kv_prefix(kv, kv.get_seq_length()) if kv is not None else None
        full = self._run(tokens, kv, plan, 0, logits)
        try:
            skipped = self._run(tokens, spare, plan, start_block, logits)
        except Exception:  # noqa: BLE001 - any failure means: do not skip on this model
            self.skipping_works = False
            return full
        pairs = [(skipped.values.get(site), value) for site, value in full.values.items()]
        if logits:
            pairs.append((skipped.logits, full.logits))
        self.skipping_works = bool(pairs) and all(
            a is not None and b is not None and a.shape == b.shape
            and float((a.float() - b.float()).abs().max()) <= 1e-5 * max(1.0, float(b.float().abs().max()))
            for a, b in pairs
        )
        if self.skipping_works:  # the caller's cache is the full run's: every layer filled
            skipped.kv = kv
            return skipped
        return full

    def _run(self, tokens, kv, plan: dict[Site, list], skip_below: int, logits: bool) -> RunOutput:
        anatomy = self.anatomy
        read: dict[Site, torch.Tensor] = {}
        handles = []
        if self._block_output is None:  # first: a site's hook on the last block may end the run
            handles.append(anatomy.blocks[-1].register_forward_hook(self._learn_output))
        for site, steps in plan.items():
            module, where = self._module(site)
            handles.append(_native_hook(module, where, site, steps, read, anatomy.n_heads, tuple(tokens.shape[:2])))
        saved = {}
        for block in anatomy.blocks[:skip_below]:
            saved[block] = block.__dict__.get("forward")
            block.forward = self._passthrough
        out = None
        try:
            with torch.no_grad():
                out = self.model.hf(input_ids=tokens, cache=kv, use_cache=kv is not None)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
            for block, forward in saved.items():
                if forward is None:
                    del block.forward
                else:
                    block.forward = forward
        return RunOutput(
            _gathered(read, self.model), out.logits if (logits and out is not None) else None, kv, skipped=skip_below > 0
        )

    def _learn_output(self, module, args, output) -> None:
        self._block_output = (type(output), len(output)) if isinstance(output, (tuple, list)) else "tensor"

    def _passthrough(self, *args, **kwargs):
        """A skipped block: its input comes out as its output, in the block's own form."""
        value = _first_tensor(args, kwargs)
        if self._block_output == "tensor":
            return value
        kind, length = self._block_output
        return kind([value, *([None] * (length - 1))])

def _native_hook(module: torch.nn.Module, where: str, site: Site, steps: list, read: dict, n_heads: int,
                 lead: tuple[int, int]):
    """The PyTorch hook that runs a site's plan where its value flows. ``lead``: the run's
    (batch, positions), for a module that sees them flattened into one dimension."""
    if where == "pre":

        def pre(mod, args, kwargs):
            value, stop = _apply_shaped(steps, _first_tensor(args, kwargs), site, read, lead)
            if stop:
                raise _StopForward
            return _with_first(args, kwargs, value)

        return module.register_forward_pre_hook(pre, with_kwargs=True)
    if where == "proj":  # the heads' outputs, concatenated, are the projection's input

        def heads(mod, args, kwargs):
            z = _first_tensor(args, kwargs)
            per_head = z.reshape(*z.shape[:-1], n_heads, z.shape[-1] // n_heads)
            value, _ = _apply(steps, per_head, site, read)
            return _with_first(args, kwargs, value.reshape(z.shape))

        return module.register_forward_pre_hook(heads, with_kwargs=True)

    def post(mod, args, output):
        many = isinstance(output, (tuple, list))  # (OpenAI-GPT's blocks return a list)
        value, stop = _apply_shaped(steps, output[0] if many else output, site, read, lead)
        if stop:
            raise _StopForward
        return type(output)([value, *output[1:]]) if many else value

    return module.register_forward_hook(post)


def _apply_shaped(steps: list, value: torch.Tensor, site: Site, read: dict, lead: tuple[int, int]):
    """``_apply`` on a [batch, positions, d] view of a value some families flatten to
    [batch * positions, d] (OPT's and Llama 4's MLPs)."""
    if value.dim() == 2 and value.shape[0] == lead[0] * lead[1]:
        new, stop = _apply(steps, value.view(*lead, value.shape[-1]), site, read)
        return new.reshape(value.shape), stop
    return _apply(steps, value, site, read)


# ---------------------------------------------------------------- TransformerLens' bridge


def bridge_hook_name(site: Site, n_layers: int) -> str:
    """The bridge's hook point for a site."""
    if site.kind == "resid":
        after = site.layer + 1
        return f"blocks.{after}.hook_resid_pre" if after < n_layers else f"blocks.{n_layers - 1}.hook_resid_post"
    if site.kind == "mid":
        return f"blocks.{site.layer}.hook_resid_mid"
    if site.kind == "attn":
        return f"blocks.{site.layer}.hook_attn_out"
    if site.kind == "mlp":
        return f"blocks.{site.layer}.hook_mlp_out"
    return f"blocks.{site.layer}.attn.hook_z"


class BridgeForward(Forward):
    """TransformerLens' bridge with its hook points (every family it knows)."""

    def run(self, tokens, *, kv=None, start_block=0, hidden=None, edits=(), reads=(), logits=False, stop_after=None):
        bridge = self.model.bridge
        plan = self._plan(start_block, hidden, edits, reads, None)
        read: dict[Site, torch.Tensor] = {}

        def hook_for(site, steps):
            def hook(value, hook):
                new, _ = _apply(steps, value, site, read)
                return new

            return hook

        hooks = [(bridge_hook_name(site, self.n_layers), hook_for(site, steps)) for site, steps in plan.items()]
        kwargs: dict[str, Any] = {}
        if kv is not None:
            install_cache_shim(bridge)
            kwargs["past_key_values"] = kv
        if stop_after is not None and stop_after + 1 < self.n_layers and not logits:
            kwargs["stop_at_layer"] = stop_after + 1
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # HF renamed past_key_values -> cache
            out = bridge.run_with_hooks(tokens, return_type="logits" if logits else None, fwd_hooks=hooks, **kwargs)
        return RunOutput(_gathered(read, self.model), out if logits else None, kv)


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


# ---------------------------------------------------------------- the KV cache


def kv_prefix(kv, keep: int, batch: int = 1):
    """A DynamicCache over the first ``keep`` positions of ``kv``, as views (no copy): its
    layers grow by concatenation, so ``kv`` itself is never written. ``batch`` > 1 repeats
    a one-sequence cache for that many sequences (views too)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    out = DynamicCache()
    layers = []
    for layer in kv.layers:
        fresh = DynamicLayer()
        if getattr(layer, "is_initialized", False) and layer.keys is not None:
            keys, values = layer.keys[..., :keep, :], layer.values[..., :keep, :]
            if batch > 1:
                keys = keys.expand(batch, *keys.shape[1:])
                values = values.expand(batch, *values.shape[1:])
            fresh.lazy_initialization(keys, values)
            fresh.keys, fresh.values = keys, values
        layers.append(fresh)
    out.layers = layers
    return out


def fill_skipped_layers(kv, clean_kv, below: int, length: int) -> None:
    """After a run that skipped blocks ``0..below-1``, their keys and values over the first
    ``length`` positions are the clean run's (what they would have computed): views."""
    for layer in range(below):
        keys = clean_kv.layers[layer].keys[..., :length, :]
        values = clean_kv.layers[layer].values[..., :length, :]
        while len(kv.layers) <= layer:  # a fresh cache grows its layers as blocks run
            kv.layers.append(type(clean_kv.layers[layer])())
        target = kv.layers[layer]
        if not getattr(target, "is_initialized", True):  # a fresh cache's layer the run never reached
            target.lazy_initialization(keys, values)
        target.keys, target.values = keys, values


# ---------------------------------------------------------------- choosing


def forward_for(model: Any, sites: Sequence[Site] = ()) -> Forward:
    """The machine that runs ``model`` for a run touching ``sites``: the plain model where
    its anatomy knows the model and every site, else the bridge (one of each per model,
    kept in its caches)."""
    caches = model.caches
    if model.anatomy is not None:
        if caches.forward is None:
            caches.forward = NativeForward(model)
        if all(caches.forward.supports(site) for site in sites):
            return caches.forward
    if caches.bridge_forward is None:
        caches.bridge_forward = BridgeForward(model)
    return caches.bridge_forward
