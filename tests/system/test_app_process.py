"""The explorer with its model in a child process, as ``lenstui`` runs it: the grid comes
from the child, the UI's process never imports torch, and a child killed mid-run becomes
a notice, a new child, the model loaded again and the lens run again with the prompt kept.

Each test runs the app in a fresh Python (``sys.modules`` tells what the UI imported; this
test process has torch already)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # the embedded model, loaded in the child

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 400

SCRIPT_HEAD = """
import asyncio, json, os, signal, sys
from testkit.apphelpers import RecordingApp, settle, until

async def main():
    app = RecordingApp("The Eiffel Tower is located in the city of")
    assert not app.in_process
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
"""


def _run(body: str, tmp_path) -> dict:
    script = SCRIPT_HEAD + textwrap.indent(textwrap.dedent(body), " " * 8)
    script += "\nasyncio.run(main())\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "XDG_STATE_HOME": str(tmp_path / "state")}
    env.pop("LENSTUI_IN_PROCESS", None)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_explorer_reads_its_grid_from_the_models_process_without_torch(tmp_path):
    facts = _run(
        """
        result = app.shown_result
        top = result.grid[-1][-1].top[0].text
        await pilot.press("ctrl+n")  # a generation step, across the pipe
        await settle(app, pilot)
        print(json.dumps({
            "top": top, "rows": len(result.grid), "tokens_after_step": len(app.shown_result.tokens),
            "tokens_before": len(result.tokens), "torch": "torch" in sys.modules,
            "transformers": "transformers" in sys.modules, "child": app.worker.child_pids[-1] != os.getpid(),
        }))
        """,
        tmp_path,
    )
    assert facts["top"] == " Paris" and facts["rows"] == 31  # the embedded model's answer, all rows
    assert facts["tokens_after_step"] == facts["tokens_before"] + 1
    assert not facts["torch"] and not facts["transformers"] and facts["child"]


def test_a_killed_model_process_is_a_notice_and_the_lens_comes_back_with_the_prompt(tmp_path):
    facts = _run(
        """
        first = app.worker.child_pids[-1]
        os.kill(first, signal.SIGKILL)
        await until(pilot, lambda: any("The model worker stopped" in t for t in app.notice_texts), "the notice")
        await until(pilot, lambda: app.model_settled.is_set() and app.lens_settled.is_set(), "the reload")
        await settle(app, pilot)
        print(json.dumps({
            "notice": [t for t in app.notice_texts if "model worker" in t],
            "prompt": app.prompt_pane.input.value if hasattr(app.prompt_pane, "input") else None,
            "top": app.shown_result.grid[-1][-1].top[0].text,
            "children": len(app.worker.child_pids), "new_child": app.worker.child_pids[-1] != first,
        }))
        """,
        tmp_path,
    )
    assert facts["children"] == 2 and facts["new_child"]
    assert any("reloading the model" in t for t in facts["notice"])
    assert facts["prompt"] == "The Eiffel Tower is located in the city of"
    assert facts["top"] == " Paris"
