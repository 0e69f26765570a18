"""Under-trained tokens (Magikarp) on tiny random Llamas, tied and untied: the indicator
against a direct numpy computation of its formula (sklearn's PCA convention: components of
the centred matrix, removed from the raw rows), the round-trip classes against the tokenizer,
the reference set (the bytes no UTF-8 text holds), the candidates against numpy's percentile,
and the batched, KV-cached verification against plain full forwards of the transformers model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lenstui.core.errors import InputError
from lenstui.core.undertrained_result import CATEGORIES
from lenstui.engine.speak import undertrained as U


@pytest.fixture(scope="module")
def tied():
    from testkit.models import tiny_llama

    return tiny_llama(context=512, name="tiny-tied")


@pytest.fixture(scope="module")
def untied():
    from testkit.models import tiny_llama

    return tiny_llama(seed=1, context=512, tied=False, name="tiny-untied")


def numpy_indicator(matrix: np.ndarray, reference: list[int]) -> np.ndarray:
    """1 - cos(r_j, mean of r_ref), r = w - (w . pc) pc, pc the first right singular vector of
    the centred matrix (float64 numpy, independent of the torch code)."""
    centred = matrix - matrix.mean(axis=0)
    pc = np.linalg.svd(centred, full_matrices=False)[2][0]
    rows = matrix - np.outer(matrix @ pc, pc)
    mean_ref = rows[reference].mean(axis=0)
    return 1 - rows @ mean_ref / np.clip(np.linalg.norm(rows, axis=1) * np.linalg.norm(mean_ref), 1e-6, None)


@pytest.mark.parametrize("which", ["tied", "untied"])
def test_indicator_matches_numpy_and_reads_the_unembedding(which, request):
    model = request.getfixturevalue(which)
    result = U.find_undertrained(model, verify_candidates=False, cache=False)
    hf = model.hf
    lm_head = hf.get_output_embeddings().weight.detach().double().numpy()
    expected = numpy_indicator(lm_head, result.reference_ids)
    assert np.allclose(result.indicator, expected, atol=1e-9)
    assert result.tied is (which == "tied")
    if which == "untied":  # the input embedding is another matrix: its norms are reported too
        embed = hf.get_input_embeddings().weight.detach().double().numpy()
        assert not np.allclose(embed, lm_head)
        assert np.allclose(result.embedding_norm, np.linalg.norm(embed, axis=1), rtol=1e-6)
        assert "lm_head" in result.matrix
    else:
        assert result.embedding_norm is None and "tied" in result.matrix


def test_reference_is_the_bytes_no_utf8_text_holds(tied):
    from lenstui.core.token_bytes import token_bytes

    reference = U.unused_byte_tokens(tied)
    assert len(reference) == 11  # 0xF5..0xFF, each a token of the byte-level tokenizer
    assert sorted(token_bytes(tied, i).data[0] for i in reference) == list(range(0xF5, 0x100))
    result = U.find_undertrained(tied, verify_candidates=False, cache=False)
    assert result.reference_ids == reference and "0xF5-0xFF" in result.reference_why
    assert np.allclose(result.indicator[reference].mean(), result.indicator[reference].mean())


def test_round_trip_classes_follow_the_tokenizer(tied):
    codes, texts = U.token_categories(tied)
    tok = tied.tokenizer
    for i in range(len(tok)):
        text = tok.decode([i])
        ids = tok.encode(text, add_special_tokens=False)
        name = CATEGORIES[codes[i]]
        if ids == [i]:
            assert name in ("OK", "OK_SPECIAL"), (i, text)
        elif "\ufffd" in text:
            assert name == "UNDECODEABLE", (i, text)
        else:
            assert name.startswith("UNREACHABLE"), (i, text)
    assert CATEGORIES[codes[0]] == "OK_SPECIAL"  # <|endoftext|>


def test_candidates_are_the_lowest_share_by_numpys_percentile(tied):
    result = U.find_undertrained(tied, share=10, verify_candidates=False, cache=False)
    ok = result.categories == CATEGORIES.index("OK")
    threshold = np.percentile(result.indicator[ok], 10)
    reachable = ok | (result.categories == CATEGORIES.index("OK_SPECIAL"))
    expected = set(np.nonzero(reachable & (result.indicator <= threshold))[0].tolist())
    assert set(result.candidates) == expected and result.threshold == pytest.approx(threshold)
    assert list(result.indicator[result.candidates]) == sorted(result.indicator[result.candidates])
    limited = U.find_undertrained(tied, share=10, limit=3, verify_candidates=False, cache=False)
    assert limited.candidates == result.candidates[:3] and limited.candidates_found == len(result.candidates)


def _plain_max_prob(hf, ids: list[int], token: int, steps: int = U.GENERATED) -> tuple[float, list[int]]:
    """Greedy generation by full forwards of the whole sequence, no cache, one at a time."""
    seq, best, out = list(ids), 0.0, []
    for _ in range(steps):
        with torch.no_grad():
            logits = hf(input_ids=torch.tensor([seq])).logits[0, -1].double()
        best = max(best, float(torch.softmax(logits, -1)[token]))
        seq.append(int(logits.argmax()))
        out.append(seq[-1])
    return best, out


@pytest.mark.parametrize("which", ["tied", "untied"])
def test_batched_verification_equals_plain_forwards(which, request):
    model = request.getfixturevalue(which)
    codes, texts = U.token_categories(model)
    placeholder = U.choose_placeholder(model, codes, texts)
    prompts = U.build_prompts(model, placeholder, texts[placeholder])
    assert [p.name.split(" ")[0] for p in prompts] == ["assistant_explain", "repeats", "input_output"]
    tokens = [5, 77, 301, placeholder]
    results = U.verify(model, tokens, prompts, batch_size=3)  # two batches: 3 + 1
    for t in tokens:
        v = results[t]
        assert set(v.probs) <= {p.name for p in prompts}
        for prompt in prompts:
            if prompt.name not in v.probs:
                assert v.stopped_early and max(v.probs.values()) >= 0.01
                continue
            ids = list(prompt.ids)
            for k in prompt.positions:
                ids[k] = t
            plain, generated = _plain_max_prob(model.hf, ids, t)
            assert v.probs[prompt.name] == pytest.approx(plain, rel=1e-4, abs=1e-9)
        assert v.max_prob == max(v.probs.values())
        assert v.verified is (v.max_prob < 0.01)


def test_prompts_are_magikarps_and_fit_the_context(tied):
    from testkit.models import tiny_llama

    codes, texts = U.token_categories(tied)
    placeholder = U.choose_placeholder(tied, codes, texts)
    roomy = tiny_llama(context=2048, name="tiny-roomy")  # the tiny tokenizer spends many ids on the text
    prompts = {p.name: p for p in U.build_prompts(roomy, placeholder, texts[placeholder])}
    assert all(not p.note for p in prompts.values())
    repeats = prompts["repeats"]
    assert len(repeats.positions) == 2 * 50 + 1 and repeats.text.startswith("Below is the output")
    assert len(prompts["input_output"].positions) == 2 * 20 + 1
    assert "What does 'edslfkj' mean?" in prompts["assistant_explain"].text
    short = tiny_llama(context=300, name="tiny-short")  # the repetitions shrink to fit
    built = U.build_prompts(short, placeholder, texts[placeholder])
    assert all(len(p.ids) <= 300 - U.GENERATED for p in built)
    assert any("repetitions (context 300)" in p.note for p in built)
    with pytest.raises(InputError, match="too short"):
        U.build_prompts(tiny_llama(context=40, name="tiny-40"), placeholder, texts[placeholder])


def test_cache_resumes_and_bad_input_is_one_sentence(tied, tmp_path, monkeypatch):
    monkeypatch.setenv("LENSTUI_DATA_DIR", str(tmp_path))
    first = U.find_undertrained(tied, share=2, limit=2)
    assert set(first.verifications) == set(first.candidates[:2])
    again = U.find_undertrained(tied, share=2, cached_only=True)
    assert again is not None and set(again.verifications) == set(first.verifications)
    assert next(tmp_path.rglob("*.json")).read_text().startswith("{")
    json.loads(next(tmp_path.rglob("*.json")).read_text())
    with pytest.raises(InputError, match="percentage"):
        U.find_undertrained(tied, share=0)
    with pytest.raises(InputError, match="out of range"):
        U.find_undertrained(tied, reference=[10**6])
