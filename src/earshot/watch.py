"""`earshot watch`: classify every object that appears under SRC into exactly one result under DST.

Each object `SRC/<key>` yields `DST/<key>.json` or `DST/<key>.error.json` (earshot.pipeline.processor). Work goes
through a durable ledger (earshot.pipeline.ledger) so restarts resume and several workers/processes share the
load; the thread pipeline (earshot.pipeline.runner) marks an item done only once its result is stored.

Discovery: S3 sources are listed every `poll` seconds (and an optional HTTP endpoint takes S3 event
notifications, earshot.pipeline.notifications); local folders use inotify via `watchdog` when installed (else
polling), plus a full scan every `scan_interval` seconds as a safety net.

Run as `earshot watch SRC DST [...]`; logs are JSON lines on stderr.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from earshot.errors import StorageError
from earshot.pipeline.discovery import Discovery
from earshot.pipeline.ledger import Ledger, open_ledger
from earshot.pipeline.notifications import serve_events
from earshot.pipeline.processor import load_model
from earshot.pipeline.run import open_run
from earshot.pipeline.runner import Runner
from earshot.pipeline.storage import Store

log = logging.getLogger(__name__)


def status(ledger, source: str | None = None, sink: str | None = None) -> dict:
    """Counts by state, oldest pending item, top error reasons (a Ledger, a ledger path or URL)."""
    return open_ledger(ledger).status(source, sink)


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM and SIGINT set: a watcher given it as `stop_event` finishes what is in flight,
    records it, and returns."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def watch(src: str | Store, dst: str | Store, *, model="mn04-as", poll: float = 5.0, workers: int = 1,
          ledger: str | Ledger | None = None, max_attempts: int = 3, once: bool = False,
          stop_event: threading.Event | None = None, endpoint_url: str | None = None,
          http: str | None = None, lease: float = 60.0, backoff: float = 1.0, scan_interval: float = 60.0,
          settle: float = 1.0, top_k: int = 5, use_watchdog: bool | None = None,
          on_ready: Callable[[dict[str, Any]], object] | None = None) -> dict:
    """Watch SRC and write one result per object under DST until `stop_event` is set (or, with `once`, until
    everything present at the first scan is finished). Returns this run's counts and the ledger status.

    `http="127.0.0.1:8765"` also accepts S3 event notifications; `on_ready(info)` is called once running.
    """
    run = open_run(src, dst, ledger=ledger, endpoint_url=endpoint_url)
    stop = stop_event or threading.Event()
    clf = load_model(model, workers)
    disc = Discovery(run.src, run.dst, run.ledger, run.sink, settle=0.0 if once else settle)
    released, swept = run.recover()
    if swept:
        log.info("removed stale temp files", extra={"event": "sweep", "count": swept})
    if released:
        log.info("reclaimed leases of dead workers", extra={"event": "reclaim", "count": released})
    runner = Runner(run.src, run.dst, clf, run.ledger, sink=run.sink, workers=workers, max_attempts=max_attempts,
                    lease=lease, backoff=backoff, top_k=top_k, stop_event=stop)
    disc.wake = runner.wake
    inotify = False if once or use_watchdog is False else disc.start_watchdog()
    srv = None
    if http:
        host, _, port = http.rpartition(":")
        srv = serve_events(disc, host or "127.0.0.1", int(port))
    log.info("watch started", extra={"event": "start", "src": run.src.url, "dst": run.sink, "workers": workers,
                                      "ledger": getattr(run.ledger, "path", None), "inotify": inotify,
                                      "once": once})
    runner.start()
    if on_ready:
        on_ready({"http_port": srv.server_address[1] if srv else None, "inotify": inotify})
    try:
        while disc.scan() < 0 and not stop.is_set():
            if once and disc.errors > 10:
                raise StorageError("cannot list the source", source=run.src.url, reason="unreachable")
            stop.wait(min(poll, 2.0))
        if once:
            runner.wait_until_idle()
        last_scan = time.monotonic()
        interval = scan_interval if inotify else poll
        while not stop.is_set() and not once:
            stop.wait(0.25)
            if inotify or disc.has_dirty:
                disc.flush_dirty()
            if time.monotonic() - last_scan >= interval:
                disc.scan()
                last_scan = time.monotonic()
    finally:
        runner.close(30)
        disc.stop()
        if srv is not None:
            srv.shutdown()
    st = run.status()
    log.info("watch stopped", extra={"event": "stop", "counts": runner.counts, "status": st["counts"]})
    return {"counts": runner.counts, "status": st}
