"""The Patchscope lens against the logit lens, same prompt, same run.

On the embedded SmolLM2-135M-Instruct (30 layers), a 128-token prompt:
- the whole grid from scratch (forward + every cell + the readout), logit lens and
  Patchscope, and their ratio (the Patchscope's cost model says about (L+1)/2 = 15.5x the
  forward, plus the same readout);
- the first visible column as the app gets it: the worker's lens handler streaming a run
  whose view is the last 10 columns, timed to its first Partial (the Patchscope's first
  part is one column), with the target's prefix already prepared (warm) and not (cold);
- the rows' forwards alone for one and for eight positions: grouped as ``row_groups``
  plans them, and one forward per row (weight_cost 0), to show what grouping buys;
- the floor: one plain forward of the 128 tokens, measured here.

Never asserts. Run: .venv/bin/python bench/bench_patchscope.py
(the thread count is torch's default unless OMP_NUM_THREADS says otherwise; on a shared
machine compare the ratios, not the seconds).
"""

from __future__ import annotations

import time

import torch

from bench_instant import best_of  # (bench/ is on the path when a bench runs)

from lenstui.core.lenses import DEFAULT_PATCHSCOPE_TARGET, LensOptions

TEXT = (
    "Sometimes, when people say plasma, they mean a state of matter. Other times, when "
    "people say plasma, they mean the liquid part of blood. The Eiffel Tower is located "
    "in the city of Paris, and the seahorse emoji does not exist. "
)
N_TOKENS = 128
VISIBLE = 10


class StreamClock:
    """A stand-in for the worker's JobContext that notes when each Partial is posted."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.partials: list[tuple[float, int]] = []

    def should_stop(self) -> bool:
        return False

    def progress(self, message: str, fraction=None) -> None:
        pass

    def partial(self, result) -> None:
        self.partials.append((time.perf_counter() - self.started, len(result.column_positions)))

    def checkpoint(self) -> None:
        pass


def first_column(model, ids, lens: str, *, cold: bool) -> tuple[float, float, int]:
    """(seconds to the first Partial, seconds to the Done, columns in the first Partial)."""
    from lenstui.jobs.handlers import run_lens_handler
    from lenstui.jobs.protocol import RunLens

    model.caches.lens_states.clear()  # a fresh prompt: its forward runs
    if cold:
        model.caches.patchscope_targets.clear()
    clock = StreamClock()
    request = RunLens(tuple(ids), options=LensOptions(top_k=10, lens=lens), first_positions=tuple(range(-VISIBLE, 0)))
    run_lens_handler(model, request, clock)
    done = time.perf_counter() - clock.started
    first, columns = clock.partials[0] if clock.partials else (done, len(ids))
    return first, done, columns


def main() -> None:
    from lenstui.engine.lens.patchscope import patched_rows, patchscope_target, row_groups
    from lenstui.engine.lens.state import LensState
    from lenstui.engine.model.forward import forward_for
    from lenstui.engine.model.load import load_model

    model = load_model(None)
    ids = model.tokenizer(TEXT * 4)["input_ids"][:N_TOKENS]
    print(f"{model.name} · {model.n_layers} layers · {N_TOKENS} tokens · {torch.get_num_threads()} threads")

    forward = forward_for(model)
    tokens = torch.tensor([ids])
    floor = best_of(lambda: forward.run(tokens), 3)
    print(f"floor: one forward of the {N_TOKENS} tokens {floor:.3f}s")

    def grid(lens: str):
        state = LensState(model)
        state.prepare(ids, LensOptions(top_k=10, lens=lens))
        state.result()

    patchscope_target(model, DEFAULT_PATCHSCOPE_TARGET)  # the target's prefix, once per model
    grid("logit")
    logit_s = best_of(lambda: grid("logit"), 2)
    patch_s = best_of(lambda: grid("patchscope"), 1)
    print(f"whole grid: logit {logit_s:.2f}s ({logit_s / floor:.1f}x floor) · patchscope {patch_s:.2f}s "
          f"({patch_s / floor:.1f}x floor) · patchscope / logit {patch_s / logit_s:.1f}x")

    for lens in ("logit", "patchscope"):
        for cold in ((False, True) if lens == "patchscope" else (False,)):
            first, done, columns = first_column(model, ids, lens, cold=cold)
            how = " (target cold)" if cold else ""
            print(f"streamed, view = last {VISIBLE} columns, {lens}{how}: first Partial ({columns} columns) at {first:.2f}s "
                  f"({first / floor:.1f}x floor), whole grid {done:.2f}s")

    target = patchscope_target(model, DEFAULT_PATCHSCOPE_TARGET)
    import lenstui.engine.lens.patchscope as patchscope

    for n_pos in (1, 8):
        stack = torch.randn(model.n_layers + 1, n_pos, model.d_model)
        grouped = best_of(lambda: patched_rows(model, target, stack), 2)
        saved = patchscope.WEIGHT_COST
        patchscope.WEIGHT_COST = 0.0  # every row its own forward
        try:
            per_row = best_of(lambda: patched_rows(model, target, stack), 2)
        finally:
            patchscope.WEIGHT_COST = saved
        groups = row_groups(model.n_layers, model.n_layers, n_pos)
        print(f"rows' forwards, {n_pos} position(s): grouped {grouped * 1000:.0f} ms ({len(groups)} forwards) · "
              f"one forward per row {per_row * 1000:.0f} ms ({model.n_layers} forwards) · "
              f"per row / grouped {per_row / grouped:.2f}x")


if __name__ == "__main__":
    main()
