"""Issue 32 on the embedded SmolLM2-135M-Instruct: `lenstui aim --share` (its JSON, exactly 0
for a certified-unspeakable token, above the certified cap otherwise), the under-trained
round trip and reference set (its exact-copy rows are the scan's 15 unspeakable tokens), and
the verification of a few tokens of each class, one of them re-computed by plain forwards of
the transformers model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lenstui.engine.speak import undertrained as U
from lenstui.engine.speak.aim import aim

pytestmark = pytest.mark.integration

TWIN = 36744  # ManagementPlaneProtection: an exact copy of PlaneProtection's row
HARDEST = 43858  # MetaInfoClass: the smallest certified cap among speakable tokens
ORDINARY = 30000  # }/{


def test_aim_share_json_shape_and_bounds(embedded, capsys):
    from lenstui.cli import main

    assert main(["aim", "--id", str(ORDINARY), "--share", "--samples", "32", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    share = payload["share"]
    for key in ("log10", "log10_lo", "log10_hi", "samples", "method"):
        assert key in share
    assert share["method"] == "lin-ess subset simulation" and share["samples"] == 32
    assert share["log10_lo"] <= share["log10"] <= share["log10_hi"] <= math.log10(0.5)
    assert share["log10_lo"] >= payload["log10_share_lower"] == share["log10_certified_lower"]
    assert share["log10"] > payload["log10_share_lower"] + 100  # the cone is far wider than its widest cap
    assert main(["aim", "--id", str(ORDINARY), "--share", "--samples", "32"]) == 0
    words = capsys.readouterr().out
    assert f"about 1 in 10^{-share['log10']:.1f} directions say it" in words


def test_certified_unspeakable_share_is_exactly_zero(embedded, capsys):
    from lenstui.cli import main

    assert main(["aim", "--id", str(TWIN), "--share", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["verdict"] == "unspeakable"
    assert payload["share"]["log10"] == payload["share"]["log10_lo"] == "-inf"
    assert payload["share"]["exact_zero"] is True and payload["share"]["samples"] == 0
    assert main(["aim", "--id", str(TWIN), "--share"]) == 0
    assert "share: exactly 0" in capsys.readouterr().out
    assert main(["aim", "--id", str(ORDINARY), "--samples", "64"]) == 2  # --samples needs --share
    assert "add --share" in capsys.readouterr().err


def test_round_trip_and_reference_are_the_unspeakable_copies(embedded):
    result = U.find_undertrained(embedded, verify_candidates=False, cache=False)
    counts = result.category_counts()
    assert counts["OK"] + counts["OK_SPECIAL"] + counts["UNDECODEABLE"] == embedded.d_vocab
    assert counts["UNDECODEABLE"] > 0 and counts["OK_SPECIAL"] == 17
    assert U.unused_byte_tokens(embedded) == []  # SmolLM2's tokenizer has no 0xF5-0xFF token
    assert len(result.reference_ids) == 15 and "exact copies" in result.reference_why
    assert all(aim(embedded, t).verdict == "unspeakable" for t in result.reference_ids)
    # The indicator puts the hardest speakable tokens among the very first candidates.
    assert result.candidates.index(HARDEST) < 20 and ORDINARY not in result.candidates
    W = embedded.hf.get_output_embeddings().weight.detach().double()
    centred = W - W.mean(0)
    pc = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    rows = W - (W @ pc)[:, None] * pc
    mean_ref = rows[result.reference_ids].mean(0)
    direct = 1 - rows @ mean_ref / (rows.norm(dim=1) * mean_ref.norm()).clamp_min(1e-6)
    assert torch.allclose(torch.as_tensor(result.indicator), direct, atol=1e-9)


def test_verification_of_each_class(embedded):
    codes, texts = U.token_categories(embedded)
    placeholder = U.choose_placeholder(embedded, codes, texts)
    prompts = U.build_prompts(embedded, placeholder, texts[placeholder])
    assert prompts[0].name == "assistant_explain (chat template)"  # SmolLM2 has a chat template
    assert "<|im_start|>assistant" in prompts[0].text
    tokens = [TWIN, HARDEST, ORDINARY, 2]  # reference copy, hardest cap, ordinary, <|im_end|>
    results = U.verify(embedded, tokens, prompts)
    assert results[TWIN].verified and results[HARDEST].verified
    assert not results[ORDINARY].verified and not results[2].verified
    assert results[ORDINARY].stopped_early  # crossed 0.01 on an early prompt: the rest skipped
    # One probability re-computed by plain forwards (no cache, no batch).
    ids = list(prompts[0].ids)
    for k in prompts[0].positions:
        ids[k] = HARDEST
    seq, best = list(ids), 0.0
    for _ in range(U.GENERATED):
        with torch.no_grad():
            logits = embedded.hf(input_ids=torch.tensor([seq])).logits[0, -1].double()
        best = max(best, float(torch.softmax(logits, -1)[HARDEST]))
        seq.append(int(logits.argmax()))
    assert results[HARDEST].probs[prompts[0].name] == pytest.approx(best, rel=1e-3, abs=1e-9)


def test_undertrained_cli_json_and_bad_input(embedded, capsys):
    from lenstui.cli import main

    assert main(["undertrained", "--no-verify", "--share", "0.1", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["tied"] is True and len(payload["reference"]["ids"]) == 15
    assert payload["candidates"] and all(c["verification"] is None for c in payload["candidates"])
    assert payload["categories"]["UNDECODEABLE"] == len(payload["unreachable"])
    assert main(["undertrained", "--reference", "1,x"]) == 2
    assert "--reference takes token ids" in capsys.readouterr().err
    assert main(["undertrained", "--share", "0"]) == 2
    assert "percentage" in capsys.readouterr().err
