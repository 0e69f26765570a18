"""Opening a model with the nnsight backend: here (``--backend nnsight``), or on NDIF
(``--remote``), with every refusal one sentence (a ``ModelLoadError``: the CLI exits 2).

Remote, in this order, and nothing goes out before the step that needs it:

1. the API key: ``NDIF_API_KEY``, else ``api_key`` under ``[ndif]`` in config.toml; none is
   a refusal before any connection is made;
2. the model's config and tokenizer from the Hugging Face cache (no weights; nothing is
   downloaded unless ``--allow-download``): nnsight builds the model on the meta device;
3. one ``GET /status`` to the endpoint: it is reachable, and it hosts the model (when the
   answer lists what it hosts).

Then every trace goes to that endpoint with the key in nnsight's ``ndif-api-key`` header.
"""

from __future__ import annotations

from typing import Optional

from lenstui.core.callbacks import Progress
from lenstui.core.errors import ModelLoadError
from lenstui.engine.backends.nnsight.model import NnsightModel, open_remote, wrap_local
from lenstui.engine.backends.nnsight.transport import Transport, remote_sentence, scrub
from lenstui.store.ndif import require_key

def open_model(
    spec: Optional[str],
    *,
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    placement=None,
    progress: Optional[Progress] = None,
    allow_download: bool = False,
    remote: bool = False,
    endpoint: Optional[str] = None,
) -> NnsightModel:
    """The nnsight backend over ``spec``: loaded here and wrapped (``remote`` False), or
    nnsight's meta model of a Hugging Face id whose traces run on NDIF."""
    if not remote:
        from lenstui.engine.model.wiring import load_checked

        loaded = load_checked(spec, device=device, dtype=dtype, placement=placement, progress=progress,
                            allow_download=allow_download)
        return wrap_local(loaded)
    settings = require_key(endpoint)
    if not spec:
        raise ModelLoadError(
            "--remote opens a model NDIF hosts, named by its Hugging Face id: pass --model "
            "(e.g. meta-llama/Llama-3.3-70B-Instruct)."
        )
    transport = Transport.ndif(settings.endpoint, settings.api_key, settings.timeout_s)
    model = open_remote(spec, transport, allow_download=allow_download, progress=progress)
    # (Where the weights go is NDIF's to decide: --device, --dtype and the placement flags
    # do not travel.)
    if progress is not None:
        progress(f"asking NDIF at {settings.endpoint} whether it hosts {spec}", 0.8)
    hosted = hosted_models(transport, spec)
    if hosted is not None and spec not in hosted:
        shown = ", ".join(sorted(hosted)[:6]) + (" …" if len(hosted) > 6 else "")
        raise ModelLoadError(
            f"NDIF at {settings.endpoint} does not host {spec} right now"
            + (f" (it serves {shown})." if hosted else ".")
        )
    model.notes.append(f"Traces run on NDIF at {settings.endpoint}; only their cells come back.")
    return model


# How long the status check waits (seconds): a dead network should fail fast.
STATUS_TIMEOUT = (5.0, 20.0)


def hosted_models(transport: Transport, repo_id: str) -> Optional[set[str]]:
    """The repo ids ``GET /status`` lists as deployed and running (None when the answer
    does not list them: the server's first request then says). Raises ModelLoadError
    with a sentence when the endpoint cannot be reached or refuses."""
    import httpx

    headers = {"ndif-api-key": transport.api_key} if transport.api_key else None
    try:
        response = httpx.get(
            f"{transport.endpoint}/status",
            timeout=httpx.Timeout(STATUS_TIMEOUT[0], read=STATUS_TIMEOUT[1]),
            headers=headers,
        )
        response.raise_for_status()
        answer = response.json()
    except httpx.HTTPStatusError as err:
        detail = scrub(err.response.text[:200], transport.api_key)
        raise ModelLoadError(remote_sentence(RuntimeError(f"{err.response.status_code} {detail}"), transport, repo_id)) from None
    except (httpx.HTTPError, OSError, ValueError) as err:
        raise ModelLoadError(remote_sentence(err, transport, repo_id)) from None
    deployments = answer.get("deployments") if isinstance(answer, dict) else None
    if not isinstance(deployments, dict):
        return None
    running = set()
    for name, value in deployments.items():
        if not isinstance(value, dict):
            continue
        if value.get("deployment_level", "HOT") in ("HOT", "WARM") and value.get("application_state", "RUNNING") == "RUNNING":
            running.add(value.get("repo_id", name))
    return running
