"""What a token is down to the byte, and how a run of tokens joins into characters.

Three vocabulary schemes are understood:

- ``byte-level`` (GPT-2 style BPE, the embedded SmolLM2, Llama 3 ...): every byte is
  stored as one printable stand-in character (``Ġ`` = 0x20, ``ð`` = 0xF0), so a piece
  maps back to bytes one character at a time through the inverse of GPT-2's
  ``bytes_to_unicode`` table.
- ``byte-fallback`` (SentencePiece-style, Llama 2, Mistral ...): ordinary pieces are text
  with ``▁`` standing for a space, and bytes with no piece of their own are the tokens
  ``<0x00>`` .. ``<0xFF>``.
- ``text`` (anything else, e.g. WordPiece): the UTF-8 of what the token decodes to.

A token's bytes need not be whole UTF-8 characters: ``ĠðŁ`` is a space and then the
first two bytes of the four-byte 🐠. :func:`describe_utf8` says so in words, and
:func:`join_tokens` reads a sequence's bytes as one stream so each character can name
the tokens its bytes came from.

Pure Python (no torch, no Textual): the CLI, the app and ``textfmt`` all use it.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional, Sequence

BYTE_LEVEL = "byte-level"
BYTE_FALLBACK = "byte-fallback"
TEXT = "text"

_SP_SPACE = "\u2581"  # "▁", SentencePiece's stand-in for a space
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


# --------------------------------------------------------------------------- bytes


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2's stand-in character -> byte table (the inverse of ``bytes_to_unicode``).

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space,
    0x7F-0xA0, 0xAD) are shifted to U+0100 onwards so every byte has a visible glyph.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


@dataclass(frozen=True)
class TokenBytes:
    """A token's vocabulary piece and the exact bytes it stands for."""

    id: int
    piece: str  # as the tokenizer stores it: "ĠðŁ", "<0xF0>", "▁the"
    data: bytes
    scheme: str  # BYTE_LEVEL, BYTE_FALLBACK or TEXT
    special: bool  # a control token (BOS, chat markers): its "bytes" are just its name

    @property
    def hex(self) -> str:
        return bytes_hex(self.data)


def bytes_hex(data: bytes) -> str:
    """Lower-case, space-separated: ``b" \\xf0\\x9f"`` -> ``"20 f0 9f"``."""
    return " ".join(f"{b:02x}" for b in data)


def tokenizer_scheme(tokenizer: Any) -> str:
    """Which of the three schemes a Hugging Face tokenizer uses (see the module doc)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        parts = _component_types(backend.decoder) | _component_types(backend.pre_tokenizer)
        if "ByteLevel" in parts:
            return BYTE_LEVEL
        if "ByteFallback" in parts:
            return BYTE_FALLBACK
    vocab = tokenizer.get_vocab()
    if "<0x00>" in vocab and "<0xFF>" in vocab:  # slow SentencePiece tokenizers
        return BYTE_FALLBACK
    return TEXT


def _component_types(component: Any) -> set[str]:
    """Every "type" named in a tokenizers component's serialized form (Sequences nest)."""
    if component is None:
        return set()
    try:
        state = json.loads(component.__getstate__())
    except Exception:
        return {type(component).__name__}
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("type"), str):
                found.add(node["type"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(state)
    return found


class ByteReader:
    """Token id -> :class:`TokenBytes` for one tokenizer, remembered per id."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.scheme = tokenizer_scheme(tokenizer)
        self.special_ids = frozenset(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        self.special_ids |= {int(i) for i, tok in added.items() if getattr(tok, "special", False)}
        self._cache: dict[int, TokenBytes] = {}

    def __len__(self) -> int:
        return len(self.tokenizer)

    def read(self, token_id: int) -> TokenBytes:
        token_id = int(token_id)
        found = self._cache.get(token_id)
        if found is None:
            found = self._read(token_id)
            self._cache[token_id] = found
        return found

    def _read(self, token_id: int) -> TokenBytes:
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if piece is None:  # an id past the tokenizer (padded embedding rows)
            return TokenBytes(token_id, "", b"", self.scheme, special=False)
        piece = str(piece)
        if token_id in self.special_ids:
            return TokenBytes(token_id, piece, piece.encode("utf-8"), self.scheme, special=True)
        if self.scheme == BYTE_LEVEL:
            data = piece_bytes_byte_level(piece)
        elif self.scheme == BYTE_FALLBACK:
            data = piece_bytes_byte_fallback(piece)
        else:
            data = self.tokenizer.decode([token_id]).encode("utf-8")
        return TokenBytes(token_id, piece, data, self.scheme, special=False)


def piece_bytes_byte_level(piece: str) -> bytes:
    """Bytes of a GPT-2 style piece; characters outside the table (added tokens stored
    as plain text) count as their own UTF-8."""
    table = byte_decoder()
    out = bytearray()
    for char in piece:
        byte = table.get(char)
        if byte is None:
            out += char.encode("utf-8")
        else:
            out.append(byte)
    return bytes(out)


def piece_bytes_byte_fallback(piece: str) -> bytes:
    """Bytes of a SentencePiece piece: ``<0xF0>`` is one raw byte, ``▁`` a space."""
    match = _BYTE_PIECE.match(piece)
    if match:
        return bytes([int(match.group(1), 16)])
    return piece.replace(_SP_SPACE, " ").encode("utf-8")


def byte_reader(model: Any) -> ByteReader:
    """The :class:`ByteReader` for a loaded model, built once and kept in its caches."""
    reader = model.caches.byte_reader
    if reader is None:
        reader = model.caches.byte_reader = ByteReader(model.tokenizer)
    return reader


def token_bytes(model: Any, token_id: int) -> TokenBytes:
    return byte_reader(model).read(token_id)


# --------------------------------------------------------------------------- UTF-8


@dataclass(frozen=True)
class Utf8Segment:
    """A stretch of a byte string, read as UTF-8.

    kind:
    - ``"text"``: whole characters (``text`` holds them);
    - ``"head"``: the first ``len(data)`` of ``need`` bytes of a character whose other
      bytes are not here (the string ends first);
    - ``"tail"``: continuation bytes at the very start: the rest of a character that
      began before this string;
    - ``"invalid"``: bytes that cannot be UTF-8 wherever they came from.
    """

    kind: str
    start: int
    end: int
    data: bytes
    text: str = ""
    need: int = 0


def _sequence_length(lead: int) -> int:
    """Bytes in a UTF-8 sequence that starts with ``lead``; 0 if it cannot start one."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0  # continuation bytes, overlong leads C0/C1, and F5..FF


def _is_continuation(byte: int) -> bool:
    return 0x80 <= byte <= 0xBF


def _valid_prefix(data: bytes) -> bool:
    """Whether ``data`` can begin some valid UTF-8 character (rules out overlongs,
    surrogates and code points past U+10FFFF, which the lead byte alone does not)."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=False)
    except UnicodeDecodeError:
        return False
    return True


def utf8_segments(data: bytes) -> list[Utf8Segment]:
    """Split bytes into text, head, tail and invalid segments (see :class:`Utf8Segment`)."""
    segments: list[Utf8Segment] = []
    text_start: Optional[int] = None
    text_chars: list[str] = []
    i, n = 0, len(data)

    def close_text(at: int) -> None:
        nonlocal text_start, text_chars
        if text_start is not None:
            segments.append(Utf8Segment("text", text_start, at, data[text_start:at], "".join(text_chars)))
        text_start, text_chars = None, []

    def add(kind: str, start: int, end: int, need: int = 0) -> None:
        close_text(start)
        if kind == "invalid" and segments and segments[-1].kind == "invalid" and segments[-1].end == start:
            start = segments.pop().start  # one run of junk reads better than several
        segments.append(Utf8Segment(kind, start, end, data[start:end], need=need))

    if n and _is_continuation(data[0]):
        j = 1
        while j < min(n, 3) and _is_continuation(data[j]):  # at most 3 can follow a lead
            j += 1
        add("tail", 0, j)
        i = j
    while i < n:
        length = _sequence_length(data[i])
        if length == 0:
            add("invalid", i, i + 1)
            i += 1
            continue
        j = i + 1
        while j < min(n, i + length) and _is_continuation(data[j]):
            j += 1
        chunk = data[i:j]
        if j - i == length:
            try:
                char = chunk.decode("utf-8")
            except UnicodeDecodeError:
                add("invalid", i, j)
            else:
                if text_start is None:
                    text_start = i
                text_chars.append(char)
        elif j == n and _valid_prefix(chunk):
            add("head", i, j, need=length)
        else:
            add("invalid", i, j)
        i = j
    close_text(n)
    return segments


def is_complete_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_WHITESPACE_NAMES = {" ": "space", "\n": "newline", "\t": "tab", "\r": "carriage return"}


def _describe_text(text: str) -> str:
    if len(set(text)) == 1 and text[0] in _WHITESPACE_NAMES:
        name = _WHITESPACE_NAMES[text[0]]
        return name if len(text) == 1 else f"{len(text)} {name}s"
    return json.dumps(text, ensure_ascii=False)


def _describe_segment(segment: Utf8Segment) -> str:
    count = len(segment.data)
    if segment.kind == "text":
        return _describe_text(segment.text)
    if segment.kind == "head":
        if count == 1:
            return f"the first byte of a {segment.need}-byte character"
        return f"the first {count} of {segment.need} bytes of a {segment.need}-byte character"
    if segment.kind == "tail":
        what = "a continuation byte" if count == 1 else f"{count} continuation bytes"
        return f"{what} ({bytes_hex(segment.data)}) finishing a character begun before"
    what = "byte" if count == 1 else "bytes"
    return f"{what} {bytes_hex(segment.data)}, not valid UTF-8"


def describe_utf8(data: bytes) -> str:
    """The bytes in words, e.g. ``"space, then the first 2 of 4 bytes of a 4-byte character"``.

    Complete text is quoted (runs of one whitespace character are named instead).
    """
    if not data:
        return "no bytes"
    return ", then ".join(_describe_segment(s) for s in utf8_segments(data))


# --------------------------------------------------------------------------- sequences


@dataclass(frozen=True)
class JoinedChar:
    """One character of a token sequence, or a run of bytes that makes none."""

    text: str  # the character; "" when the bytes make no character
    data: bytes
    token_indices: tuple[int, ...]  # positions in the sequence its bytes came from
    complete: bool

    def to_json(self) -> dict:
        return {
            "text": self.text,
            "bytes_hex": bytes_hex(self.data),
            "token_indices": list(self.token_indices),
            "complete": self.complete,
        }


@dataclass(frozen=True)
class TokenGroup:
    """Consecutive tokens that share characters: shown as one cell, tokens underneath.

    A token whose bytes are whole characters is a group on its own; ``ĠðŁ``,``Ĳ``,``ł``
    (ids 15107, 234, 250) are one group whose text is `` 🐠``.
    """

    token_indices: tuple[int, ...]
    token_ids: tuple[int, ...]
    pieces: tuple[str, ...]
    token_hex: tuple[str, ...]  # each token's own bytes, for showing under the group
    chars: tuple[JoinedChar, ...]
    special: bool  # a single control token (BOS, chat markers)

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.chars)

    @property
    def data(self) -> bytes:
        return b"".join(c.data for c in self.chars)

    @property
    def complete(self) -> bool:
        return all(c.complete for c in self.chars)

    def to_json(self) -> dict:
        return {
            "text": self.text,
            "bytes_hex": bytes_hex(self.data),
            "complete_utf8": self.complete,
            "special": self.special,
            "tokens": [
                {"index": i, "id": t, "text": p, "bytes_hex": h}
                for i, t, p, h in zip(self.token_indices, self.token_ids, self.pieces, self.token_hex)
            ],
            "chars": [c.to_json() for c in self.chars],
        }


@dataclass(frozen=True)
class JoinedSequence:
    groups: tuple[TokenGroup, ...]

    @property
    def text(self) -> str:
        return "".join(g.text for g in self.groups)

    @property
    def complete(self) -> bool:
        return all(g.complete for g in self.groups)

    def group_of(self, token_index: int) -> Optional[TokenGroup]:
        for group in self.groups:
            if token_index in group.token_indices:
                return group
        return None

    def to_json(self) -> dict:
        return {"text": self.text, "complete_utf8": self.complete, "groups": [g.to_json() for g in self.groups]}


def join_token_bytes(tokens: Sequence[TokenBytes]) -> JoinedSequence:
    """Read the tokens' bytes as one stream and group tokens that share a character.

    Control tokens never join their neighbours: their names are not bytes of the text.
    """
    groups: list[TokenGroup] = []
    run: list[tuple[int, TokenBytes]] = []

    def flush() -> None:
        if run:
            groups.extend(_group_run(run))
            run.clear()

    for index, token in enumerate(tokens):
        if token.special:
            flush()
            char = JoinedChar(token.piece, token.data, (index,), True)
            groups.append(
                TokenGroup((index,), (token.id,), (token.piece,), (token.hex,), (char,), special=True)
            )
        else:
            run.append((index, token))
    flush()
    return JoinedSequence(tuple(groups))


def join_tokens(model_or_reader: Any, token_ids: Sequence[int]) -> JoinedSequence:
    """:func:`join_token_bytes` for ids, given a loaded model or a :class:`ByteReader`."""
    reader = model_or_reader if isinstance(model_or_reader, ByteReader) else byte_reader(model_or_reader)
    return join_token_bytes([reader.read(i) for i in token_ids])


def _group_run(run: list[tuple[int, TokenBytes]]) -> list[TokenGroup]:
    stream = b"".join(t.data for _, t in run)
    owner: list[int] = []  # position in `run` of every byte of the stream
    for k, (_, token) in enumerate(run):
        owner.extend([k] * len(token.data))

    chars: list[tuple[JoinedChar, int, int]] = []  # (char, first run pos, last run pos)
    for seg in utf8_segments(stream):
        if seg.kind == "text":
            offset = seg.start
            for char in seg.text:
                width = len(char.encode("utf-8"))
                chars.append(_joined_char(run, owner, char, stream, offset, offset + width, True))
                offset += width
        else:
            chars.append(_joined_char(run, owner, "", stream, seg.start, seg.end, False))

    # Union tokens linked by a shared character into consecutive spans.
    groups: list[TokenGroup] = []
    span_start, span_end, span_chars = -1, -1, []
    for joined, first, last in chars:
        if first > span_end:
            if span_chars:
                groups.append(_make_group(run, span_start, span_end, span_chars))
            span_start, span_chars = first, []
        span_end = max(span_end, last)
        span_chars.append(joined)
    if span_chars:
        groups.append(_make_group(run, span_start, span_end, span_chars))
    # Tokens with no bytes at all (rare: empty pieces) still get a group of their own.
    return _fill_empty(run, groups)


def _joined_char(run, owner, text, stream, start, end, complete) -> tuple[JoinedChar, int, int]:
    first, last = owner[start], owner[end - 1]
    indices = tuple(run[k][0] for k in range(first, last + 1))
    return JoinedChar(text, stream[start:end], indices, complete), first, last


def _make_group(run, first: int, last: int, chars: list[JoinedChar]) -> TokenGroup:
    members = [run[k] for k in range(first, last + 1)]
    return TokenGroup(
        tuple(i for i, _ in members),
        tuple(t.id for _, t in members),
        tuple(t.piece for _, t in members),
        tuple(t.hex for _, t in members),
        tuple(chars),
        special=False,
    )


def _fill_empty(run, groups: list[TokenGroup]) -> list[TokenGroup]:
    covered = {i for g in groups for i in g.token_indices}
    extra = [
        TokenGroup((i,), (t.id,), (t.piece,), (t.hex,), (), special=False)
        for i, t in run
        if i not in covered
    ]
    return sorted(groups + extra, key=lambda g: g.token_indices[0])
