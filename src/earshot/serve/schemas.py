"""Response models of the HTTP API: what `/openapi.json` shows for each route.

`Prediction`, `Segment` and `Event` mirror the dataclasses of `earshot.prediction` (the JSON contract).
Bodies built in full by their route (health, samples) are validated against their model. The others are
answered as built, their model documenting them: predictions (the hot path, and `Prediction.to_dict` is the
contract), model cards and registry rows (open-ended fields, in the card's order) and stored jobs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ErrorInfo(BaseModel):
    """A typed error: exception type, machine-readable reason, message."""

    model_config = ConfigDict(extra="allow")

    type: str
    reason: str
    message: str


class ErrorBody(BaseModel):
    """Every error answer: no labels and a typed error (predict failures add the Prediction fields)."""

    model_config = ConfigDict(extra="allow")

    labels: list[str] = Field(description="always empty")
    error: ErrorInfo


class Segment(BaseModel):
    """Top labels of one analysis window."""

    start: float
    end: float
    labels: list[str]
    probabilities: list[float]


class Event(BaseModel):
    """A label active over a time span, merged from consecutive windows."""

    label: str
    label_id: str | None
    start: float
    end: float
    score: float


class Prediction(BaseModel):
    """What earshot says about one input; `error` is set (and `labels` empty) when it failed."""

    title: str
    labels: list[str]
    probabilities: list[float]
    labels_info: list[str | None] = Field(description="label ids (AudioSet MIDs), null where the model has none")
    model: str | None
    duration: float | None = Field(description="seconds of audio")
    segments: list[Segment] | None = Field(None, description="per-window top labels; only with `timeline=true`")
    events: list[Event] | None = Field(None, description="merged label events; only with `timeline=true`")
    error: ErrorInfo | None
    links: list[str | None] | None = Field(None, description="per label: citation or search URL; only when asked for")
    descriptions: list[str | None] | None = Field(None, description="per label: ontology description; when asked for")
    parents: list[list[str]] | None = Field(None, description="per label: classes above it; only when asked for")
    spectrogram: str | None = Field(
        None, description="the model's log-mel as a PNG data URL; only with `spectrogram=true`"
    )


class ModelSummary(BaseModel):
    """One model of `/v1/models`: registry fields, or a bundle's card summary."""

    model_config = ConfigDict(extra="allow")

    name: str
    description: str | None = None
    source: Literal["registry", "bundle"]
    pulled: bool | None = Field(None, description="registry models: bundle built on this server")
    kind: str | None = None
    license: str | None = None
    labels: int | None = Field(None, description="bundles: number of classes")
    sample_rate: int | None = None
    window_seconds: float | None = None
    multi_label: bool | None = None
    metrics: dict[str, Any] | None = None
    created: Any = None
    default: bool
    loaded: bool


class ModelList(BaseModel):
    """Models this server can answer with, and its default."""

    default: str
    models: list[ModelSummary]


class ModelCard(BaseModel):
    """A bundle's card.json (fields beyond these are passed through)."""

    model_config = ConfigDict(extra="allow")

    name: str
    description: str | None = None
    labels: list[str]
    label_ids: list[str | None] | None = None
    sample_rate: int
    window_seconds: float
    multi_label: bool
    thresholds: Any = None
    metrics: dict[str, Any] | None = None


class Adaptation(BaseModel):
    """The card's `adaptation` record of an adapted bundle (`earshot adapt`)."""

    model_config = ConfigDict(extra="allow")

    method: str
    strength: float
    files: int = Field(description="recordings decoded and used")
    seconds: float = Field(description="audio used, seconds")
    model_inputs: int
    skipped: list[dict[str, str]] = Field(description="recordings that could not be decoded: source, reason, message")
    layers: int = Field(description="normalisation layers re-estimated")
    layer_mean_shift: list[float]
    metrics_before: dict[str, Any] | None = None


class Adapted(BaseModel):
    """`POST /v1/models/{name}/adapt`: the new model's name and what was done."""

    model: str
    adaptation: Adaptation


class JobTimings(BaseModel):
    """Unix times of a job's steps and the seconds between them (so far, while it runs)."""

    created_at: float
    started_at: float | None
    finished_at: float | None
    queued_s: float
    run_s: float | None
    total_s: float


class Job(BaseModel):
    """A training job: status, error, timings, the model it made."""

    id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    name: str
    model: str | None = Field(description="the model's name once succeeded")
    error: ErrorInfo | None
    timings: JobTimings
    options: dict[str, Any]
    data_source: Literal["upload", "path", "words"]
    url: str


class JobList(BaseModel):
    """Recent training jobs, newest first."""

    jobs: list[Job]


class Sample(BaseModel):
    """A clip of the gallery."""

    name: str
    size: int
    url: str


class SampleList(BaseModel):
    """The gallery's clips."""

    samples: list[Sample]


class Health(BaseModel):
    """Liveness and load."""

    status: Literal["ok"]
    version: str
    default_model: str
    models_loaded: list[str]
    inference_slots_used: int
    inference_slots: int
    workers: int = Field(description="model calls that run at once; by default the cores this process may use "
                         "(CPU affinity and the container's CPU quota, or EARSHOT_CORES)")
    ort_threads: int = Field(description="ONNX Runtime threads per model call")
    streams_open: int = Field(description="WebSocket streams open on /v1/stream")
    max_streams: int
    max_upload_bytes: int = Field(description="largest upload /v1/predict takes; the page streams bigger files")
    stream_formats: list[str] = Field(description="`format` values /v1/stream takes")
    decodes_containers: bool = Field(description="whether `format=file` streams decode FLAC, MP3, Ogg, ... (the "
                                     "media extra); WAV always")


class SearchHit(BaseModel):
    """An indexed recording like the query: its id, similarity and best-matching window."""

    id: str = Field(description="the file's key under the indexed folder or prefix")
    score: float = Field(description="cosine similarity of the clips (1 = the same clip)")
    start: float = Field(description="start of the file's best-matching window, seconds")
    end: float
    url: str | None = Field(None, description="where to play the file, when it lies in the samples folder")


class SearchResults(BaseModel):
    """The hits of `/v1/search`, best first, and the index and model that gave them."""

    results: list[SearchHit]
    model: str
    index: str


class IndexSummary(BaseModel):
    """A search index; model and counts once it has been loaded."""

    name: str
    model: str | None = None
    window: float | None = None
    hop: float | None = None
    files: int | None = None
    windows: int | None = None
    updated: str | None = None


class IndexList(BaseModel):
    """The search indexes of this server (`EARSHOT_INDEX`) and the default one."""

    default: str | None
    indexes: list[IndexSummary]


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for error statuses, all in the failure shape."""
    return {status: {"model": ErrorBody, "description": _REASONS.get(status, "Error")} for status in statuses}


_REASONS = {
    400: "Bad request",
    401: "Missing or invalid API key (when the server has keys)",
    403: "Forbidden",
    404: "Not found",
    409: "Conflict",
    413: "Body too large",
    415: "Unsupported media type",
    422: "Invalid request or undecodable audio",
    500: "Internal error",
    503: "Overloaded (see Retry-After)",
    504: "No answer within the request deadline",
}
