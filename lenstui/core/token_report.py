"""The token inspector's report, as plain data: a token's bytes, facts and readout
neighbours (computed by ``lenstui.engine.inspect.neighbors``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from lenstui.core.token_bytes import bytes_hex


@dataclass(frozen=True)
class Neighbor:
    id: int
    piece: str  # the vocabulary piece, e.g. "ĠðŁ" (JSON key "text")
    decoded: str  # what the token decodes to on its own
    data: bytes  # the bytes it stands for
    cosine: float

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "text": self.piece,
            "decoded": self.decoded,
            "bytes_hex": bytes_hex(self.data),
            "cosine": self.cosine,
        }


@dataclass(frozen=True)
class TokenReport:
    """Everything the inspector shows for one token: plain values, no tensors."""

    model: str
    id: int
    piece: str  # the vocabulary piece as stored, e.g. "ĠðŁ" (JSON key "text")
    decoded: str  # the tokenizer's own decoding (U+FFFD where bytes are partial)
    data: bytes  # the bytes the token stands for
    scheme: str  # "byte-level", "byte-fallback" or "text"
    special: bool  # a control token (its "bytes" are only its name)
    complete_utf8: bool
    utf8_description: str  # e.g. "space, then the first 2 of 4 bytes of a 4-byte character"
    unembed_norm: float  # |W_U[:, t]|
    effective_norm: float  # |W_eff[t]|: gain folded in (centred for LayerNorm)
    unembed_bias: Optional[float]  # b_U[t]; None when the model has no unembedding bias
    readout_offset: Optional[float]  # c[t] = b_U[t] + W_U[:, t].beta; None when all zero
    own_best_match: bool
    best_match: Neighbor  # the readout's argmax when pointed at the token (cosine to it)
    self_margin: float  # logit_t minus the best other logit there (< 0: hard to speak)
    norm_kind: str  # "LN", "RMS" or "none"
    tied_embedding: bool
    embed_norm: float  # |W_E[t]|
    neighbors: tuple[Neighbor, ...]  # by readout direction, best first, excluding itself
    embedding_neighbors: Optional[tuple[Neighbor, ...]]  # by W_E row; None when tied
    seconds: float  # time this lookup took

    @property
    def bytes_hex(self) -> str:
        return bytes_hex(self.data)

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "id": self.id,
            "text": self.piece,
            "decoded": self.decoded,
            "bytes_hex": self.bytes_hex,
            "complete_utf8": self.complete_utf8,
            "utf8_description": self.utf8_description,
            "scheme": self.scheme,
            "special": self.special,
            "unembed_norm": self.unembed_norm,
            "effective_norm": self.effective_norm,
            "unembed_bias": self.unembed_bias,
            "readout_offset": self.readout_offset,
            "own_best_match": self.own_best_match,
            "best_match": self.best_match.to_json(),
            "self_margin": self.self_margin,
            "norm_kind": self.norm_kind,
            "tied_embedding": self.tied_embedding,
            "embed_norm": self.embed_norm,
            "neighbors": [n.to_json() for n in self.neighbors],
            "embedding_neighbors": (
                None if self.embedding_neighbors is None else [n.to_json() for n in self.embedding_neighbors]
            ),
        }
