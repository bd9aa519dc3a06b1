"""S3/MinIO event notifications: what objects they name (`created_objects`, also read by `earshot.serverless`),
and an HTTP endpoint that records those objects without waiting for the next listing of SRC.

POST (any path) an AWS/MinIO `{"Records": [...]}` body; `GET /healthz` answers `{"ok": true}` and `GET /status`
the ledger status of this source and sink.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from earshot.errors import StorageError
from earshot.pipeline.discovery import Discovery
from earshot.pipeline.logs import LOGGER
from earshot.pipeline.storage import LocalStore, S3Store, safe_key

log = logging.getLogger(LOGGER)


@dataclass(frozen=True)
class CreatedObject:
    """An object that an event notification says was created: its bucket, its key (decoded), ETag and size."""

    bucket: str
    key: str
    etag: str
    size: int | None


def created_objects(body: Any) -> Iterator[CreatedObject]:
    """The objects created according to an event notification body: AWS S3 and MinIO `{"Records": [...]}` (keys
    URL-encoded, as S3 sends them), the same delivered through SQS or SNS, and EventBridge `Object Created`
    events (keys as they are). Other events (removals, `s3:TestEvent`) name none."""
    if not isinstance(body, dict):
        return
    if body.get("source") == "aws.s3" and isinstance(body.get("detail"), dict):  # EventBridge
        if "Object Created" in str(body.get("detail-type", "")):
            d = body["detail"]
            obj = d.get("object") or {}
            yield CreatedObject(str((d.get("bucket") or {}).get("name", "")), str(obj.get("key", "")),
                                str(obj.get("etag", "")), obj.get("size"))
        return
    for rec in body.get("Records") or []:
        if not isinstance(rec, dict):
            continue
        if "body" in rec and rec.get("eventSource") == "aws:sqs":
            yield from created_objects(_json(rec["body"]))
            continue
        if isinstance(rec.get("Sns"), dict):
            yield from created_objects(_json(rec["Sns"].get("Message")))
            continue
        name = str(rec.get("eventName", "ObjectCreated"))
        if "ObjectCreated" not in name and "Put" not in name and "Copy" not in name:
            continue
        s3 = rec.get("s3") or {}
        obj = s3.get("object") or {}
        yield CreatedObject(str((s3.get("bucket") or {}).get("name", "")),
                            urllib.parse.unquote_plus(str(obj.get("key", ""))),
                            str(obj.get("eTag") or obj.get("etag") or "").strip('"'), obj.get("size"))


def _json(text: Any) -> Any:
    try:
        return json.loads(text) if isinstance(text, str | bytes) else text
    except ValueError:
        return None


def record_events(disc: Discovery, body: dict) -> int:
    """Record the objects that S3 event notifications (see `created_objects`) created under SRC; returns how many
    records named one (new or already known)."""
    src = disc.src
    rows = []
    for created in created_objects(body):
        bucket, full = created.bucket, created.key
        if isinstance(src, S3Store):
            if bucket != src.bucket or not full.startswith(src.prefix):
                continue
            key = full[len(src.prefix) :]
        else:
            key = full
        if not key or not disc.wanted(key):
            continue
        try:
            safe_key(key)
        except StorageError:
            continue
        etag, size = created.etag, created.size
        if not etag or isinstance(src, LocalStore):
            info = src.head(key)
            if info is None:
                continue
            etag, size = info.version, info.size
        rows.append((key, etag, size))
    n = disc.record(rows)
    log.info("events", extra={"event": "s3_events", "records": len(rows), "new": n})
    return len(rows)


def serve_events(disc: Discovery, host: str, port: int) -> ThreadingHTTPServer:
    """Start the endpoint on a daemon thread (port 0: any free port, see `server_address`); `shutdown()` stops
    it."""

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, obj: dict) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802
            if self.path.startswith("/healthz"):
                self._send(200, {"ok": True})
            elif self.path.startswith("/status"):
                self._send(200, disc.ledger.status(disc.src.url, disc.sink))
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self):  # noqa: N802
            n = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(n) or b"{}")
            except ValueError:
                self._send(400, {"error": "body is not JSON"})
                return
            try:
                queued = record_events(disc, body if isinstance(body, dict) else {})
            except Exception as e:
                log.error("event handling failed", extra={"event": "s3_events_error", "error": repr(e)})
                self._send(503, {"error": str(e)})
                return
            self._send(200, {"queued": queued})

        def log_message(self, fmt, *args):
            log.debug(fmt % args, extra={"event": "http"})

    srv = ThreadingHTTPServer((host, port), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, name="earshot-events", daemon=True).start()
    log.info("event endpoint", extra={"event": "http_listen", "host": host, "port": srv.server_address[1]})
    return srv
