"""The token inspector's report: a token's bytes, its readout neighbours, its facts.

Neighbours are ranked by the cosine between *readout directions*: the rows of the
effective unembedding ``W_eff`` (``W_U`` with the final norm's gain folded in, see
:mod:`lenstui.engine.inspect.geometry`). For a LayerNorm model each direction is also
centred (its mean over ``d_model`` removed), because LayerNorm's output always has zero
mean, so the readout never sees a direction's component along the all-ones vector.
Where the embedding is not tied to the unembedding, neighbours by ``W_E`` rows are
given too.

"Own best match" is the hard-to-speak test from the SolidGoldMagikarp follow-up:
point the normalized residual straight at the token, ``x = sqrt(d_model) * u_t`` (the
size a final RMSNorm/LayerNorm output has), and ask whether the readout's argmax of
``W_eff @ x + c`` is the token itself. With no readout offset ``c`` the size of ``x``
does not matter and this is ``argmax_j w_j . w_t == t``; with one (GPT-2's folded
LayerNorm bias) the size is what the model really uses. A token that fails is
hard to speak; whether it can be spoken at all is the speakability LP's question.

The first lookup on a model builds the normalized tables (kept in the model's caches);
later lookups are two matrix-vector products.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Optional

import torch

from lenstui.core.errors import InputError
from lenstui.core.token_bytes import TokenBytes, byte_reader, describe_utf8, is_complete_utf8
from lenstui.core.token_report import Neighbor, TokenReport
from lenstui.core.tokens import TokenSpec
from lenstui.engine.inspect.geometry import effective_unembedding, final_norm_affine
from lenstui.engine.model.load import LoadedModel
from lenstui.engine.model.vocab import resolve_token, token_ref

DEFAULT_NEIGHBORS = 10
MAX_NEIGHBORS = 1000


@dataclass
class _Tables:
    """Per-model tensors built on the first lookup."""

    readout_unit: torch.Tensor  # [V, d] readout directions (W_eff, centred for LN), unit length
    readout_norms: torch.Tensor  # [V] their lengths (zero rows stay zero when normalized)
    offset: torch.Tensor  # [V] c
    has_offset: bool
    raw_norms: torch.Tensor  # [V] |W_U[:, j]|
    bias: Optional[torch.Tensor]  # [V] b_U, None when identically zero
    embed_unit: Optional[torch.Tensor]  # [V, d] unit W_E rows; None when tied
    embed_norms: torch.Tensor  # [V]
    tied: bool
    norm_kind: str
    n_tokens: int  # ids at or past this are padding rows with no tokenizer entry


def _unit_rows(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    norms = matrix.norm(dim=1)
    return matrix / norms.clamp_min(1e-30)[:, None], norms


def neighbor_tables(model: LoadedModel) -> _Tables:
    tables = model.caches.neighbor_tables
    if tables is not None:
        return tables
    W_eff, offset = effective_unembedding(model)
    kind = final_norm_affine(model).kind
    with torch.no_grad():
        readout = W_eff - W_eff.mean(dim=1, keepdim=True) if kind == "LN" else W_eff
        readout_unit, readout_norms = _unit_rows(readout)
        W_U = model.W_U.detach()
        raw_norms = W_U.to(torch.float32).norm(dim=0)
        b_U = model.b_U
        bias = b_U.detach().to(torch.float32) if b_U is not None and bool(b_U.any()) else None
        W_E = model.W_E.detach()
        tied = W_E.shape == W_U.T.shape and (
            W_E.data_ptr() == W_U.data_ptr() or bool(torch.equal(W_E, W_U.T))
        )
        embed_unit, embed_norms = _unit_rows(W_E.to(torch.float32))
    tables = _Tables(
        readout_unit=readout_unit,
        readout_norms=readout_norms,
        offset=offset,
        has_offset=bool(offset.any()),
        raw_norms=raw_norms,
        bias=bias,
        embed_unit=None if tied else embed_unit,
        embed_norms=embed_norms,
        tied=tied,
        norm_kind=kind,
        n_tokens=min(len(model.tokenizer), W_eff.shape[0]),
    )
    model.caches.neighbor_tables = tables
    return tables


def inspect_token(
    model: LoadedModel, token: TokenSpec, n_neighbors: int = DEFAULT_NEIGHBORS
) -> TokenReport:
    """The inspector's report for a token id, a one-token text or a vocabulary piece.

    Raises InputError for an unknown token, a text of several tokens, an id out of
    range, or a neighbour count outside 0..MAX_NEIGHBORS.
    """
    if not 0 <= int(n_neighbors) <= MAX_NEIGHBORS:
        raise InputError(f"--neighbors must be between 0 and {MAX_NEIGHBORS}, not {n_neighbors}.")
    started = time.perf_counter()
    token_id = resolve_token(model, token)
    tables = neighbor_tables(model)
    info: TokenBytes = byte_reader(model).read(token_id)
    with torch.no_grad():
        direction = tables.readout_unit[token_id]
        cosines = tables.readout_unit @ direction
        neighbors = _top(model, tables, cosines, token_id, int(n_neighbors))
        embedding_neighbors = None
        if tables.embed_unit is not None:
            embed_cos = tables.embed_unit @ tables.embed_unit[token_id]
            embedding_neighbors = _top(model, tables, embed_cos, token_id, int(n_neighbors))
        # Pointing the normalized residual straight at the token (see module doc):
        # w_j . (sqrt(d) u_t) = sqrt(d) |w_j| cos_j, so no second matrix product.
        scale = math.sqrt(direction.shape[0])
        logits = tables.readout_norms * cosines * scale + tables.offset
        top2_values, top2_ids = logits.topk(2)
        best = int(top2_ids[0])
        own = float(logits[token_id])
        runner_up = float(top2_values[1] if best == token_id else top2_values[0])
        margin = own - runner_up
        offset = float(tables.offset[token_id])
        report = TokenReport(
            model=model.name,
            id=token_id,
            piece=info.piece,
            decoded=_decoded(model, token_id),
            data=info.data,
            scheme=info.scheme,
            special=info.special,
            complete_utf8=is_complete_utf8(info.data),
            utf8_description="control token" if info.special else describe_utf8(info.data),
            unembed_norm=float(tables.raw_norms[token_id]),
            effective_norm=float(tables.readout_norms[token_id]),
            unembed_bias=None if tables.bias is None else float(tables.bias[token_id]),
            readout_offset=offset if tables.has_offset else None,
            own_best_match=best == token_id,
            best_match=_neighbor(model, best, float(cosines[best])),
            self_margin=margin,
            norm_kind=tables.norm_kind,
            tied_embedding=tables.tied,
            embed_norm=float(tables.embed_norms[token_id]),
            neighbors=neighbors,
            embedding_neighbors=embedding_neighbors,
            seconds=0.0,
        )
    return replace(report, seconds=time.perf_counter() - started)


def _top(model, tables: _Tables, scores: torch.Tensor, token_id: int, n: int) -> tuple[Neighbor, ...]:
    if n == 0:
        return ()
    padding = scores.shape[0] - tables.n_tokens
    k = min(scores.shape[0], n + 1 + padding)
    values, ids = scores.topk(k)
    out = []
    for value, j in zip(values.tolist(), ids.tolist()):
        if j == token_id or j >= tables.n_tokens:
            continue
        out.append(_neighbor(model, j, value))
        if len(out) == n:
            break
    return tuple(out)


def _neighbor(model: LoadedModel, token_id: int, cosine: float) -> Neighbor:
    info = byte_reader(model).read(token_id)
    return Neighbor(token_id, info.piece, _decoded(model, token_id), info.data, cosine)


def _decoded(model: LoadedModel, token_id: int) -> str:
    # Padding rows past the tokenizer decode to nothing rather than to an error.
    return token_ref(model, token_id).text if token_id < len(model.tokenizer) else ""
