"""The Patchscope lens on tiny models: every cell against an independent patch made with
plain forward hooks on the transformers model (testkit/patchscope_reference.py), the
rows' grouping, the fallback without a KV cache, incremental columns, the target in the
options and the JSON, the worker's streamed parts, and the sentences for bad targets."""

from __future__ import annotations

import json

import pytest
import torch

import lenstui.engine.lens.patchscope as patchscope
from lenstui.core.errors import InputError
from lenstui.core.lenses import DEFAULT_PATCHSCOPE_TARGET, LensOptions, patchscope_cost, patchscope_target_text
from lenstui.engine.lens.run import run_lens
from lenstui.engine.lens.state import LensState
from testkit.models import CORPUS
from testkit.patchscope_reference import hooked_patchscope

PROMPT = CORPUS[0]  # "The Eiffel Tower is located in the city of Paris."
TOLERANCE = 1e-4


def assert_cells_match(model, result, target_text, *, positions=None):
    """Every reported probability of every cell (top-k, target, tracked) against the
    hooked reference: max |dp| <= 1e-4 and the same top-1."""
    ids = [t.id for t in result.tokens]
    target_ids = model.tokenizer(target_text)["input_ids"]
    columns = result.column_positions
    wanted = columns if positions is None else positions
    reference = hooked_patchscope(model.hf, ids, target_ids, positions=wanted)
    worst = 0.0
    for row in range(len(result.layers)):
        for col, pos in enumerate(columns):
            if pos not in wanted:
                continue
            cell = result.grid[row][col]
            ref = reference[(row, pos)]
            assert cell.top[0].id == int(ref.argmax()), (result.layers[row], pos)
            for tok in cell.top:
                worst = max(worst, abs(tok.prob - float(ref[tok.id])))
            worst = max(worst, abs(cell.target_prob - float(ref[result.targets[col].id])))
            for tracked in cell.tracked:
                worst = max(worst, abs(tracked.prob - float(ref[tracked.id])))
    assert worst <= TOLERANCE, worst
    return worst


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_every_cell_is_the_hooked_patch_of_its_row_into_the_target(which, request):
    model = request.getfixturevalue(which)
    result = run_lens(model, PROMPT, LensOptions(lens="patchscope", top_k=10, track=(" Paris",)), slot="ps-cells")
    assert result.lens == "patchscope" and result.patchscope_target == DEFAULT_PATCHSCOPE_TARGET
    assert result.layers == ["embed"] + [f"L{i}" for i in range(model.n_layers)]
    assert_cells_match(model, result, DEFAULT_PATCHSCOPE_TARGET)


@pytest.mark.parametrize("weight_cost", [0.0, 1e9])
def test_one_forward_per_row_and_all_rows_in_one_give_the_same_cells(tiny_llama, monkeypatch, weight_cost):
    monkeypatch.setattr(patchscope, "WEIGHT_COST", weight_cost)
    groups = patchscope.row_groups(tiny_llama.n_layers, tiny_llama.n_layers, 5)
    assert len(groups) == (tiny_llama.n_layers if weight_cost == 0 else 1)
    result = LensState(tiny_llama)
    result.prepare(PROMPT, LensOptions(lens="patchscope", top_k=5))
    assert_cells_match(tiny_llama, result.result(), DEFAULT_PATCHSCOPE_TARGET)


def test_row_groups_cover_every_row_once_in_order():
    for n_pos in (1, 3, 8, 64):
        groups = patchscope.row_groups(30, 30, n_pos)
        assert groups[0][0] == 0 and groups[-1][1] == 30
        assert all(a < b for a, b in groups) and all(groups[i][1] == groups[i + 1][0] for i in range(len(groups) - 1))
    # One position: a few large groups; many positions: nearly a forward per row.
    assert len(patchscope.row_groups(30, 30, 1)) < len(patchscope.row_groups(30, 30, 64))


def test_without_a_kv_cache_the_whole_target_runs_per_cell_and_reads_the_same(tiny_gpt2):
    ids = tiny_gpt2.tokenizer(DEFAULT_PATCHSCOPE_TARGET)["input_ids"]
    cached = patchscope._prepare(tiny_gpt2, DEFAULT_PATCHSCOPE_TARGET, ids)
    whole = patchscope._prepare(tiny_gpt2, DEFAULT_PATCHSCOPE_TARGET, ids, use_cache=False)
    assert cached.prefix_kv is not None and whole.prefix_kv is None and whole.clean is not None
    state = LensState(tiny_gpt2)
    state.prepare(PROMPT, LensOptions(lens="logit"))
    stack = state.stack(range(len(state.ids)), False)
    a = patchscope.patched_rows(tiny_gpt2, cached, stack)
    b = patchscope.patched_rows(tiny_gpt2, whole, stack)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_a_target_without_a_question_mark_reads_at_its_last_token(tiny_llama):
    target = "hello world, hello"
    result = run_lens(tiny_llama, PROMPT, LensOptions(lens="patchscope", top_k=5, patchscope_target=target), slot="ps-q")
    assert result.patchscope_target == target
    assert_cells_match(tiny_llama, result, target)


def test_a_new_token_computes_its_column_only_and_the_target_prefix_runs_once(tiny_llama, monkeypatch):
    tiny_llama.caches.patchscope_targets.clear()
    prepared, columns = [], []
    real_prepare, real_rows = patchscope._prepare, patchscope.patched_rows
    monkeypatch.setattr(patchscope, "_prepare", lambda *a, **k: prepared.append(a[1]) or real_prepare(*a, **k))
    monkeypatch.setattr(patchscope, "patched_rows", lambda m, t, stack: columns.append(stack.shape[1]) or real_rows(m, t, stack))
    state = LensState(tiny_llama)
    ids = tiny_llama.tokenizer(PROMPT)["input_ids"]
    options = LensOptions(lens="patchscope", top_k=3)
    state.prepare(ids[:-1], options)
    state.result()
    assert sum(columns) == len(ids) - 1
    columns.clear()
    state.prepare(ids, options)  # one generated token
    result = state.result()
    assert columns == [1]
    assert prepared == [DEFAULT_PATCHSCOPE_TARGET]  # the prefix KV: once per (model, target)
    assert_cells_match(tiny_llama, result, DEFAULT_PATCHSCOPE_TARGET, positions=[len(ids) - 1])


def test_another_target_recomputes_the_cells_and_the_json_names_it(tiny_llama):
    state = LensState(tiny_llama)
    first = state.prepare(PROMPT, LensOptions(lens="patchscope", top_k=3))
    a = state.result()
    state.prepare(PROMPT, LensOptions(lens="patchscope", top_k=3, patchscope_target="1 -> 1\n?"))
    assert state.computed_positions() == []  # the old target's cells are not this one's
    b = state.result()
    assert first.patchscope_target == DEFAULT_PATCHSCOPE_TARGET
    payload = json.loads(json.dumps(b.to_json()))
    assert payload["lens"] == "patchscope" and payload["patchscope_target"] == "1 -> 1\n?"
    assert "patchscope_target" not in run_lens(tiny_llama, PROMPT, LensOptions(top_k=3), slot="ps-json").to_json()
    rows, cols = len(a.layers) - 1, len(a.tokens)  # (the last row is the model's output under any target)
    assert any(a.grid[r][c].top[0].prob != b.grid[r][c].top[0].prob for r in range(rows) for c in range(cols))


def test_bad_requests_get_one_sentence(tiny_llama):
    with pytest.raises(InputError, match="block outputs only"):
        run_lens(tiny_llama, PROMPT, LensOptions(lens="patchscope", incl_mid=True), slot="ps-bad")
    with pytest.raises(InputError, match="keep it under"):
        run_lens(tiny_llama, PROMPT, LensOptions(lens="patchscope", patchscope_target="word " * 400), slot="ps-bad")
    # A blank target is the default one, not an error.
    result = run_lens(tiny_llama, PROMPT, LensOptions(lens="patchscope", patchscope_target="  "), slot="ps-bad")
    assert result.patchscope_target == DEFAULT_PATCHSCOPE_TARGET


def test_the_default_target_and_its_one_line_form():
    assert DEFAULT_PATCHSCOPE_TARGET == "cat -> cat\n1135 -> 1135\nhello -> hello\n?"
    assert patchscope_target_text("cat -> cat\\n?") == "cat -> cat\n?"
    assert "465 block-steps per column" in patchscope_cost(30) and "16x" in patchscope_cost(30)
    assert "3,840 short runs for 128 positions" in patchscope_cost(30, 128)


def test_the_worker_streams_the_first_visible_column_alone_with_progress(tiny_llama):
    from lenstui.jobs.handlers import costly_parts, run_lens_handler
    from lenstui.jobs.protocol import RunLens

    assert costly_parts(set(), [7, 8, 9], [6, 5, 4, 3], 2) == [[9], [8, 7], [6, 5], [4, 3]]
    assert costly_parts({0, 1}, [9], [], 4) == [[0, 1, 9]]

    class Ctx:
        def __init__(self):
            self.events = []

        def should_stop(self):
            return False

        def progress(self, message, fraction=None):
            self.events.append(("progress", message, fraction))

        def partial(self, result):
            self.events.append(("partial", result.column_positions))

    tiny_llama.caches.lens_states.pop("a", None)
    ctx = Ctx()
    request = RunLens(PROMPT, options=LensOptions(lens="patchscope", top_k=3), first_positions=(-3, -2, -1))
    done = run_lens_handler(tiny_llama, request, ctx)
    n = len(done.tokens)
    partials = [e[1] for e in ctx.events if e[0] == "partial"]
    progress = [e for e in ctx.events if e[0] == "progress"]
    assert partials[0] == [n - 1]  # the last visible column, alone
    assert sorted(p for part in partials for p in part) == list(range(n))
    assert progress[0][1] == f"patchscope: 0/{n} columns" and progress[-1][2] < 1
    assert done.complete and done.patchscope_target == DEFAULT_PATCHSCOPE_TARGET


def test_evaluate_lists_the_patchscope_beside_the_logit_lens(tiny_llama):
    from lenstui.engine.lens.evaluate import evaluate_lenses

    result = evaluate_lenses(tiny_llama, " ".join(CORPUS), ("logit", "patchscope"))
    assert list(result.lenses) == ["logit", "patchscope"]
    curves = result.lenses["patchscope"]
    assert len(curves.kl) == tiny_llama.n_layers + 1
    assert curves.kl[-1] == pytest.approx(0.0, abs=1e-6) and curves.top1_agree[-1] == 1.0
    assert curves.kl[:-1] != result.lenses["logit"].kl[:-1]


def test_compare_reads_both_prompts_through_the_patchscope(tiny_llama):
    from lenstui.engine.lens.compare import compare_rows

    options = LensOptions(lens="patchscope", top_k=3)
    comparison = compare_rows(tiny_llama, PROMPT, -1, CORPUS[1], -1, options)
    assert comparison.a.lens == comparison.b.lens == "patchscope"
    # KL(A || B) per row from the hooked reference's two distributions.
    ids_a = [t.id for t in comparison.a.tokens]
    ids_b = [t.id for t in comparison.b.tokens]
    target = tiny_llama.tokenizer(DEFAULT_PATCHSCOPE_TARGET)["input_ids"]
    ref_a = hooked_patchscope(tiny_llama.hf, ids_a, target, positions=[len(ids_a) - 1])
    ref_b = hooked_patchscope(tiny_llama.hf, ids_b, target, positions=[len(ids_b) - 1])
    for row, kl in enumerate(comparison.kl):
        p, q = ref_a[(row, len(ids_a) - 1)], ref_b[(row, len(ids_b) - 1)]
        assert kl == pytest.approx(float((p * (p.log() - q.log())).sum()), abs=1e-4)


def test_a_talk_scene_keeps_its_patchscope_target_and_renders_through_it(tiny_llama, tmp_path):
    from pathlib import Path

    from lenstui.jobs.handlers import render_scene
    from lenstui.jobs.protocol import RenderScenes
    from lenstui.talks.format import parse_talk, scene_to_toml

    talk = parse_talk(
        f'[[scene]]\nprompt = "{PROMPT}"\nlens = "patchscope"\npatchscope_target = "a -> a\\nb -> b\\n?"\n'
        '[[scene]]\nprompt = "x"\nlens = "patchscope"\npatchscope_target = 7\n',
        Path(tmp_path / "talk.toml"),
    )
    scene, bad = talk.scenes
    assert scene.ok and scene.patchscope_target == "a -> a\nb -> b\n?"
    assert "patchscope_target must be a prompt" in bad.problem
    assert 'patchscope_target = "a -> a\\nb -> b\\n?"' in scene_to_toml(scene)

    class Ctx:
        def should_stop(self):
            return False

        def progress(self, message, fraction=None):
            pass

    rendered = render_scene(tiny_llama, scene, RenderScenes((scene,), (1,), top_k=4, incl_mid=True), Ctx())
    assert rendered.problem is None
    assert rendered.result.lens == "patchscope" and rendered.result.patchscope_target == "a -> a\nb -> b\n?"
    assert rendered.request.options.incl_mid is False  # the Patchscope reads block outputs only
    assert_cells_match(tiny_llama, rendered.result, "a -> a\nb -> b\n?")


def test_the_sessions_options_carry_the_target_under_the_patchscope_only():
    from lenstui.tui.state.session import LensSession

    session = LensSession(prompt_text=PROMPT)
    assert session.next_lens() == "extended"
    session.lens_kind = "raw"
    assert session.next_lens() == "patchscope"  # no learned lens file: tuned and jacobian skipped
    session.incl_mid = True
    session.set_patchscope_target("a -> a\n?")
    assert session.lens_kind == "patchscope" and not session.incl_mid
    assert session.request().options.patchscope_target == "a -> a\n?"
    session.toggle_mid()  # mid rows wanted: the Patchscope cannot read them, the logit lens can
    assert session.incl_mid and session.lens_kind == "logit"
    assert session.options().patchscope_target is None  # another lens: the target is not its business
    session.set_lens("patchscope")
    assert session.options().patchscope_target == "a -> a\n?" and not session.incl_mid
    session.set_patchscope_target(None)
    assert session.options().patchscope_target is None and session.lens_kind == "patchscope"


def test_transformer_lens_bridge_runs_the_same_cells(tiny_llama, monkeypatch):
    """A model only the bridge knows runs its cells through TransformerLens' hook points."""
    from lenstui.engine.model.forward import BridgeForward

    bridge = BridgeForward(tiny_llama)
    monkeypatch.setattr(patchscope, "forward_for", lambda model, sites=(): bridge)
    tiny_llama.caches.patchscope_targets.clear()
    state = LensState(tiny_llama)
    state.prepare(PROMPT, LensOptions(lens="patchscope", top_k=5, patchscope_target="x -> x\n?"))
    assert_cells_match(tiny_llama, state.result(), "x -> x\n?")
    tiny_llama.caches.patchscope_targets.clear()  # (the next tests prepare theirs natively)
