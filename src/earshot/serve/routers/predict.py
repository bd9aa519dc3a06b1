"""`/v1/predict` and `/v1/spectrogram`: one audio upload in, a Prediction (or the model's log-mel PNG) out.

An upload is a multipart field `file` (or the first file part) or the raw body. Both routes take the same
path: model check, parameter bounds (`earshot.limits`, 422), reading, sniffing, off-loop inference under the
request's ticket (admitted and held to its deadline by `middleware.Admission`), failures as Prediction JSON.
The router is built per app because the `top_k` bound and the audio-length bound are server settings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from earshot import limits
from earshot.errors import EarshotError
from earshot.prediction import Prediction
from earshot.serve import schemas, uploads
from earshot.serve.deps import InferenceDep, StoreDep
from earshot.serve.errors import CLIENT_CLOSED, ApiError, error_response, status_for
from earshot.serve.inference import TICKET, Inference, Ticket
from earshot.serve.settings import Settings
from earshot.serve.spectrogram import data_url, render_png
from earshot.serve.store import ModelStore

if TYPE_CHECKING:
    from earshot.classifier import Classifier

AUDIO_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}},
            }
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
AUDIO_ERRORS = schemas.error_responses(400, 401, 404, 413, 415, 422, 503, 504)


def _upload_title(request: Request, fallback: str = "upload") -> str:
    """The name to report for an upload: `?title=`, else the X-Filename header, else `fallback` (base name only)."""
    return uploads.upload_title(request.query_params.get("title") or request.headers.get("x-filename"), fallback)


async def _read_audio(request: Request) -> tuple[bytes, str]:
    """Bytes and title of an upload: multipart field `file` (or the first file part), else the raw body."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await request.body(), _upload_title(request)
    async with request.form(max_files=4, max_fields=20) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            upload = next((v for v in form.values() if isinstance(v, UploadFile)), None)
        if upload is None:
            raise ApiError(400, "RequestError", "no_file", "multipart body has no `file` part")
        return await upload.read(), _upload_title(request, upload.filename or "upload")


async def _answer_upload(
    request: Request,
    store: ModelStore,
    inference: Inference,
    model: str | None,
    work: Callable[[Classifier, bytes, str, Ticket], Any],
    check: Callable[[], object] | None = None,
) -> Any:
    """`work(classifier, data, title, ticket)` on an admitted upload whose parameters passed `check`, or the
    failure as a Prediction-shaped answer."""
    title = _upload_title(request)
    name = model or store.default
    try:
        store.resolve(model)
        if check is not None:
            check()
        data, title = await _read_audio(request)
        uploads.check_audio(data, title)
        ticket = request.scope.get(TICKET)
        return await inference.run(lambda t: work(store.get(model), data, title, t), ticket)
    except (ApiError, limits.Cancelled) as e:
        err = e if isinstance(e, ApiError) else _stopped(inference, e)
        body = Prediction(title=title, model=name, error=err.to_dict()).to_dict()
        return error_response(err.status, body, err.headers)
    except EarshotError as e:
        return error_response(status_for(e), Prediction.failure(title, e, model=name).to_dict())


def _stopped(inference: Inference, e: limits.Cancelled) -> ApiError:
    """The answer for work that stopped before the event loop gave up on it: 504 at the deadline, else 499."""
    if e.reason == "deadline":
        return inference.timed_out()
    return ApiError(CLIENT_CLOSED, "Cancelled", "client_closed", "the client went away")


def build_router(settings: Settings) -> APIRouter:
    """The predict/spectrogram routes, with `top_k` capped at `settings.max_top_k` and inputs at
    `settings.max_audio_s` seconds."""
    router = APIRouter(tags=["predict"], responses=AUDIO_ERRORS)
    max_top_k = settings.max_top_k

    @router.post(
        "/v1/predict",
        response_model=schemas.Prediction,
        openapi_extra={"requestBody": AUDIO_BODY},
        summary="Classify one audio upload -> Prediction JSON",
    )
    async def predict(
        request: Request,
        store: StoreDep,
        inference: InferenceDep,
        model: str | None = Query(None, description="model name (see /v1/models); default: the server's"),
        top_k: int = Query(5, description=f"labels to report: 1 to {max_top_k}"),
        timeline: bool = Query(False, description="add per-window segments and merged events"),
        window: float | None = Query(
            None,
            description=f"timeline window in seconds, {limits.MIN_WINDOW_S:g} to {limits.MAX_WINDOW_S:g} (default 1)",
        ),
        hop: float | None = Query(
            None,
            description=f"timeline hop in seconds, at least {limits.MIN_HOP_S:g} and window/{limits.MAX_OVERLAP}, "
            f"at most {limits.MAX_HOP_S:g} (default window/2); at most {limits.MAX_SEGMENTS} segments per request",
        ),
        threshold: float | None = Query(None, description="report only scores at least this, 0 to 1"),
        spectrogram: bool = Query(False, description="add `spectrogram`: the model's log-mel as a PNG data URL"),
        title: str | None = Query(None, description="name to report for a raw-body upload"),
        links: bool = Query(False, description="add each label's `links` (citation or search URL), `descriptions` "
                            "and `parents` (AudioSet ancestors, nearest first)"),
        classes: list[str] | None = Query(None, description="only labels under these AudioSet classes (names or "
                                          "ids, whole subtrees) or with these label names; repeatable"),
        exclude: list[str] | None = Query(None, description="no labels under these classes or of these names; "
                                          "repeatable"),
    ) -> Response:
        def check() -> None:
            limits.check_top_k(top_k, max_top_k)
            limits.check_threshold(threshold)
            if timeline or window is not None or hop is not None:
                limits.check_timeline(1.0 if window is None else window, hop, top_k)

        def work(clf: Classifier, data: bytes, name: str, ticket: Ticket) -> dict:
            pred = clf.predict(
                data,
                top_k=top_k,
                timeline=timeline,
                window=window,
                hop=hop,
                threshold=threshold,
                title=name,
                links=links,
                classes=classes,
                exclude=exclude,
                max_seconds=settings.max_audio_s,
                deadline=ticket.deadline,
                cancel=ticket.cancel,
            )
            out = pred.to_dict() if hasattr(pred, "to_dict") else dict(pred)
            if spectrogram and out.get("error") is None:
                out["spectrogram"] = data_url(render_png(clf.logmel(data)))
            return out

        result = await _answer_upload(request, store, inference, model, work, check)
        if isinstance(result, Response):
            return result
        if result.get("error"):  # a classifier that reports instead of raising
            return error_response(422, result)
        return JSONResponse(result)

    @router.post(
        "/v1/spectrogram",
        response_class=Response,
        openapi_extra={"requestBody": AUDIO_BODY},
        responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}},
        summary="The model's log-mel features of an upload as a PNG image",
    )
    async def spectrogram(
        request: Request,
        store: StoreDep,
        inference: InferenceDep,
        model: str | None = Query(None),
        title: str | None = Query(None),
    ) -> Response:
        result = await _answer_upload(
            request, store, inference, model, lambda clf, data, _name, _ticket: render_png(clf.logmel(data))
        )
        if isinstance(result, Response):
            return result
        return Response(result, media_type="image/png")

    return router
