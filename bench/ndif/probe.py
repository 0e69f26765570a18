"""lenstui's remote path against a real NDIF stack on loopback (bench/ndif/up.sh: the `ndif`
package 0.1.2, its API under gunicorn, Redis, Postgres auth, a Ray head and NDIF's controller;
no GPU). Run: HF_HUB_OFFLINE=1 .venv/bin/python bench/ndif/probe.py"""
import os
import tempfile
import time
from pathlib import Path
import huggingface_hub.constants as constants
from testkit.models import tiny_llama_hf
from testkit.hub_cache import save_to_hub_cache
cache = Path(tempfile.mkdtemp())
REPO = "lenstui-test/tiny-llama"
hf, tok = tiny_llama_hf(); save_to_hub_cache(hf, tok, cache, REPO)
constants.HF_HUB_CACHE = str(cache); os.environ["HF_HUB_CACHE"] = str(cache)
os.environ["LENSTUI_CONFIG_DIR"] = tempfile.mkdtemp()
from lenstui.core.lenses import LensOptions
from lenstui.engine.lens.run import run_lens
from lenstui.engine.model.load import load_model
from lenstui.engine.backends.nnsight.model import open_remote
from lenstui.engine.backends.nnsight.transport import Transport
from lenstui.core.errors import LenstuiError
END = "http://127.0.0.1:8091"
GOOD = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
os.environ["NDIF_API_KEY"] = GOOD
print("1. open with --remote (GET /status):")
try:
    load_model(REPO, remote=True, endpoint=END)
    print("   opened")
except LenstuiError as e:
    print("   ", e)
for label, key, timeout in (("no key header", "", 60), ("malformed key", "not-a-uuid-key", 60), ("unknown key", "00000000-7425-40de-944b-e07fc1f90ae7", 60), ("the valid key", GOOD, float(os.environ.get("WAIT", "240")))):
    model = open_remote(REPO, Transport.ndif(END, key, timeout_s=timeout))
    msgs = []
    print(f"2. a grid with {label}:")
    t = time.time()
    try:
        from lenstui.engine.backends import engine_for
        state = engine_for(model).lens_state(model, progress=lambda m, f: msgs.append(m))
        state.prepare("The Eiffel Tower is in", LensOptions(top_k=3))
        r = state.result()
        print("   a grid came back:", r.next_token)
    except LenstuiError as e:
        print(f"   after {time.time()-t:.1f} s:", e)
        if key and key in str(e): print("   !!! the key is in the message")
    print("   progress:", sorted(set(m.split(' (')[0] for m in msgs)))
print("3. the server's own words for the valid key:")
model = open_remote(REPO, Transport.ndif(END, GOOD, timeout_s=60))
try:
    run_lens(model, "The Eiffel Tower is in", LensOptions(top_k=3))
except LenstuiError as e:
    print("   ", repr(e.__context__)[:600])
