"""Token bytes on the embedded model: the fish emoji's pieces, joined into one group in a prompt, and agreeing with the tokenizer's own decoding."""

from __future__ import annotations

from lenstui.core.token_bytes import (
    BYTE_LEVEL,
    ByteReader,
    describe_utf8,
    join_tokens,
    token_bytes,
)

FISH_IDS = (15107, 234, 250)  # "ĠðŁ", "Ĳ", "ł" in SmolLM2's vocabulary


def test_embedded_fish_bytes(embedded):
    assert [embedded.piece(i) for i in FISH_IDS] == ["ĠðŁ", "Ĳ", "ł"]
    head = token_bytes(embedded, 15107)
    assert head.hex == "20 f0 9f" and head.scheme == BYTE_LEVEL
    assert describe_utf8(head.data) == "space, then the first 2 of 4 bytes of a 4-byte character"
    assert token_bytes(embedded, 234).data == b"\x90" and token_bytes(embedded, 250).data == b"\xa0"


def test_embedded_prompt_joins_fish_into_one_group(embedded):
    text = "Is there a 🐠 or 東京?"
    ids = embedded.tokenizer.encode(text, add_special_tokens=False)
    assert list(FISH_IDS) == ids[3:6]
    joined = join_tokens(embedded, [1] + ids)  # 1 = <|im_start|>, a control token
    assert joined.groups[0].special and joined.groups[0].text == "<|im_start|>"
    fish = joined.group_of(4)
    assert fish.token_ids == FISH_IDS and fish.text == " 🐠" and fish.complete
    assert fish.pieces == ("ĠðŁ", "Ĳ", "ł") and fish.token_hex == ("20 f0 9f", "90", "a0")
    assert "".join(g.text for g in joined.groups[1:]) == text


def test_embedded_bytes_agree_with_the_tokenizers_own_decoding(embedded):
    reader = ByteReader(embedded.tokenizer)
    tokenizer = embedded.tokenizer
    for token_id in range(0, embedded.d_vocab, 7):  # a seventh of the vocabulary
        info = reader.read(token_id)
        decoded = tokenizer.decode([token_id])
        if info.special:
            assert decoded == info.piece
        else:
            assert info.data.decode("utf-8", errors="replace") == decoded, token_id
