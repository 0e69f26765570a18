"""Fitting learned lenses here, on the model's own text.

**The tuned lens, in minutes** (``fit_tuned``). No corpus can be downloaded and the
tuned-lens package's own training (65M tokens) is hours of GPU, so lenstui fits the
cheap variant the package's maintainers suggest for models without a lens: an affine
map per row fitted by least squares from that row's residual to the last block's
output (the "linear shortcut" of Din et al. 2023), on text the model wrote itself.

1. *Text*: sampled from the model (``lens/sampling.py``), or the user's text
   (``text=``), by paragraphs, in windows of ``evaluate.WINDOW`` tokens.
2. *Residuals*: the sampler's own forward passes capture every row (the same hooks as
   ``LensState``), so there is no second pass; each position is added to the normal
   equations at once (``NormalEquations``: shifted sums in float64, one ``d x d`` Gram
   and cross matrix per row) and the stack is never kept. Position 0 (the attention
   sink) is left out, and a chat batch's template prefix, identical in every sequence,
   counts once.
3. *Solve*: ridge least squares per row, ``A_r h + b_r`` for the last block's output,
   the bias unpenalised, ridge ``alpha`` times the mean eigenvalue of the centred Gram.
4. *Refine* (optional, ``refine_steps``): Adam on the tuned-lens objective,
   ``sum_rows mean KL(final || lens)``, from the least-squares solution, on the fit's
   own positions (every 8th held out to report the KL before and after).

The lens is saved as a tuned-lens directory (``learned.save_tuned``) in this model's
lens folder, or ``out``.

**The Jacobian lens** (``fit_jacobian``): TransformerLens's ``JacobianLens.fit``, one
prompt at a time (so it can stop and report progress) and merged. It needs
``ceil(d_model / dim_batch)`` backward passes per prompt: ``estimate_jacobian`` measures
one here first, and a fit on the CPU is refused unless asked for (hours for SmolLM2).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from lenstui.core.callbacks import Progress, StopCheck, check_stop
from lenstui.core.errors import InputError
from lenstui.core.learned_lens import FitEstimate, FitReport, format_duration
from lenstui.engine.lens.learned import cached_path, save_jacobian, save_tuned, unembed_hash
from lenstui.engine.lens.sampling import rows_forward, sample_sequences
from lenstui.engine.model.load import LoadedModel

# Default budget of the sampled text: about 2 minutes on the embedded model on 2 cores
# (sampling dominates); the held-out KL barely moves past ~5k tokens (see the README).
DEFAULT_TOKENS = 6144
FLUSH = 512  # positions buffered before a float64 update of the normal equations
DEFAULT_ALPHA = 1e-3
REFINE_BATCH = 128
REFINE_LR = 3e-4
REFINE_KEEP = 6144  # positions kept (float16) for the KL refinement
JACOBIAN_PROMPTS = 100  # TransformerLens's "usable" size: ~100 prompts of 128 tokens
JACOBIAN_SEQ = 128
JACOBIAN_DIM_BATCH = 8
JACOBIAN_SKIP = 16  # TransformerLens's skip_first_positions

class _Clock:
    """Progress with an ETA: ``report(done, total, what)``."""

    def __init__(self, progress: Optional[Progress], start: float = 0.0, span: float = 1.0):
        self.progress = progress
        self.started = time.perf_counter()
        self.start, self.span = start, span

    def report(self, done: float, total: float, what: str) -> None:
        if self.progress is None:
            return
        share = min(1.0, done / total) if total else 0.0
        elapsed = time.perf_counter() - self.started
        eta = f" · about {format_duration(elapsed / share * (1 - share))} left" if share > 0.02 else ""
        self.progress(f"{what}{eta}", self.start + self.span * share)


# ---------------------------------------------------------------- the normal equations


class NormalEquations:
    """Per row r, the sums a least-squares fit ``Y ~ A_r X_r + b_r`` needs, accumulated in
    float64 around a shift (the first batch's means), so centring at the end loses
    nothing to cancellation. ``add`` takes a chunk; the chunks are never kept."""

    def __init__(self, n_rows: int, d_in: int, d_out: int):
        self.n = 0
        self.n_rows, self.d_in, self.d_out = n_rows, d_in, d_out
        self.shift_x: Optional[torch.Tensor] = None
        self.shift_y: Optional[torch.Tensor] = None
        self.sx = torch.zeros(n_rows, d_in, dtype=torch.float64)
        self.sy = torch.zeros(d_out, dtype=torch.float64)
        self.sxx = torch.zeros(n_rows, d_in, d_in, dtype=torch.float64)
        self.sxy = torch.zeros(n_rows, d_in, d_out, dtype=torch.float64)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """``x`` [rows, m, d_in] inputs, ``y`` [m, d_out] targets, any float dtype."""
        if x.shape[1] == 0:
            return
        x = x.detach().to("cpu", torch.float64)
        y = y.detach().to("cpu", torch.float64)
        if self.shift_x is None:
            self.shift_x = x.mean(dim=1)
            self.shift_y = y.mean(dim=0)
        xs = x - self.shift_x[:, None, :]
        ys = y - self.shift_y
        self.sx += xs.sum(dim=1)
        self.sy += ys.sum(dim=0)
        xt = xs.transpose(1, 2)
        self.sxx += torch.bmm(xt, xs)
        self.sxy += torch.matmul(xt, ys)
        self.n += int(x.shape[1])

    def solve(self, alpha: float = DEFAULT_ALPHA) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (A [rows, d_out, d_in], b [rows, d_out]) float32 minimising, per row,
        ``|Y - X A^T - b|^2 + lam |A|^2`` with ``lam = alpha * mean eigenvalue of the
        centred X^T X`` (the bias is not penalised; alpha = 0 is plain least squares)."""
        if self.n < 2:
            raise InputError("Too little text to fit a lens on: at least two positions are needed.")
        n = self.n
        mx, my = self.sx / n, self.sy / n  # means, in shifted coordinates
        gram = self.sxx - n * mx[:, :, None] * mx[:, None, :]
        cross = self.sxy - n * mx[:, :, None] * my[None, None, :]
        eye = torch.eye(self.d_in, dtype=torch.float64)
        lam = alpha * gram.diagonal(dim1=1, dim2=2).mean(dim=1)
        system = gram + lam[:, None, None] * eye
        if alpha > 0:
            solution = torch.linalg.solve(system, cross)  # [rows, d_in, d_out]
        else:
            solution = torch.linalg.lstsq(system, cross, driver="gelsd").solution
        a = solution.transpose(1, 2)  # [rows, d_out, d_in]
        mean_x = mx + self.shift_x
        mean_y = my + self.shift_y
        b = mean_y[None, :] - torch.einsum("roi,ri->ro", a, mean_x)
        return a.float().contiguous(), b.float().contiguous()


# ---------------------------------------------------------------- the tuned lens


class _Collector:
    """The sink that fills the normal equations (and keeps a sample for refinement)."""

    def __init__(self, n_rows: int, d: int, keep: int, limit: Optional[int] = None):
        self.equations = NormalEquations(n_rows - 1, d, d)
        self.buffer: list[torch.Tensor] = []
        self.buffered = 0
        self.keep = keep
        self.kept: list[torch.Tensor] = []
        self.kept_count = 0
        self.limit = limit  # stop counting positions past this many
        self.count = 0

    def __call__(self, rows: torch.Tensor, keep: torch.Tensor) -> int:
        n_rows, batch, n, d = rows.shape
        flat = rows.reshape(n_rows, batch * n, d)
        chosen = flat[:, keep.reshape(-1).to(flat.device)]
        if self.limit is not None:
            chosen = chosen[:, : max(0, self.limit - self.count)]
        if chosen.shape[1] == 0:
            return 0
        self.count += chosen.shape[1]
        self.buffer.append(chosen.cpu())
        self.buffered += chosen.shape[1]
        if self.kept_count < self.keep:
            part = chosen[:, : self.keep - self.kept_count].to("cpu", torch.float16)
            self.kept.append(part)
            self.kept_count += part.shape[1]
        if self.buffered >= FLUSH:
            self.flush()
        return int(chosen.shape[1])

    def flush(self) -> None:
        if self.buffer:
            stack = torch.cat(self.buffer, dim=1)
            self.equations.add(stack[:-1], stack[-1])
            self.buffer, self.buffered = [], 0

    def sample(self) -> Optional[torch.Tensor]:
        return torch.cat(self.kept, dim=1) if self.kept else None


def fit_tuned(
    model: LoadedModel,
    *,
    tokens: Optional[int] = None,
    text: Optional[str] = None,
    text_name: str = "",
    out: Union[str, Path, None] = None,
    seed: int = 0,
    refine_steps: int = 0,
    alpha: float = DEFAULT_ALPHA,
    should_stop: Optional[StopCheck] = None,
    progress: Optional[Progress] = None,
) -> FitReport:
    """Fit a tuned lens for ``model`` (see the module doc) and save it, in this model's
    lens folder or ``out``. ``tokens``: positions to fit on (default ``DEFAULT_TOKENS``
    sampled, or the whole ``text``). Raises Cancelled when ``should_stop()`` turns true
    (nothing is saved), InputError on bad input."""
    if tokens is not None and tokens < 16:
        raise InputError(f"A lens needs more text than {tokens} tokens: ask for at least a few hundred.")
    if refine_steps < 0:
        raise InputError("--refine-steps must be 0 or more.")
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    n_rows = model.n_layers + 1
    budget = tokens if tokens is not None else (None if text is not None else DEFAULT_TOKENS)
    collector = _Collector(n_rows, model.d_model, REFINE_KEEP if refine_steps else 0, limit=budget)
    collect_share = 0.9 if refine_steps == 0 else 0.3
    clock = _Clock(progress, 0.0, collect_share)
    if text is None:
        sequences = sample_sequences(
            model,
            budget,
            seed=seed,
            sink=collector,
            should_stop=should_stop,
            progress=lambda done, total: clock.report(done, total, f"sampling and reading text: {done:,}/{total:,} tokens"),
        )
        source, source_words = "sampled", "self-sampled"
        n_sequences = len(sequences)
    else:
        from lenstui.engine.lens.evaluate import text_windows

        windows = text_windows(model, text)
        total = sum(len(w) for w in windows) if budget is None else min(budget, sum(len(w) for w in windows))
        for index, window in enumerate(windows):
            check_stop(should_stop)
            if budget is not None and collector.count >= budget:
                windows = windows[:index]
                break
            _, rows = rows_forward(model, torch.tensor([window], device=model.input_device), None)
            collector(rows, (torch.arange(len(window)) >= 1)[None, :])
            clock.report(collector.count, total, f"reading the text: {collector.count:,}/{total:,} tokens")
        source, source_words = (text_name or "text"), "text"
        n_sequences = len(windows)
    collector.flush()
    seconds["collect"] = time.perf_counter() - started
    check_stop(should_stop)
    if progress is not None:
        progress("solving the least squares", collect_share)
    solved = time.perf_counter()
    matrices, biases = collector.equations.solve(alpha)
    seconds["solve"] = time.perf_counter() - solved
    refine_kl = None
    if refine_steps:
        refined = time.perf_counter()
        matrices, biases, refine_kl = refine_translators(
            model,
            matrices,
            biases,
            collector.sample(),
            refine_steps,
            seed=seed,
            should_stop=should_stop,
            progress=_Clock(progress, collect_share, 0.95 - collect_share),
        )
        seconds["refine"] = time.perf_counter() - refined
    check_stop(should_stop)
    if progress is not None:
        progress("saving the lens", 0.97)
    folder = Path(out).expanduser() if out is not None else cached_path(model, "tuned")
    seconds["total"] = time.perf_counter() - started
    sidecar = {
        "kind": "tuned",
        "method": "least squares" + (f" + {refine_steps} Adam steps on KL" if refine_steps else ""),
        "tokens": collector.equations.n,
        "sequences": n_sequences,
        "source": source,
        "source_words": source_words,
        "seed": seed,
        "alpha": alpha,
        "refine_steps": refine_steps,
        "refine_kl": list(refine_kl) if refine_kl else None,
        "position_0": "left out of the fit; read as the logit lens",
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "model": model.name,
    }
    lens_file = save_tuned(folder, model, matrices, biases, sidecar=sidecar)
    return FitReport(
        kind="tuned",
        path=str(folder),
        model=model.name,
        tokens=collector.equations.n,
        sequences=n_sequences,
        source=source,
        seconds=seconds,
        refine_steps=refine_steps,
        refine_kl=refine_kl,
        unembed_hash=unembed_hash(model),
        lens_file=lens_file,
    )


class _frozen:
    """The model's parameters do not ask for gradients while translators are trained."""

    def __init__(self, module: Optional[torch.nn.Module]):
        self.params = list(module.parameters()) if module is not None else []

    def __enter__(self):
        self.flags = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc):
        for p, flag in zip(self.params, self.flags):
            p.requires_grad_(flag)


def _lens_logits(unembed, vectors: torch.Tensor) -> torch.Tensor:
    """Logits of pre-norm vectors [n, d] through the model's final norm and unembedding,
    differentiable in ``vectors`` (the readout's own normalize runs under no_grad)."""
    from transformer_lens.tools.analysis.logit_lens import _run_ln_final

    if unembed.norm is not None:
        vectors = _run_ln_final(unembed.norm, vectors)
    return unembed.logits(vectors.float())


def refine_translators(
    model: LoadedModel,
    matrices: torch.Tensor,
    biases: torch.Tensor,
    data: Optional[torch.Tensor],
    steps: int,
    *,
    batch: int = REFINE_BATCH,
    lr: float = REFINE_LR,
    seed: int = 0,
    should_stop: Optional[StopCheck] = None,
    progress: Optional[_Clock] = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float]]:
    """Adam on ``sum_rows mean KL(final || lens)`` from the given translators, for
    ``steps`` minibatches of ``batch`` positions of ``data`` [rows + 1, N, d] (every 8th
    position held out). -> (matrices, biases, (held-out mean KL before, after))."""
    from lenstui.engine.lens.readout import unembedding

    if data is None or data.shape[1] < 16:
        raise InputError("Too few positions were kept to refine the lens on.")
    unembed = unembedding(model)
    n_positions = data.shape[1]
    held = torch.arange(0, n_positions, 8)
    train = torch.tensor([i for i in range(n_positions) if i % 8])
    rows = matrices.shape[0]
    generator = torch.Generator().manual_seed(seed)

    def mean_kl(a: torch.Tensor, b: torch.Tensor) -> float:
        total = 0.0
        with torch.no_grad():
            for first in range(0, len(held), 256):
                idx = held[first : first + 256]
                x = data[:, idx].float()
                final = torch.log_softmax(_lens_logits(unembed, x[-1]), dim=-1)
                p = final.exp()
                for r in range(rows):
                    lq = torch.log_softmax(_lens_logits(unembed, x[r] @ a[r].T + b[r]), dim=-1)
                    total += float((p * (final - lq)).sum())
        return total / (len(held) * rows)

    before = mean_kl(matrices, biases)
    a = matrices.clone().requires_grad_(True)
    b = biases.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([a, b], lr=lr)
    with _frozen(unembed.norm):
        for step in range(steps):
            check_stop(should_stop)
            idx = train[torch.randint(0, len(train), (batch,), generator=generator)]
            x = data[:, idx].float()
            with torch.no_grad():
                final = torch.log_softmax(_lens_logits(unembed, x[-1]), dim=-1)
                p = final.exp()
            optimizer.zero_grad()
            for r in range(rows):  # one row's graph at a time: [batch, vocab] each
                lq = torch.log_softmax(_lens_logits(unembed, x[r] @ a[r].T + b[r]), dim=-1)
                ((p * (final - lq)).sum(-1).mean()).backward()
            optimizer.step()
            if progress is not None:
                progress.report(step + 1, steps, f"refining on KL: step {step + 1}/{steps}")
    a, b = a.detach(), b.detach()
    return a, b, (before, mean_kl(a, b))


# ---------------------------------------------------------------- the Jacobian lens


def estimate_jacobian(
    model: LoadedModel,
    prompts: int = JACOBIAN_PROMPTS,
    *,
    seq_len: int = JACOBIAN_SEQ,
    dim_batch: int = JACOBIAN_DIM_BATCH,
) -> FitEstimate:
    """What ``JacobianLens.fit`` would cost on ``prompts`` prompts of ``seq_len`` tokens,
    measured here: one forward of the replicated prompt and two of its
    ``ceil(d_model / dim_batch)`` backward passes, through every block."""
    bridge = model.bridge
    n_layers, d = model.n_layers, model.d_model
    seq_len = min(seq_len, model.n_ctx)
    tokens = torch.randint(0, model.d_vocab, (1, seq_len), generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(model.input_device).expand(dim_batch, -1)
    captured: dict[str, torch.Tensor] = {}
    root, target = "blocks.0.hook_out", f"blocks.{n_layers - 1}.hook_out"

    def capture(activation, hook):
        if hook.name == root and not activation.requires_grad:
            activation.requires_grad_(True)
        captured[hook.name] = activation
        return activation

    def sync():
        if str(model.device).startswith("cuda"):
            torch.cuda.synchronize()

    passes = -(-d // dim_batch)
    with _frozen(bridge), torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        with bridge.hooks(fwd_hooks=[(root, capture), (target, capture)]):
            bridge(tokens, return_type=None)
        sync()
        forward = time.perf_counter() - started
        out, source = captured[target], captured[root]
        cotangent = torch.zeros_like(out)
        timings = []
        for k in range(2):
            cotangent.zero_()
            cotangent[torch.arange(dim_batch), :, torch.arange(dim_batch) + k * dim_batch] = 1.0
            started = time.perf_counter()
            torch.autograd.grad(out, [source], cotangent, retain_graph=k == 0)
            sync()
            timings.append(time.perf_counter() - started)
    per_prompt = forward + passes * min(timings)
    where = "the CPU" if str(model.device) == "cpu" else str(model.device)
    return FitEstimate(device=where, prompts=prompts, seconds=per_prompt * prompts, per_prompt=per_prompt, backward_passes=passes)


def fit_jacobian(
    model: LoadedModel,
    *,
    prompts: int = JACOBIAN_PROMPTS,
    allow_cpu: bool = False,
    out: Union[str, Path, None] = None,
    seed: int = 0,
    dim_batch: int = JACOBIAN_DIM_BATCH,
    seq_len: int = JACOBIAN_SEQ,
    should_stop: Optional[StopCheck] = None,
    progress: Optional[Progress] = None,
) -> FitReport:
    """A TransformerLens J-lens fitted on ``prompts`` texts the model writes itself
    (``seq_len`` tokens each), one prompt at a time and merged; saved as ``lens.pt``.
    On the CPU it is refused (InputError, with the measured estimate) unless
    ``allow_cpu``."""
    from transformer_lens.tools.analysis import JacobianLens

    if prompts < 1:
        raise InputError("A J-lens needs at least one prompt.")
    seq_len = min(seq_len, model.n_ctx - 1)  # to_tokens may add a BOS
    if seq_len <= JACOBIAN_SKIP + 2:
        raise InputError(f"{model.name}'s context is too short for a J-lens fit ({model.n_ctx} tokens).")
    estimate = estimate_jacobian(model, prompts, seq_len=seq_len, dim_batch=dim_batch)
    if str(model.device) == "cpu" and not allow_cpu:
        raise InputError(
            estimate.sentence() + " lenstui does not start that on the CPU: load the model on a GPU "
            "(--device cuda), or pass --allow-cpu to wait for it."
        )
    started = time.perf_counter()
    if progress is not None:
        progress(f"sampling {prompts} prompts · {estimate.sentence()}", 0.0)
    sequences = sample_sequences(model, prompts * seq_len, seed=seed, new_tokens=seq_len - 2, should_stop=should_stop)
    texts = [model.tokenizer.decode(ids) for ids in sequences if len(ids) > JACOBIAN_SKIP + 2][:prompts]
    if not texts:
        raise InputError("The sampled prompts all ended too soon to fit a J-lens on.")
    sampled = time.perf_counter() - started
    corpus = f"lenstui self-sampled text, seed {seed}"
    clock = _Clock(progress, 0.05, 0.9)
    shards = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for index, text in enumerate(texts):
            check_stop(should_stop)
            shards.append(
                JacobianLens.fit(
                    model.bridge, [text], corpus=corpus, dim_batch=dim_batch, max_seq_len=seq_len,
                    skip_first_positions=JACOBIAN_SKIP, show_progress=False,
                )
            )
            clock.report(index + 1, len(texts), f"fitting the J-lens: prompt {index + 1}/{len(texts)}")
    lens = JacobianLens.merge(shards) if len(shards) > 1 else shards[0]
    where = Path(out).expanduser() if out is not None else cached_path(model, "jacobian")
    seconds = {"sample": sampled, "fit": time.perf_counter() - started - sampled, "total": time.perf_counter() - started}
    lens_file = save_jacobian(
        where, model, lens,
        sidecar={"kind": "jacobian", "prompts": lens.n_prompts, "seq_len": seq_len, "seed": seed,
                 "estimate_seconds": round(estimate.seconds, 1), "seconds": {k: round(v, 2) for k, v in seconds.items()}},
    )
    return FitReport(
        kind="jacobian",
        path=lens_file.path,
        model=model.name,
        tokens=sum(min(len(model.tokenizer(t)["input_ids"]), seq_len) for t in texts),
        sequences=lens.n_prompts,
        source="sampled",
        seconds=seconds,
        lens_file=lens_file,
    )


def fit_lens(model: LoadedModel, kind: str = "tuned", **options) -> FitReport:
    """``fit_tuned`` or ``fit_jacobian`` by name (the CLI's and the worker's entry)."""
    if kind == "tuned":
        allowed = {"tokens", "text", "text_name", "out", "seed", "refine_steps", "alpha", "should_stop", "progress"}
        return fit_tuned(model, **{k: v for k, v in options.items() if k in allowed})
    if kind == "jacobian":
        if options.get("text") is not None:
            raise InputError("The J-lens is fitted on text the model writes itself here: drop --text.")
        allowed = {"prompts", "allow_cpu", "out", "seed", "should_stop", "progress"}
        return fit_jacobian(model, **{k: v for k, v in options.items() if k in allowed and v is not None})
    raise InputError(f"Unknown lens kind {kind!r}: fit a tuned or a jacobian lens.")


__all__: Sequence[str] = (
    "DEFAULT_TOKENS", "NormalEquations", "estimate_jacobian", "fit_jacobian", "fit_lens", "fit_tuned",
    "refine_translators",
)
