"""A generation step (Ctrl+N) beside its floor, measured in the same run.

- **floor**: a plain transformers one-token forward of SmolLM2 with its KV cache and the
  hidden states (the least any lens step must compute), plus the readout's matrix
  product for the step's rows (31 rows x the vocabulary, float32);
- **engine**: the same step through the lens (``LensState``: the forward with its stack
  captured, the readout of the new column: top-k, entropy, KL, ranks);
- **app**: ``lenstui --chat "<45-token prompt>"`` in a pseudo-terminal, as a person runs
  it (the model in its own process): from writing Ctrl+N to the status line reading one
  more token with the run done.

Every step follows a pause of ``PAUSE`` seconds, as a person's keys do (the app's steps
need one to read the screen between them): after a pause this CPU runs the same forward
~20-30% slower than back to back (caches and idle cores), so the floor and the engine
take the same pause, and their back-to-back medians are printed beside them.

Medians; ratios to the floor. Prints figures, asserts nothing.
Run: ``HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_step.py [--steps N]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from lenstui.core.lenses import LensOptions

PAUSE = 0.3  # seconds between steps, in all three measurements
PROMPT = "Is there a seahorse emoji? Answer in one short sentence, and then explain why."  # chat: ~45 tokens


def floor_and_engine(steps: int, pause: float) -> tuple[float, float, int]:
    from transformers import DynamicCache

    from lenstui.engine.lens.state import LensState
    from lenstui.engine.model.chat import chat_prompt_ids
    from lenstui.engine.model.load import load_model

    model = load_model()
    ids = chat_prompt_ids(model, PROMPT)
    hf = model.hf
    w = model.W_U.detach().T.contiguous()  # [vocab, d]
    rows = model.n_layers + 1
    floors = []
    with torch.no_grad():
        cache = DynamicCache()
        out = hf(input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
        token = int(out.logits[0, -1].argmax())
        for _ in range(steps + 2):
            time.sleep(pause)
            start = time.perf_counter()
            out = hf(input_ids=torch.tensor([[token]]), cache=cache, use_cache=True, output_hidden_states=True)
            stack = torch.stack([h[0, -1] for h in out.hidden_states])  # [rows, d]
            (stack[:rows] @ w.T).amax(dim=1)
            floors.append(time.perf_counter() - start)
            token = int(out.logits[0, -1].argmax())
    state = LensState(model)
    state.prepare(ids, LensOptions(top_k=10))  # the app's top-k
    result = state.result()
    engine = []
    for _ in range(steps + 2):
        ids = list(result.token_ids) + [result.next_token.id]
        time.sleep(pause)
        start = time.perf_counter()
        state.prepare(ids, LensOptions(top_k=10))
        result = state.result()
        engine.append(time.perf_counter() - start)
    return statistics.median(floors[2:]), statistics.median(engine[2:]), len(ids)


def in_the_app(steps: int) -> float:
    from testkit.terminal import TerminalApp

    home = tempfile.mkdtemp(prefix="lenstui-bench-step-")
    env = {"LENSTUI_CONFIG_DIR": home + "/config", "LENSTUI_DATA_DIR": home + "/data"}
    times = []
    with TerminalApp(["--chat", PROMPT], env=env, cols=120, rows=40, threads=None) as term:
        settled = lambda: "tokens ·" in term.lines()[-2] and "running" not in term.lines()[-2]  # noqa: E731
        term.wait_until(lambda _: settled() and term.token_count(), 300, "the first grid")
        term.press("escape")  # to the grid
        time.sleep(1.0)
        for _ in range(steps + 2):
            before = term.token_count()
            start = time.perf_counter()
            term.write(b"\x0e")  # ctrl+n
            term.wait_until(lambda _: term.token_count() == before + 1 and settled(), 60, "the step")
            times.append(term.arrived - start)  # when the terminal got the frame, not when pyte parsed it
            time.sleep(PAUSE)
    return statistics.median(times[2:])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(2)
    floor_b2b, engine_b2b, _ = floor_and_engine(args.steps, 0.0)
    floor, engine, n = floor_and_engine(args.steps, PAUSE)
    print(f"generation step on a {n}-token chat prompt (medians of {args.steps}, {PAUSE:g} s between steps)")
    print(f"  back to back: floor {floor_b2b * 1000:.1f} ms, engine {engine_b2b * 1000:.1f} ms (x{engine_b2b / floor_b2b:.2f})")
    print(f"  floor  (plain forward + KV + hidden states + readout matmul): {floor * 1000:7.1f} ms")
    print(f"  engine (LensState step):                                     {engine * 1000:7.1f} ms   x{engine / floor:.2f} the floor")
    app = in_the_app(args.steps)
    print(f"  app    (Ctrl+N to the grid with the new token, in a pty):    {app * 1000:7.1f} ms   x{app / floor:.2f} the floor")
    print("  goal: app and engine <= 1.3x the floor")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
