"""A token as every face names it: ``TokenRef`` (id, decoded text, vocabulary piece),
and ``TokenSpec``, what a person or a file gives for a token before a model resolves it
(an id, or a text / vocabulary piece)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

TokenSpec = Union[str, int]


@dataclass(frozen=True)
class TokenRef:
    """A token as the UI and JSON show it: id, decoded text and vocabulary piece."""

    id: int
    text: str  # what the token decodes to on its own (U+FFFD where bytes are partial)
    piece: str  # the vocabulary string as stored, e.g. "ĠðŁ"

    def to_json(self) -> dict:
        return {"id": self.id, "text": self.text, "piece": self.piece}


def token_spec(text: str) -> TokenSpec:
    """What a person typed for a token: ``#15107`` is the id 15107, anything else is text
    (or a vocabulary piece such as ``ĠðŁ``) for :func:`resolve_token`."""
    stripped = text.strip()
    if stripped.startswith("#") and stripped[1:].isdigit():
        return int(stripped[1:])
    return text
