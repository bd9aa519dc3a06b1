"""One object through the pipeline: read it, classify it, and write its result or error record under DST.

`Processor` holds no ledger logic: the runner's threads, the batch driver and the Ray engine all call it. Each
object `SRC/<key>` yields `DST/<key>.json` (a Prediction) or `DST/<key>.error.json` (the Prediction failure
object plus `attempts` and `reason`); the other kind is deleted first and ours written atomically, so a rerun
lands on the same key and never leaves a duplicate or a partial result.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from earshot import cores
from earshot.errors import AudioError, StorageError
from earshot.pipeline.logs import LOGGER
from earshot.pipeline.storage import Store, result_keys, safe_key
from earshot.prediction import Prediction

log = logging.getLogger(LOGGER)


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
    import earshot

    return earshot.load(model, threads=max(1, cores.usable() // max(1, workers)))


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
