"""The logit lens: every residual-stream row x every position, read as a prediction.

Rows are the embedding, then the residual after each block (optionally also the
mid-block residual, after attention and before the MLP). Each row is read through
TransformerLens 4's own ``logit_readout`` (the model's final norm, ``W_U`` and
``b_U``, and any post-unembedding transform), one row at a time, so at most
``positions x d_vocab`` logits exist at once.

Lens variants:
- ``logit``: final norm, then unembedding (the classic logit lens);
- ``extended``: the last N blocks are part of the decoder: a row from before block
  ``L-N`` is written into block ``L-N``'s input and run through blocks ``L-N..L-1``
  (attention over every position, all rows batched into one forward pass), then read
  as ``logit``; rows from block ``L-N`` on are already past the cut and read as the
  model's own output (nostalgebraist's "extended decoder" for gpt-neo);
- ``raw``: unembedding without the final norm.

Per cell: the top-k tokens (probability and logit), the entropy of the row's
distribution, KL(final || row) where "final" is the model's own output distribution,
and the rank and probability of a target token (default: the model's own top-1 at
that position).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch

# Cancelled lives in errors.py; re-exported so ``from lenstui.engine.lens import Cancelled`` keeps working.
from lenstui.engine.errors import Cancelled, InputError  # noqa: F401
from lenstui.engine.models import LoadedModel
from lenstui.engine.vocab import TokenRef, TokenSpec, encode_prompt, resolve_token, token_ref

LENS_KINDS = ("logit", "extended", "raw")
MAX_TOP_K = 100
# Residual vectors read per logit_readout call (each holds d_vocab float32 logits).
READOUT_VECTORS = 256


@dataclass(frozen=True)
class TopToken:
    id: int
    text: str
    piece: str
    prob: float
    logit: float

    def to_json(self) -> dict:
        return {"id": self.id, "text": self.text, "piece": self.piece, "prob": self.prob, "logit": self.logit}


@dataclass(frozen=True)
class LensCell:
    top: tuple[TopToken, ...]
    entropy: float  # nats
    kl_to_final: float  # KL(final || this row), nats
    target_rank: int  # 0 = the row's argmax
    target_prob: float

    def to_json(self) -> dict:
        return {
            "top": [t.to_json() for t in self.top],
            "entropy": self.entropy,
            "kl_to_final": self.kl_to_final,
            "target_rank": self.target_rank,
            "target_prob": self.target_prob,
        }


@dataclass
class LensResult:
    model: str
    lens: str
    tokens: list[TokenRef]  # the prompt's tokens, in order
    layers: list[str]  # row labels: "embed", then "L0".. (with "L3.attn" mid rows)
    grid: list[list[LensCell]]  # grid[row][position]
    targets: list[TokenRef]  # the target token at each position
    target_is_default: bool = True
    seconds: float = 0.0
    extended_blocks: int = 0

    @property
    def next_token(self) -> TokenRef:
        """The model's greedy next token after the prompt (final row, last position)."""
        top = self.grid[-1][-1].top[0]
        return TokenRef(top.id, top.text, top.piece)

    @property
    def token_ids(self) -> list[int]:
        return [t.id for t in self.tokens]

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "lens": self.lens,
            "tokens": [t.to_json() for t in self.tokens],
            "layers": list(self.layers),
            "grid": [[cell.to_json() for cell in row] for row in self.grid],
            "targets": [t.to_json() for t in self.targets],
            "extended_blocks": self.extended_blocks,
            "seconds": self.seconds,
        }


def row_labels(tl_labels: Sequence[str]) -> list[str]:
    """TransformerLens stack labels ("0_pre", "3_mid", "final_post") -> ours."""
    labels = []
    for label in tl_labels:
        index, kind = label.split("_", 1)
        if label == "0_pre":
            labels.append("embed")
        elif index == "final":
            labels.append(f"L{len([x for x in tl_labels if x.endswith('_pre')]) - 1}")
        elif kind == "pre":
            labels.append(f"L{int(index) - 1}")
        else:  # mid: after block i's attention, before its MLP
            labels.append(f"L{index}.attn")
    return labels


def _hook_names(n_layers: int, incl_mid: bool) -> list[str]:
    names = []
    for layer in range(n_layers):
        names.append(f"blocks.{layer}.hook_resid_pre")
        if incl_mid:
            names.append(f"blocks.{layer}.hook_resid_mid")
    names.append(f"blocks.{n_layers - 1}.hook_resid_post")
    return names


def _extended_decode(
    model: LoadedModel, tokens: torch.Tensor, stack: torch.Tensor, n_blocks: int
) -> torch.Tensor:
    """Run rows before the cut through the last ``n_blocks`` blocks; [rows, pos, d] -> same."""
    n_layers = model.n_layers
    cut = n_layers - n_blocks
    # Row i of the (mid-free) stack is block i's input; rows >= cut already passed the cut.
    early = list(range(min(cut, stack.shape[0])))
    out = stack.clone()
    out[cut:] = stack[-1]
    if not early:
        return out
    replacement = stack[early]
    captured: dict[str, torch.Tensor] = {}

    def write_rows(resid: torch.Tensor, hook) -> torch.Tensor:
        return replacement.to(dtype=resid.dtype, device=resid.device)

    def read_out(resid: torch.Tensor, hook) -> None:
        captured["resid"] = resid.detach()

    with torch.no_grad():
        model.bridge.run_with_hooks(
            tokens.expand(len(early), -1),
            fwd_hooks=[
                (f"blocks.{cut}.hook_resid_pre", write_rows),
                (f"blocks.{n_layers - 1}.hook_resid_post", read_out),
            ],
        )
    out[early] = captured["resid"].to(out.dtype)
    return out


def run_lens(
    model: LoadedModel,
    prompt: Union[str, Sequence[int]],
    *,
    top_k: int = 10,
    lens: str = "logit",
    extended_blocks: int = 1,
    incl_mid: bool = False,
    target: Optional[TokenSpec] = None,
    should_stop: Optional[Callable[[], bool]] = None,
) -> LensResult:
    """Run the lens on a prompt (text or token ids). Raises InputError on bad input and
    Cancelled when ``should_stop()`` turns true between rows."""
    from transformer_lens.tools.analysis import logit_readout

    started = time.perf_counter()
    if lens not in LENS_KINDS:
        raise InputError(f"Unknown lens {lens!r}: choose one of {', '.join(LENS_KINDS)}.")
    if not 1 <= top_k <= min(MAX_TOP_K, model.d_vocab):
        raise InputError(f"top-k must be between 1 and {min(MAX_TOP_K, model.d_vocab)}, not {top_k}.")
    if lens == "extended":
        if not 1 <= extended_blocks < model.n_layers:
            raise InputError(
                f"The extended lens needs 1..{model.n_layers - 1} decoder blocks, not {extended_blocks}."
            )
        if incl_mid:
            raise InputError("The extended lens reads block outputs only: turn mid-block rows off.")
    ids = encode_prompt(model, prompt)
    target_id = None if target is None else resolve_token(model, target)

    def check_cancel() -> None:
        if should_stop is not None and should_stop():
            raise Cancelled("superseded by a newer request")

    bridge = model.bridge
    tokens = torch.tensor([ids], device=model.device)
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(
            tokens, names_filter=_hook_names(model.n_layers, incl_mid)
        )
        check_cancel()
        stack, tl_labels = cache.accumulated_resid(
            layer=None, incl_mid=incl_mid, apply_ln=False, return_labels=True
        )
        stack = stack[:, 0]  # [rows, pos, d_model]
        del cache
        if lens == "extended":
            stack = _extended_decode(model, tokens, stack, extended_blocks)
            check_cancel()
        # The model's own output distribution: the reference for KL and default targets.
        final_lp = torch.log_softmax(logits[0].float(), dim=-1)
        final_p = final_lp.exp()
        final_neg_entropy = torch.linalg.vecdot(final_p, final_lp)  # sum p log p
        targets = (
            final_lp.argmax(dim=-1)
            if target_id is None
            else torch.full((len(ids),), target_id, device=final_lp.device)
        )
        grid: list[list[LensCell]] = []
        # Several rows per readout call (bounded so a call holds at most ~READOUT_VECTORS
        # x d_vocab logits): logit_readout's per-call model checks cost more than its math
        # on short prompts.
        rows_per_call = max(1, READOUT_VECTORS // len(ids))
        for first in range(0, stack.shape[0], rows_per_call):
            check_cancel()
            rows = stack[first : first + rows_per_call]
            readout = logit_readout(
                bridge, rows, apply_ln=lens != "raw", return_type="logits", chunk_size=READOUT_VECTORS
            )
            all_logits = readout.values.float()
            for offset in range(rows.shape[0]):
                row_logits = all_logits[offset]
                # Everything below is a reduction over the vocabulary, never a second
                # [positions, d_vocab] tensor: log p = logit - logsumexp, and
                # KL(final || row) = sum p_f log p_f - (sum p_f logit - logsumexp).
                lse = torch.logsumexp(row_logits, dim=-1)
                kl = (final_neg_entropy - torch.linalg.vecdot(final_p, row_logits) + lse).clamp_min(0.0)
                top = torch.topk(row_logits, k=top_k, dim=-1)
                top_probs = (top.values - lse[:, None]).exp()
                target_logit = row_logits.gather(-1, targets[:, None])
                ranks = (row_logits > target_logit).sum(dim=-1)
                target_probs = (target_logit[:, 0] - lse).exp()
                grid.append(
                    _row_cells(
                        model,
                        top.indices.tolist(),
                        top_probs.tolist(),
                        top.values.tolist(),
                        readout.entropy[offset].tolist(),
                        kl.tolist(),
                        ranks.tolist(),
                        target_probs.tolist(),
                    )
                )
    return LensResult(
        model=model.name,
        lens=lens,
        tokens=[token_ref(model, i) for i in ids],
        layers=row_labels(tl_labels),
        grid=grid,
        targets=[token_ref(model, int(t)) for t in targets.tolist()],
        target_is_default=target_id is None,
        seconds=time.perf_counter() - started,
        extended_blocks=extended_blocks if lens == "extended" else 0,
    )


def _row_cells(model, top_ids, top_probs, top_logits, entropy, kl, ranks, target_probs) -> list[LensCell]:
    cells = []
    for pos in range(len(top_ids)):
        top = tuple(
            TopToken(ref.id, ref.text, ref.piece, float(p), float(lg))
            for ref, p, lg in zip(
                (token_ref(model, i) for i in top_ids[pos]), top_probs[pos], top_logits[pos]
            )
        )
        cells.append(
            LensCell(
                top=top,
                entropy=float(entropy[pos]),
                kl_to_final=float(kl[pos]),
                target_rank=int(ranks[pos]),
                target_prob=float(target_probs[pos]),
            )
        )
    return cells
