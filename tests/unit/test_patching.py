"""The causal lens (``lenstui.engine.causal``) against an independent patcher: plain
PyTorch forward hooks on a plain Hugging Face model (``testkit/patch_reference.py``), on
the tiny models (the embedded SmolLM2: tests/integration/test_patching_embedded.py).

What is held to what:
- every patched run's final rows (each position from the patched one on: its top-k,
  target and tracked probabilities) within 1e-5 of the reference's softmax;
- every cell inside the cone, read through the reference's own final norm and
  unembedding, within 1e-5; every cell outside it equal to the clean cell;
- the cone itself against the reference's residual stack: no row outside it moves, and
  the first row inside it at each position does;
- steering against adding the vector by hand (the reference's own norm gain times its
  unembedding row), the generated tokens included;
- the sweep's points against the same patches one by one in the reference;
- the fast path ("resume": blocks from the patched one, positions from P) against the
  generic ones ("prefix", "full").
"""

from __future__ import annotations

import pytest
import torch

from lenstui.core.errors import InputError
from lenstui.core.lenses import LensOptions
from lenstui.core.patch_result import PatchSite, SteerSetting, attention_counts, patch_cone, steer_cone
from lenstui.engine import causal
from lenstui.engine.causal.sites import parse_site
from lenstui.engine.lens.state import LensState, lens_state
from lenstui.engine.model.forward import forward_for
from testkit.patch_reference import (
    TOL,
    Plain,
    assert_final_rows_match,
    check_cone,
    reference_intervention,
    reference_steer,
)

TEXT = "Sometimes, when people say plasma, they mean a state of matter."


@pytest.fixture(scope="module")
def tiny_pairs():
    """(wrapped model, independent plain HF model) for each tiny architecture."""
    from testkit.models import tiny_gpt2, tiny_gpt2_hf, tiny_llama, tiny_llama_hf

    return {
        "tiny_llama": (tiny_llama(), Plain(tiny_llama_hf()[0])),
        "tiny_gpt2": (tiny_gpt2(), Plain(tiny_gpt2_hf()[0])),
    }


def prompts(model):
    ids = list(model.tokenizer(TEXT)["input_ids"])
    other = list(ids)
    other[5] = (other[5] + 7) % len(model.tokenizer)
    other[9] = (other[9] + 3) % len(model.tokenizer)
    return ids, other


# ---------------------------------------------------------------- the cone (pure)


def test_attention_counts_and_cone_rules():
    layers = ["embed", "L0", "L1", "L2"]
    assert attention_counts(layers) == [0, 1, 2, 3]
    # The residual after L1 at position 2: row L1 at 2, rows from L2 at 3.., nothing before 2.
    assert patch_cone(layers, 5, component="resid", layer=1, position=2) == [None, None, 2, 3, 3]
    # The embedding: every block reads it.
    assert patch_cone(layers, 3, component="resid", layer=-1, position=0) == [0, 1, 1]
    # The last block's output moves nothing at later positions.
    assert patch_cone(layers, 3, component="mlp", layer=2, position=1) == [None, 3, None]
    mid = ["embed", "L0.attn", "L0", "L1.attn", "L1"]
    # An attention patch lands in the mid row; later positions change from the next attention on.
    assert patch_cone(mid, 3, component="attn", layer=0, position=1) == [None, 1, 3]
    assert patch_cone(mid, 3, component="mlp", layer=0, position=1) == [None, 2, 3]
    # The extended lens decodes rows over all positions: later positions from the landing row.
    assert patch_cone(layers, 3, component="resid", layer=0, position=0, extended=True) == [1, 1, 1]
    assert steer_cone(layers, 4, layer=1, position=1) == [None, 2, 2, 2]


def test_spec_labels():
    from lenstui.core.patch_result import PatchSpec

    assert PatchSpec("resid", 3, 5, from_position=5).label == "B@5 L3 -> A@5"
    assert PatchSpec("resid", -1, 0, from_position=2).label == "B@2 embed -> A@0"
    assert PatchSpec("mlp", 3, 5, source="zero").label == "zero L3.mlp -> A@5"
    assert PatchSpec("head", 24, 19, source="mean", head=4).label == "mean L24H4 -> A@19"


def test_sites_parse_and_mistakes_are_sentences(tiny_llama):
    n = tiny_llama.n_layers
    assert parse_site("L2", "resid", n) == ("resid", 2, None)
    assert parse_site("embed", "resid", n) == ("resid", -1, None)
    assert parse_site(None, "L1H3", n) == ("head", 1, 3)
    assert parse_site("-1", "H2", n) == ("head", n - 1, 2)
    for layer, component, words in (
        ("L9", "resid", "out of range"),
        ("embed", "attn", "embedding has no attn"),
        ("L0", "L1H3", "names block 1"),
        (None, "mlp", "which layer"),
        ("L0", "bogus", "Unknown component"),
    ):
        with pytest.raises(InputError, match=words):
            parse_site(layer, component, n)
    ids, other = prompts(tiny_llama)
    with pytest.raises(InputError, match="--from PROMPT_B, or --ablate"):
        causal.patch(tiny_llama, ids, PatchSite(layer="L0"))
    with pytest.raises(InputError, match="not both"):
        causal.patch(tiny_llama, ids, PatchSite(layer="L0"), source_prompt=other, ablate="zero")
    with pytest.raises(InputError, match="Head 9 is out of range"):
        causal.patch(tiny_llama, ids, PatchSite(layer="L0", component="L0H9"), source_prompt=other)
    with pytest.raises(InputError, match="outside prompt B"):
        causal.patch(tiny_llama, ids, PatchSite(layer="L0", position=8), source_prompt=other[:4])


# ---------------------------------------------------------------- patches vs the reference (tiny)


CASES = [
    # (component, layer, P, Q or None, source)
    ("resid", "embed", 5, 5, "prompt"),
    ("resid", "L0", -1, -1, "prompt"),
    ("resid", "L1", 5, 9, "prompt"),  # P != Q
    ("resid", "L2", 9, 9, "prompt"),  # the last block
    ("attn", "L1", 5, 5, "prompt"),
    ("mlp", "L0", 9, 9, "prompt"),
    ("head", "L1", 5, 5, "prompt"),
    ("attn", "L2", -1, None, "zero"),
    ("mlp", "L1", 5, None, "mean"),
    ("head", "L0", 9, None, "zero"),
    ("head", "L2", -1, None, "mean"),
    ("resid", "L1", 7, None, "mean"),
]


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("component,layer,position,from_position,source", CASES)
def test_patch_matches_independent_forward_hooks(tiny_pairs, arch, component, layer, position, from_position, source):
    model, plain = tiny_pairs[arch]
    ids, other = prompts(model)
    options = LensOptions(top_k=8, track=(ids[3],))
    head = 2 if component == "head" else None
    if source == "prompt":
        site = PatchSite(layer, position, component, head, from_position)
        result = causal.patch(model, ids, site, source_prompt=other, options=options)
    else:
        result = causal.patch(model, ids, PatchSite(layer, position, component, head), ablate=source, options=options)
    assert result.cost.path == "resume"
    _, rec_a = plain.run(ids)
    _, rec_b = plain.run(other)
    iv = reference_intervention(plain, rec_b, rec_a, result.spec, len(ids))
    logits, rec_patched = plain.run(ids, [iv])
    assert_final_rows_match(result.patched, torch.softmax(logits, dim=-1), result.spec.position)
    check_cone(result, plain, rec_a, rec_patched)


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_cone_with_mid_rows(tiny_pairs, arch):
    model, plain = tiny_pairs[arch]
    ids, other = prompts(model)
    _, rec_a = plain.run(ids)
    _, rec_b = plain.run(other)
    for component in ("attn", "mlp", "resid"):
        result = causal.patch(model, ids, PatchSite(layer="L1", position=6, component=component), source_prompt=other, options=LensOptions(incl_mid=True))
        assert "L1.attn" in result.patched.layers
        logits, rec_patched = plain.run(ids, [reference_intervention(plain, rec_b, rec_a, result.spec, len(ids))])
        assert_final_rows_match(result.patched, torch.softmax(logits, dim=-1), result.spec.position)
        check_cone(result, plain, rec_a, rec_patched)


def test_extended_lens_cone_holds_in_the_engine(tiny_llama):
    ids, other = prompts(tiny_llama)
    result = causal.patch(tiny_llama, ids, PatchSite(layer="L0", position=5), source_prompt=other, options=LensOptions(lens="extended"))
    for row in range(len(result.patched.layers)):
        for pos in range(len(ids)):
            if not result.in_cone(row, pos):
                a, b = result.patched.grid[row][pos], result.clean.grid[row][pos]
                assert [t.prob for t in a.top] == pytest.approx([t.prob for t in b.top], abs=1e-6)
    # The extended decoder reads row L0 at later positions over position 5 too.
    assert result.cone[6] == result.cone[5] == 1


def test_the_three_paths_agree(tiny_llama, monkeypatch):
    ids, other = prompts(tiny_llama)
    site, options = PatchSite("L1", 5, "attn"), LensOptions(top_k=5)
    resumed = causal.patch(tiny_llama, ids, site, source_prompt=other, options=options)
    monkeypatch.setattr(forward_for(tiny_llama), "skipping_works", False)  # a family whose blocks cannot be skipped
    prefix = causal.patch(tiny_llama, ids, site, source_prompt=other, options=options)
    saved = dict(tiny_llama.caches.lens_states)
    tiny_llama.caches.lens_states.clear()
    try:
        for slot in ("a", "b"):
            lens_state(tiny_llama, slot)._kv_works = False  # as for a model whose cache the bridge cannot fill
        full = causal.patch(tiny_llama, ids, site, source_prompt=other, options=options)
    finally:
        tiny_llama.caches.lens_states.clear()
        tiny_llama.caches.lens_states.update(saved)
    assert (resumed.cost.path, prefix.cost.path, full.cost.path) == ("resume", "prefix", "full")
    assert (resumed.cost.positions, resumed.cost.blocks) == (len(ids) - 5, tiny_llama.n_layers - 1)
    assert (full.cost.positions, full.cost.blocks) == (len(ids), tiny_llama.n_layers)
    for other_result in (prefix, full):
        for row_a, row_b in zip(resumed.patched.grid, other_result.patched.grid):
            for a, b in zip(row_a, row_b):
                assert [t.id for t in a.top] == [t.id for t in b.top]
                assert [t.prob for t in a.top] == pytest.approx([t.prob for t in b.top], abs=1e-6)
        flat = [v for row in resumed.kl for v in row]
        assert flat == pytest.approx([v for row in other_result.kl for v in row], abs=1e-6)


def test_a_patch_reuses_the_clean_state_and_leaves_it_alone(tiny_llama):
    ids, other = prompts(tiny_llama)
    state = lens_state(tiny_llama, "a")
    state.prepare(ids, LensOptions(top_k=5))
    before = state.forward_count
    stack = state.residual(2).clone()
    result = causal.patch(tiny_llama, ids, PatchSite(layer="L1", position=-1), source_prompt=other, options=LensOptions(top_k=5))
    assert state.forward_count == before  # slot "a" ran nothing: it already held A
    assert torch.equal(state.residual(2), stack)
    again = causal.patch(tiny_llama, ids, PatchSite(layer="L1", position=-1), source_prompt=other, options=LensOptions(top_k=5))
    assert again.clean.grid[-1][-1] == result.clean.grid[-1][-1]
    assert result.cost.positions == 1  # only the last position ran


def test_fork_and_extend(tiny_llama):
    ids, _ = prompts(tiny_llama)
    state = lens_state(tiny_llama, "a")
    state.prepare(ids, LensOptions(top_k=3))
    clean = state.result()
    fork = state.fork(4)
    assert fork.ids == ids[:4]
    fork.prepare(ids, LensOptions(top_k=3))
    assert fork.forward_count == 1  # positions 4.. only
    same = fork.result()
    for row_a, row_b in zip(same.grid, clean.grid):
        assert [c.top[0].prob for c in row_a] == pytest.approx([c.top[0].prob for c in row_b], abs=1e-6)
    assert state.kv_cache.get_seq_length() == len(ids)  # the fork's cache grew on its own
    with pytest.raises(ValueError):
        LensState(tiny_llama).extend(ids, torch.zeros(4, 1, 32), None, None)


# ---------------------------------------------------------------- sweeps


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_layer_sweep_matches_the_reference(tiny_pairs, arch):
    model, plain = tiny_pairs[arch]
    ids, other = prompts(model)
    target = ids[4]
    result = causal.sweep(model, ids, PatchSite(position=5), source_prompt=other, mode="layers", target=target)
    assert [p.layer for p in result.points] == list(range(-1, model.n_layers))
    _, rec_a = plain.run(ids)
    _, rec_b = plain.run(other)
    clean_probs = plain.probs(ids)
    assert result.clean_target_prob == pytest.approx(float(clean_probs[-1, target]), abs=TOL)
    for point in result.points:
        iv = {"kind": "resid", "layer": point.layer, "pos": 5, "value": rec_b["stack"][point.layer + 1][5]}
        probs = plain.probs(ids, [iv])[-1]
        assert point.target_prob == pytest.approx(float(probs[target]), abs=TOL)
        assert point.top.id == int(probs.argmax())
        # the source answer (clean B's top-1 at its end) is tracked first
        assert point.tracked[0].id == result.source_answer.id
        assert point.tracked[0].prob == pytest.approx(float(probs[result.source_answer.id]), abs=TOL)
        kl = float((probs * (probs.log() - clean_probs[-1].log())).sum())
        assert point.kl == pytest.approx(kl, abs=1e-5)


def test_position_sweep_and_head_sweep_match_single_patches(tiny_llama):
    ids, other = prompts(tiny_llama)
    swept = causal.sweep(tiny_llama, ids, PatchSite(layer="L1", component="attn"), source_prompt=other, mode="positions")
    assert [p.position for p in swept.points] == list(range(len(ids)))
    for point in swept.points[::3]:
        single = causal.patch(tiny_llama, ids, PatchSite(layer="L1", position=point.position, component="attn"), source_prompt=other, options=LensOptions(target=swept.target.id))
        assert point.target_prob == pytest.approx(single.patched.grid[-1][-1].target_prob, abs=1e-6)
    heads = causal.sweep(tiny_llama, ids, PatchSite(component="H1"), ablate="zero", mode="layers")
    assert [p.layer for p in heads.points] == list(range(tiny_llama.n_layers))
    with pytest.raises(InputError, match="A has"):
        causal.sweep(tiny_llama, ids, PatchSite(layer="L0"), source_prompt=other[:-1], mode="positions")
    with pytest.raises(InputError, match="say which"):
        causal.sweep(tiny_llama, ids, source_prompt=other, mode="positions")


# ---------------------------------------------------------------- steering


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_steer_matches_adding_the_vector_by_hand(tiny_pairs, arch):
    model, plain = tiny_pairs[arch]
    ids, _ = prompts(model)
    toward, away = ids[2], ids[6]
    for layer, position, alpha, against in ((1, 0, 6.0, None), (0, 5, -3.0, away), (-1, 3, 8.0, None)):
        result = causal.steer(model, ids, SteerSetting(toward=toward, away=against, layer="embed" if layer < 0 else layer, alpha=alpha, position=position), steps=4, options=LensOptions(top_k=6))
        iv, scale = reference_steer(plain, ids, toward, layer, alpha, position, against)
        assert result.spec.scale == pytest.approx(scale, rel=1e-5)
        expected = plain.greedy(ids, 4, [iv])
        assert [t.id for t in result.generated] == expected
        assert [t.id for t in result.clean_generated] == plain.greedy(ids, 4)
        full = ids + expected
        probs = plain.probs(full, [iv])
        assert_final_rows_match(result.steered, probs)
        assert result.cone == steer_cone(result.steered.layers, len(full), layer=layer, position=position)


def test_a_kept_steer_grows_one_position_per_step(tiny_llama):
    ids, _ = prompts(tiny_llama)
    first = causal.steer(tiny_llama, ids, SteerSetting(toward=ids[2], layer="L1", alpha=5.0), options=LensOptions(top_k=3))
    kept = tiny_llama.caches.steered[1]
    count = kept.forward_count
    grown = ids + [first.steered.next_token.id]
    second = causal.steer(tiny_llama, grown, SteerSetting(toward=ids[2], layer="L1", alpha=5.0, scale=first.spec.scale), options=LensOptions(top_k=3))
    assert tiny_llama.caches.steered[1] is kept and kept.forward_count == count + 1
    assert len(second.steered.tokens) == len(ids) + 1
    assert second.cost is None  # nothing was resumed: the kept run grew
    # The clean run is untouched by the steer: its own grid differs in the cone.
    assert lens_state(tiny_llama, "a").intervention is None


@pytest.mark.parametrize("layer", ["L0", -1])  # -1: after the last block, where no block reruns
def test_steered_steps_leave_the_clean_cache_alone(tiny_llama, layer):
    ids, _ = prompts(tiny_llama)
    state = lens_state(tiny_llama, "a")
    state.prepare(ids, LensOptions(top_k=3))
    keys = [layer_cache.keys.clone() for layer_cache in state.kv_cache.layers]
    result = causal.steer(tiny_llama, ids, SteerSetting(toward=ids[2], layer=layer, alpha=4.0), steps=3, options=LensOptions(top_k=3))
    assert len(result.steered.tokens) == len(ids) + 3
    assert state.ids == ids and state.kv_cache.get_seq_length() == len(ids)
    assert all(torch.equal(a, b.keys) for a, b in zip(keys, state.kv_cache.layers))


def test_steer_mistakes(tiny_llama):
    ids, _ = prompts(tiny_llama)
    with pytest.raises(InputError, match="same token"):
        causal.steer(tiny_llama, ids, SteerSetting(toward=ids[2], away=ids[2], layer="L0", alpha=1.0))
    with pytest.raises(InputError, match="Steps must be"):
        causal.steer(tiny_llama, ids, SteerSetting(toward=ids[2], layer="L0", alpha=1.0), steps=-1)
    with pytest.raises(InputError, match="outside the prompt"):
        causal.steer(tiny_llama, ids, SteerSetting(toward=ids[2], layer="L0", alpha=1.0, position=99))


# ---------------------------------------------------------------- the embedded model


# ---------------------------------------------------------------- the worker's handlers


def test_causal_requests_through_the_worker(tiny_llama):
    import queue

    from lenstui.core.patch_result import PatchResult, SteerResult, SweepResult
    from lenstui.jobs.handlers import HANDLERS
    from lenstui.jobs.protocol import Done, Failed, LoadModel, Progress, RunPatch, RunSteer, RunSweep
    from lenstui.jobs.scheduler import ModelWorker

    results: queue.Queue = queue.Queue()
    worker = ModelWorker(results.put, loader=lambda spec, **kw: tiny_llama, handlers=HANDLERS).start()
    try:
        ids, other = prompts(tiny_llama)

        def answer(request):
            seq = worker.submit(request)
            while True:
                result = results.get(timeout=120)
                if result.seq == seq and not isinstance(result, Progress):
                    return result

        worker.submit(LoadModel())
        patched = answer(RunPatch(tuple(ids), tuple(other), site=PatchSite(layer="L1", position=5), options=LensOptions(top_k=3)))
        assert isinstance(patched, Done) and isinstance(patched.value, PatchResult)
        direct = causal.patch(tiny_llama, ids, PatchSite(layer="L1", position=5), source_prompt=other, options=LensOptions(top_k=3))
        assert patched.value.patched.grid[-1][-1] == direct.patched.grid[-1][-1]
        swept = answer(RunSweep(tuple(ids), tuple(other), site=PatchSite(position=5), mode="layers"))
        assert isinstance(swept.value, SweepResult) and len(swept.value.points) == tiny_llama.n_layers + 1
        steered = answer(RunSteer(tuple(ids), SteerSetting(ids[2], layer="L1", alpha=2.0), steps=2, options=LensOptions(top_k=3)))
        assert isinstance(steered.value, SteerResult) and len(steered.value.generated) == 2
        assert steered.value.clean_generated == []  # the app steps itself
        failed = answer(RunPatch(tuple(ids), tuple(other), site=PatchSite(layer="L7")))
        assert isinstance(failed, Failed) and "out of range" in failed.message
    finally:
        worker.stop()
