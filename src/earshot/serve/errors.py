"""HTTP errors: the failure body {"labels": [], "error": {type, reason, message}}, status codes, handlers.

Every error the server answers is JSON in that shape with an `x-error-type` header (which the metrics
middleware counts). `ApiError` is raised by routes for HTTP-level refusals; `earshot.errors.EarshotError`s map
to a status by type and reason: a parameter out of its `earshot.limits` bounds is 422, work stopped at its
deadline 504.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from earshot.errors import AudioError, DataError, EarshotError, ModelError
from earshot.limits import Cancelled, LimitError

log = logging.getLogger("earshot.serve")

AUDIO_STATUS = {"empty": 400, "unsupported": 415, "needs_media_extra": 415, "too_long": 413, "not_found": 400}
DATA_STATUS = {"too_large": 413, "unsupported": 415}
# a model that exists but cannot take the operation asked of it (`earshot adapt`) is 422; a missing extra, 501
MODEL_STATUS = {"not_found": 404, "not_recommended": 422, "not_adaptable": 422, "head_only": 422,
                "out_exists": 409, "needs_adapt_extra": 501}
CLIENT_CLOSED = 499  # the client went away before its answer (logged and counted, never received)


class ApiError(Exception):
    """An HTTP error, answered in the failure shape {"labels": [], "error": {type, reason, message}}."""

    def __init__(self, status: int, type_: str, reason: str, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.reason, self.message, self.headers = (
            status,
            type_,
            reason,
            message,
            headers,
        )

    def to_dict(self) -> dict[str, str]:
        """The `error` object of the failure body."""
        return {"type": self.type, "reason": self.reason, "message": self.message}


def error_body(type_: str, reason: str, message: str, **extra: Any) -> dict:
    """The failure body: `extra` fields first, then no labels and the typed error."""
    return {**extra, "labels": [], "error": {"type": type_, "reason": reason, "message": message}}


def error_response(status: int, body: dict, headers: dict | None = None) -> JSONResponse:
    """A failure body as JSON, with `x-error-type` set from its error."""
    h = {"x-error-type": body["error"]["type"], **(headers or {})}
    return JSONResponse(body, status_code=status, headers=h)


def status_for(exc: BaseException) -> int:
    """The HTTP status of an exception: by reason for audio, model and data errors, else 400 (500 if unknown)."""
    if isinstance(exc, LimitError):
        return 422
    if isinstance(exc, Cancelled):
        return 504 if exc.reason == "deadline" else CLIENT_CLOSED
    if isinstance(exc, AudioError):
        return AUDIO_STATUS.get(exc.reason, 422)
    if isinstance(exc, ModelError):
        return MODEL_STATUS.get(exc.reason, 500)
    if isinstance(exc, DataError):
        return DATA_STATUS.get(exc.reason, 400)
    if isinstance(exc, EarshotError):
        return 400
    return 500


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, error_body(exc.type, exc.reason, exc.message), exc.headers)


async def _earshot_error(request: Request, exc: EarshotError) -> JSONResponse:
    return error_response(status_for(exc), error_body(type(exc).__name__, exc.reason, str(exc)))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    msg = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors())
    return error_response(422, error_body("RequestError", "invalid_request", msg))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, error_body("HTTPError", reason, str(exc.detail)), exc.headers)


async def _client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
    return error_response(CLIENT_CLOSED, error_body("ClientDisconnect", "client_closed", "the client went away"))


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return error_response(500, error_body(type(exc).__name__, "internal", "internal server error"))


def add_exception_handlers(app: FastAPI) -> None:
    """Answer every error of `app` in the failure shape: API errors, earshot errors, bad requests, the rest."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(EarshotError, _earshot_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _internal_error)
