"""Token bytes, partial UTF-8 descriptions and joining byte pieces into characters."""

from __future__ import annotations

import random

import pytest

from lenstui.core.token_bytes import (
    BYTE_FALLBACK,
    BYTE_LEVEL,
    ByteReader,
    TokenBytes,
    byte_decoder,
    bytes_hex,
    describe_utf8,
    is_complete_utf8,
    join_token_bytes,
    join_tokens,
    utf8_segments,
)


def sentencepiece_byte_fallback_tokenizer():
    """A Llama-2-style tokenizer: "▁" for spaces, <0x00>..<0xFF> for uncovered bytes."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in ["▁", "t", "h", "e", "a", "c", "f", "é", "th", "the", "▁the", "ca", "caf", "café", "▁café"]:
        vocab[piece] = len(vocab)
    merges = [("t", "h"), ("th", "e"), ("▁", "the"), ("c", "a"), ("ca", "f"), ("caf", "é"), ("▁", "café")]
    model = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def sp_tokenizer():
    return sentencepiece_byte_fallback_tokenizer()


@pytest.fixture(scope="module")
def tiny_reader():
    from testkit.models import tiny_tokenizer

    return ByteReader(tiny_tokenizer())


# ----------------------------------------------------------------- GPT-2 byte table


def test_byte_decoder_is_gpt2s_bytes_to_unicode_inverted():
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    assert byte_decoder() == {char: byte for byte, char in bytes_to_unicode().items()}
    assert sorted(byte_decoder().values()) == list(range(256))


def test_seed_line_of_code():
    # The seeds' line, with the real second character (U+0132 "Ĳ", shown there as "IJ").
    decoder = byte_decoder()
    assert bytes([decoder[c] for c in "ĠðŁĲł"]).decode("utf-8") == " 🐠"


# ----------------------------------------------------------------- UTF-8 in words


@pytest.mark.parametrize(
    "data, words",
    [
        (b" \xf0\x9f", "space, then the first 2 of 4 bytes of a 4-byte character"),
        (b"abc\xe6", '"abc", then the first byte of a 3-byte character'),
        (b"\xe6\x9d", "the first 2 of 3 bytes of a 3-byte character"),
        (b"\x90", "a continuation byte (90) finishing a character begun before"),
        (b"\x90\xa0", "2 continuation bytes (90 a0) finishing a character begun before"),
        (b"\xa0 ok", 'a continuation byte (a0) finishing a character begun before, then " ok"'),
        (b"\xff", "byte ff, not valid UTF-8"),
        (b"\xc0\x80", "bytes c0 80, not valid UTF-8"),  # overlong
        (b"\xed\xa0\x80", "bytes ed a0 80, not valid UTF-8"),  # a surrogate
        (b"\xf4\x90", "bytes f4 90, not valid UTF-8"),  # past U+10FFFF, even as a prefix
        (b"\xe0\x80", "bytes e0 80, not valid UTF-8"),  # an overlong prefix
        (b"  ", "2 spaces"),
        (b"\n", "newline"),
        (b" the", '" the"'),
        (b"\xf0\x9f\x90\xa0", '"🐠"'),
        (b"", "no bytes"),
    ],
)
def test_describe_utf8(data, words):
    assert describe_utf8(data) == words
    assert is_complete_utf8(data) == (data.decode("utf-8", "replace") == data.decode("utf-8", "ignore"))


def test_segments_cover_every_byte_in_order():
    data = b"\x80\x80\x80\x80a\xe6\x9d\xb1\xffb\xf0\x9f"
    segments = utf8_segments(data)
    assert [s.kind for s in segments] == ["tail", "invalid", "text", "invalid", "text", "head"]
    assert b"".join(s.data for s in segments) == data
    assert [(s.start, s.end) for s in segments] == [(0, 3), (3, 4), (4, 8), (8, 9), (9, 10), (10, 12)]
    assert segments[2].text == "a東" and segments[-1].need == 4


# ----------------------------------------------------------------- schemes


def test_tiny_byte_level_tokenizer_round_trips(tiny_reader):
    from testkit.models import CORPUS

    assert tiny_reader.scheme == BYTE_LEVEL
    for line in CORPUS:
        ids = tiny_reader.tokenizer.encode(line, add_special_tokens=False)
        assert b"".join(tiny_reader.read(i).data for i in ids) == line.encode("utf-8")
        assert join_tokens(tiny_reader, ids).text == line


def test_sentencepiece_byte_fallback(sp_tokenizer):
    reader = ByteReader(sp_tokenizer)
    assert reader.scheme == BYTE_FALLBACK
    ids = sp_tokenizer.encode("the café 🐠", add_special_tokens=False)
    pieces = sp_tokenizer.convert_ids_to_tokens(ids)
    assert pieces == ["▁the", "▁café", "▁", "<0xF0>", "<0x9F>", "<0x90>", "<0xA0>"]

    f0 = reader.read(sp_tokenizer.convert_tokens_to_ids("<0xF0>"))
    assert f0.data == b"\xf0" and f0.hex == "f0" and not f0.special
    assert describe_utf8(f0.data) == "the first byte of a 4-byte character"
    assert reader.read(ids[1]).data == " café".encode("utf-8")

    joined = join_tokens(reader, ids)
    assert joined.text == " the café 🐠"  # the leading "▁" is the normalizer's, kept as bytes
    fish = joined.groups[-1]
    assert fish.text == "🐠" and fish.pieces == ("<0xF0>", "<0x9F>", "<0x90>", "<0xA0>")
    assert fish.token_indices == (3, 4, 5, 6) and fish.complete
    assert [g.text for g in joined.groups] == [" the", " café", " ", "🐠"]


def test_sentencepiece_special_tokens_are_not_bytes(sp_tokenizer):
    reader = ByteReader(sp_tokenizer)
    bos = reader.read(sp_tokenizer.bos_token_id)
    assert bos.special and bos.piece == "<s>"
    joined = join_tokens(reader, [sp_tokenizer.bos_token_id, sp_tokenizer.convert_tokens_to_ids("<0xF0>")])
    assert [g.special for g in joined.groups] == [True, False]
    assert not joined.groups[1].complete


# ----------------------------------------------------------------- joining sequences


def _fake(idx: int, data: bytes) -> TokenBytes:
    return TokenBytes(idx, f"t{idx}", data, BYTE_LEVEL, special=False)


def test_sequence_starting_and_ending_mid_character():
    joined = join_token_bytes([_fake(0, b"\x90"), _fake(1, b"\xa0 a"), _fake(2, b"b \xe6")])
    texts = [(g.token_indices, g.text, g.complete) for g in joined.groups]
    assert texts == [((0, 1), " a", False), ((2,), "b ", False)]
    first = joined.groups[0].chars[0]
    assert first.text == "" and first.data == b"\x90\xa0" and first.token_indices == (0, 1)
    assert joined.group_of(2) is joined.groups[1]


def test_random_byte_splits_rejoin_into_the_same_characters():
    text = "héllo 🐠 東京 naïve ✓ 👨\u200d👩 ok"
    data = text.encode("utf-8")
    rng = random.Random(4)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 12)))
        chunks = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
        joined = join_token_bytes([_fake(i, c) for i, c in enumerate(chunks)])
        assert joined.text == text and joined.complete
        covered = [i for g in joined.groups for i in g.token_indices]
        assert covered == list(range(len(chunks)))  # groups partition the tokens, in order
        for group in joined.groups:
            for char in group.chars:
                first = char.token_indices[0]
                # a character's bytes come from exactly the tokens it names
                own = b"".join(chunks[i] for i in char.token_indices)
                assert char.data in own and set(char.token_indices) <= set(group.token_indices)
                assert char.token_indices == tuple(range(first, first + len(char.token_indices)))


def test_bytes_hex():
    assert bytes_hex(b" \xf0\x9f") == "20 f0 9f"
    assert bytes_hex(b"") == ""


# ----------------------------------------------------------------- the embedded model
