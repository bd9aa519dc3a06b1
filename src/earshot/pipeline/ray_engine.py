"""The Ray engine of `earshot batch`: claimed items classified by a `ray.data` pipeline, one Classifier per actor.

The driver (the `earshot batch` process) connects to a cluster (`--address HOST:PORT|auto`) or starts a local
Ray, ships the model bundle through the object store (`ray_cluster`), claims every due item of the run, and Ray
Data actors read, classify and write them (retrying transient faults in place); the driver marks each one done
or failed in the ledger as its row comes back, and renews the leases of the rest. The ledger and the results'
names make it exactly once: a killed actor's batch runs again and writes the same keys. Needs Ray Data
(`pip install 'earshot[ray]'`); nothing here imports Ray until it runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from earshot.pipeline.ledger import Final, Item, Ledger, default_owner, dumps
from earshot.pipeline.logs import LOGGER
from earshot.pipeline.processor import Outcome, Processor
from earshot.pipeline.ray_cluster import ShippedBundle, actor_providers, connected, materialize, pool_size, ship_bundle
from earshot.pipeline.run import Run
from earshot.pipeline.storage import Store

log = logging.getLogger(LOGGER)
FINAL = ("done", "failed")
COLUMNS = ("key", "state", "reason", "error", "result")  # the rows RayClassify returns to the driver

RAY_HINT = "the Ray engine needs Ray Data: pip install 'earshot[ray]'"


def require_ray() -> None:
    """Raise ImportError naming the extra to install when Ray Data is missing."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError(RAY_HINT) from e


class Exposures:
    """Ray actor of one run: how often each key was in the hands of an actor process that died with it.

    A batch's keys are opened before it is processed and closed after; a key still open when a batch starts again
    was in flight when its actor died. Such keys are then processed one at a time (so only the culprit is open
    when a process dies again), and a key open `max_attempts` times gets a `worker_lost` error record instead of
    killing actors without end (Ray itself retries a dead actor's batch indefinitely)."""

    def __init__(self) -> None:
        self.open: dict[str, int] = {}

    def begin(self, keys: list[str], only_fresh: bool) -> list[int]:
        """Each key's count of earlier unclosed openings; opens the keys (only those with none, if `only_fresh`)."""
        counts = [self.open.get(k, 0) for k in keys]
        for k, n in zip(keys, counts):
            if n == 0 or not only_fresh:
                self.open[k] = n + 1
        return counts

    def end(self, keys: list[str]) -> None:
        for k in keys:
            self.open.pop(k, None)


class RayClassify:
    """Ray Data actor: one Classifier (on CUDA when the actor has a GPU) and store pair per actor. Each batch of
    keys is read, classified and written on a few threads (reads overlap model calls), transient faults retried
    in place; keys that were in flight when an actor died go one at a time (see `Exposures`). The batch's result
    folders are made durable before its rows go back to the driver."""

    def __init__(self, src: Store, dst: Store | None, bundle: ShippedBundle, top_k: int, max_attempts: int,
                 exposures: Any, threads: int = 1, keep_records: bool = False):
        from earshot.bundle import read_bundle
        from earshot.classifier import Classifier

        clf = Classifier(read_bundle(materialize(bundle)), threads=threads, providers=actor_providers())
        self.proc = Processor(src, dst, clf, top_k=top_k, max_attempts=max_attempts)
        self.max_attempts = max_attempts
        self.exposures = exposures
        self.keep_records = keep_records  # results go back to the driver only for a single results file
        self.pool = ThreadPoolExecutor(max(2, 2 * threads))

    def _one(self, key: str, attempts: int) -> tuple[int, Outcome]:
        if attempts > self.max_attempts:  # every earlier claim died with its worker (or its driver)
            return attempts, self.proc.store(key, attempts, self.proc.lost(key, attempts), sync_folder=False)
        outages = 0
        while True:
            o = self.proc.store(key, attempts, self.proc.classify(key, attempts), sync_folder=False)
            if o.state == "retry" and attempts < self.max_attempts:
                time.sleep(min(30.0, 2 ** (attempts - 1)))
                attempts += 1
            elif o.state == "unavailable" and outages < 8:
                outages += 1
                time.sleep(min(30.0, 2**outages))
            else:
                return attempts, o

    def _exposed(self, key: str, attempts: int) -> tuple[int, Outcome]:
        """A key that was in flight when an actor died: alone, or a `worker_lost` record once it did so often."""
        import ray

        (n,) = ray.get(self.exposures.begin.remote([key], False))
        if n >= self.max_attempts:
            out = self.proc.store(key, attempts, self.proc.lost(key, n + 1), sync_folder=False)
        else:
            attempts, out = self._one(key, attempts)
        self.exposures.end.remote([key])
        return attempts, out

    def __call__(self, batch: dict) -> dict:
        import ray

        keys = [str(k) for k in batch["key"]]
        tries = [int(a) for a in batch["attempts"]]
        counts = ray.get(self.exposures.begin.remote(keys, True))
        fresh = [i for i, n in enumerate(counts) if n == 0]
        outcomes: list[tuple[int, Outcome] | None] = [None] * len(keys)
        for i, got in zip(fresh, self.pool.map(self._one, [keys[i] for i in fresh], [tries[i] for i in fresh])):
            outcomes[i] = got
        self.exposures.end.remote([keys[i] for i in fresh])
        for i, n in enumerate(counts):
            if n:
                outcomes[i] = self._exposed(keys[i], tries[i])
        done = [o for o in outcomes if o is not None]
        if self.proc.dst is not None:
            self.proc.dst.sync_folders([o.output for _, o in done if o.output])
        return {
            "key": keys,
            "attempts": [a for a, _ in done],
            "state": [o.state for _, o in done],
            "reason": [o.reason or "" for _, o in done],
            "error": [o.error or "" for _, o in done],
            "result": [dumps(o.record) if self.keep_records and o.record is not None and o.state in FINAL else ""
                       for _, o in done],
        }


class _Leases:
    """The driver's claimed items, their leases renewed every lease/3 seconds until they are finished."""

    def __init__(self, ledger: Ledger, owner: str, lease: float):
        self.ledger, self.owner, self.lease = ledger, owner, lease
        self.held: dict[str, Item] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._renew_loop, name="earshot-ray-leases", daemon=True)

    def __enter__(self) -> _Leases:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def _renew_loop(self) -> None:
        while not self.stop.wait(self.lease / 3):
            with self.lock:
                items = list(self.held.values())
            for item in items:
                try:
                    self.ledger.renew(item, self.owner, self.lease)
                except Exception as e:  # the lease runs out and the item is claimed again
                    log.warning("renew failed", extra={"event": "renew_error", "key": item.key, "error": repr(e)})

    def claim(self, source: str, sink: str) -> list[Item]:
        claimed: list[Item] = []
        while got := self.ledger.claim_many(source, sink, self.owner, self.lease, 500):
            claimed += got
            with self.lock:
                self.held.update((item.key, item) for item in got)
        return claimed

    def drop(self, items: list[Item]) -> None:
        with self.lock:
            for item in items:
                self.held.pop(item.key, None)


def run_ray(run: Run, *, model: Any, workers: int, top_k: int, max_attempts: int, store_results: bool,
            batch_size: int, lease: float, on_finish: Callable[[], object], address: str | None = None,
            num_cpus: float = 1.0, num_gpus: float = 0.0) -> tuple[int, int]:
    """Classify every due item of `run` on Ray: the cluster at `address`, else the Ray this process already
    initialised, else a local Ray of `workers` CPUs. `workers` actors (0: as many as the cluster holds), each
    asking for `num_cpus` CPUs and `num_gpus` GPUs. Returns (done, failed).

    Ray restarts an actor whose process dies and runs its batch again (same keys, same result names: nothing is
    doubled); a key that keeps killing actors ends as a `worker_lost` error record (`Exposures`). Items whose
    batch never came back (an error in the actor) are claimed again, one per batch, until their ledger attempts
    run out and they get a `worker_lost` error record."""
    import ray
    import ray.data

    with connected(address, workers):
        shipped = ship_bundle(model)
        actors = pool_size(workers, num_cpus, num_gpus)
        ctx = ray.data.DataContext.get_current()
        ctx.max_errored_blocks = -1  # a batch whose retries are spent is dropped: its items are claimed again
        ctx.enable_progress_bars = False
        exposures = ray.remote(Exposures).options(num_cpus=0, max_restarts=-1).remote()
        owner = default_owner()
        done = failed = 0
        with _Leases(run.ledger, owner, lease) as leases:
            for n_pass in range(max_attempts + 2):
                claimed = {item.key: item for item in leases.claim(run.src.url, run.sink)}
                if not claimed:
                    break
                log.info("ray pass", extra={"event": "ray_pass", "pass": n_pass + 1, "items": len(claimed),
                                            "actors": actors})
                ds = ray.data.from_items([{"key": k, "attempts": claimed[k].attempts} for k in sorted(claimed)])
                ds = ds.map_batches(
                    RayClassify,
                    fn_constructor_kwargs={"src": run.src, "dst": run.dst, "bundle": shipped, "top_k": top_k,
                                           "max_attempts": max_attempts, "exposures": exposures,
                                           "threads": max(1, round(num_cpus)), "keep_records": store_results},
                    # at least 4 batches an actor, so that a small run still spreads over the pool
                    batch_size=max(1, min(batch_size, -(-len(claimed) // (4 * actors)))) if n_pass == 0 else 1,
                    compute=ray.data.ActorPoolStrategy(size=actors),
                    num_cpus=num_cpus,
                    num_gpus=num_gpus or None,
                )
                finals: list[tuple[Final, Item]] = []
                flushed = time.monotonic()
                for cols in ds.iter_batches(batch_size=None, batch_format="numpy"):  # whole blocks, as they come
                    for key, state, reason, error, result in zip(*(cols[c].tolist() for c in COLUMNS)):
                        item = claimed.pop(key, None)
                        if item is None:  # a row delivered twice: its result was already recorded
                            continue
                        if state in FINAL:
                            finals.append((Final(item, state, error or None, reason or None, result or None), item))
                            done += state == "done"
                            failed += state == "failed"
                            on_finish()
                        else:  # vanished, or its store down for good: pending again, for a later run
                            run.ledger.retry(item, owner, lease, error=error or None, reason=reason or None,
                                             count=False)
                            leases.drop([item])
                    if len(finals) >= 256 or time.monotonic() - flushed > 0.5:
                        _finish(run.ledger, owner, finals, leases)
                        finals, flushed = [], time.monotonic()
                _finish(run.ledger, owner, finals, leases)
                for item in claimed.values():  # its batch was dropped: the attempt counts
                    run.ledger.retry(item, owner, 0.0, error="worker lost", reason="worker_lost")
                leases.drop(list(claimed.values()))
    return done, failed


def _finish(ledger: Ledger, owner: str, finals: list[tuple[Final, Item]], leases: _Leases) -> None:
    if not finals:
        return
    oks = ledger.finish_many(owner, [f for f, _ in finals])
    for (f, _), ok in zip(finals, oks):
        if not ok:
            log.warning("lease lost before finish", extra={"event": "lease_lost", "key": f.item.key})
    leases.drop([item for _, item in finals])
