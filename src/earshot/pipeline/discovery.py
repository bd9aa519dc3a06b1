"""Discovery keeps the ledger in step with SRC: full listings, inotify/FSEvents events on a local folder (via
`watchdog` when installed), and periodic rescans as a safety net.

Local files are recorded only once they have settled (unchanged for `settle` seconds), so a file still being
written is not classified half-way.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from earshot.errors import StorageError
from earshot.pipeline.ledger import Ledger
from earshot.pipeline.logs import LOGGER
from earshot.pipeline.storage import LocalStore, Store, nested_prefix

log = logging.getLogger(LOGGER)


class Discovery:
    """Keeps the ledger in step with SRC: full scans and watchdog events (local); S3 event notifications arrive
    through `record` (earshot.pipeline.notifications)."""

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
        """Whether a key is work: not under DST (when DST lies inside SRC), no hidden segment."""
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
            n = self.record(rows)
        except Exception as e:
            self.errors += 1
            log.warning("scan failed", extra={"event": "scan_error", "error": repr(e)})
            return -1
        if n:
            log.info("discovered", extra={"event": "discovered", "new": n, "listed": len(rows)})
        return n

    def record(self, rows: list[tuple[str, str, int | None]]) -> int:
        """Record (key, version, size) objects in the ledger and wake the runner when some are new or changed;
        returns how many became pending."""
        n = self.ledger.sync(self.src.url, self.sink, rows) if rows else 0
        if n:
            self.wake.set()
        return n

    def mark_dirty(self, key: str) -> None:
        """Note a key that changed (a watchdog event); `flush_dirty` records it once its file has settled."""
        with self._lock:
            self._dirty.add(key)

    @property
    def has_dirty(self) -> bool:
        """Whether keys noted by `mark_dirty` wait for `flush_dirty`."""
        return bool(self._dirty)

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
        return self.record(rows)

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
                    rel = Path(path).relative_to(root).as_posix()
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
        """Stop the watchdog observer, if one runs."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
