"""Where the causal lens acts, read from what a person types: layers (``L3``, ``3``,
``embed``), components (``resid``, ``attn``, ``mlp``, a head ``L3H4``), positions and the
patch's source; each problem one sentence (``InputError``)."""

from __future__ import annotations

from typing import Optional, Union

from lenstui.core.errors import InputError
from lenstui.core.patch_result import ABLATIONS, COMPONENTS


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


def n_heads(model) -> int:
    """Query heads per block, from the model's (text) config."""
    config = model.hf.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(getattr(config, "num_attention_heads", 0) or model.bridge.cfg.n_heads)


def check_head(model, component: str, head: Optional[int]) -> None:
    if component == "head":
        count = n_heads(model)
        if head is None:
            raise InputError("Name the head to patch: --component L3H4 (block 3, head 4).")
        if not 0 <= head < count:
            raise InputError(f"Head {head} is out of range: {model.name} has heads 0..{count - 1} per block.")
    elif head is not None:
        raise InputError("A head is named only with the head component (--component L3H4).")


def position_in(spec: int, n: int, what: str) -> int:
    """A position (negative from the end) inside a prompt of ``n`` tokens, as an index."""
    if not -n <= spec < n:
        raise InputError(f"Position {spec} is outside {what} ({n} tokens: 0..{n - 1}, or -1 for the last).")
    return spec % n


def source_kind(source_prompt, ablate: Optional[str]) -> str:
    """"prompt", "zero" or "mean": where a patch's value comes from."""
    if ablate is not None:
        if ablate not in ABLATIONS:
            raise InputError(f"Unknown ablation {ablate!r}: choose zero or mean.")
        if source_prompt is not None:
            raise InputError("Either patch from a prompt (--from) or ablate (--ablate), not both.")
        return ablate
    if source_prompt is None:
        raise InputError("Say where the patch comes from: --from PROMPT_B, or --ablate zero|mean.")
    return "prompt"


def from_position(position_spec: int, from_spec: Optional[int], n_b: int) -> int:
    """Q: as given, else P's own spec read in B (-1 is B's last token; 5 is B's 5th)."""
    if from_spec is None and not -n_b <= position_spec < n_b:
        raise InputError(
            f"Position {position_spec} is outside prompt B ({n_b} tokens): give --from-position "
            "for prompts of different lengths."
        )
    return position_in(position_spec if from_spec is None else from_spec, n_b, "prompt B")
