"""`/v1/samples`: the gallery of example clips the web page offers (`EARSHOT_SAMPLES`), served safely.

Only audio files strictly inside the samples folder are listed or served: no hidden files, no `..`, no links
leading out of it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path, PurePosixPath

from fastapi import APIRouter
from fastapi.responses import FileResponse

from earshot import audio
from earshot.serve import schemas
from earshot.serve.deps import SettingsDep
from earshot.serve.errors import ApiError

router = APIRouter(tags=["samples"], responses=schemas.error_responses(401))


@router.get("/v1/samples", response_model=schemas.SampleList, summary="Example clips of the gallery (EARSHOT_SAMPLES)")
async def samples(settings: SettingsDep) -> dict:
    return {"samples": await asyncio.to_thread(list_samples, settings.samples_dir)}


@router.get(
    "/v1/samples/{name:path}",
    response_class=FileResponse,
    responses={200: {"content": {"audio/*": {}}}, **schemas.error_responses(404, 422)},
    summary="One gallery clip",
)
async def sample(name: str, settings: SettingsDep) -> FileResponse:
    path = sample_path(settings.samples_dir, name)
    return FileResponse(path, filename=path.name)


def list_samples(root: Path | None, limit: int = 500) -> list[dict]:
    """The audio files under `root` (sorted, at most `limit`): name (relative, POSIX), size, URL."""
    if root is None or not root.is_dir():
        return []
    base = root.resolve()
    out = []
    for p in sorted(base.rglob("*")):
        rel = p.relative_to(base)
        if any(part.startswith(".") for part in rel.parts) or not audio.is_audio_name(p):
            continue
        if not p.is_file() or not p.resolve().is_relative_to(base):
            continue
        key = rel.as_posix()
        out.append({"name": key, "size": p.stat().st_size, "url": f"/v1/samples/{key}"})
        if len(out) >= limit:
            break
    return out


def sample_path(root: Path | None, name: str) -> Path:
    """The file of sample `name` under `root`; ApiError 404 unless it is a listed-kind clip inside `root`."""
    missing = ApiError(404, "NotFound", "not_found", f"no sample {name!r}")
    if root is None:
        raise missing
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not parts or any(p in ("..", "") or p.startswith((".", "/")) for p in parts):
        raise missing
    base = root.resolve()
    path = base.joinpath(*parts).resolve()
    if not path.is_relative_to(base) or not path.is_file() or not audio.is_audio_name(path):
        raise missing
    return path
