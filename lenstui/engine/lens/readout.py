"""The fused readout: residual vectors -> top-k, entropy, KL and target ranks, at the
matmul's speed and without a ``[vectors, vocab]`` tensor.

``lens.py`` says *what* a lens run is; this module says *how fast*. A block of
residual vectors is read through the model's own final norm (the plain model's module,
or the TransformerLens bridge's for a model only the bridge reads; applied by
:meth:`Unembedding.normalize`), ``W_U``, ``b_U`` and the adapter's
post-unembedding transform (softcap, logit scaling), walking the vocabulary in blocks
of ``block`` tokens. Per vector it keeps, in float32:

- the running top-k (ids and logits);
- an online logsumexp (running max ``m`` and ``z = sum exp(logit - m)``);
- ``sum exp(logit - m) * (logit - m)``, so entropy = ``log z - that / z`` without the
  cancellation of ``lse - E[logit]`` at large logits;
- for KL(reference || row): the reference's own running max and normaliser and
  ``sum p_ref * (logit_row - logit_ref)``, so KL = ``lse_row - lse_ref - E_ref[row - ref]``,
  exactly 0 for the reference row itself;
- each target's logit (gathered from the block it falls in) and its rank, the count of
  logits strictly above it (ties are not above), exactly as
  ``(row_logits > target_logit).sum()``.

Extra memory is a few ``vectors x block`` float32 tensors. On CPU everything runs in
float32 whatever the model's dtype (bfloat16 matmuls on CPU are ~200x slower); on a GPU
with a half-precision model the matmul runs in the model's dtype, the reductions in
float32, and the top-k and target logits are recomputed in float32 at the end.

TransformerLens' ``logit_readout`` stays the reference in the tests.

**How exact.** ``logit_error_bound`` and ``log_prob_error_bound`` bound, per vector, how
far the float32 numbers are from exact arithmetic on the same normalised vectors (Higham's
``gamma_n``, as in ``engine/speak/geometry.py``): the tests hold this readout (and
TransformerLens' own) to a float64 computation within those bounds, not to each other's
rounding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch

from lenstui.core.callbacks import StopCheck, check_stop
from lenstui.engine.speak.geometry import float32_gamma

# Vocabulary tokens per block. Measured on the embedded model, 496-512 vectors, 1 thread on
# the shared 2-core machine: one run gave 2048: 1.50x, 4096: 1.17x, 8192: 1.50x the matmul
# floor; a more loaded run 1024: 1.18x, 2048: 1.05x, 4096: 1.68x. The sweep is noisy there:
# bench/bench_instant.py prints it; re-check on a quiet machine.
DEFAULT_BLOCK = 4096
# From this many reference vectors on, KL's cross term is read as one product with the
# weight block ((x_row - x_ref) . (p_ref W)); below it, as differences of the block's
# logits: for a few references (a generation step has one) that product is a pass over
# the whole weight block for a handful of rows, several times the [n, block] differences.
_MIXED_REFERENCES = 8
# Candidates kept beyond top-k when the matmul ran in half precision, re-ranked in float32.
_HALF_PRECISION_MARGIN = 8


@dataclass
class Unembedding:
    """The model's readout, prepared once per model (weights laid out for vocab blocks)."""

    weight: torch.Tensor  # [d_vocab, d_model], rows contiguous, in compute_dtype
    bias: Optional[torch.Tensor]  # [d_vocab] in compute_dtype, None when all zero
    norm: Optional[torch.nn.Module]  # the bridge's ln_final (None: the model has no final norm)
    transform: Optional[Callable[[torch.Tensor], torch.Tensor]]  # elementwise, None = identity
    compute_dtype: torch.dtype
    device: torch.device
    # (vectors, block tokens) -> whether the weight-first product is the faster, measured
    # on first use (``_weight_first``).
    orientation: dict = field(default_factory=dict, repr=False)

    @property
    def d_vocab(self) -> int:
        return int(self.weight.shape[0])

    def normalize(self, vectors: torch.Tensor, apply_norm: bool = True) -> torch.Tensor:
        """[n, d] residual vectors -> what the unembedding reads (final norm or raw), float32."""
        if apply_norm and self.norm is not None:
            param = next(self.norm.parameters(), None)
            dtype = param.dtype if param is not None else vectors.dtype
            with torch.no_grad():
                # Norms take [batch, pos, d]; their statistics are per vector, so the
                # rows stand in for positions (as TransformerLens' _run_ln_final does).
                vectors = self.norm(vectors.to(device=self.device, dtype=dtype)[None])[0]
        # float32 even when the matmul runs in half precision: read_out recomputes the
        # top-k and target logits from these exact values.
        return vectors.to(device=self.device, dtype=torch.float32)

    def logits(self, normed: torch.Tensor, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
        """Logits of normalised vectors for vocabulary ids [start, stop), float32."""
        weight = self.weight[start:stop]
        bias = None if self.bias is None else self.bias[start:stop]
        if self._weight_first(normed, weight, bias):
            out = _weight_first_product(normed, weight, bias)
        else:
            out = _vectors_first_product(normed, weight, bias)
        if self.transform is not None:
            out = self.transform(out)
        return out.float()

    def _weight_first(self, normed: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
        """Whether ``(W x^T)^T`` beats ``x W^T`` for this shape. On a CPU, MKL's product of a
        few vectors (under ``SKINNY_VECTORS``) with the vocabulary rows runs several times
        faster in one operand order than the other, and which one depends on the count
        (measured here: 8 vectors 14 vs 25 ms a 4096-token block one way, 31 vectors the
        other way round). So the first product of each shape times both, once."""
        n = int(normed.shape[0])
        if n >= SKINNY_VECTORS or normed.device.type != "cpu":
            return False
        key = (n, int(weight.shape[0]))
        choice = self.orientation.get(key)
        if choice is None:
            choice = self.orientation[key] = _faster_weight_first(normed, weight, bias)
        return choice


# Fewer vectors than this take the measured operand order (``Unembedding._weight_first``).
SKINNY_VECTORS = 64


def _vectors_first_product(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    if bias is not None:
        return torch.addmm(bias, x, weight.T)
    return x @ weight.T


def _weight_first_product(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    # [B, d] @ [d, n], then laid out as [n, B] (the reductions that follow read rows).
    if bias is not None:
        return torch.addmm(bias[:, None], weight, x.T).T.contiguous()
    return (weight @ x.T).T.contiguous()


def _faster_weight_first(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], repeats: int = 3) -> bool:
    """Time both operand orders (the best of ``repeats`` each, after one warm-up)."""
    best = []
    for product in (_vectors_first_product, _weight_first_product):
        product(x, weight, bias)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            product(x, weight, bias)
            times.append(time.perf_counter() - started)
        best.append(min(times))
    return best[1] < 0.9 * best[0]  # a clear win only: the usual order otherwise


def unembedding(model: Any) -> Unembedding:
    """The prepared readout of a LoadedModel (kept in the model's caches): read from the
    plain model where its anatomy is known, else from the TransformerLens bridge."""
    cached = model.caches.unembedding
    if cached is None:
        anatomy = model.anatomy
        if anatomy is not None:  # the family's own transforms (soft-cap, logit scale) after the unembedding
            cached = _prepared(model.W_U, model.b_U, model.ln_final, transform=anatomy.logit_transform)
        else:
            bridge = model.bridge
            try:
                cached = _prepare_unembedding(bridge)
            except Exception as err:  # noqa: BLE001 - a load-time failure: one sentence, not a traceback
                from lenstui.core.errors import ModelLoadError, clipped

                raise ModelLoadError(
                    f"The readout cannot read {model.name} through TransformerLens' bridge: "
                    f"{clipped(str(err).splitlines()[0] if str(err) else type(err).__name__, 200)}"
                ) from None
        model.caches.unembedding = cached
    return cached


def _prepared(w_u: torch.Tensor, bias: Optional[torch.Tensor], norm, transform) -> Unembedding:
    """The readout's layout of an unembedding ``w_u`` [d_model, d_vocab] (and its bias)."""
    device = w_u.device
    half = w_u.dtype in (torch.float16, torch.bfloat16)
    compute_dtype = w_u.dtype if (half and device.type != "cpu") else torch.float32
    with torch.no_grad():
        # W_U is [d_model, d_vocab]; tied models expose it as a view of the embedding,
        # whose transpose is already contiguous: then no copy is made.
        weight = w_u.detach().T.to(dtype=compute_dtype).contiguous()
        if bias is not None:
            bias = bias.detach().to(device=device, dtype=compute_dtype)
            if not bool(bias.any()):
                bias = None  # an all-zero bias costs a pass over every block for nothing
    return Unembedding(
        weight=weight, bias=bias, norm=norm, transform=transform, compute_dtype=compute_dtype, device=device
    )


def _prepare_unembedding(bridge: Any) -> Unembedding:
    """The readout through the bridge: its final norm and any output transform its
    adapter applies (softcap, logit scaling)."""
    from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter
    from transformer_lens.tools.analysis.logit_lens import (
        _final_norm,
        _require_decoder_unembed,
    )
    from transformer_lens.utilities.activation_functions import softcap_enabled
    from transformer_lens.utilities.quantization import require_readable_weight

    _require_decoder_unembed(bridge, operation="lenstui readout")
    w_u = require_readable_weight(bridge.W_U, operation="read logits through W_U", owner=bridge)
    adapter = getattr(bridge, "adapter", None)
    transform = None
    if adapter is not None and callable(getattr(adapter, "apply_output_logits_transform", None)):
        overridden = type(adapter).apply_output_logits_transform is not ArchitectureAdapter.apply_output_logits_transform
        capped = softcap_enabled(getattr(bridge.cfg, "output_logits_soft_cap", None))
        if overridden or capped:
            transform = adapter.apply_output_logits_transform
    bias = getattr(bridge, "b_U", None)
    return _prepared(w_u, bias if isinstance(bias, torch.Tensor) else None, _final_norm(bridge), transform)


# Roundings a logit takes beyond its length-d dot product: the bias add, the conversion of
# the (float32) normalised vector, and margin.
LOGIT_ROUNDINGS = 4
# Roundings of a log-probability beyond its logit's and the sum's: the shift by the max,
# exp, the division, the log, merging two blocks' (max, log z) (per merge); and margin.
LOG_PROB_ROUNDINGS = 8
MERGE_ROUNDINGS = 4
_TINY32 = float(torch.finfo(torch.float32).tiny)  # below it float32 underflows (absolute error)


def logit_error_bound(unembed: Unembedding, normed: torch.Tensor, *, input_error: float = 0.0) -> torch.Tensor:
    """[n, vocab] float64 bounds on |float32 logit - exact logit| of each normalised vector
    (``normed`` [n, d], as :meth:`Unembedding.normalize` returns them) and each token.

    A logit is ``w_j . x + b_j``: a length-d float32 dot product and an add, whatever the
    order of summation within ``gamma_{d+k} (sum_i |w_ji x_i| + |b_j|)`` (Higham's
    componentwise bound; ``float32_gamma``). ``input_error``: a relative error already in
    each component of ``x`` (another float32 normalisation of the same residual) adds
    ``input_error * sum_i |w_ji x_i|``. For the float32 path (CPU) without a
    post-unembedding transform (a softcap ``c tanh(l / c)`` is 1-Lipschitz: the bound
    holds up to a few more roundings)."""
    d = int(normed.shape[-1])
    magnitude = normed.double().abs() @ unembed.weight.double().abs().T  # [n, vocab]
    bias = 0.0 if unembed.bias is None else unembed.bias.double().abs()
    return float32_gamma(d + LOGIT_ROUNDINGS) * (magnitude + bias) + input_error * magnitude


def log_prob_error_bound(logit_error: torch.Tensor, exact_logits: torch.Tensor, block: int = DEFAULT_BLOCK) -> torch.Tensor:
    """[n, vocab] bounds on |float32 log-probability - exact| of every token, from the
    logits' bounds ``logit_error`` and the exact logits (both [n, vocab], float64).

    ``log p_j = s_j - log z`` with ``s_j = l_j - m`` (m: the largest computed logit) and
    ``z = sum_k exp(s_k)``. Each ``s_k`` is off by ``a_k = eps_k + u |s_k|``, so z by the
    factor ``sum_k p_k exp(a_k)``: ``log z`` by at most ``sum_k p_k (exp(a_k) - 1)`` (the
    tokens that carry the mass count), plus the sum's own ``gamma_(terms)`` for any order
    of summation. ``read_out`` sums ``block`` tokens at a time and merges the
    ``ceil(vocab / block)`` partial (max, log z) pairs; a single softmax over the whole
    vocabulary (TransformerLens' ``logit_readout``) is ``block=vocab``."""
    u = float32_gamma(1)
    vocab = int(exact_logits.shape[-1])
    terms = min(block, vocab)
    merges = -(-vocab // terms)
    shifted = exact_logits - exact_logits.max(dim=-1, keepdim=True).values
    log_p = torch.log_softmax(exact_logits, dim=-1)
    a = logit_error + u * shifted.abs()
    log_z = (log_p.exp() * torch.expm1(a)).sum(dim=-1, keepdim=True)
    sums = float32_gamma(terms + MERGE_ROUNDINGS * merges + LOG_PROB_ROUNDINGS)
    return a + log_z + sums + u * log_p.abs()


def prob_error_bound(exact_probs: torch.Tensor, log_prob_error: torch.Tensor) -> torch.Tensor:
    """|float32 p - exact p| <= p (exp(delta) - 1) for a log-probability off by at most
    delta (same shapes), plus float32's underflow below ``finfo.tiny``."""
    return exact_probs * torch.expm1(log_prob_error) + _TINY32


@dataclass
class ReadoutStats:
    """Per vector (float32, on the readout's device)."""

    top_ids: torch.Tensor  # [n, k] int64, by descending logit
    top_logits: torch.Tensor  # [n, k]
    max_logit: torch.Tensor  # [n] the row's largest logit
    log_z: torch.Tensor  # [n] log sum exp(logit - max_logit): logsumexp = max_logit + log_z
    entropy: torch.Tensor  # [n] nats
    kl: Optional[torch.Tensor]  # [n] KL(reference || row), nats; None without a reference
    target_logits: Optional[torch.Tensor]  # [n, T]
    target_ranks: Optional[torch.Tensor]  # [n, T] int64: logits strictly above the target

    @property
    def lse(self) -> torch.Tensor:
        return self.max_logit + self.log_z

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """[n, j] logits of these vectors -> log-probabilities (shift first: exact-ish)."""
        return (logits - self.max_logit[:, None]) - self.log_z[:, None]

    @property
    def top_probs(self) -> torch.Tensor:
        return self.log_probs(self.top_logits).exp()

    @property
    def target_probs(self) -> Optional[torch.Tensor]:
        if self.target_logits is None:
            return None
        return self.log_probs(self.target_logits).exp()


def read_out(
    unembed: Unembedding,
    normed: torch.Tensor,
    *,
    top_k: int,
    targets: Optional[torch.Tensor] = None,
    reference: Union[None, int, torch.Tensor] = None,
    block: int = DEFAULT_BLOCK,
    should_stop: Optional[StopCheck] = None,
) -> ReadoutStats:
    """Read ``normed`` vectors [n, d] (already through :meth:`Unembedding.normalize`).

    ``targets``: [n, T] token ids per vector (T >= 1). ``reference``: the distribution KL
    is measured from, either [m, d] normalised vectors or an int m meaning "the last m of
    ``normed``"; vector i is compared with reference i % m (n must be a multiple of m), so
    a [rows x positions] stack flattened row-major with the final row's m = positions
    vectors as reference gives KL(final || row) per cell. Raises Cancelled between
    vocabulary blocks when ``should_stop()`` turns true.
    """
    n, d = normed.shape
    vocab = unembed.d_vocab
    if not 1 <= top_k <= vocab:
        raise ValueError(f"top_k must be in 1..{vocab}")
    block = max(1, int(block))
    half = unembed.compute_dtype != torch.float32
    keep = min(vocab, top_k + _HALF_PRECISION_MARGIN) if half else top_k
    x = normed.to(device=unembed.device, dtype=unembed.compute_dtype)
    x32 = normed.to(device=unembed.device, dtype=torch.float32) if half else x  # for the float32 recompute
    dev = x.device
    f32 = dict(device=dev, dtype=torch.float32)

    ref_x: Optional[torch.Tensor] = None
    n_ref = 0
    if reference is not None:
        if isinstance(reference, int):
            n_ref = reference
        else:
            ref_x = reference.to(device=dev, dtype=unembed.compute_dtype)
            n_ref = ref_x.shape[0]
        if n_ref < 1 or n % n_ref:
            raise ValueError(f"{n} vectors do not split into groups of {n_ref} references")
    groups = n // n_ref if n_ref else 0
    if n_ref:
        ref_vectors = x[n - n_ref :] if ref_x is None else ref_x  # [m, d]

    # Running (over vocabulary blocks) per vector: max logit, log sum exp(logit - max),
    # entropy, top-k. The logsumexp stays split as max + log_z: logits reach ~200, where a
    # float32 ulp is 1.5e-5, and probabilities are exp((logit - max) - log_z).
    run_max = torch.full((n,), -torch.inf, **f32)
    run_log_z = torch.zeros(n, **f32)
    run_entropy = torch.zeros(n, **f32)
    top_vals = torch.full((n, keep), -torch.inf, **f32)
    top_ids = torch.zeros((n, keep), device=dev, dtype=torch.long)
    if n_ref:
        ref_max = torch.full((n_ref,), -torch.inf, **f32)
        ref_log_z = torch.zeros(n_ref, **f32)
        ref_cross = torch.zeros(n, **f32)  # E_ref[l_row - l_ref] so far
    if targets is not None:
        targets = targets.to(device=dev, dtype=torch.long).reshape(n, -1)
        n_targets = targets.shape[1]
        guess = _target_logits(unembed, x, targets, block=block)  # the counting threshold; checked below
        exact = guess.clone()
        above = torch.zeros((n, n_targets), device=dev, dtype=torch.long)

    for start in range(0, vocab, block):
        check_stop(should_stop)
        stop = min(vocab, start + block)
        logits = unembed.logits(x, start, stop)  # [n, B] float32
        # softmax is one vectorised pass (torch's elementwise exp is several times slower);
        # its max is 1/z for z = sum exp(l - max), so the block's logsumexp costs nothing.
        probs = torch.softmax(logits, dim=1)
        block_max = logits.amax(dim=1)
        block_log_z = -torch.log(probs.amax(dim=1))
        block_entropy = block_log_z - (torch.linalg.vecdot(probs, logits) - block_max)
        run_max, run_log_z, keep_old, take_new = _merge_lse(run_max, run_log_z, block_max, block_log_z)
        run_entropy = (
            keep_old * run_entropy
            + take_new * block_entropy
            - torch.xlogy(keep_old, keep_old)
            - torch.xlogy(take_new, take_new)
        )
        if n_ref:
            if ref_x is None:
                ref_logits, ref_probs = logits[n - n_ref :], probs[n - n_ref :]
            else:
                ref_logits = unembed.logits(ref_x, start, stop)
                ref_probs = torch.softmax(ref_logits, dim=1)
            if unembed.transform is None and n_ref >= _MIXED_REFERENCES:
                # The logits are linear in x (the bias cancels in the difference), so
                # E_ref[l_row - l_ref] over this block is (x_row - x_ref) . (p_ref @ W_block):
                # an [n, d] product instead of another pass over [n, block].
                mixed = ref_probs.to(unembed.compute_dtype) @ unembed.weight[start:stop]  # [m, d]
                block_cross = torch.linalg.vecdot(
                    (x.view(groups, n_ref, -1) - ref_vectors).float(), mixed.float()
                ).reshape(n)
            else:
                # Differences first, so the reference row's own term is exactly zero.
                diff = logits.view(groups, n_ref, -1) - ref_logits
                block_cross = torch.linalg.vecdot(diff, ref_probs).reshape(n)
                del diff
            ref_max, ref_log_z, ref_old, ref_new = _merge_lse(
                ref_max, ref_log_z, ref_logits.amax(dim=1), -torch.log(ref_probs.amax(dim=1))
            )
            ref_cross = ref_old.repeat(groups) * ref_cross + ref_new.repeat(groups) * block_cross
            del ref_logits, ref_probs
        del probs
        # Running top-k: the block's best, merged with the best so far.
        block_top = torch.topk(logits, k=min(keep, stop - start), dim=1)
        merged_vals = torch.cat([top_vals, block_top.values], dim=1)
        merged_ids = torch.cat([top_ids, block_top.indices + start], dim=1)
        best = torch.topk(merged_vals, k=keep, dim=1)
        top_vals = best.values
        top_ids = merged_ids.gather(1, best.indices)
        if targets is not None:
            for t in range(n_targets):
                column = targets[:, t]
                above[:, t] += (logits > guess[:, t : t + 1]).sum(dim=1, dtype=torch.int32)  # 3x an int64 sum
                inside = (column >= start) & (column < stop)
                if bool(inside.any()):
                    local = (column - start).clamp(0, stop - start - 1)
                    exact[:, t] = torch.where(inside, logits.gather(1, local[:, None])[:, 0], exact[:, t])
        del logits

    entropy = run_entropy.clamp_min(0.0)
    kl = None
    if n_ref:
        # KL(ref || row) = sum p_ref (l_ref - lse_ref - l_row + lse_row)
        lse_gap = (run_max.view(groups, n_ref) - ref_max) + (run_log_z.view(groups, n_ref) - ref_log_z)
        kl = (lse_gap - ref_cross.view(groups, n_ref)).reshape(n).clamp_min(0.0)

    target_logits = target_ranks = None
    if targets is not None:
        target_ranks = above
        # The count used the guessed target logit as its threshold; where the target's own
        # in-block value differs from the guess (last-bit rounding of a different kernel),
        # recount that vector against its own full row, so ties behave exactly.
        if half:
            exact = _target_logits(unembed, x32, targets, float32=True)
        else:
            for row, t in (guess != exact).nonzero().tolist():
                full = unembed.logits(x[row : row + 1])[0]
                above[row, t] = int((full > full[targets[row, t]]).sum())
                exact[row, t] = full[targets[row, t]]
        target_logits = exact
    if half:
        top_vals, top_ids = _refine_top_k(unembed, x32, top_ids, top_k)
    return ReadoutStats(
        top_ids=top_ids[:, :top_k],
        top_logits=top_vals[:, :top_k],
        max_logit=run_max,
        log_z=run_log_z,
        entropy=entropy,
        kl=kl,
        target_logits=target_logits,
        target_ranks=target_ranks,
    )


def _merge_lse(max_a, log_z_a, max_b, log_z_b):
    """Two disjoint parts of a softmax, each as (max, log sum exp(l - max)) -> the union's
    (max, log_z) and each part's share of the total mass (w_a + w_b = 1).

    The union's entropy is then sum_i w_i (H_i - log w_i), H_i each part's own entropy.
    """
    new_max = torch.maximum(max_a, max_b)
    a = (max_a - new_max) + log_z_a  # -inf for an empty part
    b = (max_b - new_max) + log_z_b
    log_z = torch.logaddexp(a, b)
    return new_max, log_z, torch.exp(a - log_z), torch.exp(b - log_z)


def _target_logits(
    unembed: Unembedding, x: torch.Tensor, targets: torch.Tensor, float32: bool = False, block: int = DEFAULT_BLOCK
) -> torch.Tensor:
    """[n, T] logits of each vector's own targets.

    Computed by the same GEMM as the vocabulary blocks, over the distinct target rows
    padded to at least 64 (a narrow product takes a GEMV path that rounds differently),
    so the value matches the in-block logit bit for bit in practice; read_out still checks.
    """
    unique, inverse = torch.unique(targets, return_inverse=True)
    rows = unique
    if rows.numel() < 64:
        pad = torch.arange(min(64, unembed.d_vocab), device=rows.device)
        rows = torch.cat([rows, pad])[: max(64, rows.numel())] if unembed.d_vocab >= 64 else rows
    weight = unembed.weight[rows]
    xs = x
    if float32:
        weight, xs = weight.float(), x.float()
    bias = None if unembed.bias is None else unembed.bias[rows].to(weight.dtype)
    # The operand order of the blocks' products (Unembedding.logits): the same rounding.
    first_block = slice(0, min(block, unembed.d_vocab))
    block_bias = None if unembed.bias is None else unembed.bias[first_block]
    if not float32 and unembed._weight_first(xs, unembed.weight[first_block], block_bias):
        out = _weight_first_product(xs, weight, bias)
    else:
        out = _vectors_first_product(xs, weight, bias)  # [n, U (+ padding)]
    if unembed.transform is not None:
        out = unembed.transform(out)
    return out.float().gather(1, inverse.reshape(targets.shape[0], -1))


def _refine_top_k(unembed: Unembedding, x: torch.Tensor, candidates: torch.Tensor, k: int):
    """Recompute half-precision top-k candidates' logits in float32 and re-rank them."""
    values = _target_logits(unembed, x, candidates, float32=True)
    best = torch.topk(values, k=k, dim=1)
    return best.values, candidates.gather(1, best.indices)
