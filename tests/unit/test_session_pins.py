"""LensSession's pins, without a screen or a model: what RunLens carries and when."""

from __future__ import annotations

from lenstui.tui.screens.pin_prompt import typed_pin
from lenstui.tui.state.session import MAX_PINS, LensSession


def test_pins_go_into_the_request_in_order():
    session = LensSession(prompt_text="hello")
    assert session.request().options.track == ()
    session.pin(42)
    session.pin(" sea")
    assert session.request().options.track == (42, " sea")
    assert "already" in session.pin(42) and session.pins == [42, " sea"]


def test_limit_toggle_and_unpin_all():
    session = LensSession(prompt_text="hello")
    for token_id in range(MAX_PINS):
        session.pin(token_id)
    assert "At most" in session.pin(99) and 99 not in session.pins
    assert "Unpinned" in session.toggle_pin(3) and 3 not in session.pins
    assert "Pinned" in session.toggle_pin(3) and session.pins[-1] == 3
    assert session.unpin_all() == MAX_PINS and session.request().options.track == ()


def test_a_failed_run_drops_the_typed_pin_that_caused_it():
    session = LensSession(prompt_text="hello")
    session.pin(7)
    session.pin("two tokens")
    session.submitted(session.request())
    assert session.failed() == "two tokens"
    assert session.pins == [7] and not session.last_failed
    # a failure with no typed pin pending keeps the pins
    session.submitted(session.request())
    assert session.failed() is None and session.pins == [7] and session.last_failed


def test_resolved_pins_become_ids_without_a_rerun():
    session = LensSession(prompt_text="hello")
    session.pin(" sea")
    session.pin(5)
    request = session.request()
    session.submitted(request)
    session.pins_resolved(request, [1234, 5])
    assert session.pins == [1234, 5]
    assert not session.wants_run(session.request())  # the id form counts as already asked


def test_typed_pin_forms():
    assert typed_pin("#15107") == 15107
    assert typed_pin(" sea") == " sea"  # the leading space is part of the token
    assert typed_pin("ĠðŁ") == "ĠðŁ"
    assert typed_pin("   ") is None
