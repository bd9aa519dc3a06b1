"""Pure ASGI middleware: request metrics (every request), API keys (401), body size cap while streaming (413).

Installed outermost first: `RequestMetrics` sees the answers of the other two, `ApiKeys` refuses before any
body is read, `BodyLimit` refuses a declared or streamed body past the route's cap.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from contextlib import suppress
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from earshot.serve.errors import error_body, error_response
from earshot.serve.metrics import Metrics
from earshot.serve.settings import MB, Settings

try:
    from fastapi.routing import iter_route_contexts
except ImportError:  # FastAPI < 0.137.2, where `app.routes` is a flat list

    def iter_route_contexts(routes):  # type: ignore[no-redef]
        return iter(routes)


DRAIN_LIMIT = 64 * MB  # a refused body up to this size is read and dropped before the 413 (never stored)


class RequestMetrics:
    """Counts every HTTP request by route, method, status and error type, and times it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics
        self._paths: set[str] | None = None

    def _route_paths(self, scope: Scope) -> set[str]:
        """Paths of the app's routes, to label requests answered before routing (all others are "other")."""
        if self._paths is None:
            self._paths = {getattr(r, "path", None) or "{" for r in iter_route_contexts(scope["app"].routes)}
        return self._paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        path, method = scope["path"], scope["method"]
        state: dict[str, Any] = {"status": 500}
        self.metrics.start()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                for k, v in message.get("headers", []):
                    if k == b"x-error-type":
                        state["error"] = v.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or (path if path in self._route_paths(scope) else "other")
            if state.get("error"):
                self.metrics.error(name, state["error"])
            self.metrics.observe(name, method, state["status"], time.perf_counter() - t0)


class ApiKeys:
    """401 for `/v1/*` and `/metrics` without a valid key (`X-API-Key` or `Authorization: Bearer`)."""

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]

    def authorized(self, scope: Scope) -> bool:
        headers = dict(scope["headers"])
        given = headers.get(b"x-api-key")
        auth = headers.get(b"authorization", b"")
        if not given and auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        return bool(given) and any(hmac.compare_digest(given, k) for k in self.keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.keys:
            path = scope["path"]
            needs_key = path.startswith("/v1/") or path == "/metrics"
            if needs_key and scope["method"] != "OPTIONS" and not self.authorized(scope):
                resp = error_response(
                    401,
                    error_body("AuthError", "unauthorized", "missing or invalid API key (X-API-Key or Bearer)"),
                    {"www-authenticate": "Bearer"},
                )
                return await resp(scope, receive, send)
        await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    """Raised from `receive` once a streamed body passes the cap."""


class BodyLimit:
    """413 for a body over the route's cap: refused on its Content-Length, or cut off while it streams in."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    def cap(self, path: str) -> int:
        """Bytes a request body to `path` may have."""
        if path.startswith("/v1/train"):
            return self.settings.max_train_upload_bytes
        if path.startswith(("/v1/predict", "/v1/spectrogram")):
            return self.settings.max_upload_bytes
        return MB

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        cap = self.cap(scope["path"])
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        too_big = error_body("UploadError", "too_large", f"request body over the {cap / MB:g} MB limit")
        if length is not None and length.isdigit() and int(length) > cap:
            if headers.get(b"expect", b"").lower() != b"100-continue" and int(length) <= DRAIN_LIMIT:
                await drain(receive)
            return await error_response(413, too_big, {"connection": "close"})(scope, receive, send)
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise BodyTooLarge()
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge:
            if started:
                raise
            await drain(receive)
            await error_response(413, too_big, {"connection": "close"})(scope, receive, send)


async def drain(receive: Receive, limit: int = DRAIN_LIMIT, seconds: float = 10.0) -> None:
    """Read and drop the rest of a refused body (bounded), so the client gets the 413 rather than a reset."""
    left = limit

    async def run() -> None:
        nonlocal left
        while left > 0:
            message = await receive()
            if message["type"] != "http.request":
                return
            left -= len(message.get("body", b""))
            if not message.get("more_body"):
                return

    with suppress(TimeoutError):
        await asyncio.wait_for(run(), seconds)
