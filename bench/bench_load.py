"""Cold load of the embedded model (GGUF dequantized) vs warm load (from the cache).

Imports (torch, transformers, TransformerLens) are timed apart: every start pays
them, cached or not. Each load runs in a fresh Python process against a fresh cache dir, so the cold run
really dequantizes and the warm run really reads the cache. Prints seconds and the ratio.
Run: .venv/bin/python bench/bench_load.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, time
t0 = time.perf_counter()
from lenstui.engine.model.load import load_model
import transformers, transformer_lens.model_bridge  # a fixed cost, cached or not
t1 = time.perf_counter()
model = load_model(device="cpu")
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "from_cache": model.from_cache}))
"""


def timed_load(cache_dir: str) -> dict:
    env = dict(os.environ, LENSTUI_CACHE_DIR=cache_dir, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        cold = timed_load(cache)
        warm = [timed_load(cache) for _ in range(2)]
    best_warm = min(w["load"] for w in warm)
    print(f"imports (torch, transformers, TransformerLens): {cold['import']:.2f} s (paid by every start)")
    print(f"cold load (dequantize GGUF)  : {cold['load']:.2f} s  (from_cache={cold['from_cache']})")
    print(f"warm load (cached)           : {best_warm:.2f} s  (best of 2; from_cache={warm[0]['from_cache']})")
    print(f"cold / warm                  : {cold['load'] / best_warm:.1f}x")


if __name__ == "__main__":
    main()
