"""The readout's own geometry: unembedding vectors with the final norm folded in.

The model reads a residual ``x`` as ``logits = ln_final(x) @ W_U + b_U``. Writing the
final norm as ``ln_final(x) = gain * n(x) + beta`` (``n`` = centre-and-scale for
LayerNorm, scale only for RMSNorm), the logit of token ``j`` is

    logit_j = n(x) . (W_U[:, j] * gain)  +  (b_U[j] + W_U[:, j] . beta)
            = n(x) . W_eff[j]             +  c[j]

so ``W_eff`` rows are the directions the readout really compares a normalized residual
with, and ``c`` is a per-token offset that no residual can change. Nearest neighbours,
"is this token its own best match" and the speakability LP all work on ``(W_eff, c)``.

The LayerNorm bias ``beta`` is therefore not dropped: it is folded into ``c``, exactly as
TransformerLens's ``fold_ln`` does. (A LayerNorm also constrains ``n(x)`` to be orthogonal
to the all-ones vector; that constraint is the speakability LP's business, not this
module's.) Post-unembedding transforms such as Gemma-2's logit soft-capping are
monotonic, so they change no argmax and are ignored here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lenstui.engine.model.load import LoadedModel

# float32 probe vs parameter read: generous enough for bf16 / fp16 models.
_PROBE_RTOL = 2e-2
_PROBE_ATOL = 2e-2


@dataclass(frozen=True)
class FinalNormAffine:
    """The final norm's affine part as the readout applies it."""

    gain: torch.Tensor  # [d_model] float32
    beta: torch.Tensor  # [d_model] float32 (zeros for RMSNorm or no norm)
    kind: str  # "LN", "RMS" or "none"
    source: str  # "weights" (parameters read directly) or "probe" (measured from the module)


def effective_unembedding(model: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_eff [d_vocab, d_model], c [d_vocab])``, float32, on the model's device.

    ``W_eff[j] = W_U[:, j] * gain`` and ``c[j] = b_U[j] + W_U[:, j] . beta`` (see the
    module doc). Kept in the model's caches: callers must not
    modify the returned tensors in place.
    """
    cached = model.caches.effective_unembedding
    if cached is not None:
        return cached
    affine = final_norm_affine(model)
    with torch.no_grad():
        W_U = model.W_U.detach().to(torch.float32)  # [d_model, d_vocab]
        W_eff = (W_U * affine.gain.to(W_U.device)[:, None]).T.contiguous()
        b_U = model.b_U
        c = (
            b_U.detach().to(torch.float32).clone()
            if b_U is not None
            else torch.zeros(W_U.shape[1], dtype=torch.float32, device=W_U.device)
        )
        c += affine.beta.to(W_U.device) @ W_U
    result = (W_eff, c)
    model.caches.effective_unembedding = result
    return result


def final_norm_affine(model: LoadedModel) -> FinalNormAffine:
    """The final norm's gain and bias, read from its parameters and checked by a probe.

    Parameters are what we prefer (exact), but conventions differ across families
    (Gemma's RMSNorm multiplies by ``1 + weight``; a folded bridge has unit weights), so
    the module is also run on a known input; when the parameter reading disagrees with
    what the module actually does, the measured values win.
    """
    cached = model.caches.final_norm_affine
    if cached is not None:
        return cached
    d_model = model.d_model
    device = model.W_U.device
    kind = {"LN": "LN", "LNPre": "LN", "RMS": "RMS", "RMSPre": "RMS"}.get(str(model.normalization_type), "none")
    module = model.ln_final
    ones = torch.ones(d_model, dtype=torch.float32, device=device)
    zeros = torch.zeros(d_model, dtype=torch.float32, device=device)
    if kind == "none" or not isinstance(module, torch.nn.Module):
        affine = FinalNormAffine(ones, zeros, "none", "weights")
    else:
        declared = _declared_affine(model.rmsnorm_uses_offset, module, ones, zeros)
        measured = _probe_affine(module, d_model, device)
        if measured is None or _close(declared, measured):
            affine = FinalNormAffine(declared[0], declared[1], kind, "weights")
        else:
            affine = FinalNormAffine(measured[0], measured[1], kind, "probe")
    model.caches.final_norm_affine = affine
    return affine


def _declared_affine(offset: bool, module, ones, zeros) -> tuple[torch.Tensor, torch.Tensor]:
    # TL bridges expose the wrapped HF module's parameters as attributes; a
    # NormalizationBridge also keeps the raw module as `original_component`.
    inner = getattr(module, "original_component", None)
    weight = _tensor_attr(module, "weight")
    if weight is None and inner is not None:
        weight = _tensor_attr(inner, "weight")
    bias = _tensor_attr(module, "bias")
    if bias is None and inner is not None:
        bias = _tensor_attr(inner, "bias")
    gain = ones if weight is None else weight.detach().to(torch.float32).to(ones.device)
    if weight is not None and offset:
        gain = 1.0 + gain
    beta = zeros if bias is None else bias.detach().to(torch.float32).to(ones.device)
    return gain, beta


def _tensor_attr(obj, name: str):
    try:
        value = getattr(obj, name, None)
    except Exception:  # some bridge attributes raise when the component is not set up
        return None
    return value if isinstance(value, torch.Tensor) else None


def _probe_affine(module, d_model: int, device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Measure ``gain`` and ``beta`` by running the norm on ``x`` and ``-x``.

    ``x`` has zero mean and no zero entries, so LayerNorm and RMSNorm both normalize it
    to ``x / rms(x)``; since ``n(-x) = -n(x)``, half the sum of the two outputs is
    ``beta`` and half the difference is ``gain * n(x)``.
    """
    if d_model < 3:
        return None
    pattern = [1.0, -1.0] * (d_model // 2)
    if d_model % 2:  # an odd width ends in a zero-sum triple instead
        pattern = pattern[: d_model - 3] + [1.0, 1.0, -2.0]
    x = torch.tensor(pattern, dtype=torch.float32, device=device) * 8.0  # eps negligible
    normalized = x / x.pow(2).mean().sqrt()
    try:
        param = next(module.parameters(), None)
        dtype = param.dtype if param is not None else torch.float32
        with torch.no_grad():
            out = module(torch.stack([x, -x])[None].to(dtype)).to(torch.float32)[0]
    except Exception:  # a norm that cannot run standalone: trust the parameters
        return None
    beta = (out[0] + out[1]) / 2
    gain = (out[0] - out[1]) / 2 / normalized
    return gain, beta


def _close(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> bool:
    return all(torch.allclose(p, q, rtol=_PROBE_RTOL, atol=_PROBE_ATOL) for p, q in zip(a, b))
