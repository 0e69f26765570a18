"""Learned lenses in the explorer: which the model has, fitting one (with progress in the
status line, cancellable), reading one from a folder or file, and the evaluation plot.

The lens kinds themselves are the session's (``LensSession.lens_kind``, cycled by F5 and
chosen in the palette's "lens: tuned lens"); these helpers keep the session told which
learned lenses the model has a file for (``learned_available``, from ``ModelInfo.lenses``
and finished fits), name the lens file of the result on show in the status line (those
two through ``LearnedLensFeature``, their side of the lens flow's seam), and run the
palette's "lens: …" entries through the typed host.
"""

from __future__ import annotations

from typing import Optional

from textual.app import SystemCommand

from lenstui.core.learned_lens import FitReport, format_duration, short_path
from lenstui.core.lenses import (
    DEFAULT_PATCHSCOPE_TARGET,
    LEARNED_LENSES,
    patchscope_cost,
    patchscope_target_line,
    patchscope_target_text,
)
from lenstui.core.lens_result import LensResult
from lenstui.jobs.protocol import Done, EvaluateLenses, FitLens, ModelInfo, Progress, Result, RunLens, Stopped
from lenstui.tui.host import ExplorerHost
from lenstui.tui.screens.lens_eval import LensEvalScreen
from lenstui.tui.screens.path_prompt import PathPrompt
from lenstui.tui.screens.target_prompt import TargetPrompt
from lenstui.tui.state.lens_feature import LensFeature

FIT_HINT = "least squares on ~6,000 tokens the model writes itself: 2-5 min on 2 cores; kept per model"


class LearnedLensFeature(LensFeature):
    """Learned lenses on the lens flow's seam (``lens_feature.py``)."""

    def __init__(self, host: ExplorerHost) -> None:
        self.host = host

    def model_loaded(self, info: ModelInfo) -> None:
        """A model is ready: which learned lenses it has; a learned lens it lacks is left."""
        host, session = self.host, self.host.session
        session.learned_available = frozenset(f.kind for f in info.lenses)
        if not session.lens_ready(session.lens_kind):
            session.set_lens("logit")
        if info.lenses:
            found = ", ".join(f"{f.kind} ({f.origin})" for f in info.lenses)
            host.notify(f"Learned lens found for {info.name}: {found}. F5 or the palette's \"lens: …\" reads it.", timeout=6)

    def run_shown(self, result: LensResult, request: RunLens) -> None:
        """The status line names the learned lens a result on show read, and its file (the
        Patchscope: its target)."""
        lens_file = result.lens_file
        if lens_file is not None:
            self.host.status.set_lens(f"{lens_file.kind} lens · {short_path(lens_file.path)}")
        elif result.patchscope_target is not None:
            self.host.status.set_lens(f"patchscope · target {patchscope_target_line(result.patchscope_target)}")
        else:
            self.host.status.set_lens("")


def missing_lens_sentence(kind: str) -> str:
    if kind == "tuned":
        return ("No tuned lens for this model yet: the palette's \"lens: fit a tuned lens for this model\" fits "
                "one in about 2 minutes, or \"lens: read the tuned lens from a folder…\" reads one.")
    return ("No J-lens for this model: the palette's \"lens: read the J-lens from a file…\" reads a "
            "TransformerLens J-lens (fitting one takes a GPU: `lenstui lenses fit --kind jacobian`).")


def fit(host: ExplorerHost, *, kind: str = "tuned", tokens: Optional[int] = None, text_path: Optional[str] = None) -> None:
    """Start a lens fit on the worker (a newer fit replaces a running one)."""
    if host.model_info is None:
        host.notify("Wait for the model to load, then fit a lens.", severity="warning", timeout=3)
        return
    host.submit(FitLens(kind=kind, tokens=tokens, text_path=text_path))
    host.status.set_job(f"{kind} lens fit: starting", 0.0)
    source = f"on {short_path(text_path)}" if text_path else "on text the model writes itself"
    host.notify(
        f"Fitting a {kind} lens {source} (the lens keeps working meanwhile); the palette's "
        "\"lens: stop fitting\" stops it.",
        timeout=6,
    )


def fit_reply(host: ExplorerHost, result: Result) -> None:
    """The fit's progress in the status line; when done, the new lens is shown."""
    kind = result.request.kind
    if isinstance(result, Progress):
        host.status.set_job(f"{kind} lens fit: {result.message}", result.fraction)
        return
    host.status.set_job("")
    if isinstance(result, Done):
        report: FitReport = result.value
        session = host.session
        session.learned_available = session.learned_available | {kind}
        session.lens_paths.pop(kind, None)  # the fitted lens, not an older choice
        host.notify(
            f"{kind.capitalize()} lens saved in {short_path(report.path)}: {report.tokens:,} tokens, "
            f"{format_duration(report.seconds.get('total', 0.0))}. Showing it now.",
            title="Lens fit",
            timeout=10,
        )
        session.set_lens(kind)
        host.rerun_lens()
    elif isinstance(result, Stopped):
        host.notify("Lens fit stopped; nothing was saved.", timeout=4)
    # Failed: the app has already shown its sentence.


def cancel_fit(host: ExplorerHost) -> None:
    if not host.cancel(FitLens):
        host.notify("No lens fit is running.", timeout=2)


def ask_fit_text(host: ExplorerHost) -> None:
    def typed(path: Optional[str]) -> None:
        if path:
            fit(host, text_path=path)

    host.push_screen(PathPrompt("Fit a tuned lens on a text file (paragraphs separated by blank lines):", "~/text.txt"), typed)


def ask_lens_file(host: ExplorerHost, kind: str) -> None:
    """Read ``kind`` from a folder or file typed by the user (the run checks it)."""
    what = "a tuned-lens folder (config.json + params.pt)" if kind == "tuned" else "a TransformerLens J-lens file (.pt)"

    def typed(path: Optional[str]) -> None:
        if path:
            host.session.use_lens_file(kind, path)
            host.notify(f"Lens: {kind}, read from {short_path(path)}", timeout=3)
            host.rerun_lens()

    host.push_screen(PathPrompt(f"Read the {kind} lens from {what}:", "~/lenses/gpt2"), typed)


def eval_request(host: ExplorerHost, text_path: Optional[str] = None) -> Optional[tuple[EvaluateLenses, str]]:
    """The evaluation of the logit lens, the lens on show and every learned lens the
    model has, on the prompt on show (or ``text_path``); None (with a notice) when there
    is nothing to evaluate."""
    session = host.session
    lenses = ["logit"]
    if session.lens_kind not in lenses:
        lenses.append(session.lens_kind)
    lenses += [k for k in LEARNED_LENSES if session.lens_ready(k) and k not in lenses]
    path = next((session.lens_paths[k] for k in lenses if k in session.lens_paths), None)
    patch_target = session.patchscope_target
    if text_path:
        request = EvaluateLenses(tuple(lenses), text_path=text_path, lens_path=path, patchscope_target=patch_target)
        return request, short_path(text_path)
    result = host.shown_result
    if result is None or len(result.tokens) < 2:
        host.notify("Run the lens on a prompt of two tokens or more first.", severity="warning", timeout=3)
        return None
    if len(lenses) == 1:
        host.notify("No learned lens for this model yet: the plot shows the logit lens alone "
                    "(palette: \"lens: fit a tuned lens for this model\").", timeout=5)
    request = EvaluateLenses(tuple(lenses), prompt_ids=tuple(result.token_ids), lens_path=path, patchscope_target=patch_target)
    return request, f"the prompt ({len(result.tokens)} tokens)"


def show_eval(host: ExplorerHost, text_path: Optional[str] = None) -> None:
    if host.screen is not host.base_screen:
        return
    asked = eval_request(host, text_path)
    if asked is not None:
        host.push_screen(LensEvalScreen(*asked))


def ask_eval_text(host: ExplorerHost) -> None:
    def typed(path: Optional[str]) -> None:
        if path:
            show_eval(host, path)

    host.push_screen(PathPrompt("Evaluate the lenses on a text file (paragraphs separated by blank lines):", "~/text.txt"), typed)


def lens_notice(kind: str, info: Optional[ModelInfo]) -> str:
    """What switching to ``kind`` says (the Patchscope: its cost, up front)."""
    if kind != "patchscope":
        return f"Lens: {kind}"
    cost = patchscope_cost(info.n_layers) if info is not None else "the Patchscope runs the model once per cell"
    return f"Lens: patchscope. {cost[0].upper()}{cost[1:]}; the status line shows its progress."


def ask_patchscope_target(host: ExplorerHost) -> None:
    """Type the Patchscope's target prompt (``\\n`` for a line break); the run checks it."""
    current = host.session.patchscope_target or DEFAULT_PATCHSCOPE_TARGET

    def typed(text: Optional[str]) -> None:
        if text:
            host.session.set_patchscope_target(patchscope_target_text(text))
            host.notify(f"Patchscope target: {patchscope_target_line(host.session.patchscope_target)}", timeout=3)
            host.rerun_lens()

    label = "The Patchscope's target prompt (\\n is a line break; its last token is where a residual is patched):"
    host.push_screen(TargetPrompt(label, value=patchscope_target_line(current)), typed)


def default_patchscope_target(host: ExplorerHost) -> None:
    host.session.set_patchscope_target(None)
    host.notify(f"Patchscope target: {patchscope_target_line(DEFAULT_PATCHSCOPE_TARGET)} (token identity)", timeout=3)
    host.rerun_lens()


def commands(host: ExplorerHost):
    """The palette's learned-lens entries (the lens kinds are listed with the others)."""
    key = host.key_for
    yield SystemCommand("lens: fit a tuned lens for this model", FIT_HINT, lambda: fit(host))
    yield SystemCommand("lens: fit a tuned lens on a text file…", "least squares on your text instead", lambda: ask_fit_text(host))
    yield SystemCommand("lens: stop fitting", "nothing is saved", lambda: cancel_fit(host))
    yield SystemCommand("lens: read the tuned lens from a folder…", "any tuned-lens directory (config.json + params.pt)", lambda: ask_lens_file(host, "tuned"))
    yield SystemCommand("lens: read the J-lens from a file…", "a TransformerLens JacobianLens .pt", lambda: ask_lens_file(host, "jacobian"))
    yield SystemCommand("lens: Patchscope target…", "the prompt a residual is patched into (default: token identity)", lambda: ask_patchscope_target(host))
    yield SystemCommand("lens: Patchscope default target", patchscope_target_line(DEFAULT_PATCHSCOPE_TARGET), lambda: default_patchscope_target(host))
    yield SystemCommand("lens: evaluate the lenses on this prompt", f"KL, top-1 agreement and rank per layer, plotted ({key('lenstui.lens_eval')})", lambda: show_eval(host))
    yield SystemCommand("lens: evaluate the lenses on a text file…", "the same plot over a text (as `lenstui lenses eval`)", lambda: ask_eval_text(host))
