"""Can the model say token t at all? A certified check for one token.

Verdicts, each with its proof (tolerances in ``speak.geometry``):

- ``speakable``: a witness, a pre-norm residual that the model's own final norm and
  unembedding turn into logits with t the strict argmax, by a gap re-checked in float64
  over the whole vocabulary that exceeds twice the worst-case float32 rounding of a logit;
- ``unspeakable``: convex weights on other tokens whose float64 check bounds t's best
  possible lead over the whole reachable set by the certificate tolerance;
- ``undetermined``: neither passed its tolerance; the numbers are reported.

Also reported: "hard to speak" (t is not the argmax of w_j . w_t + c_j: its own direction
does not say it) and which token wins instead.

Order of work: cheap candidate directions (own, centred, whitened), each verified over the
whole vocabulary in float64 (a few matrix-vector products); an exact twin of t (identical
effective row, no lower offset) is an immediate certificate; only then the LP.
"""

from __future__ import annotations

import time
from typing import Optional

import torch

from lenstui.core.callbacks import Progress, StopCheck, check_stop
from lenstui.core.errors import InputError
from lenstui.core.speak_result import SpeakResult, TokenText
from lenstui.core.verdicts import Method, Verdict
from lenstui.engine.speak.geometry import Readout, readout_for_model
from lenstui.engine.speak.lp import check_certificate, solve_speak_lp

# Candidate witness directions, in the order the scan tries them (see candidate_directions).
CANDIDATE_FAMILIES = (Method.WHITENED, Method.PRECISION, Method.CENTRED, Method.OWN)
# Competitors reported as binding at most.
MAX_BINDING = 8


def as_readout(source) -> Readout:
    """A Readout from a LoadedModel (memoized) or a Readout itself."""
    if isinstance(source, Readout):
        return source
    return readout_for_model(source)


def candidate_directions(readout: Readout, token_ids: torch.Tensor, family: str) -> torch.Tensor:
    """Candidate witnesses (normalized residuals, float64, [b, d]) for a batch of tokens,
    on the reachable set at the witness radius.

    ``own``: v_t. ``centred``: v_t minus the mean row (the shared direction that makes a
    few tokens win most dot products). ``whitened``: Sigma^-1/2 (v_t - mean). ``precision``:
    Sigma^+ (v_t - mean), the direction a linear discriminant would take."""
    rows = readout.V[token_ids]
    if family != Method.OWN:
        white = readout.whitening()
        rows = rows - white["mean"]
        if family == Method.WHITENED:
            rows = rows @ white["zca"]
        elif family == Method.PRECISION:
            rows = rows @ white["siginv"]
        elif family != Method.CENTRED:
            raise ValueError(family)
    rows = readout.project(rows)
    norms = rows.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return rows * (readout.witness_radius / norms)


def hard_to_speak(readout: Readout, token_id: int) -> tuple[bool, int]:
    """(hard to speak?, best match): argmax_j of w_j . w_t + c_j in float64; t is hard to
    speak when some other token reaches at least its value (ties count against t)."""
    logits = readout.own_logits64(token_id)
    own = logits[token_id].item()
    logits[token_id] = -torch.inf
    rival = int(torch.argmax(logits))
    if logits[rival].item() >= own:
        return True, rival
    return False, int(token_id)


def find_twin(readout: Readout, token_id: int) -> Optional[int]:
    """Another token with exactly the same effective row and an offset at least t's: t
    can never beat it, so it is a one-token certificate (duplicated unused rows)."""
    same = (readout.V == readout.V[token_id]).all(dim=1) & (readout.c >= readout.c[token_id])
    same[token_id] = False
    hits = torch.nonzero(same).flatten()
    return int(hits[0]) if len(hits) else None


def _gaps(readout: Readout, token_id: int, zs: torch.Tensor) -> torch.Tensor:
    """Exact (float64) gap of t over its strongest competitor at each z in a batch."""
    logits = readout.logits64(zs)
    own = logits[:, token_id].clone()
    logits[:, token_id] = -torch.inf
    return own - logits.max(dim=1).values


def check_speakable(
    model,
    token_id: int,
    *,
    should_stop: Optional[StopCheck] = None,
    progress: Optional[Progress] = None,
    time_limit: Optional[float] = None,
) -> SpeakResult:
    """Certified verdict for one token. ``model``: a LoadedModel or a Readout.

    ``should_stop()`` is checked between steps and LP rounds (raises Cancelled);
    ``progress(message, fraction)`` reports them."""
    started = time.perf_counter()
    readout = as_readout(model)
    t = int(token_id)
    if not 0 <= t < readout.n_vocab:
        raise InputError(f"Token id {t} is out of range: {readout.name} has ids 0..{readout.n_vocab - 1}.")

    def step(fraction: float, message: str) -> None:
        check_stop(should_stop, "speakability check cancelled")
        if progress is not None:
            progress(message, fraction)

    with torch.no_grad():
        step(0.0, "own direction")
        hard, best_match = hard_to_speak(readout, t)
        cert_tol = readout.certificate_tolerance

        # Cheap candidates, all checked over the whole vocabulary in float64 at once.
        step(0.05, "candidate directions")
        t_index = torch.tensor([t], device=readout.V.device)
        families = (Method.OWN,) + CANDIDATE_FAMILIES[:-1]
        candidates = [candidate_directions(readout, t_index, family)[0] for family in families]
        if not readout.direction_only:
            families += (Method.ZERO,)  # z = 0: the offsets alone decide
            candidates.append(torch.zeros(readout.d, dtype=torch.float64, device=readout.V.device))
        gaps = _gaps(readout, t, torch.stack(candidates))
        pick = int(torch.argmax(gaps))
        best_z, best_gap, method = candidates[pick], float(gaps[pick]), families[pick]

        certificate, lp = None, None
        if best_gap <= readout.speak_tolerance(float(best_z.norm())):
            twin = find_twin(readout, t)
            if twin is not None:
                certificate, method = check_certificate(readout, t, [twin], [1.0]), Method.TWIN
            else:
                step(0.3, "LP")
                lp = solve_speak_lp(
                    readout,
                    t,
                    seeds=[best_z] if best_z.norm() > 0 else [],
                    should_stop=should_stop,
                    progress=(lambda m, f: progress(m, 0.3 + 0.65 * f)) if progress else None,
                    time_limit=time_limit,
                )
                if lp.status == "witness" or (lp.z is not None and lp.gap > best_gap):
                    best_z, best_gap, method = lp.z, lp.gap, Method.LP
                if lp.status == "certificate":
                    certificate, method = lp.certificate, Method.LP

        step(0.97, "re-checking")
        result = _assemble(readout, t, hard, best_match, best_z, best_gap, method, certificate, lp, cert_tol)
    result.seconds = time.perf_counter() - started
    if progress is not None:
        progress(result.verdict, 1.0)
    return result


def _assemble(readout, t, hard, best_match, best_z, best_gap, method, certificate, lp, cert_tol) -> SpeakResult:
    decode = readout.decode

    def ref(i: int) -> TokenText:
        return TokenText(int(i), decode(int(i)))

    result = SpeakResult(
        id=t,
        text=decode(t),
        verdict=Verdict.UNDETERMINED,
        hard_to_speak=hard,
        best_match=ref(best_match),
        margin=None,
        witness_resid=None,
        binding=[],
        certificate=None,
        seconds=0.0,
        model=readout.name,
        method=method,
        norm=readout.kind,
        reachable_set=readout.reachable_set_text(),
        speak_tolerance=readout.speak_tolerance(readout.witness_radius),
        certificate_tolerance=cert_tol,
        decode=decode,
    )
    if lp is not None:
        result.lp_rounds, result.lp_constraints = lp.rounds, lp.constraints

    if certificate is not None and certificate.bound <= cert_tol:
        result.verdict = Verdict.UNSPEAKABLE
        result.certificate = certificate
        order = sorted(range(len(certificate.ids)), key=lambda k: -certificate.weights[k])
        result.binding = [ref(certificate.ids[k]) for k in order[:MAX_BINDING]]
        result.reason = (
            f"no reachable residual gives it a lead above {certificate.bound:.3g} "
            f"(tolerance {cert_tol:.3g})"
        )
        return result

    if best_z is not None:
        verified = _verify_witness(readout, t, best_z)
        result.speak_tolerance = verified["tolerance"]
        result.runner_up = ref(verified["runner_up"])
        result.module_margin = verified["module_gap"]
        if verified["ok"]:
            result.verdict = Verdict.SPEAKABLE
            result.margin = verified["gap"]
            result.witness_resid = verified["resid"]
            if method == Method.LP and lp is not None and lp.binding:
                result.binding = [ref(j) for j in lp.binding[:MAX_BINDING]]
            else:
                result.binding = [ref(j) for j in verified["close"]]
            result.reason = f"witness from the {method} direction"
            return result
        result.best_gap_found = verified["gap"] if verified["gap"] is not None else best_gap
        result.reason = verified["why"]
    if lp is not None:
        result.reason = "; ".join(r for r in (result.reason, lp.message) if r)
        result.binding = [ref(j) for j in lp.binding[:MAX_BINDING]]
        if lp.certificate is not None:
            result.certificate = lp.certificate  # reported, though above tolerance
    return result


def _verify_witness(readout: Readout, t: int, z: torch.Tensor) -> dict:
    """Turn z into a pre-norm residual, then re-check it: float64 from the parameters over
    the whole vocabulary, and through the model's own modules when there are any."""
    tolerance = readout.speak_tolerance(float(z.norm()))
    try:
        resid = readout.residual_for(z) if float(z.norm()) > 0 else torch.zeros(readout.d, dtype=torch.float32)
    except ValueError as err:
        return {"ok": False, "gap": None, "tolerance": tolerance, "runner_up": t, "module_gap": None, "why": str(err)}
    logits = readout.forward64(resid)
    own = float(logits[t])
    logits[t] = -torch.inf
    runner_up = int(torch.argmax(logits))
    gap = own - float(logits[runner_up])
    close = torch.nonzero(logits >= logits[runner_up] - max(tolerance, 1e-9 * abs(own))).flatten()
    close = sorted(close.tolist(), key=lambda j: -float(logits[j]))[:MAX_BINDING]

    module_gap = None
    module_logits = readout.forward_module(resid)
    if module_logits is not None:
        module_logits = module_logits.to(torch.float64)
        module_own = float(module_logits[t])
        module_logits[t] = -torch.inf
        module_gap = module_own - float(module_logits.max())
    ok = gap > tolerance and (module_gap is None or module_gap > 0)
    if gap <= tolerance:
        why = f"best witness gap {gap:.3g} is not above the tolerance {tolerance:.3g}"
    elif not ok:
        why = f"float64 gap {gap:.3g} but the model's own modules give {module_gap:.3g}"
    else:
        why = ""
    return {
        "ok": ok,
        "gap": gap,
        "tolerance": tolerance,
        "runner_up": runner_up,
        "module_gap": module_gap,
        "resid": [float(v) for v in resid.tolist()],
        "close": close,
        "why": why,
    }
