"""`/v1/models`: the models this server answers with, their cards, and adapting one to a new domain."""

from __future__ import annotations

import asyncio
import json
import tempfile
import uuid
from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from earshot.serve import schemas, uploads
from earshot.serve.deps import SettingsDep, StoreDep
from earshot.serve.errors import ApiError
from earshot.serve.store import valid_name

MAX_ADAPT_FILES = 2000  # recordings in one adaptation request

router = APIRouter(tags=["models"], responses=schemas.error_responses(401))


@router.get(
    "/v1/models",
    response_model=schemas.ModelList,
    summary="Registry models and bundles in the models folder",
)
async def models(store: StoreDep) -> JSONResponse:
    items = await asyncio.to_thread(store.list)
    return JSONResponse({"default": store.default, "models": items})


@router.get(
    "/v1/models/{name}",
    response_model=schemas.ModelCard,
    responses=schemas.error_responses(404, 422),
    summary="A model's card",
)
async def model_card(name: str, store: StoreDep) -> JSONResponse:
    card = await asyncio.to_thread(store.card, name)
    return JSONResponse({"name": name, **card} if "name" not in card else card)


@router.post(
    "/v1/models/{name}/adapt",
    status_code=201,
    response_model=schemas.Adapted,
    openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
        "type": "object", "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"},
                                                   "description": "unlabelled recordings of the new domain"}}}}}}},
    responses=schemas.error_responses(400, 404, 409, 413, 422, 501),
    summary="Adapt a model to a new voice, microphone or site from uploaded unlabelled recordings (earshot adapt)",
)
async def adapt_model(
    name: str,
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    out: str = Query(..., description="name of the adapted model, new in the models folder"),
    strength: float = Query(1.0, gt=0.0, le=1.0, description="share of the new statistics"),
    force: bool = Query(False, description="adapt a transfer bundle or the pretrained tagger too"),
) -> JSONResponse:
    """The recordings (multipart, any number of file fields) are decoded as `earshot adapt` decodes them; those that
    cannot be are listed in the answer's `adaptation.skipped`. The adapted bundle is written to the models folder
    under `out` and served by that name at once."""
    if not valid_name(out):
        raise ApiError(422, "RequestError", "invalid_request", f"out: {out!r} is not a valid model name")
    if out in store.names():
        raise ApiError(409, "RequestError", "exists", f"a model named {out!r} exists already")
    _, bundle = store.resolve(name)  # ModelError not_found → 404
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(415, "RequestError", "unsupported", "send the recordings as multipart/form-data file fields")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.state_dir, prefix="adapt-") as tmp:
        paths = []
        async with request.form(max_files=MAX_ADAPT_FILES, max_fields=10) as form:
            for i, (_, value) in enumerate(form.multi_items()):
                if isinstance(value, UploadFile):
                    path = Path(tmp) / f"{i:05d}-{uuid.uuid4().hex[:8]}"
                    await asyncio.to_thread(uploads.copy_stream_to, value.file, path)
                    paths.append((path, uploads.upload_title(value.filename, path.name)))
        if not paths:
            raise ApiError(400, "RequestError", "no_file", "no recordings: send them as multipart file fields")
        result = await asyncio.to_thread(_adapt, name if bundle is None else bundle, paths,
                                         settings.models_dir / out, strength, force)
    return JSONResponse({"model": out, "adaptation": result}, status_code=201,
                        headers={"Location": f"/v1/models/{out}"})


def _adapt(model, paths: list[tuple[Path, str]], dest: Path, strength: float, force: bool) -> dict:
    """Run `earshot.adaptation.adapt` on the saved uploads, each named by its upload title; the card's record."""
    from earshot.adaptation import adapt

    sources = []
    for path, title in paths:
        f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below; unbuffered, so its name can be the title
        f.name = title
        sources.append(f)
    try:
        out = adapt(model, sources, dest, strength=strength, force=force)
    finally:
        for f in sources:
            f.close()
    return json.loads((out / "card.json").read_text())["adaptation"]
