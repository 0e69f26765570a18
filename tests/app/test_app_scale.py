"""The explorer at the seahorse model's scale: 80 blocks (81 rows) and Llama 3's 128,256-token
vocabulary, as a person reads them (random weights, 64 features: the shape is what the views
must carry, not the size), and a generation step on a model whose blocks are read from disk."""

from __future__ import annotations

import pytest
import torch

from testkit.apphelpers import RecordingApp, grid_lines, settle
from lenstui.tui.widgets.grid import LensGrid

PROMPT = "The Eiffel Tower is located in the city of"


@pytest.fixture(scope="module")
def llama80():
    from transformers import LlamaConfig, LlamaForCausalLM

    from lenstui.engine.model.load import wrap_model
    from testkit.models import tiny_tokenizer

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128256, hidden_size=64, intermediate_size=128, num_hidden_layers=80,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, initializer_range=0.2, bos_token_id=0, eos_token_id=0)
    return wrap_model(LlamaForCausalLM(config).eval(), tiny_tokenizer(), name="llama80", device="cpu")


async def test_eighty_blocks_and_a_128k_vocabulary_read_like_thirty(llama80):
    app = RecordingApp(PROMPT, loader=lambda spec, **kw: llama80)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        grid = app.query_one(LensGrid)
        await pilot.press("escape")  # from the prompt to the grid
        assert len(app.shown_result.layers) == 81 and app.shown_result.layers[-1] == "L79"
        # The cursor starts on the last row; typing a block's number jumps there.
        assert grid.current_cell.layer == "L79"
        for keys, row in ((("5", "2"), "L52"), (("0",), "L0"), (("8", "5"), "L5"), (("7", "9"), "L79")):
            await pilot.pause(1.6)  # a new number (the last one's digits have timed out)
            for key in keys:
                await pilot.press(key)
            assert grid.current_cell.layer == row, keys
        await pilot.press("5", "2")
        lines = grid_lines(app)
        labels = [line.split(" ", 1)[0] for line in lines]
        assert "L52" in labels and "depth" in labels  # the row in view, under the depth row
        assert all(len(label) <= 5 for label in labels if label)  # "L79" labels stay narrow
        # The top-k view over the 128k vocabulary: ranks as columns, the cursor's row drawn.
        await pilot.press("v")
        await pilot.pause()
        assert grid.view == "topk" and grid.current_cell.layer == "L52"
        assert any(line.startswith("L52") for line in grid_lines(app))
        cells = app.shown_result.grid[app.shown_result.layers.index("L52")]
        assert all(len(cell.top) == 10 and all(0 <= t.id < 128256 for t in cell.top) for cell in cells)
        await pilot.press("right")
        assert grid.current_cell.rank == 1 and grid.current_cell.token_id == cells[grid.current_cell.position].top[1].id


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory):
    """(the random Llama whole in memory, the same with its blocks read from disk)."""
    from lenstui.core.placement import PlacementOptions
    from lenstui.engine.model.load import load_model
    from testkit.saved_models import saved_llama

    folder = saved_llama(tmp_path_factory.mktemp("llama") / "random-llama", hidden=64, layers=4)
    offload = tmp_path_factory.mktemp("offload")
    whole = load_model(str(folder), device="cpu")
    return whole, load_model(str(folder), placement=PlacementOptions(max_memory="cpu=150KB", offload_dir=str(offload)))


async def test_a_generation_step_in_the_app_on_a_model_read_from_disk(on_disk):
    from lenstui.core.lenses import LensOptions
    from lenstui.engine.lens.run import run_lens
    from testkit.saved_models import assert_same_grid

    whole, offloaded = on_disk
    app = RecordingApp(PROMPT, loader=lambda spec, **kw: offloaded)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        assert "disk L0-3" in str(app.query_one("#status").render())
        await pilot.press("ctrl+n")
        await settle(app, pilot)
        shown = app.shown_result
    ids = [t.id for t in shown.tokens]
    assert len(ids) == len(run_lens(whole, PROMPT, LensOptions()).tokens) + 1
    assert_same_grid(shown, run_lens(whole, ids, LensOptions(top_k=shown.top_k)))
