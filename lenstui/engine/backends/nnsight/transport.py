"""Where an nnsight trace runs, and what crosses the network when it does.

Three transports, one trace:

- ``local``: nnsight runs the block here, in this process (the reference).
- ``simulated``: the block goes through the remote path without a server. It is
  serialized exactly as nnsight's ``RemoteBackend`` serializes it for NDIF
  (``RequestModel.serialize``, zstd-compressed as ``CONFIG.API.COMPRESS`` says), then
  deserialized with lenstui's own modules hidden (nnsight's ``LocalSimulationBackend``:
  a reference to code that was not shipped fails here as it would on the server) and run;
  the result is packed as NDIF packs it (``torch.save`` of the saved values, zstd). Both
  sizes are recorded.
- ``ndif``: nnsight's ``RemoteBackend`` to an NDIF endpoint (NDIF's own, or a self-hosted
  one), with the key given here, lenstui's progress and cancel, and every failure turned
  into one sentence (:func:`remote_sentence`). The request's and the result's bytes on the
  wire are recorded.

The API key lives in :class:`Transport` only (``repr=False``), is handed to nnsight's
backend for its ``ndif-api-key`` header, and is scrubbed from every message that leaves
this module (:func:`scrub`): never printed, logged, or put in a result.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from lenstui.core.callbacks import Progress, StopCheck
from lenstui.core.errors import Cancelled, LenstuiError

from lenstui.store.ndif import DEFAULT_TIMEOUT_S, NDIF_ENDPOINT


class RemoteError(LenstuiError):
    """An NDIF request that did not come back with a result: one sentence, the session goes on."""


@dataclass
class Traffic:
    """One request's bytes: what was sent (the serialized, compressed trace) and what came
    back (the compressed result), measured, not estimated."""

    label: str
    request_bytes: int
    response_bytes: int
    seconds: float

    def to_json(self) -> dict:
        return {
            "label": self.label,
            "request_bytes": self.request_bytes,
            "response_bytes": self.response_bytes,
            "seconds": round(self.seconds, 4),
        }


@dataclass
class Transport:
    kind: str = "local"  # "local", "simulated" or "ndif"
    endpoint: Optional[str] = None  # the NDIF host (ndif only)
    api_key: Optional[str] = field(default=None, repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S
    traffic: list[Traffic] = field(default_factory=list, repr=False)
    # Where NDIF's job status goes when a call passes no progress of its own (the CLI's stderr).
    progress: Optional[Progress] = field(default=None, repr=False)

    @classmethod
    def local(cls) -> "Transport":
        return cls("local")

    @classmethod
    def simulated(cls) -> "Transport":
        return cls("simulated")

    @classmethod
    def ndif(cls, endpoint: str, api_key: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> "Transport":
        return cls("ndif", endpoint=endpoint.rstrip("/"), api_key=api_key, timeout_s=timeout_s)

    @property
    def remote(self) -> bool:
        return self.kind == "ndif"

    def backend(self, lm: Any, label: str, progress: Optional[Progress] = None, should_stop: Optional[StopCheck] = None):
        """The nnsight backend a trace or session runs with (None: nnsight's own, here)."""
        if self.kind == "local":
            return None
        if self.kind == "simulated":
            return SimulatedBackend(lm, self, label)
        return NdifBackend(lm, self, label, progress=progress or self.progress, should_stop=should_stop)

    def record(self, label: str, request_bytes: int, response_bytes: int, seconds: float) -> None:
        self.traffic.append(Traffic(label, request_bytes, response_bytes, seconds))

    def scrub(self, text: str) -> str:
        return scrub(text, self.api_key)


def scrub(text: str, secret: Optional[str]) -> str:
    """``text`` with ``secret`` replaced (a server or library may echo a header back)."""
    if secret and len(secret) >= 4:
        text = text.replace(secret, "[key]")
    return text


def packed_result(saves: dict) -> bytes:
    """A result as NDIF sends it back: ``torch.save`` of the saved values, zstd-compressed
    at the level NDIF's model actor uses (the ``ndif`` package, 0.1.2)."""
    import torch
    import zstandard

    buffer = io.BytesIO()
    torch.save(saves, buffer)
    return zstandard.ZstdCompressor(level=3).compress(buffer.getvalue())  # NDIF's model actor: level 3


def serialized_request(tracer: Any) -> bytes:
    """The bytes nnsight's RemoteBackend POSTs for ``tracer`` (its ``blob``), compressed
    as its config says."""
    from nnsight.ndif import pull_env
    from nnsight.schema.config import CONFIG
    from nnsight.schema.request import RequestModel

    pull_env()
    return RequestModel.serialize(tracer, CONFIG.API.COMPRESS)


def _register_shipped_code() -> None:
    """The in-trace functions travel by value (their source), never by module name: NDIF
    has no lenstui to import, and its sandbox would refuse it."""
    import cloudpickle

    from lenstui.engine.backends.nnsight import reduce

    cloudpickle.register_pickle_by_value(reduce)


def _saved_values(tracer: Any) -> dict:
    """The values a block saved (what a server sends back), by name."""
    from nnsight.tracing.tracer import _saves

    frame_locals = tracer.info.frame.f_locals
    marked = _saves()
    return {name: value for name, value in frame_locals.items() if id(value) in marked}


# ---------------------------------------------------------------- simulated


def _simulated_backend_class():
    from nnsight.intervention.backends.local import LocalSimulationBackend

    class _Simulated(LocalSimulationBackend):
        def __init__(self, lm, transport: Transport, label: str):
            super().__init__(lm)
            self.transport = transport
            self.label = label

        def __call__(self, tracer):
            import linecache

            from nnsight.schema.request import RequestModel

            started = time.perf_counter()
            _register_shipped_code()
            blob = serialized_request(tracer)
            persistent = self.model._remoteable_persistent_objects()
            filename = tracer.info.frame.f_code.co_filename
            saved_line = linecache.cache.get(filename)
            hidden = self._hide_local_modules()
            try:
                from nnsight.schema.config import CONFIG

                restored = RequestModel.deserialize(blob, persistent, compress=CONFIG.API.COMPRESS)
            finally:
                self._restore(hidden)
                if saved_line is not None:
                    linecache.cache[filename] = saved_line
                else:
                    linecache.cache.pop(filename, None)
            tracer.info.code = restored.info.code
            tracer.execute(tracer.info.code)
            response = packed_result(_saved_values(tracer))
            self.transport.record(self.label, len(blob), len(response), time.perf_counter() - started)

    return _Simulated


def SimulatedBackend(lm, transport: Transport, label: str):  # noqa: N802 - a class, built lazily
    return _simulated_backend_class()(lm, transport, label)


# ---------------------------------------------------------------- NDIF

# What NDIF's job statuses read as in the status line.
STATUS_WORDS = {
    "RECEIVED": "received",
    "QUEUED": "queued",
    "PROVISIONING": "provisioning",
    "DEPLOYING": "deploying the model",
    "DISPATCHED": "dispatched",
    "RUNNING": "running",
    "COMPLETED": "done",
    "LOG": "log",
}


class _Quiet:
    """Stands in for nnsight's terminal status display: updates go to lenstui's progress,
    and each wake-up between websocket messages checks for a cancel and the timeout."""

    enabled = True  # nnsight then wakes its receive loop every 0.1 s (refresh)
    verbose = False

    def __init__(self, backend: "Any"):
        self.backend = backend

    def update(self, response) -> None:
        self.backend.on_status(response)

    def refresh(self) -> None:
        self.backend.check()


def _ndif_backend_class():
    from nnsight.intervention.backends.remote import RemoteBackend

    class _Ndif(RemoteBackend):
        def __init__(self, lm, transport: Transport, label: str, progress=None, should_stop=None):
            super().__init__(lm.to_model_key(), host=transport.endpoint, api_key=transport.api_key or "",
                             env=lm._remoteable_get_env())
            self.transport = transport
            self.label = label
            self.progress = progress
            self.should_stop = should_stop
            self.display = _Quiet(self)
            self.started = time.perf_counter()
            self.request_bytes = 0

        def _serialize(self, tracer) -> bytes:
            _register_shipped_code()
            blob = super()._serialize(tracer)
            self.request_bytes = len(blob)
            if self.progress is not None:
                self.progress(f"NDIF: sending {self.label} ({_size(len(blob))})", None)
            return blob

        def finalize(self, content: bytes):
            self.transport.record(self.label, self.request_bytes, len(content), time.perf_counter() - self.started)
            return super().finalize(content)

        def on_status(self, response) -> None:
            word = STATUS_WORDS.get(getattr(response.status, "value", str(response.status)), "")
            if self.progress is not None and word and word != "log":
                waited = time.perf_counter() - self.started
                self.progress(f"NDIF: {self.label} {word} ({waited:.0f} s)", None)
            self.check()

        def check(self) -> None:
            if self.should_stop is not None and self.should_stop():
                raise Cancelled("cancelled while NDIF ran the request")
            if time.perf_counter() - self.started > self.transport.timeout_s:
                raise RemoteTimeout(self.transport.timeout_s)

    return _Ndif


class RemoteTimeout(Exception):
    def __init__(self, seconds: float):
        super().__init__(seconds)
        self.seconds = seconds


def NdifBackend(lm, transport: Transport, label: str, progress=None, should_stop=None):  # noqa: N802
    return _ndif_backend_class()(lm, transport, label, progress=progress, should_stop=should_stop)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


# ---------------------------------------------------------------- failures as sentences


def remote_sentence(err: BaseException, transport: Transport, model_name: str) -> str:
    """One sentence for whatever stopped a remote request (never carrying the key)."""
    host = transport.endpoint or NDIF_ENDPOINT
    text = transport.scrub(" ".join(str(err).split()))[:240]
    lowered = text.lower()
    if isinstance(err, RemoteTimeout):
        return (
            f"NDIF did not finish the request within {err.seconds:.0f} s (the queue may be long): "
            "try again, or raise timeout_s under [ndif] in config.toml."
        )
    if _connection_failure(err):
        return f"Cannot reach NDIF at {host} ({_first_words(text)}): check the network connection or the endpoint."
    if "api key" in lowered or "unauthorized" in lowered or "401" in lowered or "403" in lowered:
        return f"NDIF at {host} rejected the API key: check NDIF_API_KEY (or api_key under [ndif] in config.toml)."
    if "python version" in lowered:
        return f"NDIF at {host} refused this client's Python version ({_first_words(text)})."
    if "nnsight version" in lowered:
        return f"NDIF at {host} refused this nnsight version ({_first_words(text)}): upgrade nnsight."
    if "could not deploy" in lowered:  # NDIF's own line, with the reason it gives
        reason = text[lowered.index("could not deploy") + len("could not deploy this model"):].strip(" .:")
        reason = reason.split(" Traceback")[0].strip()
        return f"NDIF at {host} could not deploy {model_name}" + (f" ({_first_words(reason)})." if reason else ".")
    unhosted = ("not running", "not deployed", "not hosted", "no deployment", "does not host")
    if any(word in lowered for word in unhosted):
        return (
            f"NDIF at {host} does not host {model_name} right now: see https://nnsight.net/status for the "
            "models it serves."
        )
    return f"NDIF at {host} answered with an error: {text}"


def _connection_failure(err: BaseException) -> bool:
    import socket

    try:
        import httpx

        network = (httpx.TransportError,)
    except ImportError:  # pragma: no cover - a dependency of nnsight
        network = ()
    try:
        import websocket

        network = network + (websocket.WebSocketException,)
    except ImportError:  # pragma: no cover
        pass
    seen = err
    while seen is not None:
        if isinstance(seen, (ConnectionError, socket.gaierror, socket.timeout, TimeoutError, *network)):
            # A websocket handshake the server answered with an HTTP status is not a
            # network failure: it is the server speaking (a rejected key, say).
            status = getattr(seen, "status_code", None)
            if status is None:
                return True
        seen = seen.__cause__ or seen.__context__
    text = str(err).lower()
    return "failed to send request" in text and ("connect" in text or "name or service" in text)


def _first_words(text: str, limit: int = 120) -> str:
    text = text.strip().rstrip(".")
    return text if len(text) <= limit else text[: limit - 1] + "…"
