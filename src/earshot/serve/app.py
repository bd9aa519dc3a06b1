"""HTTP server: REST `/v1` (predict, spectrogram, models, train, jobs, samples, search), the WebSocket
`/v1/stream`, /healthz, /metrics, page.

A shell only: decoding, features and inference live in `earshot.Classifier`. `create_app` builds the shared
objects (model store, inference pool, jobs), puts them on `app.state` for `earshot.serve.deps`, and assembles
middleware (`earshot.serve.middleware`), error handlers (`earshot.serve.errors`) and the routers by area
(`earshot.serve.routers`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp

from earshot.serve.errors import add_exception_handlers
from earshot.serve.inference import Inference
from earshot.serve.jobs import JobRunner, JobStore
from earshot.serve.metrics import Metrics
from earshot.serve.middleware import Admission, ApiKeys, BodyLimit, RequestMetrics, Shed
from earshot.serve.routers import meta, models, pages, predict, samples, search, stream, train
from earshot.serve.settings import Settings
from earshot.serve.store import ModelStore
from earshot.serve.streaming import Streams

log = logging.getLogger("earshot.serve")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The FastAPI application; `settings` defaults to `Settings.from_env()`."""
    settings = settings or Settings.from_env()
    metrics = Metrics()
    store = ModelStore(settings.models_dir, settings.model, {"threads": settings.ort_threads})
    inference = Inference(settings, metrics)
    jobs = JobStore(settings.state_dir / "jobs.sqlite3")
    runner = JobRunner(
        jobs,
        settings.state_dir,
        settings.models_dir,
        workers=settings.train_workers,
        timeout_s=settings.train_timeout_s,
    )
    app = _App(
        title="earshot",
        version=meta.version(),
        lifespan=_lifespan,
        description="Sound classification API: a pretrained AudioSet tagger and custom classifiers.",
        docs_url=None,
    )
    app.state.settings, app.state.store, app.state.metrics = settings, store, metrics
    app.state.inference, app.state.limiter = inference, inference.limiter
    app.state.jobs, app.state.runner = jobs, runner
    app.state.streams = streams = Streams(settings.max_streams)
    _register_gauges(metrics, inference, store, jobs)
    metrics.gauge("earshot_streams_open", "WebSocket streams open (/v1/stream).", lambda: streams.used)

    app.add_middleware(Admission, inference=inference, default_model=store.default)
    app.add_middleware(ApiKeys, keys=settings.api_keys)
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(RequestMetrics, metrics=metrics)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["Retry-After", "Location"],
        )
    add_exception_handlers(app)

    app.include_router(predict.build_router(settings))
    app.include_router(models.router)
    app.include_router(train.router)
    app.include_router(samples.router)
    app.include_router(search.router)
    app.include_router(stream.router)
    app.include_router(meta.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC), name="static")
    app.mount("/docs-assets", StaticFiles(directory=pages.SWAGGER_UI), name="docs-assets")
    return app


class _App(FastAPI):
    """FastAPI with `Shed` around its whole middleware stack: the overloaded request is answered before any
    layer runs."""

    def build_middleware_stack(self) -> ASGIApp:
        state = self.state
        return Shed(super().build_middleware_stack(), state.settings, state.inference, state.metrics,
                    state.store.default)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the training workers and warm the default model; on shutdown stop both and close the jobs."""
    state = app.state
    state.runner.start()
    loop = asyncio.get_running_loop()

    def warm() -> None:
        try:
            state.store.get(None)
        except Exception as e:  # the server stays up; requests will report the error
            log.error("could not load default model %s: %s", state.settings.model, e)

    state.warmup = loop.run_in_executor(state.inference.pool, warm)
    try:
        yield
    finally:
        state.runner.stop()
        state.inference.shutdown()
        state.streams.shutdown()
        state.jobs.close()


def _register_gauges(metrics: Metrics, inference: Inference, store: ModelStore, jobs: JobStore) -> None:
    limiter = inference.limiter
    metrics.gauge(
        "earshot_inference_slots_used", "Admitted inference requests (running + queued).", lambda: limiter.used
    )
    metrics.gauge("earshot_inference_slots", "Admission limit (running + queue).", lambda: limiter.limit)
    metrics.gauge("earshot_models_loaded", "Models loaded in this process.", lambda: len(store.loaded()))
    for status in ("queued", "running", "succeeded", "failed"):
        metrics.gauge(f"earshot_jobs_{status}", f"Training jobs {status}.", lambda s=status: jobs.counts().get(s, 0))
