"""`earshot batch`: classify everything under SRC once, resumably, locally (threads) or on Ray.

Same per-object contract and ledger as `earshot watch`: `DST/<key>.json` or `DST/<key>.error.json`, or with
`fmt="jsonl"` one results file (`DST/results.jsonl`, or DST itself when it ends in `.jsonl`) written atomically
at the end from results kept in the ledger. Re-running on the same ledger skips finished objects.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from earshot import cores
from earshot.errors import StorageError
from earshot.pipeline.discovery import Discovery
from earshot.pipeline.ledger import Ledger
from earshot.pipeline.processor import load_model
from earshot.pipeline.ray_engine import RAY_HINT, require_ray, run_ray
from earshot.pipeline.run import open_run
from earshot.pipeline.runner import Runner
from earshot.pipeline.storage import Store

__all__ = ["RAY_HINT", "batch"]

log = logging.getLogger(__name__)


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


def batch(src: str | Store, dst: str | os.PathLike, *, model="mn04-as", workers: int = 1,
          ledger: str | Ledger | None = None, fmt: str = "json", engine: str = "local", progress: bool = True,
          endpoint_url: str | None = None, top_k: int = 5, max_attempts: int = 3, lease: float = 300.0,
          backoff: float = 1.0, ray_batch_size: int = 64, address: str | None = None, num_cpus: float = 1.0,
          num_gpus: float = 0.0) -> dict[str, Any]:
    """Classify every object under SRC into DST; returns {"done", "failed", "skipped", "total", "seconds", ...}.

    `skipped` counts objects finished by an earlier run on the same ledger (same version). `engine="ray"` runs
    a `ray.data` pipeline with one Classifier per actor: on the cluster at `address` (`HOST:PORT` or `auto`),
    else on a local Ray; `workers` actors (0: as many as the cluster's CPUs, or GPUs, hold), each asking for
    `num_cpus` CPUs and `num_gpus` GPUs (a GPU actor runs on CUDA when onnxruntime-gpu is installed).
    """
    if fmt not in ("json", "jsonl"):
        raise ValueError("fmt must be 'json' or 'jsonl'")
    if engine not in ("local", "ray"):
        raise ValueError("engine must be 'local' or 'ray'")
    if engine == "ray":
        require_ray()
    t0 = time.time()
    run = open_run(src, dst, ledger=ledger, endpoint_url=endpoint_url, one_file=fmt == "jsonl")
    disc = Discovery(run.src, run.dst, run.ledger, run.sink, settle=0.0)
    for attempt in range(6):
        try:
            rows = [(o.key, o.version, o.size) for o in run.src.list() if disc.wanted(o.key)]
            break
        except StorageError as e:
            if e.reason != "unreachable" or attempt == 5:
                raise
            time.sleep(2**attempt)
    listed = len(rows)
    run.ledger.sync(run.src.url, run.sink, rows)
    run.recover()
    todo = run.unfinished()
    summary: dict[str, Any] = {"total": listed, "skipped": max(0, listed - todo), "done": 0, "failed": 0}
    bar = _Progress(todo, progress)
    try:
        if todo and engine == "local":
            workers = workers or cores.usable()
            clf = load_model(model, workers)
            runner = Runner(run.src, run.dst, clf, run.ledger, sink=run.sink, workers=workers,
                            max_attempts=max_attempts, lease=lease, backoff=backoff, top_k=top_k,
                            store_results=fmt == "jsonl", on_finish=bar.advance)
            runner.start()
            try:
                runner.wait_until_idle()
            finally:
                runner.close(60)
            summary["done"], summary["failed"] = runner.counts["done"], runner.counts["failed"]
            summary["vanished"] = runner.counts.get("vanished", 0)
        elif todo:
            done, failed = run_ray(run, model=model, workers=workers, top_k=top_k, max_attempts=max_attempts,
                                   store_results=fmt == "jsonl", batch_size=ray_batch_size, lease=lease,
                                   on_finish=bar.advance, address=address, num_cpus=num_cpus, num_gpus=num_gpus)
            summary["done"], summary["failed"] = done, failed
    finally:
        bar.close()
    if run.results_file is not None:
        out_store, out_key = run.results_file
        lines = [r for _, r in run.ledger.results(run.src.url, run.sink) if r]
        out_store.put_atomic(out_key, ("\n".join(lines) + ("\n" if lines else "")).encode())
        summary["output"] = run.sink
        summary["lines"] = len(lines)
    else:
        summary["output"] = run.dst.url
    summary["seconds"] = round(time.time() - t0, 3)
    summary["engine"] = engine
    summary["status"] = run.status()["counts"]
    log.info("batch finished", extra={"event": "batch_done", **{k: v for k, v in summary.items() if k != "status"}})
    return summary
