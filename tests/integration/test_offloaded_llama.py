"""A random Llama of a few hundred MB (float32), bigger than the CPU budget it is given:
read with its blocks offloaded to disk it gives the in-memory model's grid, and the memory
plan's bytes are what a process holds once the model is loaded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lenstui.core.lenses import LensOptions
from lenstui.core.placement import PlacementOptions
from lenstui.engine.model.load import load_model, plan_model
from testkit.saved_models import assert_same_grid, saved_llama

PROMPT = "Is there a seahorse emoji? Yes: 🐠 🐴 🌊"
SHAPE = dict(hidden=512, layers=8, intermediate=1536, heads=8, kv_heads=2, vocab=32000, tied=False,
             initializer_range=0.05)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return saved_llama(tmp_path_factory.mktemp("big") / "llama-230mb", **SHAPE)


def test_the_offloaded_few_hundred_mb_llama_reads_as_the_in_memory_one(folder, tmp_path):
    from lenstui.engine.lens.run import run_lens

    plan = plan_model(str(folder), device="cpu")
    assert 200 * 2**20 < plan.bytes < 300 * 2**20
    budget = PlacementOptions(max_memory="cpu=150MB", offload_dir=str(tmp_path / "offload"))
    offloaded = load_model(str(folder), placement=budget)
    assert offloaded.plan.bytes > 150_000_000  # the model is bigger than the budget it was given
    disk = [name for name, device in offloaded.placement.items() if device == "disk"]
    assert disk and all(name.startswith(("model.layers.", "model.rotary_emb")) for name in disk)  # (rotary: no weights)
    whole = load_model(str(folder), device="cpu")
    options = LensOptions(top_k=10)
    assert_same_grid(run_lens(offloaded, PROMPT, options), run_lens(whole, PROMPT, options))


RSS_CHILD = r"""
import json, sys
from lenstui.engine.model.load import load_model, plan_model

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

load_model(sys.argv[2], device="cpu")  # imports, caches: what any load costs besides the weights
folder = sys.argv[1]
plan = plan_model(folder, device="cpu")
before = rss()
model = load_model(folder, device="cpu")
# safetensors maps the file: a weight's pages are resident once read, as a forward reads them
for tensor in list(model.hf.parameters()) + list(model.hf.buffers()):
    float(tensor.detach().sum())
# The load's own forwards (the anatomy's probe, the wiring check) leave freed heap that glibc
# keeps mapped for a while: memory the process may reuse, not memory the model holds.
import ctypes, gc
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)
print(json.dumps({"plan": plan.bytes, "resident": rss() - before, "params": plan.params,
                  "numel": sum(p.numel() for p in model.hf.parameters())}))
"""


def test_the_plans_bytes_are_the_memory_the_load_takes(folder, tmp_path):
    small = saved_llama(tmp_path / "small", hidden=64, layers=2)
    out = subprocess.run([sys.executable, "-c", RSS_CHILD, str(folder), str(small)], capture_output=True, text=True,
                         timeout=600, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["params"] == got["numel"]
    assert abs(got["plan"] - got["resident"]) <= 0.10 * got["resident"], got
