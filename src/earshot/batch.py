"""`earshot batch`: classify everything under SRC once, resumably, locally (threads) or on Ray.

Same per-object contract and ledger as `earshot watch`: `DST/<key>.json` or `DST/<key>.error.json`, or with
`fmt="jsonl"` one results file (`DST/results.jsonl`, or DST itself when it ends in `.jsonl`) written atomically
at the end from results kept in the ledger. Re-running on the same ledger skips finished objects.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from earshot.errors import StorageError
from earshot.ledger import Ledger, default_owner, open_ledger
from earshot.storage import LocalStore, S3Store, Store, _pid_alive, open_store
from earshot.watch import Discovery, Outcome, Processor, Runner, load_model

log = logging.getLogger("earshot.batch")

RAY_HINT = "the Ray engine needs Ray Data: pip install 'earshot[ray]'"


def _jsonl_target(dst: str, endpoint_url: str | None) -> tuple[Store, str]:
    """(store, key) of the single results file."""
    s = str(dst)
    if s.endswith(".jsonl"):
        parent, _, name = s.rstrip("/").rpartition("/")
        if s.startswith("s3://"):
            return open_store(parent + "/", endpoint_url=endpoint_url), name
        import os

        parent, name = os.path.split(os.path.abspath(s))
        return LocalStore(parent, create=True), name
    return open_store(s, endpoint_url=endpoint_url, create=True), "results.jsonl"


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled and total:
            try:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

                self.bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                                    TimeRemainingColumn(), transient=False)
                self.task = self.bar.add_task("classifying", total=total)
                self.bar.start()
            except ImportError:  # pragma: no cover
                self.bar = None
        self.lock = threading.Lock()

    def advance(self, *_):
        if self.bar is not None:
            with self.lock:
                self.bar.advance(self.task)

    def close(self):
        if self.bar is not None:
            self.bar.stop()


def batch(src: str | Store, dst: str, *, model="mn04-as", workers: int = 1, ledger: str | Ledger | None = None,
          fmt: str = "json", engine: str = "local", progress: bool = True, endpoint_url: str | None = None,
          top_k: int = 5, max_attempts: int = 3, lease: float = 300.0, backoff: float = 1.0,
          ray_batch_size: int = 16) -> dict[str, Any]:
    """Classify every object under SRC into DST; returns {"done", "failed", "skipped", "total", "seconds", ...}.

    `skipped` counts objects finished by an earlier run on the same ledger (same version). `engine="ray"` runs
    a `ray.data` pipeline with one Classifier per actor (`workers` actors).
    """
    if fmt not in ("json", "jsonl"):
        raise ValueError("fmt must be 'json' or 'jsonl'")
    if engine not in ("local", "ray"):
        raise ValueError("engine must be 'local' or 'ray'")
    if engine == "ray":
        try:
            import ray  # noqa: F401
            import ray.data  # noqa: F401
        except ImportError as e:
            raise ImportError(RAY_HINT) from e
    t0 = time.time()
    src_store = src if isinstance(src, Store) else open_store(src, endpoint_url=endpoint_url)
    if fmt == "jsonl":
        out_store, out_key = _jsonl_target(dst, endpoint_url)
        dst_store, sink = None, out_store.child_url(out_key)
    else:
        dst_store = open_store(dst, endpoint_url=endpoint_url, create=True)
        sink = dst_store.url
    led = open_ledger(ledger, src_store.url, sink)
    disc = Discovery(src_store, dst_store, led, sink, settle=0.0)
    listed = 0
    for attempt in range(6):
        try:
            rows = [(o.key, o.version, o.size) for o in src_store.list() if disc.wanted(o.key)]
            break
        except StorageError as e:
            if e.reason != "unreachable" or attempt == 5:
                raise
            time.sleep(2**attempt)
    listed = len(rows)
    led.sync(src_store.url, sink, rows)
    led.release_dead(src_store.url, sink, _pid_alive)
    if isinstance(dst_store, LocalStore):
        dst_store.sweep_temp()
    todo = led.unfinished(src_store.url, sink)
    summary: dict[str, Any] = {"total": listed, "skipped": max(0, listed - todo), "done": 0, "failed": 0}
    bar = _Progress(todo, progress)
    try:
        if todo and engine == "local":
            clf = load_model(model, workers)
            runner = Runner(src_store, dst_store, clf, led, sink=sink, workers=workers, max_attempts=max_attempts,
                            lease=lease, backoff=backoff, top_k=top_k, store_results=fmt == "jsonl",
                            on_finish=bar.advance)
            runner.start()
            try:
                runner.wait_until_idle()
            finally:
                runner.close(60)
            summary["done"], summary["failed"] = runner.counts["done"], runner.counts["failed"]
            summary["vanished"] = runner.counts.get("vanished", 0)
        elif todo:
            done, failed = _run_ray(src_store, dst_store, led, sink, model=model, workers=workers, top_k=top_k,
                                    max_attempts=max_attempts, store_results=fmt == "jsonl",
                                    batch_size=ray_batch_size, lease=lease, on_finish=bar.advance)
            summary["done"], summary["failed"] = done, failed
    finally:
        bar.close()
    if fmt == "jsonl":
        lines = [r for _, r in led.results(src_store.url, sink) if r]
        out_store.put_atomic(out_key, ("\n".join(lines) + ("\n" if lines else "")).encode())
        summary["output"] = sink
        summary["lines"] = len(lines)
    else:
        summary["output"] = dst_store.url
    summary["seconds"] = round(time.time() - t0, 3)
    summary["engine"] = engine
    st = led.status(src_store.url, sink)
    summary["status"] = st["counts"]
    log.info("batch finished", extra={"event": "batch_done", **{k: v for k, v in summary.items() if k != "status"}})
    return summary


# ------------------------------------------------------------------------------------------------ Ray


class _RayClassify:
    """Ray Data actor: one Classifier and store pair per actor; retries transient faults in place."""

    def __init__(self, src: Store, dst: Store | None, model, top_k: int, max_attempts: int):
        import os

        os.environ.setdefault("OMP_NUM_THREADS", "1")
        clf = load_model(model, workers=os.cpu_count() or 1)  # one single-threaded session per actor
        self.proc = Processor(src, dst, clf, top_k=top_k, max_attempts=max_attempts)
        self.max_attempts = max_attempts

    def __call__(self, batch: dict) -> dict:
        from earshot.ledger import dumps

        keys = [str(k) for k in batch["key"]]
        out = {"key": keys, "state": [], "reason": [], "error": [], "result": []}
        for key in keys:
            o: Outcome | None = None
            outages = 0
            attempt = 1
            while True:
                o = self.proc.process(key, attempt)
                if o.state == "retry" and attempt < self.max_attempts:
                    time.sleep(min(30.0, 2 ** (attempt - 1)))
                    attempt += 1
                    continue
                if o.state == "unavailable" and outages < 8:
                    outages += 1
                    time.sleep(min(30.0, 2**outages))
                    continue
                break
            state = o.state if o.state in ("done", "failed") else "failed"
            out["state"].append(state)
            out["reason"].append(o.reason or "")
            out["error"].append(o.error or "")
            out["result"].append(dumps(o.record) if o.record is not None else "")
        return out


def _run_ray(src, dst, led: Ledger, sink: str, *, model, workers, top_k, max_attempts, store_results, batch_size,
             lease, on_finish) -> tuple[int, int]:
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
    owner = default_owner()
    held = {}
    while claimed := led.claim_many(src.url, sink, owner, lease, 500):
        held.update((item.key, item) for item in claimed)
    if not held:
        return 0, 0
    if isinstance(model, str) or model is None:
        model_arg = model
    else:
        model_arg = getattr(model, "bundle_path", None) or getattr(model, "name", "mn04-as")
    if isinstance(src, S3Store):
        src._client = None
    ds = ray.data.from_items([{"key": k} for k in sorted(held)])
    ds = ds.map_batches(
        _RayClassify,
        fn_constructor_kwargs={"src": src, "dst": dst, "model": model_arg, "top_k": top_k,
                               "max_attempts": max_attempts},
        batch_size=batch_size,
        concurrency=max(1, workers),
        num_cpus=1,
    )
    done = failed = 0
    for row in ds.iter_rows():
        item = held[row["key"]]
        state = row["state"]
        res = row["result"] or None
        led.finish(item, owner, state, error=row["error"] or None, reason=row["reason"] or None,
                   result=res if store_results else None)
        if state == "done":
            done += 1
        else:
            failed += 1
        on_finish()
    return done, failed
