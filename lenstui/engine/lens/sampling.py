"""Text the model writes itself, for fitting a learned lens on it (``lens/fit.py``).

Batches of sequences at temperature 1 from varied starts: single-token openings for plain
text and, for a chat model, its chat template's user turn begun with a varied first word;
the model writes the question, the template's assistant header is fed when it ends it, and
the model answers. Every batch has one length, so nothing is padded. The sampler's own
forward passes capture every residual row (the forward machinery's stack sites, as
``LensState`` reads them) and hand them to a sink, so a fit needs no second pass.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from lenstui.core.callbacks import StopCheck, check_stop
from lenstui.core.errors import InputError
from lenstui.engine.model.forward import forward_for, stack_sites
from lenstui.engine.model.load import LoadedModel

BATCH = 32  # sequences sampled side by side
PLAIN_NEW_TOKENS = 96
CHAT_NEW_TOKENS = 128
MAX_QUESTION = 40  # a user turn the model writes is ended after this many tokens

PLAIN_STARTS = (
    "The", "In", "A", "I", "When", "Today", "Why", "How", "Once", "My", "This", "It", "There", "We",
    "If", "After", "According", "Many", "One", "Dear", "Scientists", "During", "Although", "For",
    "Our", "What", "She", "He", "They", "Chapter", "Step", "Welcome", "Recent", "Water", "History",
    "#", "def", "1", "Q", "Title", "Abstract", "Hello", "Yesterday", "Most", "To", "As", "Every",
    "Is", "Do", "Can", "Here", "Some", "All", "Please", "Note", "import", "<", "The first",
)
CHAT_OPENERS = (
    "What", "How", "Why", "Can", "Write", "Explain", "Tell", "Give", "Is", "Which", "Who",
    "Describe", "Please", "I", "Do", "Summarize", "List", "Help", "Translate", "Where", "When",
    "Could", "Should", "Compare",
)
_MARK = "\u2063LENSTUI\u2063"  # stands for the user's text while splitting the chat template

@dataclass
class _Stream:
    """One sequence being sampled."""

    ids: list[int]
    phase: str  # "plain", "user" (the model writes the question) or "assistant"
    queue: list[int] = field(default_factory=list)  # tokens to feed before sampling again
    question: int = 0
    live: bool = True
    ending: bool = False  # its end token is being fed: counted once more, then dead
    stop: Optional[int] = None  # its length once it ended (later ids only keep the batch's shape)

    @property
    def text_ids(self) -> list[int]:
        return self.ids if self.stop is None else self.ids[: self.stop]


@dataclass
class _Starts:
    plain: list[list[int]]
    chat_prefix: list[int]  # the template up to the user's text ([] without a chat template)
    chat_openers: list[int]  # one token each
    chat_suffix: list[int]  # the template between the user's text and the assistant's answer
    end_ids: set[int]


def _starts(model: LoadedModel) -> _Starts:
    tok = model.tokenizer
    plain = []
    for word in PLAIN_STARTS:
        full = list(tok(word, add_special_tokens=True)["input_ids"])
        bare = list(tok(word, add_special_tokens=False)["input_ids"])
        if not bare:
            continue
        special = len(full) - len(bare) if full[len(full) - len(bare):] == bare else 0
        plain.append(full[: special + 1])
    plain_len = max((len(s) for s in plain), key=lambda n: sum(len(s) == n for s in plain))
    plain = [s for s in plain if len(s) == plain_len]
    end_ids = {i for i in (tok.eos_token_id,) if i is not None}
    prefix, openers, suffix = [], [], []
    if getattr(tok, "chat_template", None):
        try:
            text = tok.apply_chat_template([{"role": "user", "content": _MARK}], add_generation_prompt=True, tokenize=False)
            before, after = text.split(_MARK, 1)
            prefix = list(tok(before, add_special_tokens=False)["input_ids"])
            suffix = list(tok(after, add_special_tokens=False)["input_ids"])
            for word in CHAT_OPENERS:
                ids = tok(word, add_special_tokens=False)["input_ids"]
                if ids:
                    openers.append(int(ids[0]))
        except Exception:  # a template that cannot be split: sample plain text only
            prefix, openers, suffix = [], [], []
        if suffix:
            end_ids.add(suffix[0])
    return _Starts(plain, prefix, openers, suffix, end_ids)


def rows_forward(model: LoadedModel, tokens: torch.Tensor, kv) -> tuple[torch.Tensor, torch.Tensor]:
    """``tokens`` [B, n] after what ``kv`` holds -> (the last position's logits [B, V],
    every residual row [R, B, n, d]), float32."""
    resid, _ = stack_sites(model.n_layers)
    run = forward_for(model).run(tokens, kv=kv, reads=resid, logits=True)
    rows = torch.stack([run.values[site] for site in resid]).float()
    return run.logits[:, -1].float(), rows


# (rows [R, B, n, d], keep [B, n] bool) -> how many positions it took
RowsSink = Callable[[torch.Tensor, torch.Tensor], int]


def _sample_batch(
    model: LoadedModel,
    streams: list[_Stream],
    new_tokens: int,
    starts: _Starts,
    generator: torch.Generator,
    sink: Optional[RowsSink],
    shared_prefix: int,
    should_stop: Optional[StopCheck],
    on_step: Callable[[int], bool],
) -> None:
    """Extend every stream by up to ``new_tokens`` sampled (or fed) tokens, handing each
    forward's rows to ``sink`` with which positions count (live ones, past position 0;
    the first ``shared_prefix`` positions only in the first sequence). ``on_step(count)``
    after every forward; True ends the batch (the budget is reached)."""
    from transformers import DynamicCache

    device = model.input_device
    kv = DynamicCache() if model.caches.fit_kv_works else None
    tokens = torch.tensor([s.ids for s in streams], device=device)
    first = 0  # prompt position of tokens[:, 0]
    for step in range(new_tokens + 1):
        check_stop(should_stop)
        alive = [s.live for s in streams]
        if not any(alive):
            break
        if kv is None and step > 0:  # no usable cache: the whole sequences again
            full = torch.tensor([s.ids for s in streams], device=device)
            logits, rows = rows_forward(model, full, None)
            rows = rows[:, :, -1:]
        else:
            logits, rows = rows_forward(model, tokens, kv)
            if kv is not None and kv.get_seq_length() != first + tokens.shape[1]:
                # The cache did not take (an architecture the shim does not reach): redo
                # this batch without one, and remember for the next batches.
                model.caches.fit_kv_works = False
                if step > 0:
                    kv = None
                    full = torch.tensor([s.ids for s in streams], device=device)
                    logits, rows = rows_forward(model, full, None)
                    rows = rows[:, :, -1:]
                else:
                    kv = None
        n_new = rows.shape[2]
        if sink is not None:
            positions = torch.arange(first, first + n_new)
            keep = torch.tensor(alive)[:, None] & (positions >= 1)[None, :]
            if shared_prefix and first == 0:
                keep[1:, : min(shared_prefix, n_new)] = False
            enough = on_step(sink(rows, keep))
        else:
            enough = on_step(int(sum(alive) * n_new))
        for s in streams:
            if s.ending:
                s.live, s.ending, s.stop = False, False, len(s.ids)
        first += n_new
        if step == new_tokens or enough:
            break
        probs = torch.softmax(logits, dim=-1)
        sampled = torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].tolist()
        feed = []
        for s, token in zip(streams, sampled):
            if not s.live:
                feed.append(s.ids[-1])  # computed and ignored: the batch keeps one length
                s.ids.append(s.ids[-1])
                continue
            token = _next_token(s, int(token), starts)
            s.ids.append(token)
            feed.append(token)
        tokens = torch.tensor(feed, device=device)[:, None]


def _next_token(s: _Stream, token: int, starts: _Starts) -> int:
    """The token a stream is fed next: a queued template token, else the sampled one
    (ending the stream on an end token; ending a question the model does not end)."""
    if s.queue:
        token = s.queue.pop(0)
        if not s.queue and s.phase == "user":
            s.phase = "assistant"
        return token
    if s.phase == "user":
        s.question += 1
        suffix = starts.chat_suffix
        if token in starts.end_ids or token == suffix[0] or s.question >= MAX_QUESTION:
            s.queue = list(suffix[1:])
            if not s.queue:
                s.phase = "assistant"
            return suffix[0]
        return token
    if token in starts.end_ids:
        s.ending = True
    return token


def sample_sequences(
    model: LoadedModel,
    n_tokens: int,
    *,
    seed: int = 0,
    sink: Optional[RowsSink] = None,
    new_tokens: Optional[int] = None,
    should_stop: Optional[StopCheck] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> list[list[int]]:
    """Sequences the model writes itself, until about ``n_tokens`` positions were
    counted: at temperature 1, a plain batch of ``BATCH`` sequences, then (for a model
    with a chat template) a chat batch of half as many, and so on. ``sink`` gets every forward's rows (see
    ``_sample_batch``) and says how many positions it counted (without a sink: every
    live position counts); ``progress(done, total)`` after every forward."""
    starts = _starts(model)
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    plain = list(starts.plain)
    openers = list(starts.chat_openers)
    rng.shuffle(plain)
    rng.shuffle(openers)
    chat = bool(starts.chat_prefix and starts.chat_suffix and openers)
    done = 0
    sequences: list[list[int]] = []
    round_index = 0

    def stepped(count: int) -> bool:
        nonlocal done
        done += count
        if progress is not None:
            progress(min(done, n_tokens), n_tokens)
        return sink is not None and done >= n_tokens  # without a sink: whole sequences

    while done < n_tokens:
        is_chat = chat and round_index % 2 == 1
        steps = new_tokens or (CHAT_NEW_TOKENS if is_chat else PLAIN_NEW_TOKENS)
        remaining = n_tokens - done
        share = 2 if chat and round_index == 0 else 1  # leave room for a chat batch
        size = max(4, min(BATCH // 2 if is_chat else BATCH, math.ceil(remaining / steps / share)))
        if is_chat:
            streams = [
                _Stream(list(starts.chat_prefix) + [openers[(round_index * BATCH + i) % len(openers)]], "user")
                for i in range(size)
            ]
            shared = len(starts.chat_prefix)
        else:
            streams = [_Stream(list(plain[(round_index * BATCH + i) % len(plain)]), "plain") for i in range(size)]
            shared = 0
        steps = min(steps, model.n_ctx - len(streams[0].ids))  # the context bounds a sequence
        if steps < 1:
            raise InputError(f"{model.name}'s context ({model.n_ctx} tokens) is too short to sample text in.")
        _sample_batch(model, streams, steps, starts, generator, sink, shared, should_stop, stepped)
        sequences.extend(s.text_ids for s in streams)
        round_index += 1
    return sequences
