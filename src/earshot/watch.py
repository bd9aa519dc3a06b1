"""`earshot watch`: classify every object that appears under SRC into exactly one result under DST.

Each object `SRC/<key>` yields `DST/<key>.json` (a Prediction) or `DST/<key>.error.json` (the Prediction failure
object plus `attempts` and `reason`). Work goes through a durable ledger (earshot.ledger) so restarts resume
and several workers/processes share the load. Per item: claim (lease) -> read -> classify -> delete the other
result kind -> write ours atomically -> mark done. A crash anywhere before the mark re-runs the item, and the
rewrite lands on the same key, so there is never a duplicate or a partial result.

Discovery: S3 sources are listed every `poll` seconds (and an optional HTTP endpoint takes S3 event
notifications); local folders use inotify via `watchdog` when installed (else polling), plus a full scan every
`scan_interval` seconds as a safety net.

Run as `python -m earshot.watch SRC DST [...]`; logs are JSON lines on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from earshot.errors import AudioError, StorageError
from earshot.ledger import Final, Item, Ledger, backoff_delay, default_owner, dumps, open_ledger
from earshot.prediction import Prediction
from earshot.storage import LocalStore, S3Store, Store, _pid_alive, nested_prefix, open_store, result_keys, safe_key

log = logging.getLogger("earshot.watch")

# ------------------------------------------------------------------------------------------------ logging

_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        d: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STD_ATTRS and not k.startswith("_"):
                d[k] = v
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d, ensure_ascii=False, default=str)


def configure_logging(level: str | int = "INFO", stream=None) -> None:
    """Send earshot logs as JSON lines to `stream` (stderr)."""
    h = logging.StreamHandler(stream or sys.stderr)
    h.setFormatter(JsonFormatter())
    root = logging.getLogger("earshot")
    root.handlers[:] = [h]
    root.setLevel(level)
    root.propagate = False


# ------------------------------------------------------------------------------------------------ one item


@dataclass
class Outcome:
    """What happened to one item: done | failed (final) | retry | unavailable (store down) | vanished."""

    state: str
    reason: str | None = None
    error: str | None = None
    record: dict | None = None
    output: str | None = None


def load_model(model, workers: int = 1):
    """A Classifier from a name/path, or `model` itself when it already is one.

    With several worker threads each model call gets a share of the cores (onnxruntime intra-op threads):
    concurrent calls on a session that uses every core oversubscribe the CPU.
    """
    if hasattr(model, "predict"):
        return model
    import os

    import earshot

    return earshot.load(model, threads=max(1, (os.cpu_count() or 1) // max(1, workers)))


def failure_record(key: str, exc: BaseException, model: str | None, attempts: int, reason: str) -> dict:
    """Prediction failure object + `attempts` and `reason` (the `.error.json` payload)."""
    d = Prediction.failure(key, exc, model=model).to_dict()
    d["attempts"] = attempts
    d["reason"] = reason
    return d


class Processor:
    """Reads, classifies and writes one object; no ledger logic (shared by watch, batch and the Ray engine)."""

    def __init__(self, src: Store, dst: Store | None, clf, *, top_k: int = 5, max_attempts: int = 3,
                 predict_kwargs: dict | None = None):
        self.src, self.dst, self.clf = src, dst, clf
        self.top_k = top_k
        self.max_attempts = max_attempts
        self.predict_kwargs = predict_kwargs or {}
        self.model_name = getattr(clf, "name", None)

    def _final_failure(self, key: str, exc: BaseException, attempts: int, reason: str) -> Outcome:
        rec = failure_record(key, exc, self.model_name, attempts, reason)
        return Outcome("failed", reason, str(exc), rec)

    def lost(self, key: str, attempts: int) -> Outcome:
        """The final failure of an object whose every earlier attempt died holding the lease (crash or kill)."""
        exc = RuntimeError(f"worker lost {attempts - 1} times while processing")
        return self._final_failure(key, exc, attempts - 1, "worker_lost")

    def process(self, key: str, attempts: int) -> Outcome:
        """Classify and store one object in the calling thread."""
        return self.store(key, attempts, self.classify(key, attempts))

    def classify(self, key: str, attempts: int) -> Outcome:
        """Read and classify one object; writes nothing."""
        try:
            safe_key(key)
            if self.dst is not None:
                result_keys(key)
        except StorageError as e:
            return Outcome("failed", "unsafe_key", str(e))  # no result can be written for it
        try:
            data = self._source(key)
        except StorageError as e:
            if e.reason == "not_found":
                return Outcome("vanished", "vanished", str(e))
            if e.reason in ("unreachable", "no_bucket"):
                return Outcome("unavailable", e.reason, str(e))
            if attempts >= self.max_attempts:
                return self._final_failure(key, e, attempts, e.reason)
            return Outcome("retry", e.reason, str(e))
        try:
            pred = self.clf.predict(data, top_k=self.top_k, title=key, **self.predict_kwargs)
            rec = pred.to_dict() if hasattr(pred, "to_dict") else dict(pred)
            return Outcome("done", record=rec)
        except AudioError as e:
            if e.reason == "not_found":  # a local file deleted after it was listed
                return Outcome("vanished", "vanished", str(e))
            return self._final_failure(key, e, attempts, e.reason)
        except MemoryError as e:
            if attempts >= self.max_attempts:
                return self._final_failure(key, e, attempts, "memory")
            return Outcome("retry", "memory", str(e))
        except Exception as e:  # a bug or a transient fault: retry, then a final error record
            log.warning("predict raised", extra={"event": "predict_error", "key": key, "error": repr(e)})
            if attempts < self.max_attempts:
                return Outcome("retry", "internal", repr(e))
            return self._final_failure(key, e, attempts, "internal")

    def _source(self, key: str) -> str | bytes:
        """What the classifier reads: the file itself when the store is local (decoded in place, as `earshot
        predict` does, with no copy in memory), else the object's bytes."""
        path = self.src.local_path(key)  # a missing file: AudioError(reason="not_found"), i.e. vanished
        return self.src.get(key) if path is None else str(path)

    def store(self, key: str, attempts: int, out: Outcome, *, sync_folder: bool = True) -> Outcome:
        """Write the record of a final outcome under DST; a write fault turns it into unavailable, retry or
        failed. Other outcomes (and everything when there is no DST) pass through. `sync_folder`: see
        `Store.put_atomic`."""
        if self.dst is None or out.record is None or out.state not in ("done", "failed"):
            return out
        try:
            out.output = self.write(key, out, sync_folder=sync_folder)
        except StorageError as e:
            if e.reason in ("unreachable", "no_bucket"):
                return Outcome("unavailable", e.reason, str(e))
            if attempts >= self.max_attempts:
                return Outcome("failed", "write_" + e.reason, str(e))
            return Outcome("retry", "write_" + e.reason, str(e))
        return out

    def write(self, key: str, out: Outcome, *, sync_folder: bool = True) -> str:
        """Remove the other result kind, then write ours atomically (idempotent: same key every time)."""
        ok_key, err_key = result_keys(key)
        mine, other = (ok_key, err_key) if out.state == "done" else (err_key, ok_key)
        self.dst.delete(other)
        data = (json.dumps(out.record, ensure_ascii=False, indent=1) + "\n").encode()
        self.dst.put_atomic(mine, data, sync_folder=sync_folder)
        return mine


# ------------------------------------------------------------------------------------------------ workers


class Runner:
    """A pipeline of threads around one ledger thread. The ledger thread claims items ahead of need, renews
    leases, and marks stored items done, several per transaction, after one folder sync has made their new
    names durable; `workers` classifier threads classify claimed items and never wait on the ledger; writer
    threads store each result (temp file, fsync, rename; or a PUT). Write latency thus overlaps with
    classification, bounded queues between the stages keep memory flat, and an item is marked done only once
    its result is durably stored."""

    TICK = 0.02  # the ledger thread's pace: what arrives within it shares one transaction

    def __init__(self, src: Store, dst: Store | None, clf, ledger: Ledger, *, sink: str | None = None,
                 workers: int = 1, writers: int = 4, max_attempts: int = 3, lease: float = 60.0,
                 backoff: float = 1.0, top_k: int = 5, store_results: bool = False,
                 stop_event: threading.Event | None = None, on_finish: Callable[[Outcome], object] | None = None,
                 predict_kwargs: dict | None = None):
        self.src, self.dst, self.ledger = src, dst, ledger
        self.source, self.sink = src.url, sink or (dst.url if dst else "")
        if workers > 1 and hasattr(clf, "single_threaded"):
            # As in predict_many: each classifier thread makes single-threaded model calls, so a call never adds
            # intra-op threads on top of the other threads' calls.
            clf = clf.single_threaded()
        self.proc = Processor(src, dst, clf, top_k=top_k, max_attempts=max_attempts,
                              predict_kwargs=predict_kwargs)
        self.workers, self.writers = workers, writers
        self.max_attempts, self.lease, self.backoff = max_attempts, lease, backoff
        self.store_results = store_results
        self.stop = stop_event or threading.Event()
        self.wake = threading.Event()  # for the ledger thread: new work recorded, results stored, or room
        self._low = threading.Event()  # the classifier threads are running short of claimed items
        self.idle = threading.Event()  # set whenever no claimed item is in hand
        self.on_finish = on_finish
        self.owner = default_owner(f"r{id(self):x}")
        self.counts = {"done": 0, "failed": 0, "retry": 0, "unavailable": 0, "vanished": 0}
        self._held: dict[str, Item] = {}  # claimed and not yet recorded: leases to renew
        self._lock = threading.Lock()
        # Claimed items for the classifier threads (None: exit): up to four rounds of them, topped up every tick
        # and at once when down to one round.
        self._ready: queue.Queue[Item | None] = queue.Queue()
        self._ready_max = 4 * workers
        self._classified: queue.Queue[tuple[Item, Outcome, float] | None] = queue.Queue(maxsize=2 * writers)
        self._stored: queue.Queue[tuple[Item, Outcome, float]] = queue.Queue()  # bounded by what is held
        self._written = threading.Event()  # the writer threads have exited
        self._pause_until = 0.0
        self._outage = 0
        self._threads: dict[str, list[threading.Thread]] = {}

    def start(self) -> None:
        for role, target, n in (("ledger", self._ledger_loop, 1), ("classify", self._classify_loop, self.workers),
                                ("write", self._write_loop, self.writers)):
            self._threads[role] = [threading.Thread(target=target, name=f"earshot-{role}-{i}", daemon=True)
                                   for i in range(n)]
            for t in self._threads[role]:
                t.start()

    def close(self, timeout: float | None = None) -> None:
        """Stop claiming; claimed items not started are given back, and everything classified is stored and
        recorded. Each stage exits on a sentinel once the one before it has gone."""
        self.stop.set()
        self.wake.set()
        for role, inbox in (("classify", self._ready), ("write", self._classified)):
            threads = self._threads.get(role, [])
            for _ in threads:
                inbox.put(None)
            for t in threads:
                t.join(timeout)
        self._written.set()
        self.wake.set()
        for t in self._threads.get("ledger", []):
            t.join(timeout)

    def wait_until_idle(self) -> None:
        """Block until no item of this source and sink is pending or leased (or `stop` is set). The ledger is
        asked only while this runner holds nothing (its own items are leased), not after every item."""
        while not self.stop.is_set():
            self.idle.clear()
            with self._lock:
                busy = bool(self._held)
            if not busy and self.ledger.unfinished(self.source, self.sink) == 0:
                return
            self.idle.wait(0.2)

    # -- the ledger thread

    def _ledger_loop(self) -> None:
        renew_at = time.monotonic() + self.lease / 3
        while not (self._written.is_set() and self._stored.empty()):
            self.wake.clear()
            try:
                got = self._record_stored()
                if self.stop.is_set():
                    self._give_back_ready()
                elif self._ready.qsize() < self._ready_max and time.time() >= self._pause_until:
                    got += self._claim(self._ready_max - self._ready.qsize())
                if time.monotonic() >= renew_at:
                    self._renew()
                    renew_at = time.monotonic() + self.lease / 3
            except Exception as e:  # a bug (or a failing on_finish): keep the pipeline alive
                log.error("ledger thread error", extra={"event": "internal_error", "error": repr(e)})
                got = 0
            if got:  # pace the loop: what arrives meanwhile shares a transaction, unless classifiers run short
                self._low.wait(self.TICK)
            else:
                self.wake.wait(0.5)
            self._low.clear()

    def _claim(self, n: int) -> int:
        try:
            items = self.ledger.claim_many(self.source, self.sink, self.owner, self.lease, n)
        except Exception as e:
            log.error("claim failed", extra={"event": "ledger_error", "error": repr(e)})
            self.stop.wait(1.0)
            return 0
        with self._lock:
            self._held.update((it.key, it) for it in items)
        for it in items:
            self._ready.put(it)
        return len(items)

    def _record_stored(self) -> int:
        """Mark every stored item done or failed, in one transaction."""
        group = []
        while True:
            try:
                group.append(self._stored.get_nowait())
            except queue.Empty:
                break
        if not group:
            return 0
        try:
            if self.dst is not None:  # the new names become durable, then the items are marked done
                self.dst.sync_folders([out.output for _, out, _ in group if out.output])
            oks = self.ledger.finish_many(self.owner, [
                Final(item, "done" if out.state == "done" else "failed", out.error, out.reason,
                      dumps(out.record) if self.store_results and out.record is not None else None)
                for item, out, _ in group])
        except Exception as e:  # the ledger failed: the leases run out and the items are claimed again
            keys = [item.key for item, _, _ in group]
            log.error("item bookkeeping failed", extra={"event": "ledger_error", "keys": keys, "error": repr(e)})
            oks = None
        self._drop([item for item, _, _ in group])
        for (item, out, t0), ok in zip(group, oks or []):
            extra = self._log_extra(item, out, t0)
            if not ok:
                log.warning("lease lost before finish", extra={**extra, "event": "lease_lost"})
            lvl = logging.INFO if out.state == "done" else logging.WARNING
            log.log(lvl, out.state, extra={**extra, "reason": out.reason, "output": out.output})
            if self.on_finish:
                self.on_finish(out)
            self._count(out.state)
        return len(group)

    def _give_back_ready(self) -> None:
        """Return claimed items no classifier thread has started (at stop): claimable at once, attempt refunded."""
        while True:
            try:
                item = self._ready.get_nowait()
            except queue.Empty:
                return
            if item is None:  # a classifier thread's exit sentinel: it stays for that thread
                self._ready.put(None)
                return
            try:
                self.ledger.retry(item, self.owner, 0.0, error=item.last_error, reason=item.last_reason, count=False)
            except Exception as e:  # its lease runs out instead
                log.warning("release failed", extra={"event": "ledger_error", "key": item.key, "error": repr(e)})
            self._drop([item])

    def _renew(self) -> None:
        with self._lock:
            held = list(self._held.values())
        for item in held:
            try:
                if not self.ledger.renew(item, self.owner, self.lease):
                    log.warning("lease lost", extra={"event": "lease_lost", "key": item.key})
            except Exception as e:
                log.warning("renew failed", extra={"event": "renew_error", "error": repr(e)})

    # -- classifier and writer threads

    def _classify_loop(self) -> None:
        while (item := self._ready.get()) is not None:
            if self._ready.qsize() <= self.workers:  # running short: the ledger thread claims more at once
                self._low.set()
                self.wake.set()
            while (pause := self._pause_until - time.time()) > 0 and not self.stop.is_set():
                self.stop.wait(min(pause, 1.0))  # the store is down: wait with the others
            t0 = time.perf_counter()
            try:
                out = (self.proc.lost(item.key, item.attempts) if item.attempts > self.max_attempts
                       else self.proc.classify(item.key, item.attempts))
            except Exception as e:  # a bug: the lease runs out and the item is claimed again
                log.error("classify failed", extra={"event": "internal_error", "key": item.key, "error": repr(e)})
                self._drop([item])
                continue
            self._classified.put((item, out, t0))  # blocks while the writers are behind

    def _write_loop(self) -> None:
        while (entry := self._classified.get()) is not None:
            item, out, t0 = entry
            try:
                out = self.proc.store(item.key, item.attempts, out, sync_folder=False)  # synced before the finish
                if out.state not in ("retry", "unavailable"):
                    self._stored.put((item, out, t0))  # the ledger thread marks it done
                    self.wake.set()
                    continue
                self._give_back(item, out, t0)
            except Exception as e:  # the ledger failed: the lease runs out and the item is claimed again
                log.error("item bookkeeping failed", extra={"event": "ledger_error", "key": item.key, "error": repr(e)})
            self._drop([item])

    def _give_back(self, item: Item, out: Outcome, t0: float) -> None:
        """Pending again: after a backoff (retry), or with the attempt refunded and claims paused (outage)."""
        extra = self._log_extra(item, out, t0)
        if out.state == "unavailable":
            self._outage += 1
            delay = min(30.0, self.backoff * 2 ** min(self._outage - 1, 6))
            self._pause_until = time.time() + delay
            self.ledger.retry(item, self.owner, delay, error=out.error, reason=out.reason, count=False)
            log.warning("store unavailable; pausing", extra={**extra, "reason": out.reason, "pause_s": delay})
        else:
            delay = backoff_delay(item.attempts, self.backoff)
            self.ledger.retry(item, self.owner, delay, error=out.error, reason=out.reason)
            log.warning("retrying", extra={**extra, "reason": out.reason, "error": out.error, "delay_s": delay})
        self._count(out.state)

    def _log_extra(self, item: Item, out: Outcome, t0: float) -> dict:
        ms = round((time.perf_counter() - t0) * 1000, 1)
        return {"key": item.key, "attempts": item.attempts, "ms": ms, "event": out.state, "owner": self.owner}

    def _count(self, state: str) -> None:
        with self._lock:
            self.counts[state] = self.counts.get(state, 0) + 1

    def _drop(self, items: list[Item]) -> None:
        """Forget items (recorded, given back, or left to their lease)."""
        with self._lock:
            for item in items:
                self._held.pop(item.key, None)
            if not self._held:
                self.idle.set()


# ------------------------------------------------------------------------------------------------ discovery


class Discovery:
    """Keeps the ledger in step with SRC: full scans, watchdog events (local), HTTP events (S3)."""

    def __init__(self, src: Store, dst: Store | None, ledger: Ledger, sink: str, *, settle: float = 1.0,
                 wake: threading.Event | None = None):
        self.src, self.ledger, self.sink = src, ledger, sink
        self.skip = nested_prefix(src, dst) if dst is not None else None
        if self.skip == "":
            raise StorageError("the output must not be the source itself", source=src.url, reason="bad_url")
        self.settle = settle
        self.wake = wake or threading.Event()
        self._dirty: set[str] = set()
        self._lock = threading.Lock()
        self._observer = None
        self.errors = 0

    def wanted(self, key: str) -> bool:
        if self.skip and key.startswith(self.skip):
            return False
        return not any(p.startswith(".") for p in key.split("/"))

    def _settled(self, key: str) -> bool:
        if self.settle <= 0 or not isinstance(self.src, LocalStore):
            return True
        age = self.src.stat_age(key)
        return age is not None and age >= self.settle

    def scan(self) -> int:
        """List SRC and record new/changed objects; returns how many became pending (-1: listing failed)."""
        try:
            rows = []
            for o in self.src.list():
                if not self.wanted(o.key):
                    continue
                if not self._settled(o.key):
                    self.mark_dirty(o.key)
                    continue
                rows.append((o.key, o.version, o.size))
            n = self.ledger.sync(self.src.url, self.sink, rows)
        except Exception as e:
            self.errors += 1
            log.warning("scan failed", extra={"event": "scan_error", "error": repr(e)})
            return -1
        if n:
            log.info("discovered", extra={"event": "discovered", "new": n, "listed": len(rows)})
            self.wake.set()
        return n

    def mark_dirty(self, key: str) -> None:
        with self._lock:
            self._dirty.add(key)

    def flush_dirty(self) -> int:
        """Record dirty keys (from watchdog) whose files have settled."""
        with self._lock:
            keys, self._dirty = self._dirty, set()
        rows, later = [], set()
        for k in keys:
            try:
                info = self.src.head(k)
            except Exception:
                later.add(k)
                continue
            if info is None:
                continue
            if not self._settled(k):
                later.add(k)
                continue
            rows.append((info.key, info.version, info.size))
        if later:
            with self._lock:
                self._dirty |= later
        n = self.ledger.sync(self.src.url, self.sink, rows) if rows else 0
        if n:
            self.wake.set()
        return n

    def record_events(self, body: dict) -> int:
        """Enqueue S3 event notifications (AWS/MinIO `Records`); returns how many objects were recorded."""
        rows = []
        for rec in body.get("Records") or []:
            name = str(rec.get("eventName", "ObjectCreated"))
            if "ObjectCreated" not in name and "Put" not in name and "Copy" not in name:
                continue
            s3 = rec.get("s3") or {}
            bucket = (s3.get("bucket") or {}).get("name")
            obj = s3.get("object") or {}
            full = urllib.parse.unquote_plus(str(obj.get("key", "")))
            if isinstance(self.src, S3Store):
                if bucket != self.src.bucket or not full.startswith(self.src.prefix):
                    continue
                key = full[len(self.src.prefix) :]
            else:
                key = full
            if not key or not self.wanted(key):
                continue
            try:
                safe_key(key)
            except StorageError:
                continue
            etag = str(obj.get("eTag") or obj.get("etag") or "").strip('"')
            size = obj.get("size")
            if not etag or isinstance(self.src, LocalStore):
                info = self.src.head(key)
                if info is None:
                    continue
                etag, size = info.version, info.size
            rows.append((key, etag, size))
        n = self.ledger.sync(self.src.url, self.sink, rows) if rows else 0
        if n:
            self.wake.set()
        log.info("events", extra={"event": "s3_events", "records": len(rows), "new": n})
        return len(rows)

    def start_watchdog(self) -> bool:
        """inotify/FSEvents on a local SRC via watchdog; False when unavailable."""
        if not isinstance(self.src, LocalStore):
            return False
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            return False
        disc, root = self, self.src.root

        class H(FileSystemEventHandler):
            def _add(self, path):
                try:
                    rel = __import__("pathlib").Path(path).relative_to(root).as_posix()
                except ValueError:
                    return
                if disc.wanted(rel):
                    disc.mark_dirty(rel)

            def on_created(self, e):
                if not e.is_directory:
                    self._add(e.src_path)

            def on_modified(self, e):
                if not e.is_directory:
                    self._add(e.src_path)

            def on_closed(self, e):
                self._add(e.src_path)

            def on_moved(self, e):
                if not e.is_directory:
                    self._add(e.dest_path)

        obs = Observer()
        obs.daemon = True
        obs.schedule(H(), str(root), recursive=True)
        obs.start()
        self._observer = obs
        return True

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)


# ------------------------------------------------------------------------------------------------ HTTP events


def serve_events(disc: Discovery, ledger: Ledger, host: str, port: int) -> ThreadingHTTPServer:
    """Start an HTTP endpoint: POST (any path) S3 event JSON -> ledger; GET /healthz, GET /status."""

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
                self._send(200, status(ledger, disc.src.url, disc.sink))
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
                queued = disc.record_events(body if isinstance(body, dict) else {})
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


# ------------------------------------------------------------------------------------------------ API


def status(ledger, source: str | None = None, sink: str | None = None) -> dict:
    """Counts by state, oldest pending item, top error reasons (a Ledger, a ledger path or URL)."""
    return open_ledger(ledger).status(source, sink)


@dataclass
class WatchResult:
    counts: dict = field(default_factory=dict)
    status: dict = field(default_factory=dict)


def watch(src: str | Store, dst: str | Store, *, model="mn04-as", poll: float = 5.0, workers: int = 1,
          ledger: str | Ledger | None = None, max_attempts: int = 3, once: bool = False,
          stop_event: threading.Event | None = None, endpoint_url: str | None = None,
          http: str | None = None, lease: float = 60.0, backoff: float = 1.0, scan_interval: float = 60.0,
          settle: float = 1.0, top_k: int = 5, use_watchdog: bool | None = None,
          on_ready=None) -> dict:
    """Watch SRC and write one result per object under DST until `stop_event` is set (or, with `once`, until
    everything present at the first scan is finished). Returns this run's counts and the ledger status.

    `http="127.0.0.1:8765"` also accepts S3 event notifications; `on_ready(info)` is called once running.
    """
    src_store = src if isinstance(src, Store) else open_store(src, endpoint_url=endpoint_url)
    dst_store = dst if isinstance(dst, Store) else open_store(dst, endpoint_url=endpoint_url, create=True)
    led = open_ledger(ledger, src_store.url, dst_store.url)
    stop = stop_event or threading.Event()
    sink = dst_store.url
    clf = load_model(model, workers)
    disc = Discovery(src_store, dst_store, led, sink, settle=0.0 if once else settle)
    if isinstance(dst_store, LocalStore):
        swept = dst_store.sweep_temp()
        if swept:
            log.info("removed stale temp files", extra={"event": "sweep", "count": swept})
    released = led.release_dead(src_store.url, sink, _pid_alive)
    if released:
        log.info("reclaimed leases of dead workers", extra={"event": "reclaim", "count": released})
    runner = Runner(src_store, dst_store, clf, led, sink=sink, workers=workers, max_attempts=max_attempts,
                    lease=lease, backoff=backoff, top_k=top_k, stop_event=stop)
    disc.wake = runner.wake
    inotify = False if once or use_watchdog is False else disc.start_watchdog()
    srv = None
    if http:
        host, _, port = http.rpartition(":")
        srv = serve_events(disc, led, host or "127.0.0.1", int(port))
    log.info("watch started", extra={"event": "start", "src": src_store.url, "dst": sink, "workers": workers,
                                      "ledger": getattr(led, "path", None), "inotify": inotify, "once": once})
    runner.start()
    if on_ready:
        on_ready({"http_port": srv.server_address[1] if srv else None, "inotify": inotify})
    try:
        while disc.scan() < 0 and not stop.is_set():
            if once and disc.errors > 10:
                raise StorageError("cannot list the source", source=src_store.url, reason="unreachable")
            stop.wait(min(poll, 2.0))
        if once:
            runner.wait_until_idle()
        last_scan = time.monotonic()
        interval = scan_interval if inotify else poll
        while not stop.is_set() and not once:
            stop.wait(0.25)
            if inotify or disc._dirty:
                disc.flush_dirty()
            if time.monotonic() - last_scan >= interval:
                disc.scan()
                last_scan = time.monotonic()
    finally:
        runner.close(30)
        disc.stop()
        if srv is not None:
            srv.shutdown()
    st = led.status(src_store.url, sink)
    log.info("watch stopped", extra={"event": "stop", "counts": runner.counts, "status": st["counts"]})
    return {"counts": runner.counts, "status": st}


def main(argv: list[str] | None = None) -> int:
    """`python -m earshot.watch SRC DST [options]` or `python -m earshot.watch status --ledger PATH`."""
    p = argparse.ArgumentParser(prog="earshot watch", description=__doc__.split("\n")[0])
    p.add_argument("src")
    p.add_argument("dst", nargs="?")
    p.add_argument("--output", "-o", dest="output")
    p.add_argument("--model", default="mn04-as")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--poll", type=float, default=5.0)
    p.add_argument("--ledger")
    p.add_argument("--max-attempts", type=int, default=3)
    p.add_argument("--once", action="store_true")
    p.add_argument("--http", help="HOST:PORT for S3 event notifications")
    p.add_argument("--endpoint-url")
    p.add_argument("--lease", type=float, default=60.0)
    p.add_argument("--backoff", type=float, default=1.0)
    p.add_argument("--scan-interval", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--no-watchdog", action="store_true")
    p.add_argument("--log-level", default="INFO")
    a = p.parse_args(argv)
    configure_logging(a.log_level)
    if a.src == "status":
        print(json.dumps(status(a.ledger or a.dst), indent=1))
        return 0
    dst = a.output or a.dst
    if not dst:
        p.error("an output (DST or --output) is required")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    res = watch(a.src, dst, model=a.model, poll=a.poll, workers=a.workers, ledger=a.ledger,
                max_attempts=a.max_attempts, once=a.once, stop_event=stop, endpoint_url=a.endpoint_url,
                http=a.http, lease=a.lease, backoff=a.backoff, scan_interval=a.scan_interval, settle=a.settle,
                top_k=a.top_k, use_watchdog=False if a.no_watchdog else None)
    print(json.dumps(res["counts"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
