"""Every model family reads true, or says why in one sentence.

The family matrix (testkit/families.py): tiny random-weight checkpoints of 88 families,
built from their transformers configs (constant parameters perturbed, weights wide enough
that a dropped soft-cap, logit scale or final norm moves probabilities by far more than
float32 rounding), each loaded the way ``lenstui lens --model DIR`` loads it. Per family:
it loads or refuses with its sentence; every row (the last one is the model's own logits)
equals the family's own forward in float64 with the blocks above that row passed through;
the mid rows equal its own head on the mid residual named as its code names it, or
``--mid`` says why in one sentence; the extended lens's last row is the model's; the wiring
check that ran on the load passed. The docs' table (docs/reference/families.md) is what
this matrix gives.

Models are built once per spec into the pytest cache (a few MB in all) and each family is
evaluated once per session.
"""

from __future__ import annotations

import json

import pytest
import torch

from lenstui.core.errors import InputError, ModelLoadError
from lenstui.core.lenses import LensOptions
from lenstui.engine.lens.run import run_lens
from lenstui.engine.model.load import load_model, wrap_model
from lenstui.engine.model.wiring import check_wiring, load_checked
from testkit.families import DOCS_PAGE, FAMILIES, PROMPT, build, by_name, evaluate, reference_probs, render_table
from testkit.families import _compare as compare_rows

# float32 against float64: rounding is ~1e-7 here; a dropped soft-cap or scale is ~1e-1.
ROW_TOLERANCE = 1e-5
ENTROPY_TOLERANCE = 1e-4


@pytest.fixture(scope="session")
def families_root(request, tmp_path_factory):
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    return cache.mkdir("lenstui-families") if cache is not None else tmp_path_factory.mktemp("lenstui-families")


_outcomes: dict = {}


def outcome_of(family, root):
    if family.name not in _outcomes:
        _outcomes[family.name] = evaluate(family, root)
    return _outcomes[family.name]


def one_sentence(text: str) -> bool:
    return bool(text) and "\n" not in text and "Traceback" not in text and text.rstrip().endswith(".")


@pytest.mark.parametrize("family", FAMILIES, ids=[family.slug for family in FAMILIES])
def test_the_family_reads_true_or_refuses_in_one_sentence(family, families_root):
    outcome = outcome_of(family, families_root)
    assert outcome.path == family.expect, outcome.sentence
    if outcome.path == "refuses":
        assert outcome.sentence.startswith(family.limit) and one_sentence(outcome.sentence), outcome.sentence
        return
    assert outcome.max_dp <= ROW_TOLERANCE, outcome.max_dp
    assert outcome.max_dh <= ENTROPY_TOLERANCE, outcome.max_dh
    assert outcome.top1_off == 0
    assert outcome.extended_dp <= ROW_TOLERANCE
    assert outcome.wiring is not None and outcome.wiring.ok, outcome.wiring
    assert outcome.wiring.max_abs_dp <= ROW_TOLERANCE
    if family.mid:
        assert outcome.mid_sentence is None, outcome.mid_sentence
        assert len(outcome.mid_labels) == len(outcome.labels) - 1
        assert outcome.mid_dp <= ROW_TOLERANCE, outcome.mid_dp
    else:
        assert one_sentence(outcome.mid_sentence or ""), outcome.mid_sentence


def test_the_docs_table_is_what_the_matrix_gives(families_root):
    outcomes = [outcome_of(family, families_root) for family in FAMILIES]
    assert len(outcomes) >= 40
    page = render_table(outcomes)
    assert DOCS_PAGE.read_text() == page, "run `python -m testkit.families --write` and commit the page"


# ---------------------------------------------------------------- the reference can fail


def _dropped(model, *, transform=False, norm=False):
    """The model's readout with its logit transform or final norm left out (what a naive
    lens does): the mutation the reference and the wiring check must catch."""
    from lenstui.engine.lens.readout import _prepared

    anatomy = model.anatomy
    model.caches.unembedding = _prepared(
        model.W_U, model.b_U, None if norm else model.ln_final,
        transform=None if transform else anatomy.logit_transform,
    )
    model.caches.lens_states.clear()


@pytest.mark.parametrize(
    "name, drop",
    [
        ("Gemma 2 (soft-capped)", "transform"),  # final_logit_softcapping
        ("Cohere (logit_scale)", "transform"),
        ("Granite (logits_scaling)", "transform"),
        ("Falcon-H1 (hybrid)", "transform"),  # lm_head_multiplier
        ("RecurrentGemma", "transform"),  # logits_soft_cap
        ("Llama (tied)", "norm"),
        ("Gemma", "norm"),  # the 1 + w RMSNorm
    ],
)
def test_the_reference_and_the_wiring_check_fail_when_the_readout_drops_a_step(name, drop, families_root):
    family = by_name(name)
    folder = build(family, families_root)
    model = load_checked(str(folder))
    assert model.wiring.ok
    if drop == "transform":
        assert model.anatomy.logit_transform is not None
    _dropped(model, transform=drop == "transform", norm=drop == "norm")
    result = run_lens(model, PROMPT, LensOptions(top_k=10))
    rows, _ = reference_probs(folder, result.token_ids)
    max_dp, _, _ = compare_rows(result.grid, rows)
    assert max_dp > 10 * ROW_TOLERANCE
    wiring = check_wiring(model)
    assert not wiring.ok and wiring.max_abs_dp > 10 * ROW_TOLERANCE
    assert wiring.sentence.startswith("The lens does not read") and one_sentence(wiring.sentence)


# ---------------------------------------------------------------- the bridge


def _through_the_bridge(folder):
    """The folder's model as the bridge reads it (the anatomy told it does not know it)."""
    from transformers import AutoTokenizer

    from lenstui.engine.model.load import auto_causal_lm

    hf = auto_causal_lm(str(folder), dtype=torch.float32, local_files_only=True)
    model = wrap_model(hf, AutoTokenizer.from_pretrained(folder), name=folder.name, device="cpu")
    model.caches.anatomy, model.caches.anatomy_known = None, True
    return model


@pytest.mark.parametrize("name", ["Llama (tied)", "Gemma 2 (soft-capped)", "Cohere (logit_scale)", "GPT-NeoX (Pythia)"])
def test_the_bridge_reads_a_family_it_knows_true_and_the_wiring_check_says_so(name, families_root):
    folder = build(by_name(name), families_root)
    model = _through_the_bridge(folder)
    wiring = check_wiring(model)
    assert wiring.ok and wiring.path == "bridge", wiring
    result = run_lens(model, PROMPT, LensOptions(top_k=10))
    rows, _ = reference_probs(folder, result.token_ids)
    assert compare_rows(result.grid, rows)[0] <= ROW_TOLERANCE


def test_the_wiring_check_catches_the_bridges_falcon_40b_qkv_split(families_root):
    """TransformerLens 4.3 splits Falcon-40B's fused QKV as [Q|K|V] where transformers
    groups it per KV head: through the bridge the lens reads another model, silently. The
    wiring check says so; the native path reads it true."""
    folder = build(by_name("Falcon-40B style (new decoder)"), families_root)
    wiring = check_wiring(_through_the_bridge(folder))
    assert not wiring.ok and wiring.max_abs_dp > 0.01
    assert "TransformerLens' bridge" in wiring.sentence and one_sentence(wiring.sentence)
    assert load_checked(str(folder)).wiring.ok


def test_a_failing_wiring_check_is_a_warning_on_stderr_and_in_every_json(families_root, monkeypatch, capsys):
    from lenstui.cli import main

    folder = build(by_name("Falcon-40B style (new decoder)"), families_root)
    monkeypatch.setattr("lenstui.engine.model.load.find_anatomy", lambda hf: None)  # a family it does not know
    assert main(["lens", "hello world", "--model", str(folder), "--json"]) == 0
    out, err = capsys.readouterr()
    wiring = json.loads(out)["wiring"]
    assert wiring["ok"] is False and wiring["max_abs_dp"] > 0.01
    assert f"lenstui: warning: {wiring['sentence']}" in err.splitlines()


def test_every_json_carries_the_wiring_check(families_root, capsys):
    from lenstui.cli import main

    folder = build(by_name("Qwen3"), families_root)
    assert main(["lens", "hello world", "--model", str(folder), "--json"]) == 0
    wiring = json.loads(capsys.readouterr().out)["wiring"]
    assert wiring["ok"] is True and wiring["max_abs_dp"] <= ROW_TOLERANCE and wiring["sentence"]
    assert main(["token", "hello", "--model", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["wiring"]["ok"] is True


# ---------------------------------------------------------------- sentences, not tracebacks


def test_mid_on_a_parallel_family_is_one_sentence_on_the_cli(families_root, capsys):
    from lenstui.cli import main

    folder = build(by_name("GPT-J"), families_root)
    assert main(["lens", "hello world", "--model", str(folder), "--mid"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "parallel" in err[0] and "--component attn" in err[0]


def test_a_bridge_that_will_not_boot_is_a_model_load_error_saying_what_still_works(families_root):
    """TransformerLens 4.3 cannot boot CodeGen (``embed_positions`` moved in transformers
    5): the lens reads it natively; asking for the bridge (attribution) is one sentence."""
    model = load_checked(str(build(by_name("CodeGen"), families_root)))
    assert model.anatomy is not None and model.wiring.ok
    with pytest.raises(ModelLoadError) as caught:
        model.bridge
    assert "CodeGenForCausalLM" in str(caught.value) and "without it" in str(caught.value)
    assert one_sentence(str(caught.value))


def test_an_architecture_the_bridge_does_not_know_names_the_nearest_it_does(families_root):
    model = load_model(str(build(by_name("Phi-MoE"), families_root)))
    with pytest.raises(ModelLoadError) as caught:
        model.bridge
    text = str(caught.value)
    assert "no adapter for PhimoeForCausalLM" in text and "PhiMoEForCausalLM" in text
    assert len(text) < 400 and one_sentence(text)


def test_the_readouts_preparation_through_the_bridge_fails_in_one_sentence(families_root):
    """OPT-350m's ``project_out``: TransformerLens' readout refuses it; natively it is read."""
    from lenstui.engine.lens.readout import unembedding

    folder = build(by_name("OPT-350m style (project_out)"), families_root)
    with pytest.raises(ModelLoadError) as caught:
        unembedding(_through_the_bridge(folder))
    assert "project_out" in str(caught.value) and one_sentence(str(caught.value))
    assert load_model(str(folder)).anatomy.unembed_in is not None


def test_an_unloadable_family_is_a_model_load_error_with_the_nearest_names(families_root):
    with pytest.raises(ModelLoadError) as caught:
        load_checked(str(build(by_name("Gemma 3n (text)"), families_root)))
    assert "Gemma3nForCausalLM" in str(caught.value) and "Gemma3ForCausalLM" in str(caught.value)


# ---------------------------------------------------------------- hybrids, SSMs, multimodal


@pytest.mark.parametrize("name", ["Falcon-H1 (hybrid)", "LFM2 (hybrid)", "Mamba", "Jamba (hybrid MoE)"])
def test_a_recurrent_family_steps_and_edits_its_prompt_as_fresh_runs_do(name, families_root):
    from lenstui.engine.model.generate import greedy_ids

    folder = build(by_name(name), families_root)
    model = load_model(str(folder))
    ids = model.tokenizer(PROMPT)["input_ids"]
    grown = greedy_ids(model, ids[:6], 3)  # the family's own cache, appended to
    assert grown[:6] == ids[:6] and len(grown) == 9
    with torch.no_grad():
        assert grown[6] == int(model.hf(input_ids=torch.tensor([ids[:6]]), use_cache=False).logits[0, -1].argmax())
    for prompt in (ids[:8], ids, ids[:5]):  # grow, then cut back: the state has no prefix to keep
        got = run_lens(model, prompt, LensOptions(top_k=3))
        fresh = run_lens(load_model(str(folder)), prompt, LensOptions(top_k=3))
        assert [[c.top[0].id for c in row] for row in got.grid] == [[c.top[0].id for c in row] for row in fresh.grid]


def test_ssm_and_hybrid_rows_say_what_they_are(families_root):
    mamba = load_model(str(build(by_name("Mamba"), families_root)))
    assert any("has no attention" in note and "SSM" in note for note in mamba.notes)
    lfm2 = load_model(str(build(by_name("LFM2 (hybrid)"), families_root)))
    assert any("hybrid" in note and "short convolution in L0, L2" in note for note in lfm2.notes)
    result = run_lens(lfm2, PROMPT, LensOptions(top_k=3, incl_mid=True))
    assert result.layers[:5] == ["embed", "L0.conv", "L0", "L1.attn", "L1"]
    with pytest.raises(InputError) as caught:
        run_lens(mamba, PROMPT, LensOptions(incl_mid=True))
    assert "single sublayer" in str(caught.value)


def test_a_multimodal_checkpoint_reads_its_text_stack_and_says_so_once(families_root):
    model = load_model(str(build(by_name("Gemma 3 (multimodal checkpoint)"), families_root)))
    assert type(model.hf).__name__ == "Gemma3ForConditionalGeneration"
    assert model.n_layers == 3 and model.d_model == 32
    assert [note for note in model.notes if "multimodal" in note] == [
        "Gemma3ForConditionalGeneration is multimodal: the lens reads its language model from a text prompt "
        "(images are not read)."
    ]


def test_patching_runs_natively_on_the_sites_the_anatomy_names(families_root):
    """A family that used to need the bridge (Gemma 2: offset norms, a soft-cap) patches its
    attention output natively, and the patched run is the bridge's."""
    from lenstui.engine.model.forward import BridgeForward, NativeForward, Site, forward_for

    folder = build(by_name("Gemma 2 (soft-capped)"), families_root)
    model = load_model(str(folder))
    site, final = Site("attn", 1), Site("resid", model.n_layers - 1)
    assert isinstance(forward_for(model, [site, Site("head", 1), Site("mlp", 0)]), NativeForward)

    def edit(x):
        return x * 0.5 + 0.25

    tokens = torch.tensor([model.tokenizer(PROMPT)["input_ids"][:8]])
    got = NativeForward(model).run(tokens, edits=[(site, edit)], reads=[final]).values[final]
    want = BridgeForward(model).run(tokens, edits=[(site, edit)], reads=[final]).values[final]
    assert (got - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())
