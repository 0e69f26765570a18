"""Where ``--remote`` sends traces and with which key: the endpoint and the NDIF API key,
from the command line, config.toml's ``[ndif]`` table and the environment (torch-free, so
the CLI can refuse before anything is imported or sent).

The key is never part of a repr, a message or a log line: :class:`RemoteSettings` keeps it
out of its repr, and the sentences here never quote it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from lenstui.core.errors import ModelLoadError

NDIF_ENDPOINT = "https://api.ndif.us"
DEFAULT_TIMEOUT_S = 600.0

NO_KEY = (
    "--remote needs an NDIF API key: set NDIF_API_KEY, or api_key under [ndif] in config.toml "
    "(create one at https://login.ndif.us); nothing was sent."
)


@dataclass(frozen=True)
class RemoteSettings:
    endpoint: str
    api_key: Optional[str] = field(default=None, repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S


def remote_settings(endpoint: Optional[str] = None) -> RemoteSettings:
    """``endpoint`` (``--endpoint``), else ``endpoint`` under ``[ndif]`` in config.toml,
    else ``NDIF_HOST``, else NDIF's own; the key from ``NDIF_API_KEY``, else the config's.
    ModelLoadError for an endpoint that is no http(s) URL."""
    from lenstui.store.config import load_config

    ndif = load_config()[0].ndif
    chosen = endpoint or ndif.endpoint or os.environ.get("NDIF_HOST") or NDIF_ENDPOINT
    if not chosen.startswith(("http://", "https://")):
        raise ModelLoadError(f"The NDIF endpoint must start with http:// or https://, not {chosen[:80]!r}.")
    key = (os.environ.get("NDIF_API_KEY") or "").strip() or (ndif.api_key or "").strip() or None
    return RemoteSettings(chosen.rstrip("/"), key, float(ndif.timeout_s or DEFAULT_TIMEOUT_S))


def require_key(endpoint: Optional[str] = None) -> RemoteSettings:
    """The settings, or ModelLoadError(NO_KEY) when there is no key (before anything is sent)."""
    settings = remote_settings(endpoint)
    if not settings.api_key:
        raise ModelLoadError(NO_KEY)
    return settings
