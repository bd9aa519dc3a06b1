"""`/v1/train` and `/v1/jobs`: start a training job from an uploaded archive or an allowed path, follow it.

A job's data set is an uploaded zip/tar of class folders (multipart `file`, or the raw body), checked by content
and extracted safely, or a server-side folder under `EARSHOT_TRAIN_ROOTS` (JSON body `{"path": ...}`). Options
come from the query string, form fields or JSON body. Training runs in a child process (`JobRunner`).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from earshot.serve import schemas, uploads
from earshot.serve.deps import JobsDep, RunnerDep, SettingsDep, StoreDep
from earshot.serve.errors import ApiError
from earshot.serve.jobs import public
from earshot.serve.settings import Settings
from earshot.serve.store import valid_name

# the training families (earshot.training.FAMILIES, not imported here: serving never imports torch)
TRAIN_FAMILIES = ("auto", "transfer", "cnn", "speech", "word", "whisper", "cnn+speech", "cnn+speech+word",
                  "cnn+speech+word+whisper")

TRAIN_BODY = {
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": "zip or tar of class folders",
                    },
                    "name": {"type": "string"},
                    "model": {"type": "string", "enum": list(TRAIN_FAMILIES)},
                    "backbone": {"type": "string"},
                    "epochs": {"type": "integer"},
                    "seed": {"type": "integer"},
                    "val_split": {"type": "number"},
                    "val_fold": {"type": "integer"},
                    "test_fold": {"type": "string", "description": "fold held out of training, scored once "
                                  "into the card's metrics.test"},
                    "words": {"type": "string", "description": "keywords ('yes,no,sheila=shayla'); other labels "
                              "become _unknown_"},
                },
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "server-side data set under an allowed root"},
                    "words": {"type": "string", "description": "keywords ('yes,no,sheila=shayla'); without "
                              "`path`, a keyword model from synthetic voices alone"},
                    "synth_per_label": {"type": "integer", "description": "synthetic takes of each word"},
                    "name": {"type": "string"},
                },
            }
        },
    },
}
TRAIN_OPTIONS: dict[str, Callable[[str], Any]] = {
    "model": str,
    "backbone": str,
    "epochs": int,
    "seed": int,
    "val_split": float,
    "val_fold": int,
    "test_fold": str,
    "label_regex": str,
    "group_regex": str,
    "words": str,
    "synth_per_label": int,
}

router = APIRouter(tags=["train"], responses=schemas.error_responses(401))


@router.post(
    "/v1/train",
    status_code=202,
    response_model=schemas.Job,
    openapi_extra={"requestBody": TRAIN_BODY},
    responses=schemas.error_responses(400, 403, 404, 409, 413, 415, 422),
    summary="Start a training job from an uploaded zip/tar of class folders, an allowed path, or keywords alone",
)
async def train(
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    jobs: JobsDep,
    runner: RunnerDep,
    name: str | None = Query(None),
) -> JSONResponse:
    job_id = uuid.uuid4().hex
    work = runner.job_dir(job_id)
    fields: dict[str, Any] = dict(request.query_params)
    try:
        source, filename = await _receive(request, work, fields)
        options = _train_options(fields)
        if source == "path" and not fields.get("path") and options.get("words"):
            source, filename = "words", "keywords"  # no recordings: synthetic voices say the keywords
        job_name = _job_name(fields.get("name"), filename, job_id, store.names() | runner.reserved_names())
        if source == "words":
            data_root = ""
        elif source == "path":
            data_root = _allowed_path(fields.get("path"), settings.train_roots)
        else:
            data_root = await _unpack(work, settings)
    except BaseException:
        uploads.remove_tree(work)
        raise
    job = jobs.create(job_name, str(data_root), source, options, job_id=job_id)
    runner.submit(job_id)
    return JSONResponse(public(job), status_code=202, headers={"Location": f"/v1/jobs/{job_id}"})


@router.get(
    "/v1/jobs",
    response_model=schemas.JobList,
    responses=schemas.error_responses(422),
    summary="Recent training jobs, newest first",
)
async def list_jobs(jobs: JobsDep, limit: int = Query(50, ge=1, le=500)) -> JSONResponse:
    return JSONResponse({"jobs": [public(j) for j in jobs.list(limit)]})


@router.get(
    "/v1/jobs/{job_id}",
    response_model=schemas.Job,
    responses=schemas.error_responses(404, 422),
    summary="A training job: status, error, timings, model",
)
async def get_job(job_id: str, jobs: JobsDep) -> JSONResponse:
    job = jobs.get(job_id)
    if job is None:
        raise ApiError(404, "NotFound", "not_found", f"no job {job_id!r}")
    return JSONResponse(public(job))


async def _receive(request: Request, work: Path, fields: dict[str, Any]) -> tuple[str, str]:
    """Read the body into `work/upload` (archives) or `fields` (JSON); (source, upload file name)."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        async with request.form(max_files=1, max_fields=30) as form:
            upload = next((v for v in form.values() if isinstance(v, UploadFile)), None)
            fields.update({k: v for k, v in form.items() if isinstance(v, str)})
            if upload is None:
                raise ApiError(400, "RequestError", "no_file", "multipart body has no archive `file`")
            await asyncio.to_thread(uploads.copy_stream_to, upload.file, work / "upload")
            return "upload", upload.filename or "dataset.zip"
    if ctype.startswith("application/json"):
        bad_json = ApiError(400, "RequestError", "bad_json", "body is not a JSON object")
        try:
            payload = await request.json()
        except Exception as e:
            raise bad_json from e
        if not isinstance(payload, dict):
            raise bad_json
        fields.update({k: str(v) for k, v in payload.items() if v is not None})
        return "path", ""
    body = await request.body()
    work.mkdir(parents=True, exist_ok=True)
    (work / "upload").write_bytes(body)
    return "upload", fields.get("title") or "dataset.zip"


async def _unpack(work: Path, settings: Settings) -> Path:
    """Check `work/upload` is a zip or tar by content, extract it safely into `work/data`; the data root."""
    with open(work / "upload", "rb") as f:
        head = f.read(512)
    if not head:
        raise ApiError(400, "DataError", "empty", "empty upload")
    if uploads.sniff_archive(head) is None:
        raise ApiError(
            415,
            "DataError",
            "unsupported",
            "not a zip or tar archive (content checked, not the file name)",
        )
    data_root = await asyncio.to_thread(
        uploads.extract_archive,
        work / "upload",
        work / "data",
        max_bytes=settings.max_extract_bytes,
        max_files=settings.max_extract_files,
    )
    (work / "upload").unlink(missing_ok=True)
    return data_root


def _train_options(fields: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key, conv in TRAIN_OPTIONS.items():
        raw = fields.get(key)
        if raw in (None, ""):
            continue
        try:
            options[key] = conv(raw)
        except ValueError as e:
            raise ApiError(422, "RequestError", "invalid_request", f"{key}: {e}") from e
    if "model" in options and options["model"] not in TRAIN_FAMILIES:
        raise ApiError(422, "RequestError", "invalid_request", f"model: expected one of {', '.join(TRAIN_FAMILIES)}")
    if "epochs" in options and not 1 <= options["epochs"] <= 1000:
        raise ApiError(422, "RequestError", "invalid_request", "epochs: expected 1..1000")
    if "synth_per_label" in options and not 1 <= options["synth_per_label"] <= 2000:
        raise ApiError(422, "RequestError", "invalid_request", "synth_per_label: expected 1..2000")
    return options


def _job_name(requested: str | None, filename: str, job_id: str, taken: set[str]) -> str:
    """The requested model name if valid and free, else one made from the upload's file name."""
    if requested:
        if not valid_name(requested):
            raise ApiError(
                422,
                "RequestError",
                "invalid_name",
                "name: letters, digits, '.', '_' or '-', 64 at most, not starting with '.'",
            )
        if requested in taken:
            raise ApiError(409, "RequestError", "conflict", f"a model named {requested!r} exists already")
        return requested
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", PurePosixPath(filename).name.split(".")[0]).strip("-._")[:40]
    base = stem or "custom"
    return base if base not in taken and valid_name(base) else f"{base}-{job_id[:6]}"


def _allowed_path(raw: str | None, roots: list[Path]) -> Path:
    if not raw:
        raise ApiError(400, "RequestError", "no_data", "send a zip/tar `file`, or a JSON body with `path` or "
                       "`words`")
    if not roots:
        raise ApiError(403, "RequestError", "forbidden", "server-side paths are disabled (EARSHOT_TRAIN_ROOTS)")
    path = Path(raw).expanduser().resolve()
    if not any(path.is_relative_to(r) for r in roots):
        raise ApiError(403, "RequestError", "forbidden", "path is outside the allowed training roots")
    if not path.exists():
        raise ApiError(404, "DataError", "not_found", f"no such data set: {raw}")
    return path
