"""Capture the screenshot the README and the docs' home page show: the real explorer on the
embedded SmolLM2-135M-Instruct, driven by Textual's Pilot, saved with Textual's own SVG export
(``App.save_screenshot``).

Run from the repository root after a UI change worth showing:

    HF_HUB_OFFLINE=1 .venv/bin/python docs/tools/capture_screenshot.py

It writes docs/images/explorer.svg (120x40, the plasma prompt, the cursor on the second
" say" at the last layer, where " plasma" is predicted). The user's own config, history and
scans are kept out (temporary LENSTUI_* dirs), so the picture is the same on every machine.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "images" / "explorer.svg"
PLASMA = "Sometimes, when people say plasma, they mean a state of matter. Other times, when people say plasma"
SIZE = (120, 40)


async def capture() -> None:
    from lenstui.engine.model.load import load_model
    from lenstui.tui.app import LenstuiApp
    from lenstui.tui.widgets.grid import LensGrid

    model = load_model()
    app = LenstuiApp(PLASMA, loader=lambda spec, **kw: model, show_timings=False)
    async with app.run_test(size=SIZE) as pilot:
        app.prompt_pane.input.cursor_blink = False
        await app.model_settled.wait()
        await app.lens_settled.wait()
        grid = app.query_one(LensGrid)
        grid.focus()
        await pilot.press("G")  # the last layer
        await pilot.press("left")  # the second " say": the cell that predicts " plasma"
        # The panes ask the worker about the token under the cursor: wait for their answers.
        for _ in range(3):
            await pilot.pause()
            while app.worker.busy_kinds():
                await pilot.pause(0.05)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        app.save_screenshot(filename=OUT.name, path=str(OUT.parent))
        app.exit()
    print(f"wrote {OUT}")


def main() -> int:
    with tempfile.TemporaryDirectory() as home:
        for name in ("LENSTUI_CONFIG_DIR", "LENSTUI_DATA_DIR", "LENSTUI_LENS_DIR"):
            os.environ[name] = str(Path(home) / name.lower())
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        asyncio.run(capture())
    return 0


if __name__ == "__main__":
    sys.exit(main())
