"""Attribution requests from the grid without a model: which engine row a grid row is, and
which cells can be attributed (one sentence for those that cannot)."""

from __future__ import annotations

import dataclasses

import pytest

from lenstui.core.errors import InputError
from lenstui.jobs.protocol import AttributeCell
from lenstui.tui.screens.attribution import attribution_request, lens_row_index


def test_row_labels_map_to_engine_rows():
    assert [lens_row_index(label) for label in ("embed", "L0", "L29", "L3.attn")] == [0, 1, 30, None]


def test_bad_cells_raise_input_error_without_a_model():
    from lenstui.core.lens_result import LensResult
    from lenstui.core.tokens import TokenRef
    from lenstui.tui.widgets.grid import GridCell

    tokens = [TokenRef(1, "a", "a"), TokenRef(2, " b", "Ġb")]
    result = LensResult("m", "extended", tokens, ["embed", "L0"], [[], []], tokens)
    cell = GridCell("L0", 1, 1, 0, 7, " c", "Ġc", 0.5)
    with pytest.raises(InputError, match="extended lens"):
        attribution_request(result, cell)
    result = dataclasses.replace(result, lens="logit")
    request, label = attribution_request(result, cell)
    assert request == AttributeCell((1, 2), 1, 1, 7, None, 8)
    assert label == "␣c at ␣b@1 · L0"
    with pytest.raises(InputError, match="both ␣c"):
        attribution_request(result, cell, contrast=(7, " c"))
