"""FastAPI dependencies: the server's shared objects, as `create_app` put them on `app.state`.

Each is an `Annotated` type for route signatures (`store: StoreDep`). The functions are `async` so that
FastAPI calls them on the event loop rather than a worker thread.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from earshot.serve.inference import Inference
from earshot.serve.jobs import JobRunner, JobStore
from earshot.serve.metrics import Metrics
from earshot.serve.settings import Settings
from earshot.serve.store import ModelStore


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> ModelStore:
    return request.app.state.store


async def get_inference(request: Request) -> Inference:
    return request.app.state.inference


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_jobs(request: Request) -> JobStore:
    return request.app.state.jobs


async def get_runner(request: Request) -> JobRunner:
    return request.app.state.runner


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
InferenceDep = Annotated[Inference, Depends(get_inference)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
JobsDep = Annotated[JobStore, Depends(get_jobs)]
RunnerDep = Annotated[JobRunner, Depends(get_runner)]
