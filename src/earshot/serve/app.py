"""HTTP server: REST `/v1` (predict, spectrogram, models, train, jobs, samples), /healthz, /metrics, page.

A shell only: decoding, features and inference live in `earshot.Classifier`. Inference runs on a thread pool
(onnxruntime releases the GIL) behind an admission limit (running + small queue; 503 + Retry-After beyond it)
and a per-request deadline (504). Uploads are capped while streaming (413) and sniffed by content.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from earshot import audio
from earshot.errors import AudioError, DataError, EarshotError, ModelError
from earshot.prediction import Prediction
from earshot.serve import uploads
from earshot.serve.jobs import JobRunner, JobStore, public
from earshot.serve.metrics import Metrics
from earshot.serve.settings import Settings
from earshot.serve.spectrogram import data_url, render_png
from earshot.serve.store import ModelStore, valid_name

log = logging.getLogger("earshot.serve")
STATIC = Path(__file__).with_name("static")
OPEN_PATHS = ("/healthz", "/docs", "/redoc", "/openapi.json", "/favicon.ico")
MB = 1 << 20
DRAIN_LIMIT = 64 * MB  # a refused body up to this size is read and dropped before the 413 (never stored)

AUDIO_STATUS = {"empty": 400, "unsupported": 415, "needs_media_extra": 415, "too_long": 413, "not_found": 400}
DATA_STATUS = {"too_large": 413, "unsupported": 415}

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
                    "model": {"type": "string", "enum": ["auto", "transfer", "cnn"]},
                    "backbone": {"type": "string"},
                    "epochs": {"type": "integer"},
                    "seed": {"type": "integer"},
                    "val_split": {"type": "number"},
                    "val_fold": {"type": "integer"},
                },
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "server-side data set under an allowed root"},
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
    "label_regex": str,
    "group_regex": str,
}


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


class BodyTooLarge(Exception):
    pass


def error_body(type_: str, reason: str, message: str, **extra: Any) -> dict:
    return {**extra, "labels": [], "error": {"type": type_, "reason": reason, "message": message}}


def error_response(status: int, body: dict, headers: dict | None = None) -> JSONResponse:
    h = {"x-error-type": body["error"]["type"], **(headers or {})}
    return JSONResponse(body, status_code=status, headers=h)


def _status_for(exc: BaseException) -> int:
    if isinstance(exc, AudioError):
        return AUDIO_STATUS.get(exc.reason, 422)
    if isinstance(exc, ModelError):
        return 404 if exc.reason == "not_found" else 500
    if isinstance(exc, DataError):
        return DATA_STATUS.get(exc.reason, 400)
    if isinstance(exc, EarshotError):
        return 400
    return 500


class Limiter:
    """Admission control: at most `limit` requests hold a slot (running or queued for a worker)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def full(self) -> bool:
        return self.used >= self.limit

    def try_acquire(self) -> bool:  # called on the event loop only
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def release(self) -> None:
        self.used -= 1


class EarshotMiddleware:
    """Pure ASGI: metrics (every request), API keys (401), body cap while streaming (413)."""

    def __init__(self, app, settings: Settings, metrics: Metrics, paths: Callable[[], set[str]]) -> None:
        self.app, self.settings, self.metrics, self.paths = app, settings, metrics, paths
        self.keys = [k.encode() for k in settings.api_keys]

    def _authorized(self, scope) -> bool:
        headers = dict(scope["headers"])
        given = headers.get(b"x-api-key")
        auth = headers.get(b"authorization", b"")
        if not given and auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        return bool(given) and any(hmac.compare_digest(given, k) for k in self.keys)

    def _cap(self, path: str) -> int:
        if path.startswith("/v1/train"):
            return int(self.settings.max_train_upload_mb * MB)
        if path.startswith(("/v1/predict", "/v1/spectrogram")):
            return int(self.settings.max_upload_mb * MB)
        return MB

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        path, method = scope["path"], scope["method"]
        state = {"status": 500, "started": False}
        self.metrics.start()

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
                for k, v in message.get("headers", []):
                    if k == b"x-error-type":
                        state["error"] = v.decode("latin-1")
            await send(message)

        try:
            needs_key = self.keys and (path.startswith("/v1/") or path == "/metrics")
            if needs_key and method != "OPTIONS" and not self._authorized(scope):
                resp = error_response(
                    401,
                    error_body("AuthError", "unauthorized", "missing or invalid API key (X-API-Key or Bearer)"),
                    {"www-authenticate": "Bearer"},
                )
                return await resp(scope, receive, send_wrapper)
            cap = self._cap(path)
            length = dict(scope["headers"]).get(b"content-length")
            too_big = error_body("UploadError", "too_large", f"request body over the {cap / MB:g} MB limit")
            headers = dict(scope["headers"])
            if length is not None and length.isdigit() and int(length) > cap:
                if headers.get(b"expect", b"").lower() != b"100-continue" and int(length) <= DRAIN_LIMIT:
                    await _drain(receive)
                return await error_response(413, too_big, {"connection": "close"})(scope, receive, send_wrapper)
            seen = 0

            async def limited_receive():
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > cap:
                        raise BodyTooLarge()
                return message

            try:
                await self.app(scope, limited_receive, send_wrapper)
            except BodyTooLarge:
                if state["started"]:
                    raise
                await _drain(receive)
                await error_response(413, too_big, {"connection": "close"})(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or (path if path in self.paths() else "other")
            if state.get("error"):
                self.metrics.error(name, state["error"])
            self.metrics.observe(name, method, state["status"], time.perf_counter() - t0)


async def _drain(receive, limit: int | None = None, seconds: float = 10.0) -> None:
    """Read and drop the rest of a refused body (bounded), so the client gets the 413 rather than a reset."""
    left = DRAIN_LIMIT if limit is None else limit

    async def run() -> None:
        nonlocal left
        while left > 0:
            message = await receive()
            if message["type"] != "http.request":
                return
            left -= len(message.get("body", b""))
            if not message.get("more_body"):
                return

    with suppress(TimeoutError):
        await asyncio.wait_for(run(), seconds)


def _title(request: Request, fallback: str = "upload") -> str:
    name = request.query_params.get("title") or request.headers.get("x-filename") or fallback
    return PurePosixPath(name.replace("\\", "/")).name[:255] or fallback


async def _read_audio(request: Request) -> tuple[bytes, str]:
    """Bytes and title of an upload: multipart field `file` (or the first file part), else the raw body."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=4, max_fields=20)
        except HTTPException as e:
            raise ApiError(400, "RequestError", "bad_multipart", str(e.detail)) from e
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                upload = next((v for v in form.values() if isinstance(v, UploadFile)), None)
            if upload is None:
                raise ApiError(400, "RequestError", "no_file", "multipart body has no `file` part")
            return await upload.read(), _title(request, upload.filename or "upload")
        finally:
            await form.close()
    return await request.body(), _title(request)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The FastAPI application; `settings` defaults to `Settings.from_env()`."""
    settings = settings or Settings.from_env()
    metrics = Metrics()
    store = ModelStore(settings.models_dir, settings.model, {"threads": settings.ort_threads})
    limiter = Limiter(settings.max_inflight + settings.max_queue)
    pool = ThreadPoolExecutor(max_workers=settings.max_inflight, thread_name_prefix="earshot-infer")
    jobs = JobStore(settings.state_dir / "jobs.sqlite3")
    runner = JobRunner(
        jobs,
        settings.state_dir,
        settings.models_dir,
        workers=settings.train_workers,
        timeout_s=settings.train_timeout_s,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        runner.start()
        loop = asyncio.get_running_loop()

        def warm() -> None:
            try:
                store.get(None)
            except Exception as e:  # the server stays up; requests will report the error
                log.error("could not load default model %s: %s", settings.model, e)

        app.state.warmup = loop.run_in_executor(pool, warm)
        try:
            yield
        finally:
            runner.stop()
            pool.shutdown(wait=False, cancel_futures=True)
            jobs.close()

    app = FastAPI(
        title="earshot",
        version=_version(),
        lifespan=lifespan,
        description="Sound classification API: a pretrained AudioSet tagger and custom classifiers.",
        docs_url=None,
    )
    app.state.settings, app.state.store, app.state.metrics = settings, store, metrics
    app.state.limiter, app.state.jobs, app.state.runner = limiter, jobs, runner
    metrics.gauge(
        "earshot_inference_slots_used",
        "Admitted inference requests (running + queued).",
        lambda: limiter.used,
    )
    metrics.gauge("earshot_inference_slots", "Admission limit (running + queue).", lambda: limiter.limit)
    metrics.gauge("earshot_models_loaded", "Models loaded in this process.", lambda: len(store.loaded()))
    for status in ("queued", "running", "succeeded", "failed"):
        metrics.gauge(f"earshot_jobs_{status}", f"Training jobs {status}.", lambda s=status: jobs.counts().get(s, 0))

    plain_paths: set[str] = set()

    def paths() -> set[str]:  # routes without parameters, to label requests answered before routing
        if not plain_paths:
            plain_paths.update(getattr(r, "path", "{") for r in app.routes)
        return plain_paths

    app.add_middleware(EarshotMiddleware, settings=settings, metrics=metrics, paths=paths)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["Retry-After", "Location"],
        )

    # ---- errors: always JSON in the failure shape ----
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, error_body(exc.type, exc.reason, exc.message), exc.headers)

    @app.exception_handler(EarshotError)
    async def _earshot_error(request: Request, exc: EarshotError):
        return error_response(_status_for(exc), error_body(type(exc).__name__, exc.reason, str(exc)))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        msg = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors())
        return error_response(422, error_body("RequestError", "invalid_request", msg))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, error_body("HTTPError", reason, str(exc.detail)), exc.headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, error_body(type(exc).__name__, "internal", "internal server error"))

    # ---- inference plumbing ----
    async def offload(fn: Callable[[], Any], deadline: float) -> Any:
        """Run `fn` on the pool inside an admitted slot (caller acquired it); 504 past `deadline`."""
        loop = asyncio.get_running_loop()
        fut = pool.submit(fn)
        fut.add_done_callback(lambda _f: loop.is_closed() or loop.call_soon_threadsafe(limiter.release))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), max(0.001, deadline - time.monotonic()))
        except TimeoutError:
            fut.cancel()  # frees the slot now if it had not started; else when it ends
            metrics.reject("timeout")
            raise ApiError(
                504,
                "Timeout",
                "timeout",
                f"no answer within {settings.request_timeout_s:g} s; try again later",
            ) from None

    def overloaded() -> ApiError:
        metrics.reject("overload")
        return ApiError(
            503,
            "Overloaded",
            "overloaded",
            "server busy; retry shortly",
            {"Retry-After": str(settings.retry_after_s)},
        )

    async def audio_call(request: Request, model: str | None, work: Callable[[Any, bytes, str], Any]):
        """Shared by predict/spectrogram: admission, upload, sniffing, off-loop inference, failure JSON."""
        title = _title(request)
        name = model or store.default
        try:
            store.resolve(model)
            if limiter.full():  # turn away before reading the body: overload answers stay cheap
                raise overloaded()
            data, title = await _read_audio(request)
            uploads.check_audio(data, title)
            if not limiter.try_acquire():
                raise overloaded()
            deadline = time.monotonic() + settings.request_timeout_s
            return await offload(lambda: work(store.get(model), data, title), deadline)
        except ApiError as e:
            err = {"type": e.type, "reason": e.reason, "message": e.message}
            body = Prediction(title=title, model=name, error=err).to_dict()
            return error_response(e.status, body, e.headers)
        except EarshotError as e:
            return error_response(_status_for(e), Prediction.failure(title, e, model=name).to_dict())

    # ---- routes ----
    @app.post(
        "/v1/predict",
        tags=["predict"],
        openapi_extra={"requestBody": AUDIO_BODY},
        summary="Classify one audio upload -> Prediction JSON",
    )
    async def predict(
        request: Request,
        model: str | None = Query(None, description="model name (see /v1/models); default: the server's"),
        top_k: int = Query(5, ge=1, le=settings.max_top_k),
        timeline: bool = Query(False, description="add per-window segments and merged events"),
        window: float | None = Query(None, gt=0, le=600),
        hop: float | None = Query(None, gt=0, le=600),
        threshold: float | None = Query(None, ge=0, le=1),
        spectrogram: bool = Query(False, description="add `spectrogram`: the model's log-mel as a PNG data URL"),
        title: str | None = Query(None, description="name to report for a raw-body upload"),
    ):
        def work(clf, data: bytes, name: str):
            pred = clf.predict(
                data, top_k=top_k, timeline=timeline, window=window, hop=hop, threshold=threshold, title=name
            )
            out = pred.to_dict() if hasattr(pred, "to_dict") else dict(pred)
            if spectrogram and out.get("error") is None:
                out["spectrogram"] = data_url(render_png(clf.logmel(data)))
            return out

        result = await audio_call(request, model, work)
        if isinstance(result, Response):
            return result
        if result.get("error"):  # a classifier that reports instead of raising
            return error_response(422, result)
        return JSONResponse(result)

    @app.post(
        "/v1/spectrogram",
        tags=["predict"],
        openapi_extra={"requestBody": AUDIO_BODY},
        responses={200: {"content": {"image/png": {}}}},
        summary="The model's log-mel features of an upload as a PNG image",
    )
    async def spectrogram(request: Request, model: str | None = Query(None), title: str | None = Query(None)):
        result = await audio_call(request, model, lambda clf, data, _name: render_png(clf.logmel(data)))
        if isinstance(result, Response):
            return result
        return Response(result, media_type="image/png")

    @app.get("/v1/models", tags=["models"], summary="Registry models and bundles in the models folder")
    async def models():
        items = await asyncio.to_thread(store.list)
        return {"default": store.default, "models": items}

    @app.get("/v1/models/{name}", tags=["models"], summary="A model's card")
    async def model_card(name: str):
        card = await asyncio.to_thread(store.card, name)
        return {"name": name, **card} if "name" not in card else card

    @app.post(
        "/v1/train",
        tags=["train"],
        status_code=202,
        openapi_extra={"requestBody": TRAIN_BODY},
        summary="Start a training job from an uploaded zip/tar of class folders, or an allowed path",
    )
    async def train(request: Request, name: str | None = Query(None)):
        job_id = uuid.uuid4().hex
        work = runner.job_dir(job_id)
        fields: dict[str, Any] = dict(request.query_params)
        ctype = request.headers.get("content-type", "")
        source = "upload"
        try:
            if ctype.startswith("multipart/form-data"):
                try:
                    form = await request.form(max_files=1, max_fields=30)
                except HTTPException as e:
                    raise ApiError(400, "RequestError", "bad_multipart", str(e.detail)) from e
                try:
                    upload = next((v for v in form.values() if isinstance(v, UploadFile)), None)
                    fields.update({k: v for k, v in form.items() if isinstance(v, str)})
                    if upload is None:
                        raise ApiError(400, "RequestError", "no_file", "multipart body has no archive `file`")
                    filename = upload.filename or "dataset.zip"
                    await asyncio.to_thread(uploads.copy_stream_to, upload.file, work / "upload")
                finally:
                    await form.close()
            elif ctype.startswith("application/json"):
                try:
                    payload = await request.json()
                    assert isinstance(payload, dict)
                except Exception as e:
                    raise ApiError(400, "RequestError", "bad_json", "body is not a JSON object") from e
                fields.update({k: str(v) for k, v in payload.items() if v is not None})
                filename, source = "", "path"
            else:
                body = await request.body()
                filename = fields.get("title") or "dataset.zip"
                (work).mkdir(parents=True, exist_ok=True)
                (work / "upload").write_bytes(body)
            options = _train_options(fields)
            job_name = _job_name(fields.get("name"), filename, job_id, store, runner)
            if source == "path":
                data_root = _allowed_path(fields.get("path"), settings.train_roots)
            else:
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
                    max_bytes=int(settings.max_extract_mb * MB),
                    max_files=settings.max_extract_files,
                )
                (work / "upload").unlink(missing_ok=True)
        except BaseException:
            uploads.remove_tree(work)
            raise
        job = jobs.create(job_name, str(data_root), source, options, job_id=job_id)
        runner.submit(job_id)
        return JSONResponse(public(job), status_code=202, headers={"Location": f"/v1/jobs/{job_id}"})

    @app.get("/v1/jobs", tags=["train"], summary="Recent training jobs, newest first")
    async def list_jobs(limit: int = Query(50, ge=1, le=500)):
        return {"jobs": [public(j) for j in jobs.list(limit)]}

    @app.get("/v1/jobs/{job_id}", tags=["train"], summary="A training job: status, error, timings, model")
    async def get_job(job_id: str):
        job = jobs.get(job_id)
        if job is None:
            raise ApiError(404, "NotFound", "not_found", f"no job {job_id!r}")
        return public(job)

    @app.get("/v1/samples", tags=["samples"], summary="Example clips of the gallery (EARSHOT_SAMPLES)")
    async def samples():
        return {"samples": await asyncio.to_thread(_list_samples, settings.samples_dir)}

    @app.get("/v1/samples/{name:path}", tags=["samples"], summary="One gallery clip")
    async def sample(name: str):
        path = _sample_path(settings.samples_dir, name)
        return FileResponse(path, filename=path.name)

    @app.get("/healthz", tags=["ops"], summary="Liveness: always open")
    async def healthz():
        return {
            "status": "ok",
            "version": _version(),
            "default_model": store.default,
            "models_loaded": store.loaded(),
            "inference_slots_used": limiter.used,
            "inference_slots": limiter.limit,
        }

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=Response)
    async def prometheus():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _offline_docs(app)
    return app


def _offline_docs(app: FastAPI) -> None:
    """/docs served from the swagger-ui-bundle package files, so the API docs work without a CDN too."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title="earshot API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/static/favicon.svg")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("earshot")
    except Exception:
        return "0"


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
    if "model" in options and options["model"] not in ("auto", "transfer", "cnn"):
        raise ApiError(422, "RequestError", "invalid_request", "model: expected auto, transfer or cnn")
    if "epochs" in options and not 1 <= options["epochs"] <= 1000:
        raise ApiError(422, "RequestError", "invalid_request", "epochs: expected 1..1000")
    return options


def _job_name(requested: str | None, filename: str, job_id: str, store: ModelStore, runner: JobRunner) -> str:
    taken = store.names() | runner.reserved_names()
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
        raise ApiError(400, "RequestError", "no_data", "send a zip/tar `file`, or a JSON body with `path`")
    if not roots:
        raise ApiError(403, "RequestError", "forbidden", "server-side paths are disabled (EARSHOT_TRAIN_ROOTS)")
    path = Path(raw).expanduser().resolve()
    if not any(path.is_relative_to(r) for r in roots):
        raise ApiError(403, "RequestError", "forbidden", "path is outside the allowed training roots")
    if not path.exists():
        raise ApiError(404, "DataError", "not_found", f"no such data set: {raw}")
    return path


def _list_samples(root: Path | None, limit: int = 500) -> list[dict]:
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


def _sample_path(root: Path | None, name: str) -> Path:
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
