"""A one-off ``lenstui speak`` as the CLI runs it, in a fresh process: the model load, then
the check of one token (which reads the readout geometry: whitening, norms, fingerprint,
kept on disk beside the dequantized weights since issue 22), beside the same check a
second time in the same process (the warm floor). Run twice so the first fills the
geometry's disk cache. Prints figures, asserts nothing.
Run: ``HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_speak_oneoff.py``
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHILD = r"""
import json, time
from lenstui.engine.model.load import load_model
from lenstui.engine.speak.check import check_speakable
t0 = time.perf_counter(); model = load_model(); t1 = time.perf_counter()
check_speakable(model, 10366); t2 = time.perf_counter()
check_speakable(model, 4311); t3 = time.perf_counter()
print(json.dumps({"load": t1 - t0, "first check": t2 - t1, "warm check": t3 - t2}))
"""


def main() -> int:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    runs = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("one-off speakability check, fresh process each (run 1 may fill the geometry's disk cache)")
    for i, run in enumerate(runs, 1):
        print(f"  run {i}: load {run['load']:.2f} s, first check after the load {run['first check']:.3f} s"
              f" (goal <= 0.5 s), a second check {run['warm check']:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
