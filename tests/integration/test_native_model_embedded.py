"""The plain transformers model reads what TransformerLens' bridge reads, on the embedded
model: its parts, its residual stack, every intervention site and a run from a block, held
to the bridge's own hook points (the checks: testkit/checks.py)."""

from __future__ import annotations

from testkit.checks import (
    assert_a_run_from_a_block_skips_the_blocks_below_and_agrees,
    assert_anatomy_is_the_bridges,
    assert_every_site_reads_and_writes_as_the_bridge_does,
    assert_plain_forward_captures_the_bridges_hook_points,
)

PROMPT = "The Eiffel Tower is located in the city of Paris, hello world"


def test_the_anatomy_is_the_bridges_model(embedded):
    assert_anatomy_is_the_bridges(embedded)


def test_the_plain_forward_captures_the_bridges_hook_points(embedded):
    assert_plain_forward_captures_the_bridges_hook_points(embedded, PROMPT)


def test_every_site_reads_and_writes_as_the_bridge_does(embedded):
    assert_every_site_reads_and_writes_as_the_bridge_does(embedded, PROMPT)


def test_a_run_from_a_block_skips_the_blocks_below_and_agrees_with_running_them(embedded):
    assert_a_run_from_a_block_skips_the_blocks_below_and_agrees(embedded, PROMPT)
