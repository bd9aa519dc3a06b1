"""The thread pipeline that works through a ledger: claim, classify, store, then mark done.

One ledger thread claims items ahead of need, renews their leases and marks stored items done, several per
transaction; classifier threads classify claimed items; writer threads store each result. An item is marked
done only once its result is durably stored, so a crash anywhere before that re-runs it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from earshot.pipeline.ledger import Final, Item, Ledger, backoff_delay, default_owner, dumps
from earshot.pipeline.logs import LOGGER
from earshot.pipeline.processor import Outcome, Processor
from earshot.pipeline.storage import Store

log = logging.getLogger(LOGGER)


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
