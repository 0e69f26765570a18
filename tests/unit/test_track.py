"""Tracked tokens, prediction depth and two-prompt comparison, checked against a float64
readout computed here from Hugging Face's own hidden states and weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lenstui.core.lenses import LensOptions
from lenstui.cli import main
from lenstui.core.errors import InputError
from lenstui.core.lens_result import Depth, LensCell, LensResult, TopToken, settle_row
from lenstui.core.tokens import TokenRef, token_spec
from lenstui.engine.lens.compare import compare_rows
from lenstui.engine.lens.run import run_lens
from lenstui.engine.model.vocab import resolve_token

PROMPT = "hello world, the city of Paris"
PROMPT_B = "the river in the town of Rome"


def _float64_log_probs(model, ids) -> np.ndarray:
    """[rows, positions, vocab] log-probabilities of every lens row (embed, then each block's
    output), float64, from HF's hidden states through the final norm and the lm_head."""
    hf = model.bridge.original_model
    with torch.no_grad():
        hidden = hf(torch.tensor([ids]), output_hidden_states=True).hidden_states
    # HF's last hidden state is already through the final norm; the lens reads the raw
    # residual after the last block, so that one comes from a hook on the norm's input.
    captured = {}
    norm = hf.transformer.ln_f if hasattr(hf, "transformer") else hf.model.norm
    handle = norm.register_forward_hook(lambda mod, args, out: captured.setdefault("x", args[0].detach()))
    with torch.no_grad():
        hf(torch.tensor([ids]))
    handle.remove()
    rows = [h[0] for h in hidden[:-1]] + [captured["x"][0]]
    x = np.stack([r.double().numpy() for r in rows])  # [rows, pos, d]
    w = norm.weight.detach().double().numpy()
    if hasattr(hf, "transformer"):  # LayerNorm
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        normed = (x - mean) / np.sqrt(var + norm.eps) * w + norm.bias.detach().double().numpy()
    else:  # RMSNorm
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
        normed = x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * w
    logits = normed @ hf.lm_head.weight.detach().double().numpy().T
    if getattr(hf.lm_head, "bias", None) is not None:
        logits = logits + hf.lm_head.bias.detach().double().numpy()
    top = logits.max(-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_tracked_values_equal_an_independent_float64_readout(fixture, request):
    model = request.getfixturevalue(fixture)
    ids = model.tokenizer(PROMPT)["input_ids"]
    track = [ids[1], ids[-1], 7]
    result = run_lens(model, ids, LensOptions(top_k=3, track=track))
    lp = _float64_log_probs(model, ids)
    assert [t.id for t in result.tracked] == track
    for row in range(len(result.layers)):
        for pos in range(len(ids)):
            cell = result.grid[row][pos]
            assert [t.id for t in cell.tracked] == track
            for value in cell.tracked:
                expected = lp[row, pos, value.id]
                assert value.prob == pytest.approx(np.exp(expected), rel=2e-4, abs=1e-9)
                # rank: tokens strictly more probable (ties within float32 noise excluded)
                above = int((lp[row, pos] > expected + 1e-6).sum())
                near = int((np.abs(lp[row, pos] - expected) <= 1e-6).sum())
                assert above <= value.rank <= above + near - 1


def test_tracking_changes_nothing_else(tiny_llama):
    plain = run_lens(tiny_llama, PROMPT, LensOptions(top_k=4))
    tracked = run_lens(tiny_llama, PROMPT, LensOptions(top_k=4, track=[" city", 3]))
    for row_a, row_b in zip(plain.grid, tracked.grid):
        for a, b in zip(row_a, row_b):
            assert [t.id for t in a.top] == [t.id for t in b.top]
            assert a.target_rank == b.target_rank and a.entropy == pytest.approx(b.entropy)
            assert not a.tracked and len(b.tracked) == 2


def test_track_specs_and_limits(tiny_llama):
    assert token_spec("#15") == 15 and token_spec(" sea") == " sea" and token_spec("#x") == "#x"
    with pytest.raises(InputError, match="At most 8"):
        run_lens(tiny_llama, PROMPT, LensOptions(track=list(range(9))))
    with pytest.raises(InputError):
        run_lens(tiny_llama, PROMPT, LensOptions(track=["hello world, the city"]))
    # duplicates collapse, positions subset carry the tracked values too
    result = run_lens(tiny_llama, PROMPT, LensOptions(track=[5, 5, 6]), positions=[-1])
    assert [t.id for t in result.tracked] == [5, 6] and len(result.grid[0][0].tracked) == 2


def test_settle_row_on_constructed_ranks():
    assert settle_row([5, 0, 3, 0, 0], 1) == 3
    assert settle_row([5, 0, 3, 0, 0], 4) == 1
    assert settle_row([0, 0, 0], 1) == 0
    assert settle_row([0, 0, 2], 1) is None  # not top-1 even in the last row
    assert settle_row([9, 9, 9], 10) == 0


def _cell(rank: int) -> LensCell:
    return LensCell(top=(TopToken(1, "a", "a", 0.5, 1.0),) * 3, entropy=0.0, kl_to_final=0.0,
                    target_rank=rank, target_prob=0.0, final_top1_rank=rank)


def test_depth_of_a_constructed_grid():
    ranks = [[40, 7], [2, 0], [0, 1], [1, 0], [0, 0]]  # rows x 2 positions
    grid = [[_cell(r) for r in row] for row in ranks]
    tok = TokenRef(1, "a", "a")
    result = LensResult(model="m", lens="logit", tokens=[tok, tok], layers=["embed", "L0", "L1", "L2", "L3"],
                        grid=grid, targets=[tok, tok], top_k=3)
    assert result.depth == [Depth(top1=4, topk=1), Depth(top1=3, topk=1)]
    assert result.to_json()["depth"] == [{"top1": 4, "topk": 1}, {"top1": 3, "topk": 1}]


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_depth_on_a_model_matches_ranks_from_float64(fixture, request):
    """The final top-1's rank per row comes from the readout even with another target set;
    depth is then the first row after which that rank stays 0 (< k)."""
    model = request.getfixturevalue(fixture)
    ids = model.tokenizer(PROMPT)["input_ids"]
    k = 3
    result = run_lens(model, ids, LensOptions(top_k=k, target=5))  # a different target on purpose
    lp = _float64_log_probs(model, ids)
    for pos, depth in enumerate(result.depth):
        answer = int(lp[-1, pos].argmax())
        ranks = [int((lp[row, pos] > lp[row, pos, answer] + 1e-9).sum()) for row in range(lp.shape[0])]
        assert [row[pos].final_top1_rank for row in result.grid] == ranks
        expected_top1 = min(r for r in range(len(ranks)) if all(x == 0 for x in ranks[r:]))
        expected_topk = min(r for r in range(len(ranks)) if all(x < k for x in ranks[r:]))
        assert (depth.top1, depth.topk) == (expected_top1, expected_topk)
        assert all(row[pos].target_rank == int((lp[i, pos] > lp[i, pos, 5] + 1e-9).sum())
                   for i, row in enumerate(result.grid))


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_compare_kl_equals_float64(fixture, request):
    model = request.getfixturevalue(fixture)
    ids_a = model.tokenizer(PROMPT)["input_ids"]
    ids_b = model.tokenizer(PROMPT_B)["input_ids"]
    comparison = compare_rows(model, ids_a, -1, ids_b, 2, LensOptions(top_k=3, track=[4]))
    assert comparison.positions == (len(ids_a) - 1, 2)
    lp_a = _float64_log_probs(model, ids_a)[:, -1]
    lp_b = _float64_log_probs(model, ids_b)[:, 2]
    expected = (np.exp(lp_a) * (lp_a - lp_b)).sum(-1)
    assert comparison.kl == pytest.approx(expected.tolist(), rel=1e-3, abs=1e-5)
    # same prompt and position on both sides: zero
    same = compare_rows(model, ids_a, -1, ids_a, -1, LensOptions(top_k=3))
    assert max(same.kl) == pytest.approx(0.0, abs=1e-5)
    payload = comparison.to_json()
    assert payload["compare"]["positions"] == [len(ids_a) - 1, 2]
    assert len(payload["compare"]["kl"]) == len(payload["a"]["layers"])
    assert payload["b"]["grid"][0][2]["tracked"][0]["id"] == 4


def test_compare_keeps_both_prompts_incremental(tiny_llama):
    from lenstui.engine.lens.state import lens_state

    compare_rows(tiny_llama, PROMPT, -1, PROMPT_B, -1)
    a, b = lens_state(tiny_llama, "a"), lens_state(tiny_llama, "b")
    runs = a.forward_count, b.forward_count
    compare_rows(tiny_llama, PROMPT, -1, PROMPT_B, -1)
    assert (a.forward_count, b.forward_count) == runs  # neither prompt ran its forward again


def test_cli_track_json(tiny_llama, monkeypatch, capsys):
    import lenstui.cli.lens_cmd as lens_cmd

    monkeypatch.setattr(lens_cmd, "load_from_args", lambda args: tiny_llama)
    assert main(["lens", PROMPT, "--track", " city", "--track", "#3", "--json", "--top-k", "2"]) == 0
    payload = json.loads(capsys.readouterr().out)
    city = resolve_token(tiny_llama, " city")
    assert [t["id"] for t in payload["tracked"]] == [city, 3]
    direct = run_lens(tiny_llama, PROMPT, LensOptions(top_k=2, track=[city, 3]))
    for row, direct_row in zip(payload["grid"], direct.grid):
        for cell, direct_cell in zip(row, direct_row):
            assert [(t["id"], t["rank"]) for t in cell["tracked"]] == [(t.id, t.rank) for t in direct_cell.tracked]
            assert set(cell["tracked"][0]) == {"id", "text", "prob", "rank"}
    assert len(payload["depth"]) == len(payload["tokens"])
    assert all(set(d) == {"top1", "topk"} for d in payload["depth"])


def test_cli_vs_json_and_bad_positions(tiny_llama, monkeypatch, capsys):
    import lenstui.cli.lens_cmd as lens_cmd

    monkeypatch.setattr(lens_cmd, "load_from_args", lambda args: tiny_llama)
    assert main(["lens", PROMPT, "--vs", PROMPT_B, "--json", "--top-k", "2"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert set(payload) == {"a", "b", "compare", "placement", "backend", "remote", "endpoint"}
    assert "".join(t["text"] for t in payload["b"]["tokens"]) == PROMPT_B
    n_a, n_b = len(payload["a"]["tokens"]), len(payload["b"]["tokens"])
    assert payload["compare"]["positions"] == [n_a - 1, n_b - 1]
    assert len(payload["compare"]["kl"]) == len(payload["a"]["layers"])
    assert main(["lens", PROMPT, "--vs", PROMPT_B]) == 0  # the table form
    assert "KL(A||B)" in capsys.readouterr().out
    assert main(["lens", PROMPT, "--vs", PROMPT_B, "--compare-positions", "99,0"]) == 2
    assert "outside prompt A" in capsys.readouterr().err
