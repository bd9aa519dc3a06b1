"""The Ray engine of `earshot batch`: claimed items classified by a `ray.data` pipeline, one Classifier per actor.

The driver claims every due item of the run, Ray Data actors read, classify and write them (retrying transient
faults in place), and the driver marks each one done or failed in the ledger as its row comes back. Needs Ray
Data (`pip install 'earshot[ray]'`); nothing here imports Ray until it runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from earshot.pipeline.ledger import Item, default_owner, dumps
from earshot.pipeline.processor import Outcome, Processor, load_model
from earshot.pipeline.run import Run
from earshot.pipeline.storage import Store

RAY_HINT = "the Ray engine needs Ray Data: pip install 'earshot[ray]'"


def require_ray() -> None:
    """Raise ImportError naming the extra to install when Ray Data is missing."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError(RAY_HINT) from e


def model_source(model: Any) -> str | None:
    """What each actor loads to get `model`: a name or path as given, the bundle directory of a loaded
    Classifier (so a bundle loaded from a path reaches the actors), else the model's name."""
    if model is None or isinstance(model, str):
        return model
    if isinstance(model, os.PathLike):
        return os.fspath(model)
    bundle = getattr(model, "bundle", None)
    if bundle is not None:
        return os.path.abspath(bundle.path)
    return getattr(model, "name", "mn04-as")


class RayClassify:
    """Ray Data actor: one Classifier and store pair per actor; retries transient faults in place."""

    def __init__(self, src: Store, dst: Store | None, model: str | None, top_k: int, max_attempts: int):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        clf = load_model(model, workers=os.cpu_count() or 1)  # one single-threaded session per actor
        self.proc = Processor(src, dst, clf, top_k=top_k, max_attempts=max_attempts)
        self.max_attempts = max_attempts

    def __call__(self, batch: dict) -> dict:
        keys = [str(k) for k in batch["key"]]
        out: dict[str, list[str]] = {"key": keys, "state": [], "reason": [], "error": [], "result": []}
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


def run_ray(run: Run, *, model: Any, workers: int, top_k: int, max_attempts: int, store_results: bool,
            batch_size: int, lease: float, on_finish: Callable[[], object]) -> tuple[int, int]:
    """Classify every due item of `run` on Ray (a local Ray of `workers` CPUs unless one is initialised);
    returns (done, failed)."""
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
    led = run.ledger
    owner = default_owner()
    held: dict[str, Item] = {}
    while claimed := led.claim_many(run.src.url, run.sink, owner, lease, 500):
        held.update((item.key, item) for item in claimed)
    if not held:
        return 0, 0
    ds = ray.data.from_items([{"key": k} for k in sorted(held)])
    ds = ds.map_batches(
        RayClassify,
        fn_constructor_kwargs={"src": run.src, "dst": run.dst, "model": model_source(model), "top_k": top_k,
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
