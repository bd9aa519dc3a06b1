"""Pure ASGI middleware: request metrics (every request), body size cap (413) and early answers that every
client reads, API keys (401), admission and deadlines of the inference routes (503, 504).

Installed outermost first: `RequestMetrics` sees every answer (but those of `Shed`, which counts its own);
`BodyLimit` refuses a declared or streamed body past the route's cap and drains the unread body behind any early
answer; `ApiKeys` refuses before any body is read; `Admission` takes an inference slot (or answers 503) before
routing, then holds the request to its deadline. `Shed`, outside all of them and of FastAPI's own layers,
answers the plain overloaded request at the least cost.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from contextlib import suppress
from typing import Any
from urllib.parse import parse_qs

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from earshot.prediction import Prediction
from earshot.serve.errors import ApiError, error_body, error_response
from earshot.serve.inference import TICKET, Inference, Ticket
from earshot.serve.metrics import Metrics
from earshot.serve.settings import MB, Settings
from earshot.serve.uploads import upload_title

try:
    from fastapi.routing import iter_route_contexts
except ImportError:  # FastAPI < 0.137.2, where `app.routes` is a flat list

    def iter_route_contexts(routes):  # type: ignore[no-redef]
        return iter(routes)


INFERENCE_PATHS = ("/v1/predict", "/v1/spectrogram", "/v1/search")
KEEP_ALIVE_DRAIN = MB  # an early answer keeps the connection open when at most this much body was left unread
DEADLINE_GRACE_S = 0.25  # the route answers its own 504 at the deadline; this one covers uploads and stalls


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


def authorized(scope: Scope, keys: list[bytes]) -> bool:
    """Whether a request gives one of `keys` (`X-API-Key`, `Authorization: Bearer`, or for a WebSocket
    `?api_key=`)."""
    headers = dict(scope["headers"])
    given = headers.get(b"x-api-key")
    auth = headers.get(b"authorization", b"")
    if not given and auth[:7].lower() == b"bearer ":
        given = auth[7:].strip()
    if not given and scope["type"] == "websocket" and scope.get("query_string"):
        # browsers cannot set headers on a WebSocket: `?api_key=` there (never for HTTP, where it would leak
        # into logs and caches)
        given = (parse_qs(scope["query_string"].decode("latin-1")).get("api_key") or [""])[0].encode()
    return bool(given) and any(hmac.compare_digest(given, k) for k in keys)


class ApiKeys:
    """401 for `/v1/*` and `/metrics` without a valid key (`X-API-Key` or `Authorization: Bearer`); a WebSocket
    under `/v1/` may also give it as `?api_key=`, and without one gets an error record and close code 1008."""

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]

    def authorized(self, scope: Scope) -> bool:
        return authorized(scope, self.keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ws = scope["type"] == "websocket" and self.keys and scope["path"].startswith("/v1/")
        if ws and not self.authorized(scope):  # accepted, told why in an error record, closed (1008)
            await receive()
            err = {"type": "AuthError", "reason": "unauthorized",
                   "message": "missing or invalid API key (X-API-Key, Bearer or ?api_key=)"}
            record = {"type": "error", "source": "stream", "at": 0.0, "error": err}
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": json.dumps(record)})
            await send({"type": "websocket.close", "code": 1008})
            return
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
    """413 for a body over the route's cap (refused on its Content-Length, or cut off while it streams in), and
    every answer given before its request's body was read (413, 503, 401, 404, 422...) delivered to every client.

    Many clients (urllib, http.client, requests) send the whole body before they read a byte, and a socket closed
    on unread data resets the connection. So an early answer on a connection that is to close (the client asked
    for it, or the unread rest may be large: over `KEEP_ALIVE_DRAIN` or of unknown length) is sent at once and
    completed only after the rest of the body has been read and dropped (never stored; for at most
    `drain_timeout_s`). On a connection that stays open with a small unread rest, the answer completes at once and
    the HTTP server drops the rest as it comes. A client waiting for `100 Continue` is never invited to send: its
    answer closes the connection.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    def cap(self, path: str) -> int:
        """Bytes a request body to `path` may have."""
        if path.startswith("/v1/train") or (path.startswith("/v1/models/") and path.endswith("/adapt")):
            return self.settings.max_train_upload_bytes
        if path.startswith(INFERENCE_PATHS):
            return self.settings.max_upload_bytes
        return MB

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        cap = self.cap(scope["path"])
        headers = dict(scope["headers"])
        declared = declared_length(headers)
        expects_continue = headers.get(b"expect", b"").lower() == b"100-continue"
        closing = closes(scope, headers)
        if declared is not None and declared > cap:
            return await self.refuse(receive, send, cap, drain=not expects_continue)
        pending = bool(declared) or b"transfer-encoding" in headers  # some of the body is still unread
        asked = False  # the app asked for the body (a client waiting for 100 Continue was invited to send it)
        linger = False  # the answer's last message waits until the unread body is drained
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen, pending, asked
            asked = True
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                pending = bool(message.get("more_body"))
                if seen > cap:
                    raise BodyTooLarge()
            else:
                pending = False
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started, linger
            if message["type"] == "http.response.start":
                started = True
                small_rest = declared is not None and declared - seen <= KEEP_ALIVE_DRAIN
                if pending and not (small_rest and not closing and (asked or not expects_continue)):
                    linger = asked or not expects_continue
                    message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            elif message["type"] == "http.response.body" and linger and pending and not message.get("more_body"):
                await send({**message, "more_body": True})
                await self.drain(receive)
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge:
            if started:
                raise
            await self.refuse(receive, send, cap, drain=True)

    async def refuse(self, receive: Receive, send: Send, cap: int, drain: bool) -> None:
        """The 413 answer, completed once the rest of the body is drained (`drain`); the connection closes."""
        too_big = error_body("UploadError", "too_large", f"request body over the {cap / MB:g} MB limit")
        resp = error_response(413, too_big, {"connection": "close"})
        await send({"type": "http.response.start", "status": resp.status_code, "headers": resp.raw_headers})
        if drain:
            await send({"type": "http.response.body", "body": resp.body, "more_body": True})
            await self.drain(receive)
        await send({"type": "http.response.body", "body": b"" if drain else resp.body, "more_body": False})

    async def drain(self, receive: Receive) -> int:
        """Read and drop the rest of a request body, for at most `drain_timeout_s`; returns the bytes dropped."""
        dropped = 0
        with suppress(TimeoutError):
            async with asyncio.timeout(self.settings.drain_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        break
                    dropped += len(message.get("body", b""))
                    if not message.get("more_body"):
                        break
        return dropped


class Admission:
    """Admission and deadline of the inference routes (`POST /v1/predict`, `/v1/spectrogram`), decided from the
    request line alone, before routing and before any body is read.

    With every slot taken the answer is 503 + Retry-After at once; under a retry storm the request first waits
    up to `reject_hold_ms` for a slot to free (`Inference.admit_or_hold`), still before its body is read. An
    admitted request carries a `Ticket` (`scope[TICKET]`) whose deadline covers its upload, queue wait and model
    work: past it the request is answered 504 and its model work stopped at its next window batch. The work stops
    as well when the client disconnects. The slot is free again once the answer is given and the work has stopped.
    """

    def __init__(self, app: ASGIApp, inference: Inference, default_model: str) -> None:
        self.app, self.inference, self.default_model = app, inference, default_model
        self._shapes: dict[tuple[str, str], dict] = {}  # failure body by error, rendered once

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or _route_path(scope) not in INFERENCE_PATHS:
            return await self.app(scope, receive, send)
        ticket = await self.inference.admit_or_hold()
        if ticket is None:
            return await self.failure(scope, self.inference.overloaded())(scope, receive, send)
        scope[TICKET] = ticket
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                ticket.cancel.set()
                ticket.drop()

        async def releasing_send(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                release()  # the answer is complete: the slot is free while a refused body is drained
            await send(message)

        try:
            await self._guarded(scope, receive, releasing_send, ticket)
        finally:
            release()

    def failure(self, scope: Scope, err: ApiError) -> Response:
        return early_failure(scope, err, self.default_model, self._shapes)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, ticket: Ticket) -> None:
        """Run the app in this task; past the deadline (no answer started) or once the client is gone, cancel it
        here, as `asyncio.timeout` does, and answer 504 for the deadline."""
        task = asyncio.current_task()
        assert task is not None
        started = completed = False
        stopped: str | None = None  # "deadline" or "gone" once this middleware cancelled the app
        watcher: asyncio.Future | None = None

        def stop(why: str) -> None:
            nonlocal stopped
            if stopped is None and not started:  # an answer on its way is let through
                stopped = why
                ticket.cancel.set()
                task.cancel()

        def client_gone(f: asyncio.Future) -> None:
            if f.cancelled() or f.exception() is not None or completed:
                return
            if f.result()["type"] == "http.disconnect":
                stop("gone")

        async def app_receive() -> Message:
            nonlocal watcher
            message = await receive()
            if message["type"] == "http.disconnect":
                ticket.cancel.set()
            elif not message.get("more_body") and watcher is None:  # body read: from now on, watch the client
                watcher = asyncio.ensure_future(receive())
                watcher.add_done_callback(client_gone)
            return message

        async def app_send(message: Message) -> None:
            nonlocal started, completed
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                completed = True
            await send(message)

        timer = asyncio.get_running_loop().call_later(ticket.remaining() + DEADLINE_GRACE_S, stop, "deadline")
        try:
            await self.app(scope, app_receive, app_send)
        except asyncio.CancelledError:
            if stopped is None or task.uncancel() > 0:  # cancelled from outside (shutdown): let it through
                raise
        else:
            if stopped is not None:  # the app swallowed the cancellation
                task.uncancel()
        finally:
            timer.cancel()
            if watcher is not None:
                watcher.cancel()
        if stopped == "deadline" and not started:
            await self.failure(scope, self.inference.timed_out())(scope, receive, send)


class Shed:
    """Overload answered outside every other layer, the cheapest path there is. Around a rejection, the
    middleware and FastAPI layers cost more server CPU than the 503 itself, so a request to an inference route
    that finds every slot taken is decided here: it waits for a slot as `Admission` would
    (`Inference.hold_for_slot`), then either goes on into the app, where `Admission` takes the slot this layer
    frees before anything else runs, or gets its 503 here, counted in /metrics as the app would count it.

    Only requests that no inner layer would answer otherwise are shed here: with a valid key (when keys are set),
    a Content-Length within the upload cap and small enough for the connection to stay open (`BodyLimit`), no
    `Expect`, `Transfer-Encoding` or `Connection: close`, and no `Origin` when CORS is on. Any other goes through
    the app, whose `Admission` answers it the same way.
    """

    def __init__(self, app: ASGIApp, settings: Settings, inference: Inference, metrics: Metrics,
                 default_model: str) -> None:
        self.app, self.inference, self.metrics, self.default_model = app, inference, metrics, default_model
        self.keys = [k.encode() for k in settings.api_keys]
        self.largest = min(settings.max_upload_bytes, KEEP_ALIVE_DRAIN)
        self.cors = bool(settings.cors_origins)
        self._shapes: dict[tuple[str, str], dict] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.inference.limiter.full() or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        route = _route_path(scope)
        if route not in INFERENCE_PATHS or not self._plain(scope):
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        if await self.inference.hold_for_slot():
            self.inference.limiter.give_back()  # `Admission`, inside, takes it again before any other task runs
            return await self.app(scope, receive, send)
        self.metrics.start()
        err = self.inference.overloaded()
        await early_failure(scope, err, self.default_model, self._shapes)(scope, receive, send)
        self.metrics.error(route, err.type)
        self.metrics.observe(route, "POST", err.status, time.perf_counter() - t0)

    def _plain(self, scope: Scope) -> bool:
        headers = dict(scope["headers"])
        declared = declared_length(headers)
        if declared is None or declared > self.largest or closes(scope, headers):
            return False
        if b"expect" in headers or b"transfer-encoding" in headers or (self.cors and b"origin" in headers):
            return False
        return not self.keys or authorized(scope, self.keys)


def declared_length(headers: dict[bytes, bytes]) -> int | None:
    """A request's Content-Length, or None when it has none (or not a number)."""
    length = headers.get(b"content-length")
    return int(length) if length is not None and length.isdigit() else None


def closes(scope: Scope, headers: dict[bytes, bytes]) -> bool:
    """Whether the connection ends with this request (`Connection: close`, or HTTP/1.0)."""
    return b"close" in headers.get(b"connection", b"").lower() or scope.get("http_version") == "1.0"


def early_failure(scope: Scope, err: ApiError, default_model: str, shapes: dict[tuple[str, str], dict]) -> Response:
    """`err` as a Prediction-shaped failure, titled and named from the request line as the route would (`shapes`
    caches the rendered failure per error)."""
    query = parse_qs(scope["query_string"].decode("latin-1")) if scope.get("query_string") else {}
    name = (query.get("title") or [None])[0] or dict(scope["headers"]).get(b"x-filename", b"").decode("latin-1")
    model = (query.get("model") or [None])[0] or default_model
    shape = shapes.get((err.type, err.message))
    if shape is None:
        shape = shapes[(err.type, err.message)] = Prediction(title="", error=err.to_dict()).to_dict()
    return error_response(err.status, {**shape, "title": upload_title(name), "model": model}, err.headers)


def _route_path(scope: Scope) -> str:
    path, root = scope["path"], scope.get("root_path") or ""
    return path[len(root) :] if root and path.startswith(root) else path
