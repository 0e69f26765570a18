"""The plain transformers model reads what TransformerLens' bridge reads, on the embedded
model: its parts and its residual stack held to the bridge's own hook points."""

from __future__ import annotations

from testkit.checks import assert_anatomy_is_the_bridges, assert_plain_forward_captures_the_bridges_hook_points

PROMPT = "The Eiffel Tower is located in the city of Paris, hello world"


def test_the_anatomy_is_the_bridges_model(embedded):
    assert_anatomy_is_the_bridges(embedded)


def test_the_plain_forward_captures_the_bridges_hook_points(embedded):
    assert_plain_forward_captures_the_bridges_hook_points(embedded, PROMPT)
