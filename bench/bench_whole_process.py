"""A whole-process ``lenstui lens`` (200 tokens, the embedded model, warm cache) against the
same logit lens written with plain TransformerLens 4, each in a fresh Python process, as a
person runs them from a shell: imports, model load, forward, readout, printing.

The TransformerLens script loads the very weights lenstui reads (the dequantized GGUF's
cache folder), boots ``TransformerBridge`` over them, runs ``run_with_cache`` and reads
every block's input, the last block's output, through ``ln_final`` and ``W_U`` (top-5 per
cell): the textbook logit lens. The explorer's launch to its first grid is
``bench_app.py``'s.

Medians of ``--repeats`` runs each, interleaved; the ratio lenstui / TransformerLens.
Prints figures, asserts nothing.
Run: ``HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_whole_process.py [--repeats N]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = (
    "Sometimes, when people say plasma, they mean a state of matter. Other times, when "
    "people say plasma, they mean the liquid part of blood. The Eiffel Tower is located "
    "in the city of Paris, and the seahorse emoji does not exist. "
)

TL_SCRIPT = r"""
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformer_lens.model_bridge import TransformerBridge
folder, text = sys.argv[1], sys.argv[2]
hf = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
bridge = TransformerBridge.boot_transformers("SmolLM2-135M-Instruct", hf_model=hf, tokenizer=tok, device="cpu")
ids = torch.tensor([tok(text)["input_ids"][:200]])
n = bridge.cfg.n_layers
with torch.no_grad():
    _, cache = bridge.run_with_cache(ids, names_filter=lambda name: name.endswith("hook_resid_pre") or name == f"blocks.{n-1}.hook_resid_post")
    stack = torch.stack([cache[f"blocks.{i}.hook_resid_pre"][0] for i in range(n)] + [cache[f"blocks.{n-1}.hook_resid_post"][0]])
    top = (bridge.ln_final(stack) @ bridge.W_U).topk(5, dim=-1)
print(top.indices.shape)
"""


def cache_folder() -> str:
    """The dequantized embedded model's folder (loading it once warms the cache)."""
    code = (
        "from lenstui.engine.model import load as L\n"
        "from lenstui.store.paths import cache_root\n"
        "m = L.load_model()\n"
        "print(cache_root() / 'gguf' / L.gguf_digest(L.embedded_gguf_path())[:32])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True)
    return out.stdout.strip().splitlines()[-1]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=_env())
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    text = TEXT * 4
    folder = cache_folder()
    lenstui_cmd = [sys.executable, "-m", "lenstui.cli", "lens", "--json", text[:2000]]
    tl_cmd = [sys.executable, "-c", TL_SCRIPT, folder, text]
    ours, theirs = [], []
    for _ in range(args.repeats):
        ours.append(timed(lenstui_cmd))
        theirs.append(timed(tl_cmd))
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"whole process, 200-token logit lens on the embedded model (medians of {args.repeats}, warm cache)")
    print(f"  lenstui lens --json:            {a:6.2f} s")
    print(f"  plain TransformerLens 4 script: {b:6.2f} s")
    print(f"  ratio lenstui / TransformerLens: x{a / b:.2f}   (goal <= 0.5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
