"""Operations: `/healthz` (liveness, always open) and `/metrics` (Prometheus text)."""

from __future__ import annotations

from functools import cache

from fastapi import APIRouter, Request
from fastapi.responses import Response

from earshot.audio import pyav
from earshot.serve import schemas
from earshot.serve.deps import InferenceDep, MetricsDep, StoreDep
from earshot.serve.streaming import STREAM_FORMATS

router = APIRouter(tags=["ops"])


@cache
def version() -> str:
    """The installed earshot distribution's version ("0" when it is not installed)."""
    try:
        from importlib.metadata import version as dist_version

        return dist_version("earshot")
    except Exception:
        return "0"


@router.get("/healthz", response_model=schemas.Health, summary="Liveness: always open")
async def healthz(request: Request, store: StoreDep, inference: InferenceDep) -> dict:
    state = request.app.state
    return {
        "status": "ok",
        "version": version(),
        "default_model": store.default,
        "models_loaded": store.loaded(),
        "inference_slots_used": inference.limiter.used,
        "inference_slots": inference.limiter.limit,
        "workers": state.settings.workers,
        "ort_threads": state.settings.ort_threads,
        "streams_open": state.streams.used,
        "max_streams": state.streams.limit,
        "max_upload_bytes": state.settings.max_upload_bytes,
        "stream_formats": list(STREAM_FORMATS),
        "decodes_containers": pyav.available(),
    }


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, **schemas.error_responses(401)},
    summary="Prometheus metrics",
)
async def prometheus(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
