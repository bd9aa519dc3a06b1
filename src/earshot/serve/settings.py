"""Server settings: one dataclass, filled from `EARSHOT_*` environment variables and/or keyword overrides."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from earshot.cores import usable as usable_cores
from earshot.models.weights import earshot_home

MB = 1 << 20


def _split(value: str | None, sep: str = ",") -> list[str]:
    return [v.strip() for v in (value or "").split(sep) if v.strip()]


@dataclass
class Settings:
    """Everything the HTTP server can be told. `None` paths get defaults under `$EARSHOT_HOME`."""

    model: str = "mn04-as"  # default model for requests that name none
    models_dir: Path | None = None  # bundles listed and trained here ($EARSHOT_HOME/models)
    state_dir: Path | None = None  # job database and uploaded data sets ($EARSHOT_HOME/serve)
    samples_dir: Path | None = None  # gallery of example clips for the web page (EARSHOT_SAMPLES)
    index: str | None = None  # search index, a folder of them, or an s3:// index for /v1/search (EARSHOT_INDEX)
    api_keys: list[str] = field(default_factory=list)  # empty: no authentication
    cors_origins: list[str] = field(default_factory=list)
    max_upload_mb: float = 50.0  # /v1/predict and /v1/spectrogram bodies
    max_train_upload_mb: float = 500.0  # /v1/train bodies
    max_extract_mb: float = 2000.0  # uncompressed size of a training archive
    max_extract_files: int = 50_000
    workers: int = 0  # inference threads; 0 = number of cores
    max_inflight: int = 0  # requests running inference at once; 0 = workers
    max_queue: int = -1  # admitted requests waiting for a worker; -1 = 4 x max_inflight
    ort_threads: int = 0  # onnxruntime intra-op threads per model; 0 = cores // max_inflight (at least 1)
    request_timeout_s: float = 30.0  # 504 past this, counted from admission (upload + queue + decode + inference)
    max_audio_s: float = 3600.0  # audio seconds one request may hold (413 past it); 0 = no bound
    drain_timeout_s: float = 30.0  # how long the unread rest of a refused body is read and dropped
    retry_after_s: int = 1
    reject_hold_ms: float = 30.0  # under a retry storm a request finding no slot waits this long for one, then 503
    reject_hold_above: float = 100.0  # rejections a second past which the hold applies
    train_roots: list[Path] = field(default_factory=list)  # server-side folders /v1/train may read
    train_workers: int = 1
    train_timeout_s: float = 3600.0
    max_top_k: int = 100
    max_streams: int = 0  # WebSocket streams open at once (/v1/stream); 0 = 32 x cores
    max_stream_s: float = 0.0  # audio seconds one stream may send; 0 = no bound (memory is bounded anyway)
    stream_backlog_s: float = 30.0  # audio queued for scoring before the socket is no longer read
    stream_idle_timeout_s: float = 60.0  # a stream that sends nothing this long ends (error reason idle)
    stream_max_frame_mb: float = 4.0  # largest binary frame
    stream_max_pending: int = 1000  # records made but not yet taken by the client: past it, a slow consumer
    stream_send_timeout_s: float = 10.0  # a record the client does not take within this long: a slow consumer
    stream_linger_s: float = 30.0  # a stopped stream's last record and close wait this long for a slow client

    def __post_init__(self) -> None:
        home = earshot_home()
        self.models_dir = Path(self.models_dir or home / "models").expanduser()
        self.state_dir = Path(self.state_dir or home / "serve").expanduser()
        self.samples_dir = Path(self.samples_dir).expanduser() if self.samples_dir else None
        self.train_roots = [Path(p).expanduser().resolve() for p in self.train_roots]
        cores = usable_cores()
        self.workers = self.workers if self.workers > 0 else cores
        self.max_inflight = self.max_inflight if self.max_inflight > 0 else self.workers
        self.max_queue = self.max_queue if self.max_queue >= 0 else 4 * self.max_inflight
        self.ort_threads = self.ort_threads if self.ort_threads > 0 else max(1, cores // self.max_inflight)
        self.max_audio_s = self.max_audio_s if self.max_audio_s > 0 else math.inf
        self.max_streams = self.max_streams if self.max_streams > 0 else 32 * cores

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)

    @property
    def max_train_upload_bytes(self) -> int:
        return int(self.max_train_upload_mb * MB)

    @property
    def max_extract_bytes(self) -> int:
        return int(self.max_extract_mb * MB)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides) -> Settings:
        """Settings from `EARSHOT_*` variables (EARSHOT_API_KEYS, ...), then `overrides`."""
        env = os.environ if env is None else env
        kw: dict = {}
        names = {f.name: f for f in fields(cls)}
        aliases = {"samples_dir": "EARSHOT_SAMPLES", "model": "EARSHOT_MODEL"}
        for name in names:
            raw = env.get(aliases.get(name, "EARSHOT_" + name.upper()))
            if raw is None or raw == "":
                continue
            default = names[name].default
            if name in ("api_keys", "cors_origins"):
                kw[name] = _split(raw)
            elif name == "train_roots":
                kw[name] = _split(raw, os.pathsep)
            elif isinstance(default, int | float) and not isinstance(default, bool):
                kw[name] = type(default)(raw)
            else:
                kw[name] = raw
        unknown = set(overrides) - set(names)
        if unknown:
            raise TypeError(f"unknown server settings: {', '.join(sorted(unknown))}")
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)
