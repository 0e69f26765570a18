"""The explorer on a model opened with --remote (Pilot): the status line says where the
model runs, the grid arrives from the NDIF-protocol server on loopback
(``testkit/ndif_server.py``, not NDIF), and Esc stops waiting for a request NDIF is
holding (its answer dropped, the session and the last grid kept)."""

from __future__ import annotations

import pytest
from testkit.apphelpers import RecordingApp, settle, until

from lenstui.engine.backends.nnsight.model import open_remote
from lenstui.engine.backends.nnsight.transport import Transport
from lenstui.jobs.protocol import RunLens
from testkit.hub_cache import tiny_hub_cache, use_hub_cache
from testkit.ndif_server import LoopbackNdif

REPO = "lenstui-test/tiny-llama"
KEY = "0b6f7d3e-2c41-4a8e-9f15-3d7e6a2b9c04"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    return tiny_hub_cache(tmp_path_factory.mktemp("hub"), REPO)


@pytest.fixture(scope="module")
def server(hub):
    running = LoopbackNdif.from_hub_cache(hub, REPO, KEY).start()
    yield running
    running.stop()


async def test_the_status_line_the_grid_and_esc(hub, server, monkeypatch):
    use_hub_cache(monkeypatch, hub)
    model = open_remote(REPO, Transport.ndif(server.url, KEY))
    app = RecordingApp("The Eiffel Tower is in", loader=lambda spec, **kw: model, show_timings=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        status = str(app.status.render())
        assert f"nnsight · NDIF 127.0.0.1:{server.port}" in status
        assert app.shown_result is not None and app.shown_result.complete
        assert any("stays on NDIF" in text for text in app.notice_texts)  # what it cannot do there
        shown = app.shown_result
        server.delay_s = 30.0  # NDIF holds the next request in its queue
        try:
            app.session.set_text("The Eiffel Tower is located in")
            app.rerun_lens()
            await until(pilot, lambda: RunLens in app.worker.busy_kinds(), "the request to be under way")
            await pilot.press("escape")
            await until(pilot, lambda: RunLens not in app.worker.busy_kinds(), "the request to stop")
        finally:
            server.delay_s = 0.0
        assert any("Stopped waiting for NDIF" in text for text in app.notice_texts)
        assert app.shown_result is shown  # the last grid stays
