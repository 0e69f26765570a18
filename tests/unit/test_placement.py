"""Models of any size: the memory plan before a load, accelerate's device maps and disk
offload, bitsandbytes' quantized weights, and every feature on a model placed that way.

The offloaded model is a real random Llama saved to a folder and loaded with a CPU budget
smaller than its blocks (``--max-memory cpu=... --offload-dir``): accelerate reads those
blocks from the offload folder at every forward. It is held to the same model loaded
whole in memory (the reference), feature by feature.
"""

from __future__ import annotations

import json

import pytest
import torch

from lenstui.core.errors import InputError, ModelLoadError
from lenstui.core.lenses import LensOptions
from lenstui.core.patch_result import PatchSite
from lenstui.core.placement import (
    PlacementOptions,
    describe_placement,
    parse_device_map,
    parse_max_memory,
    short_placement,
)
from lenstui.engine.model.load import load_model
from lenstui.engine.model.load import plan_model as plan_load
from lenstui.engine.model.plan import READOUT_BLOCK, plan_for_config
from testkit.saved_models import assert_same_grid, saved_llama

PROMPT = "The Eiffel Tower is located in the city of"


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return saved_llama(tmp_path_factory.mktemp("llama") / "random-llama", hidden=64, layers=4, intermediate=128)


@pytest.fixture(scope="module")
def whole(llama_dir):
    return load_model(str(llama_dir), device="cpu")


@pytest.fixture(scope="module")
def offloaded(llama_dir, tmp_path_factory):
    # The embedding (386 x 64 float32: 99 KB), the final norm and the unembedding (tied
    # to the embedding) stay in memory; the blocks (147 KB each) do not fit what is left of
    # the 150 KB budget and go to the offload folder.
    folder = tmp_path_factory.mktemp("offload")
    return load_model(
        str(llama_dir), placement=PlacementOptions(max_memory="cpu=150KB", offload_dir=str(folder))
    )


# ---------------------------------------------------------------- the options


def test_budgets_and_maps_parse_as_accelerate_names_them(tmp_path):
    assert parse_max_memory("0=70GiB, 1=70GiB,cpu=200GiB") == {0: 70 * 2**30, 1: 70 * 2**30, "cpu": 200 * 2**30}
    assert parse_max_memory("cuda:1=1.5GB,disk=1TB") == {1: 1_500_000_000, "disk": 10**12}
    assert parse_device_map("balanced") == "balanced"
    assert parse_device_map('{"model.embed_tokens": 0, "lm_head": "cuda:1", "model.layers": "disk"}') == {
        "model.embed_tokens": 0, "lm_head": 1, "model.layers": "disk"
    }
    saved = tmp_path / "map.json"
    saved.write_text(json.dumps({"": "cpu"}))
    assert parse_device_map(str(saved)) == {"": "cpu"}


@pytest.mark.parametrize(
    "options, fragment",
    [
        (PlacementOptions(max_memory="0=70GiB,cpu"), "has no '='"),
        (PlacementOptions(max_memory="0=seventy"), "is not a memory size"),
        (PlacementOptions(max_memory="gpu0=1GB"), "Unknown device 'gpu0'"),
        (PlacementOptions(device_map="everywhere"), "is neither auto, balanced"),
        (PlacementOptions(device_map='{"lm_head": 0'), "is not JSON"),
        (PlacementOptions(device_map="[1, 2]"), "is neither"),
        (PlacementOptions(quantize="3bit"), "choose 8bit or 4bit"),
    ],
)
def test_bad_placement_options_are_one_sentence_before_any_load(options, fragment, llama_dir):
    with pytest.raises(ModelLoadError) as err:
        load_model(str(llama_dir), placement=options)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_placements_read_in_one_line():
    spread = {"model.embed_tokens": 0, **{f"model.layers.{i}": 0 for i in range(40)},
              **{f"model.layers.{i}": 1 for i in range(40, 80)}, "model.norm": 1, "lm_head": 1}
    assert describe_placement(spread) == "cuda:0 embed L0-39 · cuda:1 L40-79 norm unembed"
    assert short_placement(spread) == "cuda:0 L0-39 · cuda:1 L40-79"
    assert describe_placement({"": "cpu"}) == "cpu"
    assert short_placement({"lm_head": "cpu", "model.layers.0": "disk", "model.layers.2": "disk"}) == "cpu · disk L0,2"


# ---------------------------------------------------------------- the plan


@pytest.mark.parametrize("tied", [True, False])
def test_the_plans_count_and_bytes_are_the_loaded_models(tmp_path, tied):
    folder = saved_llama(tmp_path / "m", hidden=64, layers=2, tied=tied)
    plan = plan_load(str(folder), device="cpu")
    model = load_model(str(folder), device="cpu")
    assert plan.params == sum(p.numel() for p in model.hf.parameters())
    # transformers' own measure of what the loaded model holds (parameters and buffers)
    resident = model.hf.get_memory_footprint()
    assert abs(plan.bytes - resident) <= 0.10 * resident
    assert plan.fits and plan.dtype == "float32" and plan.placement == {"": "cpu"}


def test_the_plan_reads_no_weights(tmp_path):
    folder = saved_llama(tmp_path / "m", hidden=64, layers=2)
    (folder / "model.safetensors").write_bytes(b"not weights")  # a plan that read them would fail
    assert plan_load(str(folder), device="cpu").fits


def test_a_model_too_big_for_the_device_is_refused_naming_the_options(llama_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(llama_dir)
    plan = plan_for_config(config, name="random-llama", device="cpu", free={"cpu": 50_000})
    assert not plan.fits
    assert plan.sentence.startswith("random-llama needs ")
    assert "but it has 49 KiB free" in plan.sentence
    assert "--device-map auto --offload-dir PATH" in plan.sentence
    assert plan.to_json()["fits"] is False


def test_a_gpu_plan_uses_the_models_own_dtype_and_offers_4bit(llama_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(llama_dir)
    config.dtype = "bfloat16"
    # Two 40 KB GPUs and a CPU: planned as from_pretrained plans it (no GPU needs to exist).
    plan = plan_for_config(config, name="m", placement=PlacementOptions(device_map="balanced"),
                           free={0: 10**9, 1: 10**9, "cpu": 10**9})
    assert plan.dtype == "bfloat16"
    assert set(plan.placement.values()) <= {"cuda:0", "cuda:1"}
    assert plan.placement["model.embed_tokens"] == "cuda:0"
    too_small = plan_for_config(config, name="m", device="cpu", dtype="auto", free={"cpu": 10})
    assert too_small.dtype == "float32"  # on a CPU: float32 whatever the checkpoint says


def test_blocks_that_fit_nowhere_need_an_offload_folder(llama_dir):
    with pytest.raises(ModelLoadError) as err:
        load_model(str(llama_dir), placement=PlacementOptions(max_memory="cpu=150KB"))
    assert "fit on no device: pass --offload-dir PATH" in str(err.value)


def test_the_lens_anchors_stay_in_memory_under_any_budget(offloaded):
    placement = offloaded.placement
    for module in ("model.embed_tokens", "model.norm", "lm_head"):
        assert placement[module] == "cpu"
    assert {placement[f"model.layers.{i}"] for i in range(4)} == {"disk"}
    assert offloaded.dispatched and offloaded.output_device == torch.device("cpu")
    assert offloaded.placement_summary == "cpu embed norm unembed · disk L0-3"


def test_a_map_that_offloads_the_unembedding_is_refused(llama_dir, tmp_path):
    layers = {f"model.layers.{i}": "cpu" for i in range(4)}
    device_map = {"model.embed_tokens": "cpu", **layers, "model.norm": "cpu", "model.rotary_emb": "cpu",
                  "lm_head": "disk"}
    with pytest.raises(ModelLoadError) as err:
        load_model(str(llama_dir), placement=PlacementOptions(device_map=json.dumps(device_map),
                                                              offload_dir=str(tmp_path)))
    assert "puts lm_head on an offload device" in str(err.value)


# ---------------------------------------------------------------- features on the offloaded model


def test_the_offloaded_lens_is_the_in_memory_lens(whole, offloaded):
    from lenstui.engine.lens.run import run_lens

    options = LensOptions(top_k=5, incl_mid=True)
    assert_same_grid(run_lens(offloaded, PROMPT, options), run_lens(whole, PROMPT, options))
    extended = LensOptions(top_k=5, lens="extended", extended_blocks=1)
    assert_same_grid(run_lens(offloaded, PROMPT, extended), run_lens(whole, PROMPT, extended))


def test_a_generation_step_on_the_offloaded_model(whole, offloaded):
    from lenstui.engine.lens.state import LensState
    from lenstui.engine.model.generate import greedy_ids
    from lenstui.engine.model.vocab import encode_prompt

    ids = encode_prompt(whole, PROMPT)
    longer = greedy_ids(offloaded, ids, 2)
    assert longer == greedy_ids(whole, ids, 2)
    state_a, state_b = LensState(whole), LensState(offloaded)
    for state in (state_a, state_b):
        state.prepare(ids, LensOptions(top_k=5))
        state.result()
        state.prepare(longer, LensOptions(top_k=5))
    assert state_b.forward_count == 2  # the step ran the new positions only, over the KV cache
    assert_same_grid(state_b.result(), state_a.result())


def test_patching_and_steering_the_offloaded_model(whole, offloaded):
    from lenstui.core.patch_result import SteerSetting
    from lenstui.engine.causal.patch import patch
    from lenstui.engine.causal.steer import steer

    site = PatchSite(layer=1, position=-1)
    a = patch(whole, PROMPT, site, source_prompt="Sometimes, when people say plasma")
    b = patch(offloaded, PROMPT, site, source_prompt="Sometimes, when people say plasma")
    assert_same_grid(b.patched, a.patched)
    assert max(abs(x - y) for ra, rb in zip(a.kl, b.kl) for x, y in zip(ra, rb)) <= 1e-5
    setting = SteerSetting(layer=1, toward=" Paris", alpha=4.0)
    assert_same_grid(steer(offloaded, PROMPT, setting, steps=1).steered, steer(whole, PROMPT, setting, steps=1).steered)


def test_attribution_runs_through_the_bridge_on_the_offloaded_model(whole, offloaded):
    from lenstui.engine.attribution import attribute

    a = attribute(whole, PROMPT, layer=3)
    b = attribute(offloaded, PROMPT, layer=3)
    assert b.token.id == a.token.id
    assert b.total == pytest.approx(a.total, abs=1e-4)
    for x, y in zip(a.components, b.components):
        assert (x.name, x.kind) == (y.name, y.kind) and y.contribution == pytest.approx(x.contribution, abs=1e-4)
    assert [h.contribution for h in b.heads] == pytest.approx([h.contribution for h in a.heads], abs=1e-4)
    # the weights read outside a forward were loaded for the read and offloaded again
    o_proj = offloaded.hf.model.layers[0].self_attn.o_proj
    assert o_proj.weight.device.type == "meta"


def test_speakability_reads_the_resident_unembedding(whole, offloaded):
    from lenstui.engine.speak.geometry import readout_for_model

    a, b = readout_for_model(whole), readout_for_model(offloaded)
    assert torch.equal(a.V, b.V) and b.V.dtype == torch.float64


# ---------------------------------------------------------------- quantized weights


def _bnb_available() -> bool:
    from lenstui.engine.model.plan import bitsandbytes_problem

    return bitsandbytes_problem() is None


@pytest.mark.skipif(not _bnb_available(), reason="bitsandbytes has no backend here")
@pytest.mark.parametrize("quantize", ["8bit", "4bit"])
def test_a_quantized_models_last_lens_row_is_its_own_logits(tmp_path, quantize):
    from lenstui.engine.lens.run import run_lens
    from lenstui.engine.model.vocab import encode_prompt

    # bitsandbytes' CPU 4-bit kernels need rows of at least 64 features (its block size).
    folder = saved_llama(tmp_path / "m", hidden=128, intermediate=256, layers=2)
    model = load_model(str(folder), placement=PlacementOptions(quantize=quantize))
    assert model.quantize == quantize
    assert any("stay unquantized" in note for note in model.notes)
    assert model.hf.lm_head.weight.dtype == torch.float32  # the unembedding is read unquantized
    ids = encode_prompt(model, PROMPT)
    result = run_lens(model, ids, LensOptions(top_k=5))
    with torch.no_grad():
        logits = model.hf(torch.tensor([ids])).logits[0].double()
    probs = torch.softmax(logits, dim=-1)
    last = result.grid[-1]
    for position, cell in enumerate(last):
        assert [t.id for t in cell.top] == probs[position].topk(5).indices.tolist()
        assert [t.prob for t in cell.top] == pytest.approx(probs[position].topk(5).values.tolist(), abs=1e-5)


@pytest.mark.skipif(not _bnb_available(), reason="bitsandbytes has no backend here")
def test_the_bridge_refuses_a_quantized_model_in_one_sentence(tmp_path):
    from lenstui.engine.attribution import attribute

    folder = saved_llama(tmp_path / "m", hidden=128, intermediate=256, layers=2)
    model = load_model(str(folder), placement=PlacementOptions(quantize="8bit"))
    with pytest.raises(InputError) as err:
        attribute(model, PROMPT)
    assert "8bit layers cannot be copied that way: open it without --quantize" in str(err.value)


def test_quantize_without_bitsandbytes_is_a_sentence(monkeypatch, llama_dir):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ModelLoadError) as err:
        load_model(str(llama_dir), placement=PlacementOptions(quantize="4bit"))
    assert str(err.value).startswith("--quantize needs bitsandbytes, which is not installed: `pip install bitsandbytes`")


def test_a_checkpoint_quantized_with_a_missing_package_names_it(tmp_path):
    folder = saved_llama(tmp_path / "m", hidden=64, layers=2)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as err:
        load_model(str(folder), device="cpu")
    message = str(err.value)
    assert message.startswith("m arrives quantized with awq, which ")
    assert "\n" not in message


def test_the_plans_readout_block_is_the_readouts():
    from lenstui.engine.lens.readout import DEFAULT_BLOCK

    assert READOUT_BLOCK == DEFAULT_BLOCK


def test_an_untied_models_three_anchors_all_stay_when_the_budget_holds_only_them(tmp_path):
    from transformers import AutoConfig

    folder = saved_llama(tmp_path / "m", hidden=64, layers=3, tied=False)
    config = AutoConfig.from_pretrained(folder)
    anchors = 2 * config.vocab_size * 64 * 4 + 64 * 4  # embedding, unembedding, final norm (float32)
    plan = plan_for_config(config, name="m", placement=PlacementOptions(max_memory=f"cpu={anchors + 1024}B",
                                                                         offload_dir=str(tmp_path / "off")))
    assert [plan.placement[m] for m in ("model.embed_tokens", "model.norm", "lm_head")] == ["cpu"] * 3
    assert {plan.placement[f"model.layers.{i}"] for i in range(3)} == {"disk"}


def test_the_picker_takes_placement_flags_after_a_typed_spec():
    from lenstui.tui.commands import split_placement, typed_spec

    spec, flags = split_placement(typed_spec(
        "model: open meta-llama/Llama-3.3-70B-Instruct --device-map auto --max-memory=0=70GiB,1=70GiB --quantize 4bit"
    ))
    assert spec == "meta-llama/Llama-3.3-70B-Instruct"
    assert flags == {"device_map": "auto", "max_memory": "0=70GiB,1=70GiB", "quantize": "4bit"}
    assert split_placement("~/models/m.gguf") == ("~/models/m.gguf", {})


def test_the_status_line_says_where_the_model_is(offloaded):
    from lenstui.jobs.handlers import model_info
    from lenstui.tui.widgets.status import where_loaded

    info = model_info(offloaded)
    assert info.placement_summary == "cpu embed norm unembed · disk L0-3"
    assert where_loaded(info) == "cpu · disk L0-3"
    assert dict(info.placement)["lm_head"] == "cpu"



@pytest.mark.skipif(not _bnb_available(), reason="bitsandbytes has no backend here")
def test_quantized_blocks_are_not_offloaded(llama_dir, tmp_path):
    with pytest.raises(ModelLoadError) as err:
        load_model(str(llama_dir), placement=PlacementOptions(quantize="8bit", max_memory="cpu=150KB",
                                                              offload_dir=str(tmp_path)))
    assert str(err.value).startswith("--quantize keeps every quantized block on its device (bitsandbytes does not "
                                     "offload them to disk)")
