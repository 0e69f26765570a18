"""The explorer when its model cannot load: the real loader fails fast, the user is told, and the
app stays usable."""

from __future__ import annotations

import asyncio


from testkit.apphelpers import SETTLE_TIMEOUT, RecordingApp, settle


async def test_a_failing_model_leaves_the_app_usable():
    app = RecordingApp("", model="/no/such.gguf")  # the real loader: fails fast
    async with app.run_test(size=(80, 24)) as pilot:
        await asyncio.wait_for(app.model_settled.wait(), SETTLE_TIMEOUT)
        assert any(sev == "error" and "No GGUF file" in msg for sev, msg in app.notices)
        assert "not loaded: No GGUF file" in str(app.status.render())
        await pilot.press(*"hello", "enter")
        await settle(app, pilot)
        assert any("No model is loaded" in msg for _, msg in app.notices)
        await pilot.press("f3", "escape", "v", "f1")  # still responsive
        await pilot.pause()
        assert app.screen.query("HelpPanel")
        assert app.worker.alive
