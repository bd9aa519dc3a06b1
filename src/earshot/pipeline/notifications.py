"""S3/MinIO event notifications: an HTTP endpoint that records the objects they name without waiting for the
next listing of SRC.

POST (any path) an AWS/MinIO `{"Records": [...]}` body; `GET /healthz` answers `{"ok": true}` and `GET /status`
the ledger status of this source and sink.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from earshot.errors import StorageError
from earshot.pipeline.discovery import Discovery
from earshot.pipeline.logs import LOGGER
from earshot.pipeline.storage import LocalStore, S3Store, safe_key

log = logging.getLogger(LOGGER)


def record_events(disc: Discovery, body: dict) -> int:
    """Record the objects that S3 event notifications (AWS/MinIO `Records`) created under SRC; returns how many
    records named one (new or already known)."""
    src = disc.src
    rows = []
    for rec in body.get("Records") or []:
        name = str(rec.get("eventName", "ObjectCreated"))
        if "ObjectCreated" not in name and "Put" not in name and "Copy" not in name:
            continue
        s3 = rec.get("s3") or {}
        bucket = (s3.get("bucket") or {}).get("name")
        obj = s3.get("object") or {}
        full = urllib.parse.unquote_plus(str(obj.get("key", "")))
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
        etag = str(obj.get("eTag") or obj.get("etag") or "").strip('"')
        size = obj.get("size")
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
