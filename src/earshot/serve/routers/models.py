"""`/v1/models`: the models this server answers with, and their cards."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from earshot.serve import schemas
from earshot.serve.deps import StoreDep

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
