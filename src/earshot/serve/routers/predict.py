"""`/v1/predict` and `/v1/spectrogram`: one audio upload in, a Prediction (or the model's log-mel PNG) out.

An upload is a multipart field `file` (or the first file part) or the raw body. Both routes take the same
path: model check, admission, reading, sniffing, off-loop inference, failures as Prediction JSON. The router
is built per app because the `top_k` bound is a server setting shown in the OpenAPI schema.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from earshot.errors import EarshotError
from earshot.prediction import Prediction
from earshot.serve import schemas, uploads
from earshot.serve.deps import InferenceDep, StoreDep
from earshot.serve.errors import ApiError, error_response, status_for
from earshot.serve.inference import Inference
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
    name = request.query_params.get("title") or request.headers.get("x-filename") or fallback
    return PurePosixPath(name.replace("\\", "/")).name[:255] or fallback


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
    work: Callable[[Classifier, bytes, str], Any],
) -> Any:
    """`work(classifier, data, title)` on an admitted upload, or the failure as a Prediction-shaped answer."""
    title = _upload_title(request)
    name = model or store.default
    try:
        store.resolve(model)
        inference.check_capacity()
        data, title = await _read_audio(request)
        uploads.check_audio(data, title)
        return await inference.run(lambda: work(store.get(model), data, title))
    except ApiError as e:
        body = Prediction(title=title, model=name, error=e.to_dict()).to_dict()
        return error_response(e.status, body, e.headers)
    except EarshotError as e:
        return error_response(status_for(e), Prediction.failure(title, e, model=name).to_dict())


def build_router(max_top_k: int) -> APIRouter:
    """The predict/spectrogram routes, with `top_k` capped at `max_top_k`."""
    router = APIRouter(tags=["predict"], responses=AUDIO_ERRORS)

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
        top_k: int = Query(5, ge=1, le=max_top_k),
        timeline: bool = Query(False, description="add per-window segments and merged events"),
        window: float | None = Query(None, gt=0, le=600),
        hop: float | None = Query(None, gt=0, le=600),
        threshold: float | None = Query(None, ge=0, le=1),
        spectrogram: bool = Query(False, description="add `spectrogram`: the model's log-mel as a PNG data URL"),
        title: str | None = Query(None, description="name to report for a raw-body upload"),
    ) -> Response:
        def work(clf: Classifier, data: bytes, name: str) -> dict:
            pred = clf.predict(
                data, top_k=top_k, timeline=timeline, window=window, hop=hop, threshold=threshold, title=name
            )
            out = pred.to_dict() if hasattr(pred, "to_dict") else dict(pred)
            if spectrogram and out.get("error") is None:
                out["spectrogram"] = data_url(render_png(clf.logmel(data)))
            return out

        result = await _answer_upload(request, store, inference, model, work)
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
            request, store, inference, model, lambda clf, data, _name: render_png(clf.logmel(data))
        )
        if isinstance(result, Response):
            return result
        return Response(result, media_type="image/png")

    return router
