"""Under-trained tokens: found from the (un)embedding, verified by prompting the model.

After Land & Bartolo, "Fishing for Magikarp: Automatically Detecting Under-trained Tokens in
Large Language Models" (EMNLP 2024), whose code is cohere-ai/magikarp (read for the method;
nothing of it is copied here). Three steps, as theirs:

1. **Tokenizer round trip** (their ``TokenizerAnalyzer.categorize_token``): decode each token
   alone and encode the text again. ``OK`` when it comes back as the same single id
   (``OK_SPECIAL`` for a special token); otherwise ``UNREACHABLE_SPECIAL`` (``<...>``/``[...]``
   names), ``UNDECODEABLE`` (a partial UTF-8 sequence: the text holds U+FFFD),
   ``UNREACHABLE_SINGLE_TOKEN`` (another single id) or ``UNREACHABLE_MULTI_TOKEN``. A tokenizer
   that adds a space at the start is given a prefix character first (their « trick).
2. **Indicator** (their ``embedding_distance_metrics``, "cosine distance without the first
   principal component"): remove from every unembedding row (the embedding, for tied models)
   its component along the first principal component of the matrix (centred for the PCA,
   removed from the raw rows), then the cosine distance of each row to the mean of the
   reference rows, the tokens known to be unused. Low = like the unused ones. The reference
   set is theirs for byte-level tokenizers: the single-byte tokens of 0xF5-0xFF, bytes that
   never occur in UTF-8 text (their ``GPT2_UNUSED_TOKENS``, "unused 245-255 fallback"), found
   here by the bytes each token stands for; any other list can be given. Untied models also
   get the input embedding's row norm, their first indicator for those.
3. **Verification** (their ``verify_magikarp``): each candidate (the lowest ``share`` percent
   of the indicator among ``OK`` tokens; their default 2%) is put into their three repetition
   prompts — built around a placeholder token whose id is then replaced by the candidate's, so
   unreachable text still gets the right id — and the model generates three tokens greedily;
   the largest probability it gives the candidate at any of them, over the prompts, is the
   token's ``max_prob``. Below 0.01 the token is verified under-trained (the paper's rule; the
   code's "strong" class is below 0.001). Their ``assistant_explain`` prompt is a chat written
   as plain "User:/Assistant:" text: for a model with a chat template it is rendered with that
   template instead (the assistant's answer still starts with the quote). A prompt longer than
   the model's context is shortened by dropping repetitions, and says so.

Verification is batched: every candidate's prompt has the same length (one id differs), so a
batch is one tensor, run with a KV cache for the three steps. Prompts run cheapest first, and a
candidate that already crossed 0.01 skips the rest (its verdict cannot change; its ``max_prob``
is then a lower bound, flagged ``stopped_early``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from lenstui.core.callbacks import Progress, StopCheck, check_stop
from lenstui.core.errors import InputError
from lenstui.core.undertrained_result import CATEGORIES, VERIFIED_BELOW, UndertrainedResult, Verification

# Magikarp's default share of the reachable tokens sent to verification (percent).
DEFAULT_SHARE = 2.0
# The bytes no UTF-8 text contains, whose single-byte tokens are the reference set.
UNUSED_BYTES = tuple(range(0xF5, 0x100))
# Generated tokens per prompt (theirs: n_tokens=3).
GENERATED = 3
# Candidates per forward batch.
BATCH = 16
_SPACE_CHARS = " ▁_Ġ"
_PREFIXES = ("«", "»")


@dataclass(frozen=True)
class PromptSpec:
    """One of Magikarp's verification prompts: ``preamble + (phrase + completion) * repeats
    + phrase + completion up to the token``."""

    name: str
    repeats: int
    preamble: str
    phrase: str
    completion: str


# Their VERIFICATION_PROMPTS (magikarp/fishing.py), cheapest first.
PROMPTS = (
    PromptSpec(
        "assistant_explain",
        0,
        "This helpful assistant explains what a phrase means, replying with identical responses to identical "
        "questions for reliability.",
        "\nUser: What does 'edslfkj' mean?\nAssistant: 'edslfkj' has no specific meaning I am aware of."
        "\nUser: what does '{token}' mean?\nAssistant:",
        " '{token}'",
    ),
    PromptSpec(
        "repeats",
        50,
        "Below is the output, as you can see it's just giving the same phrase repeated indefinitely:\n",
        "{token}",
        "{token}",
    ),
    PromptSpec(
        "input_output",
        20,
        "This device repeats its input exactly, as shown in these 100 identical trials.",
        "\nInput: «{token}»\nOutput:",
        " «{token}»",
    ),
)


# ---------------------------------------------------------------- 1. round trip


class _RoundTrip:
    """Decode one token, encode the text back, as Magikarp's clean_decode / clean_encode."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        first = tokenizer.encode("test", add_special_tokens=False)
        piece = tokenizer.convert_ids_to_tokens(first[0]) if first else ""
        self.prefix_ids: list[int] = []
        if piece and piece[0] in _SPACE_CHARS:  # the tokenizer adds or moves spaces at the start
            for prefix in _PREFIXES:
                ids = tokenizer.encode(prefix, add_special_tokens=False)
                if len(ids) == 1:
                    self.prefix_ids.append(ids[0])

    def decode(self, ids: list[int]) -> str:
        if not self.prefix_ids:
            return self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        for prefix_id, prefix in zip(self.prefix_ids, _PREFIXES):
            text = self.tok.decode([prefix_id] + ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            text = text[1:] if text.startswith(" ") else text
            if text.startswith(prefix):
                return text[len(prefix) :]
        return self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        if not self.prefix_ids:
            return self.tok(texts, add_special_tokens=False)["input_ids"]
        prefix, prefix_id = _PREFIXES[0], self.prefix_ids[0]
        out = []
        for ids in self.tok([prefix + t for t in texts], add_special_tokens=False)["input_ids"]:
            out.append(ids[1:] if ids and ids[0] == prefix_id else ids)
        return out


def special_ids(tokenizer) -> set[int]:
    found = {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])}
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found |= {int(i) for i, tok in added.items() if getattr(tok, "special", False)}
    return found


def token_categories(model) -> tuple[np.ndarray, list[str]]:
    """(int8 codes into CATEGORIES for every unembedding row, each token's decoded text)."""
    tokenizer = model.tokenizer
    trip = _RoundTrip(tokenizer)
    n_rows = int(model.d_vocab)
    n_tok = min(len(tokenizer), n_rows)
    specials = special_ids(tokenizer)
    texts = [trip.decode([i]) for i in range(n_tok)]
    encoded = trip.encode_many(texts)
    codes = np.full(n_rows, CATEGORIES.index("NO_TOKEN"), dtype=np.int8)
    for i, (text, ids) in enumerate(zip(texts, encoded)):
        if list(ids) == [i]:
            name = "OK_SPECIAL" if i in specials else "OK"
        elif len(text) >= 3 and text[0] in "[<" and text[-1] in "]>" and any(c.isalpha() for c in text):
            name = "UNREACHABLE_SPECIAL"
        elif "\ufffd" in text:
            name = "UNDECODEABLE"
        elif len(ids) == 1:
            name = "UNREACHABLE_SINGLE_TOKEN"
        else:
            name = "UNREACHABLE_MULTI_TOKEN"
        codes[i] = CATEGORIES.index(name)
    return codes, texts + [""] * (n_rows - n_tok)


# ---------------------------------------------------------------- 2. indicator


def unused_byte_tokens(model) -> list[int]:
    """The single-byte tokens of bytes 0xF5-0xFF (never in UTF-8 text), for byte-level and
    byte-fallback tokenizers; [] for others."""
    from lenstui.core.token_bytes import BYTE_FALLBACK, BYTE_LEVEL, byte_reader

    reader = byte_reader(model)
    if reader.scheme not in (BYTE_LEVEL, BYTE_FALLBACK):
        return []
    found = []
    for piece, i in model.tokenizer.get_vocab().items():
        if len(piece) > 6:
            continue
        data = reader.read(i)
        if not data.special and len(data.data) == 1 and data.data[0] in UNUSED_BYTES:
            found.append(int(i))
    return sorted(found)


def duplicated_rows(rows: torch.Tensor) -> list[int]:
    """Tokens whose unembedding row is an exact copy of another token's."""
    _, inverse, counts = torch.unique(rows, dim=0, return_inverse=True, return_counts=True)
    return torch.nonzero(counts[inverse] > 1).flatten().tolist()


def default_reference(model, rows: torch.Tensor) -> tuple[list[int], str]:
    """The known-unused tokens the indicator measures against, and why.

    Magikarp's choice for byte-level tokenizers first: the single-byte tokens of 0xF5-0xFF,
    bytes no UTF-8 text holds. A tokenizer trained without them (SmolLM2's has no token for
    0xF5-0xFF, nor 0xC0/0xC1) falls back to the tokens whose rows are exact copies of another
    token's: two rows stay bit-identical through training only if neither token ever had a
    gradient of its own (never an input, never a target), so those are unused by construction
    (on SmolLM2 they are its 15 certified-unspeakable tokens)."""
    found = unused_byte_tokens(model)
    if found:
        return found, "single-byte tokens of 0xF5-0xFF, bytes no UTF-8 text holds (Magikarp's reference for byte-level tokenizers)"
    copies = duplicated_rows(rows)
    if copies:
        return copies, (
            "the tokenizer has no token for 0xF5-0xFF, so: the tokens whose unembedding rows are exact copies of "
            "another's (never a gradient of their own: unused by construction)"
        )
    return [], ""


def first_principal_component(matrix: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """The unit first principal component of the rows (centred), float64, from the d x d
    covariance built in chunks (the rows themselves stay in their own dtype)."""
    n, d = matrix.shape
    mean = torch.zeros(d, dtype=torch.float64)
    for start in range(0, n, chunk):
        mean += matrix[start : start + chunk].to(torch.float64).sum(0)
    mean /= n
    cov = torch.zeros(d, d, dtype=torch.float64)
    for start in range(0, n, chunk):
        block = matrix[start : start + chunk].to(torch.float64) - mean
        cov += block.T @ block
    _, vectors = torch.linalg.eigh(cov)
    return vectors[:, -1]


def cosine_distance_without_first_pc(matrix: torch.Tensor, reference: Sequence[int], chunk: int = 8192) -> np.ndarray:
    """Magikarp's indicator: ``1 - cos(r_j, m)`` with ``r_j = w_j - (w_j . pc) pc`` (pc the first
    principal component, rows not centred) and ``m`` the mean of the reference rows' r_j
    (float64; their cosine_distance clips the norm product at 1e-6, as here)."""
    pc = first_principal_component(matrix, chunk)
    ref = matrix[list(reference)].to(torch.float64)
    mean_ref = (ref - (ref @ pc)[:, None] * pc).mean(0)
    m_norm = float(mean_ref.norm())
    out = np.empty(matrix.shape[0])
    for start in range(0, matrix.shape[0], chunk):
        block = matrix[start : start + chunk].to(torch.float64)
        along = block @ pc
        rows = block - along[:, None] * pc
        cos = (rows @ mean_ref) / (rows.norm(dim=1) * m_norm).clamp_min(1e-6)
        out[start : start + chunk] = (1 - cos).numpy()
    return out


def unembedding_rows(model) -> torch.Tensor:
    """[d_vocab, d_model] the unembedding rows as the model stores them (lm_head.weight)."""
    return model.W_U.detach().T


def is_tied(model) -> bool:
    hf = getattr(model, "hf", None)
    if hf is not None:
        out, inp = hf.get_output_embeddings(), hf.get_input_embeddings()
        if out is not None and inp is not None:
            return out.weight.data_ptr() == inp.weight.data_ptr() or bool(
                getattr(hf.config, "tie_word_embeddings", False)
            )
    try:
        return bool(torch.equal(model.W_E.detach(), model.W_U.detach().T))
    except Exception:
        return False


# ---------------------------------------------------------------- 3. verification


@dataclass
class _BuiltPrompt:
    name: str
    ids: list[int]
    positions: list[int]  # where the placeholder sits (its id is replaced by the candidate's)
    text: str
    note: str = ""


def _prompt_text(model, spec: PromptSpec, repeats: int) -> str:
    from lenstui.engine.model.chat import has_chat_template

    if spec.name == "assistant_explain" and has_chat_template(model):
        messages = [
            {"role": "system", "content": spec.preamble},
            {"role": "user", "content": "What does 'edslfkj' mean?"},
            {"role": "assistant", "content": "'edslfkj' has no specific meaning I am aware of."},
            {"role": "user", "content": "what does '{token}' mean?"},
        ]
        text = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text + "'{token}"[: "'{token}".index("{")]
    cut = spec.completion[: spec.completion.index("{")]
    return spec.preamble + (spec.phrase + spec.completion) * repeats + spec.phrase + cut


def choose_placeholder(model, categories: np.ndarray, texts: list[str]) -> int:
    """Their ``select_placeholder_token``: a long, alphabetic, reachable token of many
    distinct letters whose text, twice, encodes back to itself twice."""
    ok = CATEGORIES.index("OK")
    pool = [i for i in range(len(texts)) if categories[i] == ok and texts[i]]
    pool.sort(key=lambda i: (texts[i].isalpha(), len(set(texts[i])), len(texts[i])), reverse=True)
    for i in pool[:200]:
        if model.tokenizer.encode(texts[i] * 2, add_special_tokens=False) == [i, i]:
            return i
    raise InputError(f"No token of {model.name} can stand in for the candidates in the verification prompts.")


def build_prompts(model, placeholder: int, placeholder_text: str) -> list[_BuiltPrompt]:
    """The verification prompts as ids with the placeholder's positions, shortened (fewer
    repetitions) where the model's context is too short; prompts that cannot be built are left
    out with no error (the others still verify)."""
    from lenstui.engine.model.chat import has_chat_template

    built = []
    room = int(model.n_ctx) - GENERATED
    for spec in PROMPTS:
        repeats = spec.repeats
        while True:
            text = _prompt_text(model, spec, repeats).replace("{token}", placeholder_text)
            ids = list(model.tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(ids) <= room or repeats == 0:
                break
            repeats = max(0, min(repeats - 1, int(repeats * room / len(ids))))
        positions = [k for k, i in enumerate(ids) if i == placeholder]
        expected = 1 if spec.name == "assistant_explain" else 2 * repeats + 1
        if len(ids) > room or len(positions) != expected:
            continue
        name = spec.name + (" (chat template)" if spec.name == "assistant_explain" and has_chat_template(model) else "")
        note = f"{repeats} of {spec.repeats} repetitions (context {model.n_ctx})" if repeats != spec.repeats else ""
        template = _prompt_text(model, spec, repeats)
        built.append(_BuiltPrompt(name, ids, positions, template, note))
    if not built:
        raise InputError(f"{model.name}'s context ({model.n_ctx} tokens) is too short for the verification prompts.")
    return built


def _greedy_probs(model, batch: torch.Tensor, candidates: torch.Tensor) -> tuple[np.ndarray, list[list[int]]]:
    """Generate GENERATED tokens greedily for each row of ``batch`` (with a KV cache); the
    largest probability each row's candidate got at any step, and the generated ids."""
    from transformers import DynamicCache

    hf = model.hf
    cache = DynamicCache()
    best = torch.zeros(len(candidates), dtype=torch.float64)
    generated: list[list[int]] = [[] for _ in range(len(candidates))]
    fresh = batch
    rows = torch.arange(len(candidates))
    for _ in range(GENERATED):
        try:
            out = hf(input_ids=fresh, cache=cache, use_cache=True, logits_to_keep=1)
        except TypeError:  # an older forward without logits_to_keep
            out = hf(input_ids=fresh, cache=cache, use_cache=True)
        logits = out.logits[:, -1].to(torch.float32)
        probs = torch.softmax(logits, dim=-1)
        best = torch.maximum(best, probs[rows, candidates].to(torch.float64))
        nxt = logits.argmax(dim=-1)
        for k, token in enumerate(nxt.tolist()):
            generated[k].append(int(token))
        fresh = nxt[:, None]
    return best.numpy(), generated


def verify(
    model,
    token_ids: Sequence[int],
    prompts: list[_BuiltPrompt],
    *,
    batch_size: int = BATCH,
    should_stop: Optional[StopCheck] = None,
    progress: Optional[Progress] = None,
    done: int = 0,
    total: Optional[int] = None,
) -> dict[int, Verification]:
    """Each token through the prompts (cheapest first), in batches; a token whose max already
    reached VERIFIED_BELOW skips the remaining prompts."""
    results: dict[int, Verification] = {}
    total = total if total is not None else len(token_ids)
    device = getattr(model, "device", "cpu")
    for start in range(0, len(token_ids), batch_size):
        check_stop(should_stop, "verification cancelled")
        chunk = [int(i) for i in token_ids[start : start + batch_size]]
        best = {i: (0.0, "", "") for i in chunk}
        probs: dict[int, dict[str, float]] = {i: {} for i in chunk}
        open_ids = list(chunk)
        for prompt in prompts:
            if not open_ids:
                break
            check_stop(should_stop, "verification cancelled")
            base = torch.tensor(prompt.ids, dtype=torch.long)
            batch = base.repeat(len(open_ids), 1)
            cands = torch.tensor(open_ids, dtype=torch.long)
            batch[:, prompt.positions] = cands[:, None]
            with torch.no_grad():
                maxima, generated = _greedy_probs(model, batch.to(device), cands.to(device))
            for k, i in enumerate(open_ids):
                probs[i][prompt.name] = float(maxima[k])
                if maxima[k] >= best[i][0]:
                    best[i] = (float(maxima[k]), prompt.name, model.tokenizer.decode(generated[k]))
            open_ids = [i for i in open_ids if best[i][0] < VERIFIED_BELOW]
        for i in chunk:
            value, name, output = best[i]
            skipped = len(probs[i]) < len(prompts)
            results[i] = Verification(i, value, name, probs[i], output, stopped_early=skipped)
        if progress is not None:
            finished = done + start + len(chunk)
            progress(f"verified {finished:,}/{total:,}", finished / total if total else 1.0)
    return results


# ---------------------------------------------------------------- the whole run


def find_undertrained(
    model,
    *,
    share: float = DEFAULT_SHARE,
    reference: Optional[Sequence[int]] = None,
    verify_candidates: bool = True,
    limit: Optional[int] = None,
    cache: bool = True,
    cached_only: bool = False,
    should_stop: Optional[StopCheck] = None,
    progress: Optional[Progress] = None,
) -> UndertrainedResult:
    """Round-trip classes, the indicator, the candidates (lowest ``share`` percent among OK
    tokens, at most ``limit``) and, with ``verify_candidates``, their verification. Results
    are cached per model weights and reference set; a run resumes where one stopped.
    ``cached_only``: None unless an earlier run kept verifications (then those, unverified
    candidates left as they are)."""
    from lenstui.engine.speak.check import as_readout
    from lenstui.engine.speak.scan_cache import scan_key

    started = time.perf_counter()
    if not 0 < share <= 100:
        raise InputError("--share must be a percentage above 0 and at most 100.")
    readout = as_readout(model)
    key = scan_key(readout)
    given = None if reference is None else sorted({int(i) for i in reference})
    folder = _cache_file(key, given) if cache else None
    if cached_only:
        if folder is None or not folder.is_file():
            return None
        verify_candidates = False
    kept = _read_arrays(folder, int(model.d_vocab)) if (cached_only and folder is not None and given is None) else None
    if kept is not None:
        categories, indicator, embedding_norm, reference, why = kept
        texts = []
    else:
        if progress is not None:
            progress("tokenizer round trip", 0.0)
        categories, texts = token_categories(model)
    check_stop(should_stop, "cancelled")
    rows = unembedding_rows(model)
    if rows.dtype in (torch.float16, torch.bfloat16):
        rows = rows.to(torch.float32)
    if kept is not None:
        pass
    elif reference is None:
        reference, why = default_reference(model, rows)
    else:
        reference = sorted({int(i) for i in reference})
        why = "given"
    n = int(model.d_vocab)
    bad = [i for i in reference if not 0 <= i < n]
    if bad:
        raise InputError(f"Reference token {bad[0]} is out of range: {model.name} has ids 0..{n - 1}.")
    if len(reference) < 1:
        raise InputError(
            f"{model.name} has neither single-byte tokens of 0xF5-0xFF nor duplicated unembedding rows to "
            "serve as known-unused references: give some with --reference ID,ID,..."
        )
    tied = is_tied(model)
    if kept is None:
        if progress is not None:
            progress("indicator", 0.05)
        indicator = cosine_distance_without_first_pc(rows, reference)
        embedding_norm = None
        if not tied:
            embedding_norm = model.W_E.detach().to(torch.float32).norm(dim=1).numpy().astype(np.float64)
    ok = categories == CATEGORIES.index("OK")
    reachable = (categories == CATEGORIES.index("OK")) | (categories == CATEGORIES.index("OK_SPECIAL"))
    threshold = float(np.percentile(indicator[ok], share)) if ok.any() else -math.inf
    chosen = np.nonzero(reachable & (indicator <= threshold))[0]
    candidates = chosen[np.argsort(indicator[chosen], kind="stable")].tolist()
    found = len(candidates)
    if limit is not None:
        candidates = candidates[: max(0, int(limit))]
    result = UndertrainedResult(
        model=model.name,
        key=key,
        n_vocab=n,
        categories=categories,
        indicator=indicator,
        indicator_name="cosine distance to the mean unused row, first principal component removed",
        matrix="unembedding (tied with the embedding)" if tied else "unembedding (lm_head)",
        tied=tied,
        reference_ids=list(reference),
        reference_why=why,
        candidate_share=float(share),
        threshold=threshold,
        candidates=candidates,
        candidates_found=found,
        embedding_norm=embedding_norm,
        decode=model.decode,
    )
    if folder is not None:
        result.verifications.update(_read_verifications(folder, candidates))
        if kept is None and given is None:
            _write_arrays(folder, result)
    if verify_candidates and candidates:
        texts_ph = choose_placeholder(model, categories, texts)
        result.placeholder = texts_ph
        prompts = build_prompts(model, texts_ph, texts[texts_ph])
        result.prompts = {p.name: p.text + (f"  [{p.note}]" if p.note else "") for p in prompts}
        todo = [i for i in candidates if i not in result.verifications]
        done = len(candidates) - len(todo)
        step = BATCH * 4
        for start in range(0, len(todo), step):
            part = verify(
                model, todo[start : start + step], prompts,
                should_stop=should_stop, progress=progress, done=done + start, total=len(candidates),
            )
            result.verifications.update(part)
            if folder is not None:
                _write_verifications(folder, result)
    result.seconds = time.perf_counter() - started
    return result


# ---------------------------------------------------------------- cache


_CACHE_FORMAT = 1


def _cache_file(key: str, reference: Optional[Sequence[int]]) -> Path:
    """Where a model's verifications are kept: per weights, and per reference set when one
    was given (None: the default reference)."""
    import hashlib

    from lenstui.store.paths import data_dir

    tag = "default" if reference is None else hashlib.sha256(",".join(str(int(i)) for i in reference).encode()).hexdigest()[:12]
    return data_dir() / "undertrained" / f"{key}-{tag}.json"


def _read_arrays(path: Path, n: int):
    """(categories, indicator, embedding norms, reference, why) kept beside the verifications,
    so that the app reads a kept run at model load without the round trip; None if absent."""
    try:
        with np.load(path.with_suffix(".npz"), allow_pickle=False) as data:
            categories, indicator = data["categories"].astype(np.int8), data["indicator"].astype(np.float64)
            if categories.shape != (n,) or indicator.shape != (n,):
                return None
            norms = data["embedding_norm"] if "embedding_norm" in data.files else None
            return categories, indicator, norms, [int(i) for i in data["reference"]], str(data["why"])
    except Exception:
        return None


def _write_arrays(path: Path, result: UndertrainedResult) -> None:
    from lenstui.store.atomic import atomic_file

    arrays = {
        "categories": result.categories, "indicator": result.indicator,
        "reference": np.asarray(result.reference_ids, dtype=np.int64), "why": np.array(result.reference_why),
    }
    if result.embedding_norm is not None:
        arrays["embedding_norm"] = result.embedding_norm
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path.with_suffix(".npz")) as handle:
            np.savez(handle, **arrays)
    except OSError:
        pass


def _read_verifications(path: Path, candidates: Sequence[int]) -> dict[int, Verification]:
    """Verifications kept by an earlier run (a damaged or foreign file is just not there)."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("format") != _CACHE_FORMAT:
            return {}
        out = {}
        wanted = set(int(i) for i in candidates)
        for entry in payload.get("verifications", []):
            i = int(entry["id"])
            if i in wanted:
                out[i] = Verification(
                    i, float(entry["max_prob"]), str(entry["prompt"]), {str(k): float(v) for k, v in entry["probs"].items()},
                    str(entry["output"]), bool(entry.get("stopped_early", False)),
                )
        return out
    except Exception:
        return {}


def _write_verifications(path: Path, result: UndertrainedResult) -> None:
    from lenstui.store.atomic import write_text_atomic

    payload = {
        "format": _CACHE_FORMAT,
        "model": result.model,
        "key": result.key,
        "verifications": [v.to_json() for v in result.verifications.values()],
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(payload, ensure_ascii=False))
    except OSError:
        pass  # an unwritable cache only costs resumability
