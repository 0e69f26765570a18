"""The readout as the speakability check sees it: exact float64 tables, the reachable
set, the tolerances, and the independent float64 forward pass that re-checks witnesses.

The model reads a pre-norm residual ``x`` as

    logits = W_U^T (gain * n(x) + beta) + b_U = W_eff n(x) + c

with ``n`` the final norm's normalisation (RMSNorm: ``x / sqrt(mean(x^2) + eps)``;
LayerNorm: ``(x - mean x) / sqrt(var x + eps)``), ``W_eff[j] = W_U[:, j] * gain`` and
``c[j] = b_U[j] + W_U[:, j] . beta`` (see ``lenstui.engine.inspect.geometry``).

Reachable set of ``z = n(x)``: ``||z||^2 = d * s / (s + eps)`` with ``s`` the mean square
(RMS) or variance (LN) of ``x``, so every ``z`` with ``||z|| < sqrt(d)`` is reached
(direction free) for RMSNorm, and every such ``z`` orthogonal to the all-ones vector for
LayerNorm. For LayerNorm the effective rows are projected onto that hyperplane (``P w``);
``w . z = (P w) . z`` there, so both norms become "rows ``V``, offsets ``c``, open ball of
radius ``R = sqrt(d)``".

Float64 tables are exact: ``W_U`` and ``gain`` are float32 (24-bit mantissas), so their
elementwise product fits a float64 mantissa without rounding.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from lenstui.core.errors import InputError
from lenstui.store.atomic import atomic_file
from lenstui.store.paths import cache_root

# Unit roundoff of float32 and float64.
U32 = 2.0**-24
U64 = 2.0**-53
# Float32 rounding bounds on a logit, gamma_{d + k} (see ``float32_gamma``): a length-d
# dot product costs d roundings; k counts the roundings each computation adds on top.
# The three computations differ, so the three k differ (keep them apart):
# - the model's own readout ``W_U^T (gain * z + beta) + b_U`` (the witness must survive
#   it whatever the kernel's summation order): k = 8, the elementwise gain, beta and
#   bias steps plus margin (``speak_tolerance``);
# - the scan's screen ``fl(V) . z + fl(c)`` with projected rows: k = 3, rounding V to
#   float32, rounding c, and the final add (``screen_error_bound``);
# - the scan's own-direction screen, whose float32 rows are the unprojected effective
#   rows ``fl(V + row_mean)``: k = 4, one more for adding the row mean back
#   (``screen_error_bound(..., full_rows=True)``).
MODEL_READOUT_ROUNDINGS = 8
SCREEN_ROUNDINGS = 3
FULL_ROW_SCREEN_ROUNDINGS = 4
# The screen bounds are themselves evaluated in floating point: 1% covers that.
SCREEN_BOUND_SLACK = 1.01
# A witness must beat the runner-up by this many times the worst-case float32 rounding
# error of a logit (see ``speak_tolerance``).
SPEAK_SAFETY = 2.0
# A certificate must bound t's best possible lead by this fraction of the largest logit
# magnitude the readout can produce (float64 noise in the certificate is ~1e-14 of it).
CERTIFICATE_RELATIVE_TOL = 1e-10
# Witnesses of a readout with offsets are placed this far inside the open ball.
WITNESS_RADIUS_FRACTION = 1.0 - 1e-4
# Vocabulary columns converted to float64 at a time in the independent forward pass.
_FORWARD_CHUNK = 8192


def float32_gamma(n: int) -> float:
    """Higham's gamma_n = n u / (1 - n u) for float32: the relative error bound of a
    computation with n successive roundings (a length-n dot product, say)."""
    return n * U32 / (1 - n * U32)


@dataclass
class ReadoutTables:
    """What a Readout derives once from its rows, one field each (built on first use)."""

    direction_only: Optional[bool] = None  # every offset the same: only z's direction matters
    screen: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # float32 rows and offsets for screening
    host_tables: Optional[tuple[Any, Any]] = None  # (V, c) as numpy arrays, for the LP (speak/lp.py)
    aim_squared_norms: Optional[torch.Tensor] = None  # |v_j|^2, float64 (speak/aim.py)
    summaries: Optional[dict[str, Any]] = None  # costly summaries by name, also kept on disk (``store``)


@dataclass
class Readout:
    """One model's final norm + unembedding, as plain tensors (no model needed).

    ``rows`` are the unembedding rows ``W_U^T`` exactly as the model stores them; ``V``
    (float64, exact) are the effective rows projected onto the reachable subspace.
    """

    rows: torch.Tensor  # [n, d] unembedding rows (W_U^T), model dtype
    bias: torch.Tensor  # [n] b_U, float64
    gain: torch.Tensor  # [d] float64
    beta: torch.Tensor  # [d] float64
    eps: float
    kind: str  # "RMS" or "LN"
    name: str
    decode: Callable[[int], str]
    final_norm: Optional[torch.nn.Module] = None  # the model's own module, if any
    unembed_weight: Optional[torch.Tensor] = None  # the model's own W_U [d, n], if any
    unembed_bias: Optional[torch.Tensor] = None  # the model's own b_U [n], if any
    screen_rows: Optional[torch.Tensor] = None  # float32 rows for bulk screening, if given
    V: torch.Tensor = field(init=False, repr=False)  # [n, d] float64 projected effective rows
    row_mean: torch.Tensor = field(init=False, repr=False)  # [n] mean of each effective row (LN)
    c: torch.Tensor = field(init=False, repr=False)  # [n] float64 offsets
    tables: "ReadoutTables" = field(default_factory=lambda: ReadoutTables(), repr=False)
    # Where the geometry's costly summaries (whitening, norms, fingerprint) are kept
    # between runs, keyed by the raw weights (``readout_for_model``); None: not kept.
    store: Optional[Path] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in ("RMS", "LN"):
            raise InputError(
                f"The speakability check needs a final RMSNorm or LayerNorm; this readout has {self.kind!r}."
            )
        n, d = self.rows.shape
        if n < 2:
            raise InputError("The speakability check needs a vocabulary of at least two tokens.")
        with torch.no_grad():
            rows64 = self.rows.detach().to(torch.float64)
            W = rows64 * self.gain[None, :]
            self.c = (self.bias + rows64 @ self.beta).contiguous()
            if self.kind == "LN":
                self.row_mean = W.mean(dim=1)
                W -= self.row_mean[:, None]
            else:
                self.row_mean = torch.zeros(n, dtype=torch.float64, device=W.device)
            self.V = W.contiguous()

    # -- shape and constants -------------------------------------------------

    @property
    def n_vocab(self) -> int:
        return int(self.V.shape[0])

    @property
    def d(self) -> int:
        return int(self.V.shape[1])

    @property
    def radius(self) -> float:
        """Supremum of ||n(x)||: the reachable set is the open ball of this radius."""
        return math.sqrt(self.d)

    @property
    def direction_only(self) -> bool:
        """True when every offset is the same: then only the direction of z matters."""
        if self.tables.direction_only is None:
            self.tables.direction_only = bool((self.c == self.c[0]).all())
        return self.tables.direction_only

    @property
    def witness_radius(self) -> float:
        """||z|| of witnesses: for a direction-only readout the norm reached by a residual
        of unit RMS (so witness residuals have a sensible size); otherwise just inside the
        ball, where offsets matter least."""
        if self.direction_only:
            return self.radius / math.sqrt(1.0 + self.eps)
        return self.radius * WITNESS_RADIUS_FRACTION

    @property
    def max_row_norm(self) -> float:
        return self._summary("max_row_norm", lambda: float(self.V.norm(dim=1).max()))

    def full_row_norms(self, ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Norms of the unprojected effective rows ``W_eff[j]`` (float64), for ``ids`` or
        all: ``||V_j||^2 + d * row_mean_j^2``, since ``V_j`` is ``W_eff[j]`` minus its mean."""
        V, mean = (self.V, self.row_mean) if ids is None else (self.V[ids], self.row_mean[ids])
        return (V.pow(2).sum(1) + self.d * mean.pow(2)).sqrt()

    @property
    def max_full_row_norm(self) -> float:
        return self._summary("max_full_row_norm", lambda: float(self.full_row_norms().max()))

    @property
    def max_abs_offset(self) -> float:
        return self._summary("max_abs_offset", lambda: float(self.c.abs().max()))

    @property
    def logit_scale(self) -> float:
        """The largest |logit| any reachable z can produce (up to the row norms)."""
        return self.max_row_norm * self.radius + self.max_abs_offset

    def speak_tolerance(self, z_norm: float) -> float:
        """Gap a witness of norm ``z_norm`` must exceed: twice the worst-case float32
        rounding of a logit as the model computes it, ``W_U^T (gain * z + beta) + b_U``:
        ``gamma_{d+8} * (max|W_eff[j]| |z| + max(|b_j| + |W_U[:, j]| |beta|))`` with the
        rows unprojected, so the model's own float32 readout ranks t first too, whatever
        its summation order."""
        offset_term = self._summary("float32_offset_term", self._float32_offset_term)
        gamma = float32_gamma(self.d + MODEL_READOUT_ROUNDINGS)
        return SPEAK_SAFETY * gamma * (self.max_full_row_norm * z_norm + offset_term)

    def _float32_offset_term(self) -> float:
        beta_norm = float(self.beta.norm())
        offsets = self.bias.abs()
        if beta_norm:
            offsets = offsets + self.rows.detach().to(torch.float64).norm(dim=1) * beta_norm
        return float(offsets.max())

    @property
    def certificate_tolerance(self) -> float:
        """Largest lead of t a certificate may leave open and still say ``unspeakable``."""
        return CERTIFICATE_RELATIVE_TOL * self.logit_scale

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """Onto the reachable subspace (all of R^d for RMS, 1-perp for LN)."""
        if self.kind == "LN":
            return z - z.mean(dim=-1, keepdim=True)
        return z

    def reachable_set_text(self) -> str:
        base = "||z|| < sqrt(d_model) = %.4g" % self.radius
        if self.kind == "LN":
            return "z orthogonal to the all-ones vector, " + base
        return base + " (any direction)"

    # -- exact logits --------------------------------------------------------

    def logits64(self, z: torch.Tensor) -> torch.Tensor:
        """Effective logits V z + c for a normalized z ([d] or [b, d]), float64."""
        z = z.to(self.V.device, torch.float64)
        return z @ self.V.T + self.c

    def own_logits64(self, token_id: int) -> torch.Tensor:
        """w_j . w_t + c_j with the unprojected effective rows (the hard-to-speak test)."""
        v_t = self.V[token_id]
        return self.V @ v_t + self.d * self.row_mean * self.row_mean[token_id] + self.c

    def own_logits64_at(self, token_ids: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """``own_logits64`` for a batch: [b, k] logits of ``candidates[b]`` along the
        unprojected effective row of ``token_ids[b]`` (float64, exact inputs)."""
        dots = torch.einsum("bkd,bd->bk", self.V[candidates], self.V[token_ids])
        return dots + self.d * self.row_mean[candidates] * self.row_mean[token_ids][:, None] + self.c[candidates]

    def full_rows32(self) -> torch.Tensor:
        """The unprojected effective rows in float32 (the model's own when it has them)."""
        if self.screen_rows is not None:
            return self.screen_rows
        return (self.V + self.row_mean[:, None]).to(torch.float32)

    def screen_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(float32 rows, float32 offsets) for bulk screening; rows equal fl(V)."""
        if self.tables.screen is None:
            if self.screen_rows is not None and self.kind == "RMS":
                # fl(W_U * gain) in float32 is exactly fl of the exact product: same as fl(V).
                rows32 = self.screen_rows
            else:
                rows32 = self.V.to(torch.float32)
            self.tables.screen = (rows32, self.c.to(torch.float32))
        return self.tables.screen

    def screen_error_bound(self, z_norms: torch.Tensor, *, full_rows: bool = False) -> torch.Tensor:
        """Rigorous bound on |float32 screened logit - exact logit| for witnesses z that are
        float32 vectors of the given norms: gamma_{d+k} (max|row| |z| + max|c|), over the
        projected rows ``fl(V)`` (k = SCREEN_ROUNDINGS) or, with ``full_rows``, over
        ``full_rows32()`` (k = FULL_ROW_SCREEN_ROUNDINGS)."""
        if full_rows:
            gamma, row_norm = float32_gamma(self.d + FULL_ROW_SCREEN_ROUNDINGS), self.max_full_row_norm
        else:
            gamma, row_norm = float32_gamma(self.d + SCREEN_ROUNDINGS), self.max_row_norm
        return gamma * (row_norm * z_norms + self.max_abs_offset) * SCREEN_BOUND_SLACK

    # -- witnesses as residuals ---------------------------------------------

    def residual_for(self, z: torch.Tensor) -> torch.Tensor:
        """A pre-norm residual x (float32, as the model would hold it) with n(x) = z.

        x = s z: n(s z) = s z / sqrt(s^2 ||z||^2 / d + eps), which equals z when
        s = sqrt(eps / (1 - ||z||^2 / d)); needs ||z|| < sqrt(d)."""
        z = self.project(z.to(torch.float64))
        q = float(z.pow(2).sum()) / self.d
        if not 0.0 < q < 1.0:
            raise ValueError("witness outside the reachable ball")
        scale = math.sqrt(self.eps / (1.0 - q))
        return (z * scale).to(torch.float32)

    def normalize64(self, x: torch.Tensor) -> torch.Tensor:
        """The final norm's normalisation, in float64, from its definition."""
        x = x.to(torch.float64)
        if self.kind == "LN":
            centred = x - x.mean()
            return centred / torch.sqrt(centred.pow(2).mean() + self.eps)
        return x / torch.sqrt(x.pow(2).mean() + self.eps)

    def forward64(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of residual x recomputed independently in float64 from the raw
        parameters (norm definition, eps, gain, beta, W_U, b_U), over the whole vocabulary."""
        x = x.to(self.V.device)
        normed = self.normalize64(x) * self.gain + self.beta
        out = torch.empty(self.n_vocab, dtype=torch.float64, device=self.V.device)
        for start in range(0, self.n_vocab, _FORWARD_CHUNK):
            block = self.rows[start : start + _FORWARD_CHUNK].detach().to(torch.float64)
            out[start : start + _FORWARD_CHUNK] = block @ normed
        return out + self.bias

    def forward_module(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """Logits of residual x through the model's own final-norm module and W_U, b_U, in
        the model's dtype (None for a readout built from plain arrays)."""
        if self.final_norm is None or self.unembed_weight is None:
            return None
        weight = self.unembed_weight
        with torch.no_grad():
            normed = self.final_norm(x.to(weight.device, weight.dtype)[None, None, :])[0, 0]
            logits = normed @ weight
            if self.unembed_bias is not None:
                logits = logits + self.unembed_bias
        return logits.detach()

    # -- summaries kept on disk ----------------------------------------------------

    def _summary(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()``, memoized, and kept in ``store`` so a later process (a one-off
        ``lenstui speak``) reads it instead of spending a second or two on it again."""
        stored = self._stored()
        if key not in stored:
            stored[key] = compute()
            if self.store is not None:
                _write_summaries(self.store, stored)
        return stored[key]

    def _stored(self) -> dict:
        """The summaries by name (those kept in ``store``, read once, and those computed since)."""
        if self.tables.summaries is None:
            self.tables.summaries = _read_summaries(self.store, self.d, self.V.device) if self.store is not None else {}
        return self.tables.summaries

    # -- whitening -----------------------------------------------------------

    def whitening(self) -> dict[str, torch.Tensor]:
        """Mean row, ZCA (Sigma^-1/2) and Sigma^+ of the effective rows (memoized).

        A strong shared direction makes a few tokens win most dot products; whitening
        removes it, so the whitened own direction of a token is usually a witness."""
        return self._summary("whitening", self._whitening)

    def _whitening(self) -> dict[str, torch.Tensor]:
        V = self.V
        mean = V.mean(dim=0)
        centred = V - mean
        cov = centred.T @ centred / V.shape[0]
        evals, evecs = torch.linalg.eigh(cov)
        keep = evals > evals.max() * 1e-9  # drops the all-ones direction for LN
        inv_sqrt = torch.where(keep, evals.clamp_min(1e-300).rsqrt(), torch.zeros_like(evals))
        inv = torch.where(keep, 1.0 / evals.clamp_min(1e-300), torch.zeros_like(evals))
        return {"mean": mean, "zca": (evecs * inv_sqrt) @ evecs.T, "siginv": (evecs * inv) @ evecs.T}

    def fingerprint(self) -> str:
        """Hash of everything a verdict depends on (effective rows, offsets, norm)."""
        return self._summary("fingerprint", self._fingerprint)

    def _fingerprint(self) -> str:
        digest = hashlib.sha256()
        digest.update(f"{self.kind}|{self.eps!r}|{self.n_vocab}|{self.d}".encode())
        digest.update(np.ascontiguousarray(self.V.cpu().numpy()).tobytes())
        digest.update(np.ascontiguousarray(self.c.cpu().numpy()).tobytes())
        return digest.hexdigest()


# Bump when a kept summary changes meaning: older files are then ignored.
_SUMMARY_FORMAT = 1


def weights_key(rows: torch.Tensor, bias: torch.Tensor, gain: torch.Tensor, beta: torch.Tensor, eps: float, kind: str) -> str:
    """A hash of the raw readout weights (their bytes as stored; ~0.1 s for SmolLM2)."""
    digest = hashlib.sha256(f"{_SUMMARY_FORMAT}|{kind}|{eps!r}|{tuple(rows.shape)}|{rows.dtype}".encode())
    for tensor in (rows, bias, gain, beta):
        data = tensor.detach().cpu().contiguous()
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def _read_summaries(path: Path, d: int, device) -> dict:
    """The kept summaries; a missing, damaged or mis-shaped file is just not there."""
    try:
        with np.load(path, allow_pickle=False) as data:
            out: dict[str, Any] = {}
            for name in ("max_row_norm", "max_full_row_norm", "max_abs_offset", "float32_offset_term"):
                if name in data:
                    out[name] = float(data[name])
            if "fingerprint" in data:
                out["fingerprint"] = str(data["fingerprint"])
            if all(f"whitening.{k}" in data for k in ("mean", "zca", "siginv")):
                whitening = {
                    k: torch.from_numpy(np.array(data[f"whitening.{k}"], dtype=np.float64)).to(device)
                    for k in ("mean", "zca", "siginv")
                }
                if whitening["zca"].shape == (d, d) and whitening["mean"].shape == (d,):
                    out["whitening"] = whitening
            return out
    except Exception:  # not there, truncated, not an npz: computed again
        return {}


def _write_summaries(path: Path, stored: dict) -> None:
    arrays: dict[str, np.ndarray] = {}
    for name, value in stored.items():
        if name == "whitening":
            for k, tensor in value.items():
                arrays[f"whitening.{k}"] = tensor.cpu().numpy()
        else:
            arrays[name] = np.array(value)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as handle:
            np.savez(handle, **arrays)
    except OSError:
        pass  # an unwritable cache only costs the next process the computation


def readout_from_arrays(
    rows: Any,
    bias: Any = None,
    *,
    kind: str = "RMS",
    gain: Any = None,
    beta: Any = None,
    eps: float = 1e-5,
    name: str = "arrays",
    decode: Optional[Callable[[int], str]] = None,
) -> Readout:
    """A readout from plain arrays: ``rows`` [n_vocab, d] unembedding rows (``W_U^T``),
    ``bias`` [n_vocab] (``b_U``), the final norm's kind ("RMS"/"LN"), gain, beta, eps."""
    rows_t = torch.as_tensor(np.asarray(rows) if not isinstance(rows, torch.Tensor) else rows)
    if rows_t.ndim != 2:
        raise InputError("rows must be a [n_vocab, d_model] matrix.")
    n, d = rows_t.shape

    def vec(value: Any, size: int, default: float) -> torch.Tensor:
        if value is None:
            return torch.full((size,), default, dtype=torch.float64)
        out = torch.as_tensor(np.asarray(value, dtype=np.float64)).reshape(-1)
        if out.numel() != size:
            raise InputError(f"Expected {size} values, got {out.numel()}.")
        return out

    return Readout(
        rows=rows_t,
        bias=vec(bias, n, 0.0),
        gain=vec(gain, d, 1.0),
        beta=vec(beta, d, 0.0),
        eps=float(eps),
        kind=kind,
        name=name,
        decode=decode or (lambda i: f"#{i}"),
    )


def readout_for_model(model) -> Readout:
    """The readout of a LoadedModel (kept in its caches)."""
    cached = model.caches.speak_readout
    if cached is not None:
        return cached
    from lenstui.engine.inspect.geometry import effective_unembedding, final_norm_affine

    affine = final_norm_affine(model)
    W_eff32, _ = effective_unembedding(model)
    W_U = model.W_U.detach()
    b_U = model.b_U
    b_U = b_U.detach() if b_U is not None else None
    n = W_U.shape[1]
    readout = Readout(
        rows=W_U.T,
        bias=(b_U.to(torch.float64) if b_U is not None else torch.zeros(n, dtype=torch.float64)).to(W_U.device),
        gain=affine.gain.to(W_U.device, torch.float64),
        beta=affine.beta.to(W_U.device, torch.float64),
        eps=final_norm_eps(model),
        kind=affine.kind,
        name=model.name,
        decode=model.decode,
        final_norm=model.ln_final,
        unembed_weight=W_U,
        unembed_bias=b_U,
        screen_rows=W_eff32 if W_eff32.dtype == torch.float32 else None,
    )
    key = weights_key(readout.rows, readout.bias, readout.gain, readout.beta, readout.eps, readout.kind)
    readout.store = cache_root() / "geometry" / f"{key[:32]}.npz"
    model.caches.speak_readout = readout
    return readout


def final_norm_eps(model) -> float:
    """The final norm's epsilon, read from the module (HF names differ)."""
    module = model.ln_final
    for obj in (getattr(module, "original_component", None), module):
        for attr in ("variance_epsilon", "eps", "epsilon"):
            value = getattr(obj, attr, None) if obj is not None else None
            if isinstance(value, (int, float)):
                return float(value)
    if model.anatomy is None:
        return float(getattr(model.bridge.cfg, "eps", 1e-5))
    return float(getattr(model.hf.config, "rms_norm_eps", getattr(model.hf.config, "layer_norm_epsilon", 1e-5)))
