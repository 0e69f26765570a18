"""The parts of a plain transformers causal LM the lens reads, found without TransformerLens.

For the architectures listed in ``NATIVE_ARCHITECTURES`` (their module trees checked
against TransformerLens' bridge in tests/test_native_model.py), ``anatomy(model)`` names
the decoder blocks, the final norm, each block's post-attention norm (its input is the
mid-block residual), the unembedding and the embedding. The lens's forward then runs on
the plain model with forward pre-hooks, which is what the bridge computes, minus the
bridge's own machinery (a step costs about two thirds of the bridge's), and without
importing TransformerLens at all (seconds at start-up).

Anything else (Gemma's offset RMSNorm and scaled embeddings, soft-capped or scaled logits,
an unknown family) gets ``None``: the engine then reads that model through the bridge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

# class name -> where its parts are: the decoder blocks, the final norm, the embedding,
# and inside each block the post-attention norm (its input is the mid-block residual),
# the attention, the MLP and the attention's output projection (its input is the heads'
# outputs, concatenated: TransformerLens' ``hook_z``).
@dataclass(frozen=True)
class Layout:
    blocks: str
    final_norm: str
    embed: str
    mid_norm: Optional[str]  # None: the block has no mid residual (parallel attention)
    attn: Optional[str]
    mlp: Optional[str]
    out_proj: Optional[str]


_LLAMA_LIKE = Layout("model.layers", "model.norm", "model.embed_tokens", "post_attention_layernorm", "self_attn", "mlp",
                     "self_attn.o_proj")
NATIVE_ARCHITECTURES: dict[str, Layout] = {
    "LlamaForCausalLM": _LLAMA_LIKE,
    "MistralForCausalLM": _LLAMA_LIKE,
    "Qwen2ForCausalLM": _LLAMA_LIKE,
    "Qwen3ForCausalLM": _LLAMA_LIKE,
    "GPT2LMHeadModel": Layout("transformer.h", "transformer.ln_f", "transformer.wte", "ln_2", "attn", "mlp", "attn.c_proj"),
}
# Config attributes that change the logits after the unembedding (the bridge's adapters
# apply them): a model that sets any of them is read through the bridge.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_logits_soft_cap")


@dataclass(frozen=True)
class Anatomy:
    """The architecture facts the engine reads a model by, found once per model: every
    module a lens row, a mid row or an intervention site flows through."""

    blocks: list[torch.nn.Module]  # decoder blocks, in order: block i's input is row i
    final_norm: torch.nn.Module  # its input is the last block's output
    mid_norms: Optional[list[torch.nn.Module]]  # block i's post-attention norm: its input is the mid residual
    attns: Optional[list[torch.nn.Module]]  # block i's attention (its output is the attn site)
    mlps: Optional[list[torch.nn.Module]]  # block i's MLP
    out_projs: Optional[list[torch.nn.Module]]  # block i's attention output projection (input: the heads' z)
    unembed: torch.nn.Module  # the lm head (weight [d_vocab, d_model], bias or None)
    embed: torch.nn.Module  # token embedding (weight [d_vocab, d_model])
    norm_kind: str  # "RMS" or "LN" (TransformerLens' normalization_type)
    n_heads: int  # query heads per block

    @property
    def W_U(self) -> torch.Tensor:
        """[d_model, d_vocab], as TransformerLens names it (a view: no copy)."""
        return self.unembed.weight.T

    @property
    def b_U(self) -> Optional[torch.Tensor]:
        bias = getattr(self.unembed, "bias", None)
        return bias if isinstance(bias, torch.Tensor) else None

    @property
    def W_E(self) -> torch.Tensor:
        return self.embed.weight


def _get(root: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def _per_block(blocks: list[torch.nn.Module], dotted: Optional[str]) -> Optional[list[torch.nn.Module]]:
    return None if dotted is None else [_get(block, dotted) for block in blocks]


def find_anatomy(hf_model: Any) -> Optional[Anatomy]:
    """The native anatomy of ``hf_model``, or None when the bridge must read it."""
    layout = NATIVE_ARCHITECTURES.get(type(hf_model).__name__)
    if layout is None:
        return None
    config = hf_model.config
    if any(getattr(config, name, None) not in (None, 0, 1, 1.0, False) for name in _LOGIT_TRANSFORMS):
        return None
    try:
        blocks = list(_get(hf_model, layout.blocks))
        final_norm = _get(hf_model, layout.final_norm)
        embed = _get(hf_model, layout.embed)
        parts = [_per_block(blocks, name) for name in (layout.mid_norm, layout.attn, layout.mlp, layout.out_proj)]
    except AttributeError:
        return None
    unembed = hf_model.get_output_embeddings()
    if unembed is None or not isinstance(getattr(unembed, "weight", None), torch.Tensor):
        return None
    kind = "LN" if isinstance(final_norm, torch.nn.LayerNorm) else "RMS"
    n_heads = int(getattr(config, "num_attention_heads", 0) or 0)
    return Anatomy(blocks, final_norm, *parts, unembed, embed, kind, n_heads)


def context_length(hf_model: Any) -> int:
    """How many tokens the model reads (what TransformerLens calls n_ctx)."""
    config = hf_model.config
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"{type(hf_model).__name__}'s config names no context length")


def plain_twin(hf_model: Any) -> Any:
    """A second module tree of ``hf_model``'s class whose parameters and buffers are the
    very same tensors (nothing copied): TransformerLens' bridge rewires the modules it is
    given, so it gets this twin and ``hf_model`` stays plain."""
    import copy

    config = copy.deepcopy(hf_model.config)
    with torch.device("meta"):
        twin = type(hf_model)(config)
    tensors = dict(hf_model.state_dict(keep_vars=True))
    twin.load_state_dict({name: tensors[name] for name in twin.state_dict(keep_vars=True)}, strict=True, assign=True)
    buffers = dict(hf_model.named_buffers())
    for name, buffer in list(twin.named_buffers()):
        if buffer.is_meta:  # non-persistent buffers (rotary inv_freq) are not in the state dict
            owner, _, leaf = name.rpartition(".")
            (_get(twin, owner) if owner else twin)._buffers[leaf] = buffers[name]
    for module in twin.modules():
        original = getattr(module, "original_inv_freq", None)
        if isinstance(original, torch.Tensor) and original.is_meta:
            module.original_inv_freq = module.inv_freq.clone()
    if getattr(config, "tie_word_embeddings", False):
        twin.tie_weights()
    twin.train(hf_model.training)
    return twin
