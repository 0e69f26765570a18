"""An independent Patchscope for the tests: plain PyTorch hooks on the transformers model.

For each row r and source position p: run the source prompt once (the model's own
``hidden_states``), then the target prompt with the residual at row r written over its
last position (row 0, the embeddings: block 0's input; row k + 1: block k's output), and
read the model's next-token distribution at the target's last position. Nothing of
lenstui's forward machinery, KV caches or readout is used.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def decoder_blocks(hf) -> list[torch.nn.Module]:
    """The transformers model's decoder blocks, found by the families' own attribute names."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        node = hf
        for part in path.split("."):
            node = getattr(node, part, None)
            if node is None:
                break
        if node is not None:
            return list(node)
    raise ValueError(f"no decoder blocks found on {type(hf).__name__}")


def _overwrite_last(value: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    value = value.clone()
    value[:, -1] = source.to(value.dtype)
    return value


def hooked_patchscope(
    hf,
    source_ids: Sequence[int],
    target_ids: Sequence[int],
    rows: Optional[Sequence[int]] = None,
    positions: Optional[Sequence[int]] = None,
) -> dict[tuple[int, int], torch.Tensor]:
    """{(row, position): the target's next-token probabilities (float64, whole vocabulary)}."""
    blocks = decoder_blocks(hf)
    n_layers = len(blocks)
    rows = list(range(n_layers + 1)) if rows is None else list(rows)
    positions = list(range(len(source_ids))) if positions is None else list(positions)
    with torch.no_grad():
        out = hf(torch.tensor([list(source_ids)]), output_hidden_states=True)
    hidden = out.hidden_states  # [0]: embeddings; [k + 1]: block k's output ([-1] may be normed)
    outputs = [hidden[0]]
    captured: list[torch.Tensor] = []
    # Block outputs as the blocks return them (hidden_states[-1] is after the final norm in
    # some families): one more clean pass with post-hooks.
    handles = [b.register_forward_hook(lambda m, a, o: captured.append((o[0] if isinstance(o, tuple) else o).detach())) for b in blocks]
    try:
        with torch.no_grad():
            hf(torch.tensor([list(source_ids)]))
    finally:
        for h in handles:
            h.remove()
    outputs += captured
    target = torch.tensor([list(target_ids)])
    probs = {}
    for row in rows:
        for pos in positions:
            source = outputs[row][0, pos]
            if row == 0:

                def pre(module, args, kwargs, source=source):
                    if args:
                        return (_overwrite_last(args[0], source), *args[1:]), kwargs
                    return args, {**kwargs, "hidden_states": _overwrite_last(kwargs["hidden_states"], source)}

                handle = blocks[0].register_forward_pre_hook(pre, with_kwargs=True)
            else:

                def post(module, args, output, source=source):
                    if isinstance(output, tuple):
                        return (_overwrite_last(output[0], source), *output[1:])
                    return _overwrite_last(output, source)

                handle = blocks[row - 1].register_forward_hook(post)
            try:
                with torch.no_grad():
                    logits = hf(target).logits[0, -1]
            finally:
                handle.remove()
            probs[(row, pos)] = torch.softmax(logits.double(), dim=-1)
    return probs
