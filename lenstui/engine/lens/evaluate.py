"""How well each lens reads each row: the tuned-lens paper's per-layer figure.

Per row and lens, over a text: the mean KL(final || row) in nats, the share of positions
whose row top-1 is the model's own final top-1, and the mean rank of that final top-1
in the row (0 = its top-1). The text is cut into paragraphs (blank lines) and windows
of ``WINDOW`` tokens, each run once through the model; every lens then re-reads the same
residuals (``LensState`` with top-1 only: the fused readout's KL and the final top-1's
rank are what the grid already computes). Position 0 of every window is left out: it is
the attention sink, and the learned lenses read it as the logit lens anyway.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence, Union

from lenstui.core.callbacks import Progress, StopCheck, check_stop
from lenstui.core.errors import InputError
from lenstui.core.learned_lens import LensCurves, LensEval
from lenstui.core.lenses import LEARNED_LENSES, LENS_KINDS, LensOptions
from lenstui.engine.lens.learned import kind_of_path
from lenstui.engine.lens.state import LensState, row_labels
from lenstui.engine.model.load import LoadedModel

WINDOW = 256


def parse_lenses(spec: Union[str, Sequence[str]]) -> list[str]:
    """``"logit,tuned"`` -> ["logit", "tuned"] (checked, in order, no repeats)."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    unknown = [n for n in names if n not in LENS_KINDS]
    if unknown:
        raise InputError(f"Unknown lens {unknown[0]!r}: choose from {', '.join(LENS_KINDS)}.")
    if not names:
        raise InputError(f"Name at least one lens: {', '.join(LENS_KINDS)}.")
    return list(dict.fromkeys(names))


def text_windows(model: LoadedModel, text: str) -> list[list[int]]:
    """The text's paragraphs as token ids, in windows of ``WINDOW`` (no shorter than 2)."""
    windows = []
    for paragraph in [p for p in text.split("\n\n") if p.strip()]:
        ids = list(model.tokenizer(paragraph.strip("\n"), add_special_tokens=True)["input_ids"])
        windows += [ids[i : i + WINDOW] for i in range(0, len(ids), WINDOW) if len(ids[i : i + WINDOW]) > 1]
    if not windows:
        raise InputError("The text has too few tokens to evaluate on (at least two in a paragraph).")
    return windows


def evaluate_lenses(
    model: LoadedModel,
    text: Union[str, Sequence[Sequence[int]]],
    lenses: Union[str, Sequence[str]] = ("logit", "tuned"),
    *,
    lens_path: Optional[str] = None,
    extended_blocks: int = 1,
    patchscope_target: Optional[str] = None,
    should_stop: Optional[StopCheck] = None,
    progress: Optional[Progress] = None,
) -> LensEval:
    """The per-row curves of each lens over ``text`` (a string, or windows of ids).
    ``lens_path``: the file of whichever learned lens it is (a tuned-lens folder or a
    J-lens file); other learned lenses are the ones fitted for this model."""
    started = time.perf_counter()
    names = parse_lenses(lenses)
    windows = text_windows(model, text) if isinstance(text, str) else [list(w) for w in text if len(w) > 1]
    if not windows:
        raise InputError("Nothing to evaluate on: the prompt needs at least two tokens.")
    path_kind = kind_of_path(lens_path) if lens_path else None
    if lens_path and path_kind is None:  # registry:NAME: the one learned lens named
        learned = [name for name in names if name in LEARNED_LENSES]
        if len(learned) != 1:
            raise InputError("--lens-path registry:NAME reads one learned lens: name exactly one of tuned, jacobian in --lens.")
        path_kind = learned[0]
    if path_kind is not None and path_kind not in names:
        raise InputError(f"--lens-path is a {path_kind} lens, but --lens does not name {path_kind}.")
    paths = {kind: (lens_path if kind == path_kind else None) for kind in LEARNED_LENSES}
    rows = row_labels(model.n_layers, False)
    sums = {name: ([0.0] * len(rows), [0] * len(rows), [0.0] * len(rows)) for name in names}
    files = {}
    total = sum(len(w) - 1 for w in windows)
    counted = 0
    state = LensState(model)  # its own: the explorer's lens state keeps its cells
    for index, window in enumerate(windows):
        for name in names:
            check_stop(should_stop)
            options = LensOptions(
                top_k=1, lens=name, extended_blocks=extended_blocks, lens_path=paths.get(name),
                patchscope_target=patchscope_target,
            )
            plan = state.prepare(window, options, should_stop)
            if plan.lens_file is not None:
                files[name] = plan.lens_file
            columns = state.cells(range(1, len(window)), should_stop)
            kl, agree, rank = sums[name]
            for r, row in enumerate(columns.cells):
                for cell in row:
                    kl[r] += cell.kl_to_final
                    agree[r] += cell.final_top1_rank == 0
                    rank[r] += cell.final_top1_rank
        counted += len(window) - 1
        if progress is not None:
            progress(f"evaluating {', '.join(names)}: {counted:,}/{total:,} tokens", counted / total)
    curves = {
        name: LensCurves(
            kl=[v / counted for v in kl],
            top1_agree=[v / counted for v in agree],
            final_rank=[v / counted for v in rank],
        )
        for name, (kl, agree, rank) in sums.items()
    }
    return LensEval(
        tokens=counted, rows=rows, lenses=curves, files=files, model=model.name,
        seconds=time.perf_counter() - started,
    )
