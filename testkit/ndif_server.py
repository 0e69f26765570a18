"""A loopback server speaking NDIF's wire protocol as nnsight 0.8's ``RemoteBackend``
uses it, for the tests of lenstui's remote path. It is not NDIF.

What it copies from the ``ndif`` package (0.1.2, ``services/api/app.py`` and the model
actor's ``execute_traced_block``), so lenstui's client meets the same wire:

- ``GET /ping`` -> ``"pong"``; ``GET /status`` -> ``{"deployments": {...}}`` (HOT, RUNNING);
- ``WS /subscribe``: the first message is ``{"session_id": ...}``, then every status of a
  request posted with that session id (JSON text frames), the result last as a binary
  frame (``ResponseModel.pickle()``, its ``data`` the zstd-compressed ``torch.save`` of
  the saved values, as NDIF compresses when the request asks);
- ``POST /request``: multipart ``data`` (the JSON envelope) and ``blob`` (the serialized
  trace), the key in the ``ndif-api-key`` header: no key 401, a key that is no UUID 400
  (quoting the key back, as NDIF does) and an unknown one 403, with NDIF's own ``detail``
  sentences; else ``RECEIVED`` back over HTTP, then ``QUEUED``,
  ``RUNNING`` and ``COMPLETED`` (or ``ERROR`` with the reason) on the socket;
- a model key it does not serve fails with NDIF's "Could not deploy this model." line.

Each request is deserialized with nnsight's own ``RequestModel.deserialize`` against the
persistent objects of the model it serves and run the way ``execute_traced_block`` runs
it (a trace scope, then the marked values by name). There is no queue, no Ray, no
sandbox and no autocast; ``delay_s`` holds a request in ``QUEUED`` (a long queue);
every request's headers and sizes are kept in ``requests`` for the tests to read.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any, Optional

MISSING_KEY = "Missing or invalid API key. Please visit https://login.ndif.us/ to create a new one."
BAD_FORMAT = (
    "Invalid API key format: '{key}'. API keys must be in the format: "
    "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx. You can obtain a valid API key from https://login.ndif.us"
)


class LoopbackNdif:
    def __init__(self, lm: Any, repo_id: str, api_key: str, *, delay_s: float = 0.0):
        self.lm = lm  # the nnsight model it serves (dispatched: real weights)
        self.repo_id = repo_id
        self.api_key = api_key
        self.delay_s = delay_s
        self.model_key = lm.to_model_key()
        self.requests: list[dict] = []
        self._sockets: dict[str, Any] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._runner = None
        self._ready = threading.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def from_hub_cache(cls, cache, repo_id: str, api_key: str, **kwargs) -> "LoopbackNdif":
        """A server for the model saved as ``repo_id`` in the hub cache at ``cache``
        (``testkit.hub_cache``), loaded the way NDIF loads it (nnsight, by id), not started."""
        import huggingface_hub.constants as constants
        from nnsight import TransformersModel
        from nnsight.modeling import huggingface

        saved = constants.HF_HUB_CACHE
        constants.HF_HUB_CACHE = str(cache)
        huggingface._ID_CACHE[repo_id] = repo_id  # (its key without asking the hub)
        try:
            served = TransformersModel(repo_id, dispatch=True, task="text-generation")
        finally:
            constants.HF_HUB_CACHE = saved
        return cls(served, repo_id, api_key, **kwargs)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> "LoopbackNdif":
        threading.Thread(target=self._serve, name="loopback-ndif", daemon=True).start()
        if not self._ready.wait(20):
            raise RuntimeError("the loopback NDIF server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)

    def _serve(self) -> None:
        from aiohttp import web

        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_get("/ping", self._ping)
        app.router.add_get("/status", self._status)
        app.router.add_get("/subscribe", self._subscribe)
        app.router.add_post("/request", self._request)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    # ---------------------------------------------------------------- routes

    async def _ping(self, request):
        from aiohttp import web

        return web.json_response("pong")

    async def _status(self, request):
        from aiohttp import web

        entry = {
            "repo_id": self.repo_id,
            "model_key": self.model_key,
            "deployment_level": "HOT",
            "application_state": "RUNNING",
        }
        return web.json_response({"deployments": {self.repo_id: entry}})

    async def _subscribe(self, request):
        from aiohttp import web

        socket = web.WebSocketResponse()
        await socket.prepare(request)
        session_id = uuid.uuid4().hex
        self._sockets[session_id] = socket
        await socket.send_str(json.dumps({"session_id": session_id}))
        async for _ in socket:  # the client never sends: this ends when it leaves
            pass
        self._sockets.pop(session_id, None)
        return socket

    async def _request(self, request):
        from aiohttp import web
        from nnsight.schema.request import RequestModel
        from nnsight.schema.response import ResponseModel, Status

        form = await request.post()
        key = request.headers.get("ndif-api-key", "")
        blob = form["blob"].file.read()
        envelope = RequestModel.model_validate_json(form["data"])
        self.requests.append(
            {
                "headers": dict(request.headers),
                "envelope": envelope,
                "blob_bytes": len(blob),
                "body_bytes": request.content_length,
            }
        )
        if not key:
            return web.json_response({"detail": MISSING_KEY}, status=401)
        try:
            uuid.UUID(key)
        except ValueError:  # NDIF's own answer, which quotes the key back
            return web.json_response({"detail": BAD_FORMAT.format(key=key)}, status=400)
        if key != self.api_key:
            return web.json_response({"detail": "Invalid API key."}, status=403)
        job = uuid.uuid4().hex
        received = ResponseModel(id=job, status=Status.RECEIVED, description="Your job has been received and is waiting to be queued.")
        asyncio.get_running_loop().create_task(self._run(job, envelope, blob))
        return web.Response(text=received.model_dump_json(), content_type="application/json")

    # ---------------------------------------------------------------- the job

    async def _send(self, session_id: str, response, binary: bool = False) -> None:
        socket = self._sockets.get(session_id)
        if socket is None or socket.closed:
            return
        if binary:
            await socket.send_bytes(response.pickle())
        else:
            await socket.send_str(response.model_dump_json())

    async def _run(self, job: str, envelope, blob: bytes) -> None:
        from nnsight.schema.response import ResponseModel, Status

        session = envelope.session_id
        await asyncio.sleep(0.05)  # the client listens once its POST has returned
        await self._send(session, ResponseModel(id=job, status=Status.QUEUED, description="Your job has been queued."))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if envelope.model_key != self.model_key:
            reason = f"Could not deploy this model. {envelope.model_key.split(':', 1)[-1]} is not served here."
            await self._send(session, ResponseModel(id=job, status=Status.ERROR, description=reason))
            return
        await self._send(session, ResponseModel(id=job, status=Status.RUNNING, description="Your job has started running."))
        try:
            data = await asyncio.to_thread(self.execute, blob, envelope.compress)
        except Exception as err:  # the block failed: NDIF sends the reason as text
            await self._send(session, ResponseModel(id=job, status=Status.ERROR, description=f"{type(err).__name__}: {err}"))
            return
        done = ResponseModel(id=job, status=Status.COMPLETED, description="Your job has been completed.", data=data)
        await self._send(session, done, binary=True)

    def execute(self, blob: bytes, compress: bool) -> bytes:
        """Deserialize against the served model and run the block as NDIF's model actor
        does; -> the result blob (compressed when the request was)."""
        import io

        import torch
        import zstandard
        from nnsight.schema.request import RequestModel
        from nnsight.tracing.tracer import _saves, dec, inc

        started = time.perf_counter()
        tracer = RequestModel.deserialize(blob, self.lm._remoteable_persistent_objects(), compress=compress)
        inc()
        try:
            tracer.execute(tracer.info.code)
            marked = _saves()
            saved = {name: value for name, value in tracer.info.frame.f_locals.items() if id(value) in marked}
        finally:
            dec()
        buffer = io.BytesIO()
        torch.save(saved, buffer)
        data = buffer.getvalue()
        if compress:
            data = zstandard.ZstdCompressor(level=3).compress(data)
        self.requests[-1]["seconds"] = time.perf_counter() - started
        self.requests[-1]["result_bytes"] = len(data)
        return data
