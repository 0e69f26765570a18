"""Vocabulary look-ups shared by the lens, the inspector and the speakability check:
prompt encoding, token resolution from user input, and memoized token texts."""

from __future__ import annotations

from typing import Sequence, Union

from lenstui.core.errors import InputError, quoted
from lenstui.core.tokens import TokenRef, TokenSpec
from lenstui.engine.model.load import LoadedModel


def token_ref(model: LoadedModel, token_id: int) -> TokenRef:
    """Memoized per model: a lens run decodes tens of thousands of cells."""
    table = model.caches.token_refs
    ref = table.get(token_id)
    if ref is None:
        ref = TokenRef(int(token_id), model.decode(token_id), str(model.piece(token_id)))
        table[token_id] = ref
    return ref


def encode_prompt(model: LoadedModel, prompt: Union[str, Sequence[int]]) -> list[int]:
    """Token ids for a prompt given as text or as ids, checked against the model's limits.

    Text is encoded the way the model's own tokenizer does by default (special tokens
    such as a BOS are added only if the tokenizer adds them).
    """
    if isinstance(prompt, str):
        ids = list(model.tokenizer(prompt, add_special_tokens=True)["input_ids"])
    else:
        ids = [int(i) for i in prompt]
        bad = [i for i in ids if not 0 <= i < model.d_vocab]
        if bad:
            raise InputError(
                f"Token id {bad[0]} is outside the vocabulary (0..{model.d_vocab - 1})."
            )
    if not ids:
        raise InputError("The prompt is empty: type some text to run the lens on.")
    if len(ids) > model.n_ctx:
        raise InputError(
            f"The prompt is {len(ids)} tokens but {model.name} reads at most {model.n_ctx}: "
            "shorten it."
        )
    return ids


def resolve_token(model: LoadedModel, token: TokenSpec) -> int:
    """A token id from an int id, a text that encodes to exactly one token, or a vocab piece.

    Strings are always text: "42" is the token for the characters 4 and 2, not id 42.
    """
    if isinstance(token, int):
        token_id = int(token)
        if not 0 <= token_id < model.d_vocab:
            raise InputError(
                f"Token id {token_id} is out of range: {model.name} has ids 0..{model.d_vocab - 1}."
            )
        return token_id
    if not token:
        raise InputError("No token given: pass a token's text or --id N.")
    ids = model.tokenizer.encode(token, add_special_tokens=False)
    if len(ids) == 1:
        return int(ids[0])
    # A vocabulary piece as stored ("ĠðŁ", "<0xF0>") names a token its text cannot.
    vocab = model.tokenizer.get_vocab()
    if token in vocab:
        return int(vocab[token])
    if not ids:
        raise InputError(f"{quoted(token)} encodes to no tokens at all.")
    pieces = " + ".join(repr(model.piece(i)) for i in ids[:8])
    raise InputError(
        f"{quoted(token)} is {len(ids):,} tokens ({pieces}{', …' if len(ids) > 8 else ''}), not one: "
        "pick one of them, or pass --id N."
    )


