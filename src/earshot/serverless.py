"""Serverless entry point: `earshot.serverless:handler(event, context)` for AWS Lambda container images and any
platform that delivers S3/MinIO event notifications (Knative, OpenFaaS, a MinIO webhook relay...).

Each object an event names (`pipeline.notifications.created_objects`: AWS and MinIO `Records`, through SQS or
SNS, EventBridge) is read, classified and written by the pipeline's `Processor`, exactly as `earshot watch`
writes it: `$EARSHOT_OUTPUT/<key>.json` (a Prediction) or `$EARSHOT_OUTPUT/<key>.error.json` (the failure
object with `attempts` and `reason`), atomically and under the same name every time, so a redelivered event
rewrites the same result. Configuration comes from the environment:

- `EARSHOT_OUTPUT` (required): `s3://bucket/prefix` or a folder;
- `EARSHOT_MODEL`: registry name, bundle directory (baked into the image) or `s3://` bundle; default `mn04-as`;
- `EARSHOT_TOP_K` (default 5), `EARSHOT_MAX_ATTEMPTS` (reads retried in place, default 3);
- `AWS_ENDPOINT_URL` for MinIO or another S3-compatible store.

The Classifier is loaded once per container: during Lambda's init phase when the module is imported by the
runtime, else on the first call, and kept for the container's later invocations. Objects under the output
prefix are never classified (a trigger on the whole bucket would otherwise feed on its own results). When a
store is unreachable the handler raises after the other records, so the platform delivers the event again.
No torch here.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from earshot.errors import StorageError
from earshot.pipeline.logs import LOGGER
from earshot.pipeline.notifications import created_objects
from earshot.pipeline.processor import Outcome, Processor
from earshot.pipeline.storage import S3Store, Store, open_store

log = logging.getLogger(LOGGER)


@dataclass
class Runtime:
    """What a container keeps between invocations: the classifier, the output store, a source store per bucket."""

    clf: Any
    output: Store
    top_k: int
    max_attempts: int
    load_seconds: float
    sources: dict[str, S3Store] = field(default_factory=dict)
    invocations: int = 0

    def source(self, bucket: str) -> S3Store:
        if bucket not in self.sources:
            self.sources[bucket] = S3Store(bucket)
        return self.sources[bucket]

    def is_output(self, bucket: str, key: str) -> bool:
        """Whether `bucket/key` lies under the output prefix (our own result)."""
        out = self.output
        return isinstance(out, S3Store) and bucket == out.bucket and key.startswith(out.prefix)


_runtime: Runtime | None = None


def runtime() -> Runtime:
    """The container's runtime, built on first use from the environment."""
    global _runtime
    if _runtime is None:
        import earshot

        output = os.environ.get("EARSHOT_OUTPUT")
        if not output:
            raise StorageError("EARSHOT_OUTPUT is not set (s3://bucket/prefix or a folder for the results)",
                               reason="no_output")
        t0 = time.perf_counter()
        clf = earshot.load(os.environ.get("EARSHOT_MODEL") or "mn04-as")
        _runtime = Runtime(clf, open_store(output, create=True), int(os.environ.get("EARSHOT_TOP_K", "5")),
                           max(1, int(os.environ.get("EARSHOT_MAX_ATTEMPTS", "3"))), time.perf_counter() - t0)
        log.info("model loaded", extra={"event": "serverless_init", "model": clf.name,
                                        "seconds": round(_runtime.load_seconds, 3)})
    return _runtime


def _classify(proc: Processor, key: str, max_attempts: int) -> Outcome:
    attempts = 1
    while True:
        out = proc.process(key, attempts)
        if out.state != "retry" or attempts >= max_attempts:
            return out
        time.sleep(0.5 * 2 ** (attempts - 1))
        attempts += 1


def handler(event: dict, context: Any = None) -> dict[str, Any]:
    """Classify every object the event names; returns {"results": [{"bucket", "key", "state", "output",
    "reason"}], "done", "failed", "skipped", "cold_start", "seconds"}. Raises StorageError (after trying every
    record) when a store was unreachable, for the platform to retry the event."""
    t0 = time.perf_counter()
    rt = runtime()
    cold = rt.invocations == 0  # the container's first event (its model loaded at init or just now)
    rt.invocations += 1
    results: list[dict[str, Any]] = []
    unavailable: list[str] = []
    for obj in created_objects(event):
        row: dict[str, Any] = {"bucket": obj.bucket, "key": obj.key}
        if rt.is_output(obj.bucket, obj.key) or not obj.bucket or not obj.key:
            results.append({**row, "state": "skipped", "output": None, "reason": "not_an_input"})
            continue
        proc = Processor(rt.source(obj.bucket), rt.output, rt.clf, top_k=rt.top_k, max_attempts=rt.max_attempts)
        out = _classify(proc, obj.key, rt.max_attempts)
        if out.state == "unavailable":
            unavailable.append(f"s3://{obj.bucket}/{obj.key}: {out.error}")
        state = out.state if out.state in ("done", "failed", "unavailable") else "skipped"
        results.append({**row, "state": state, "reason": out.reason,
                        "output": rt.output.child_url(out.output) if out.output else None})
        log.info(state, extra={"event": state, "key": obj.key, "bucket": obj.bucket, "reason": out.reason})
    if unavailable:
        raise StorageError("; ".join(unavailable), reason="unreachable")
    return {
        "results": results,
        "done": sum(r["state"] == "done" for r in results),
        "failed": sum(r["state"] == "failed" for r in results),
        "skipped": sum(r["state"] == "skipped" for r in results),
        "cold_start": cold,
        "model_load_seconds": round(rt.load_seconds, 3) if cold else 0.0,
        "seconds": round(time.perf_counter() - t0, 3),
    }


if os.environ.get("AWS_LAMBDA_RUNTIME_API") and os.environ.get("EARSHOT_OUTPUT"):
    runtime()  # Lambda's init phase: the model loads before the first event arrives
