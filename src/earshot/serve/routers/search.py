"""`/v1/search`: the indexed recordings most like an uploaded clip (or an indexed one, by id); `/v1/indexes`.

The upload is read like `/v1/predict`'s (multipart `file` or raw body) and searched on the inference pool under
the same admission and deadline. Indexes come from `EARSHOT_INDEX` (`earshot.serve.indexes`); hits of files under
the samples folder carry the URL that plays them.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from earshot.errors import ModelError
from earshot.serve import schemas, uploads
from earshot.serve.deps import InferenceDep, SettingsDep, StoreDep
from earshot.serve.errors import ApiError
from earshot.serve.indexes import IndexShelf
from earshot.serve.inference import TICKET
from earshot.serve.routers.predict import AUDIO_BODY, _read_audio
from earshot.serve.settings import Settings
from earshot.serve.store import ModelStore

router = APIRouter(tags=["search"])


def shelf(request: Request, settings: Settings) -> IndexShelf:
    """The app's index shelf, made on first use."""
    state = request.app.state
    if getattr(state, "indexes", None) is None:
        state.indexes = IndexShelf(settings.index, settings.samples_dir)
    return state.indexes


@router.get("/v1/indexes", response_model=schemas.IndexList, responses=schemas.error_responses(401),
            summary="Search indexes of this server (EARSHOT_INDEX)")
async def indexes(request: Request, settings: SettingsDep) -> dict:
    found = shelf(request, settings)
    return {"default": found.default(), "indexes": found.summaries()}


@router.post(
    "/v1/search",
    response_model=schemas.SearchResults,
    openapi_extra={"requestBody": {**AUDIO_BODY, "required": False}},
    responses=schemas.error_responses(400, 401, 404, 413, 415, 422, 503, 504),
    summary="The indexed recordings most like an upload (or an indexed file, by `id`)",
)
async def search(
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    inference: InferenceDep,
    k: int = Query(10, ge=1, le=1000, description="hits to return"),
    index: str | None = Query(None, description="index name (see /v1/indexes); default: the server's"),
    id: str | None = Query(None, description="search with this indexed file instead of an upload"),
) -> dict:
    from earshot.search import load_classifier, query_embeddings
    from earshot.search import search as run_search

    found = shelf(request, settings)
    name = index or found.default()
    if name is None or name not in found.locations():
        raise ApiError(404, "NotFound", "not_found",
                       f"no search index {index!r}" if index else "no search index on this server (EARSHOT_INDEX)")
    data = title = None
    if id is None:
        data, title = await _read_audio(request)
        uploads.check_audio(data, title)

    def work(ticket) -> dict:
        idx = found.get(name)
        if id is not None:
            if id not in idx.files:
                raise ApiError(404, "NotFound", "not_found", f"no file {id!r} in index {name!r}")
            queries = query_embeddings(idx, id)
        else:
            queries = query_embeddings(idx, data, load_classifier(idx, _loader(store)), title=title,
                                       max_seconds=settings.max_audio_s, deadline=ticket.deadline,
                                       cancel=ticket.cancel)
        hits = run_search(idx, queries, k)
        return {"results": [{"id": h.id, "score": h.score, "start": h.start, "end": h.end,
                             "url": found.playable(h.source)} for h in hits],
                "model": idx.model, "index": name}

    return await inference.run(work, request.scope.get(TICKET))


def _loader(store: ModelStore):
    """Models by the server's store (cached, shared with /v1/predict), else by reference (a bundle path)."""

    def load(ref: str):
        try:
            return store.get(ref)
        except ModelError:
            import earshot

            return earshot.load(ref)

    return load
