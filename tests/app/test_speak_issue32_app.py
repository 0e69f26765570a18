"""The app's side of under-trained tokens and the share of directions, driven with the Pilot
on the tiny random Llama (tied embeddings, a byte-level tokenizer with every byte, so the
reference set exists): the palette's under-trained run marks the grid (‡) and fills the
speakability pane's line, the inspector's class line says under-trained / fine, its aim line
gets the share on S, and the share-vs-theta view opens over a measured sample."""

from __future__ import annotations

import asyncio

import pytest

from lenstui.core.share_result import share_words


@pytest.fixture(scope="module")
def long_tiny():
    """The tiny Llama with 512 positions: room for Magikarp's repetition prompts."""
    from testkit.models import tiny_llama

    return tiny_llama(context=512, name="tiny-llama-512")


@pytest.fixture
def make_long_app(long_tiny):
    from testkit.apphelpers import RecordingApp

    return lambda prompt="": RecordingApp(prompt, loader=lambda spec, **kw: long_tiny)


def speak_text(inspector) -> str:
    """The inspector's class and aim rows as one string (the view wraps them to its width)."""
    return " ".join(f"{label}: {value}" for label, value, _ in inspector.query_one("#inspector-speak").rows)


async def _settle(app, pilot):
    await app.model_settled.wait()
    await app.lens_settled.wait()
    await pilot.press("escape")
    await pilot.pause()


async def _until(pilot, condition, timeout: float = 240.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        assert loop.time() < end, "the worker did not answer in time"
        await pilot.pause(0.1)


async def test_undertrained_run_marks_tokens_and_the_inspector_classes_them(make_long_app, long_tiny):
    from lenstui.engine.speak.undertrained import find_undertrained

    expected = find_undertrained(long_tiny, cache=False)
    assert expected.candidates, "the tiny model should have candidates"
    app = make_long_app("hello world, hello tokens")
    async with app.run_test(size=(120, 40)) as pilot:
        await _settle(app, pilot)
        pane = app.speak_pane
        pane.find_undertrained()
        await _until(pilot, lambda: pane.undertrained is not None)
        marks = pane.undertrained
        assert marks.verified == expected.verified_ids
        assert marks.candidates == frozenset(expected.candidates)
        line = str(pane.query_one("#speak-undertrained").render())
        assert f"{len(expected.verified_ids):,} verified of {len(expected.candidates):,} candidates" in line
        assert app.grid._undertrained == expected.verified_ids
        # The inspector: a verified token says so, with its probability; a rejected one is fine.
        inspector = app.inspector_pane
        verified = sorted(expected.verified_ids)
        rejected = [i for i in expected.candidates if i not in expected.verified_ids]
        if verified:
            inspector.inspect(verified[0])
            await _until(pilot, lambda: inspector.report is not None and inspector.report.id == verified[0])
            text = speak_text(inspector)
            prob = expected.verifications[verified[0]].max_prob
            assert f"under-trained (verified: max prob {prob:.1e}" in text
        if rejected:
            inspector.inspect(rejected[0])
            await _until(pilot, lambda: inspector.report is not None and inspector.report.id == rejected[0])
            text = speak_text(inspector)
            assert "fine" in text and "rejected" in text


async def test_inspector_share_on_S_and_the_share_view(make_tiny_app, tiny_llama):
    from lenstui.engine.speak.share import estimate_share
    from lenstui.tui.screens.share import ShareVsTheta

    app = make_tiny_app("hello world, hello tokens")
    async with app.run_test(size=(120, 40)) as pilot:
        await _settle(app, pilot)
        inspector = app.inspector_pane
        inspector.inspect(42)
        await _until(pilot, lambda: inspector.report is not None and inspector.report.id == 42)
        assert speak_text(inspector) == ""  # no scan, no run, no share yet: nothing to say
        inspector.focus()
        await pilot.press("S")
        await _until(pilot, lambda: not isinstance(inspector._share_state().get(42, ""), str))
        reply = inspector._share_state()[42]
        direct = estimate_share(tiny_llama, 42, samples=128, seed=0)
        assert reply.share["log10"] == pytest.approx(direct.log10)  # same seed, same answer
        assert share_words(reply.share) in speak_text(inspector)
        # The share-vs-theta view: measured once through the worker, then drawn.
        from lenstui.tui.state.speakability import open_share_plot

        open_share_plot(app)
        await _until(pilot, lambda: isinstance(app.screen, ShareVsTheta), timeout=400)
        await pilot.pause()
        screen = app.screen
        await _until(pilot, lambda: "interval" in screen.drawn)
        points = screen.sample.points
        assert len(points) >= 30  # a few may be unspeakable (no point on a log scale)
        assert screen.drawn["interval"] == 2 * len(points)
        assert all(p.log10_lo <= p.log10 <= p.log10_hi for p in points)
        assert all(p.log10_cap is None or p.log10 >= p.log10_cap for p in points)
        await pilot.press("c")
        assert screen.drawn.get("cap") == len([p for p in points if p.log10_cap is not None])
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, ShareVsTheta)
