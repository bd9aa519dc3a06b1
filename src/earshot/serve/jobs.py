"""Training jobs: persisted in SQLite, run one by one in a child process (the server never imports torch).

States: queued -> running -> succeeded | failed. A job that raises, crashes or times out ends `failed` with an
error; at startup, jobs found `running` are marked failed ("interrupted by restart"), `queued` ones
re-queued.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

COLUMNS = (
    "id",
    "status",
    "name",
    "data",
    "data_source",
    "options",
    "created_at",
    "started_at",
    "finished_at",
    "model",
    "bundle",
    "error",
)
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL,
    data_source TEXT NOT NULL,
    options TEXT NOT NULL, created_at REAL NOT NULL, started_at REAL, finished_at REAL,
    model TEXT, bundle TEXT, error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
"""


class JobStore:
    """The jobs table; every method is a short transaction, safe from any thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def _row(self, row: tuple | None) -> dict[str, Any] | None:
        if row is None:
            return None
        job = dict(zip(COLUMNS, row, strict=True))
        job["options"] = json.loads(job["options"] or "{}")
        job["error"] = json.loads(job["error"]) if job["error"] else None
        return job

    def create(self, name: str, data: str, data_source: str, options: dict, job_id: str | None = None) -> dict:
        job_id = job_id or uuid.uuid4().hex
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, status, name, data, data_source, options, created_at) VALUES (?,?,?,?,?,?,?)",
                (job_id, "queued", name, data, data_source, json.dumps(options), time.time()),
            )
        return self.get(job_id)

    def get(self, job_id: str) -> dict | None:
        with self._lock:
            cur = self._db.execute(f"SELECT {','.join(COLUMNS)} FROM jobs WHERE id=?", (job_id,))
            return self._row(cur.fetchone())

    def list(self, limit: int = 50) -> list[dict]:
        with self._lock:
            cur = self._db.execute(f"SELECT {','.join(COLUMNS)} FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,))
            return [self._row(r) for r in cur.fetchall()]

    def update(self, job_id: str, **fields: Any) -> None:
        if "error" in fields and fields["error"] is not None:
            fields["error"] = json.dumps(fields["error"])
        sets = ",".join(f"{k}=?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {sets} WHERE id=?", (*fields.values(), job_id))

    def start(self, job_id: str) -> bool:
        """queued -> running; False when the job is no longer queued."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET status='running', started_at=? WHERE id=? AND status='queued'",
                (time.time(), job_id),
            )
            return cur.rowcount == 1

    def with_status(self, *statuses: str) -> list[dict]:
        marks = ",".join("?" * len(statuses))
        with self._lock:
            cur = self._db.execute(
                f"SELECT {','.join(COLUMNS)} FROM jobs WHERE status IN ({marks}) ORDER BY created_at",
                statuses,
            )
            return [self._row(r) for r in cur.fetchall()]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())

    def close(self) -> None:
        with self._lock:
            self._db.close()


def public(job: dict) -> dict:
    """The job as the API shows it: status, error, timings, resulting model."""
    now = time.time()
    created, started, finished = job["created_at"], job["started_at"], job["finished_at"]
    timings = {
        "created_at": created,
        "started_at": started,
        "finished_at": finished,
        "queued_s": round((started or finished or now) - created, 3),
        "run_s": round((finished or now) - started, 3) if started else None,
        "total_s": round((finished or now) - created, 3),
    }
    return {
        "id": job["id"],
        "status": job["status"],
        "name": job["name"],
        "model": job["model"],
        "error": job["error"],
        "timings": timings,
        "options": job["options"],
        "data_source": job["data_source"],
        "url": f"/v1/jobs/{job['id']}",
    }


class JobRunner:
    """Worker threads that take queued jobs and run `earshot.train` in a child process each."""

    def __init__(
        self,
        store: JobStore,
        state_dir: Path,
        models_dir: Path,
        *,
        workers: int = 1,
        timeout_s: float = 3600.0,
    ) -> None:
        self.store = store
        self.state_dir = Path(state_dir)
        self.models_dir = Path(models_dir)
        self.timeout_s = timeout_s
        self._q: queue.Queue[str | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._loop, name=f"earshot-train-{i}", daemon=True) for i in range(max(1, workers))
        ]
        self._procs: dict[str, subprocess.Popen] = {}
        self._stopping = False

    def job_dir(self, job_id: str) -> Path:
        return self.state_dir / "jobs" / job_id

    def start(self) -> None:
        """Recover after a restart, then start the workers."""
        for job in self.store.with_status("running"):
            self.store.update(
                job["id"],
                status="failed",
                finished_at=time.time(),
                error={"type": "JobError", "reason": "interrupted", "message": "interrupted by restart"},
            )
        for job in self.store.with_status("queued"):
            self._q.put(job["id"])
        for t in self._threads:
            t.start()

    def submit(self, job_id: str) -> None:
        self._q.put(job_id)

    def reserved_names(self) -> set[str]:
        return {j["name"] for j in self.store.with_status("queued", "running")}

    def stop(self) -> None:
        self._stopping = True
        for _ in self._threads:
            self._q.put(None)
        for proc in list(self._procs.values()):
            proc.kill()

    def _loop(self) -> None:
        while True:
            job_id = self._q.get()
            if job_id is None or self._stopping:
                return
            if not self.store.start(job_id):
                continue
            try:
                self._run(self.store.get(job_id))
            except Exception as e:  # never leave a job running
                self._fail(job_id, {"type": type(e).__name__, "reason": "internal", "message": str(e)})

    def _fail(self, job_id: str, error: dict) -> None:
        self.store.update(job_id, status="failed", finished_at=time.time(), error=error)

    def _run(self, job: dict) -> None:
        job_id, name = job["id"], job["name"]
        work = self.job_dir(job_id)
        work.mkdir(parents=True, exist_ok=True)
        staging = self.models_dir / ".staging" / job_id / name
        shutil.rmtree(staging.parent, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        data = None if job["data_source"] == "words" else job["data"]  # a keyword model from its words alone
        spec = {"data": data, "out": str(staging), "options": job["options"], "name": name}
        (work / "spec.json").write_text(json.dumps(spec))
        result_path = work / "result.json"
        result_path.unlink(missing_ok=True)
        with open(work / "train.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "earshot.serve.trainjob", str(work / "spec.json")],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=os.environ.copy(),
            )
            self._procs[job_id] = proc
            try:
                rc = proc.wait(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rc = None
            finally:
                self._procs.pop(job_id, None)
        try:
            if rc is None:
                return self._fail(
                    job_id,
                    {
                        "type": "JobError",
                        "reason": "timeout",
                        "message": f"training took longer than {self.timeout_s:g} s",
                    },
                )
            result = json.loads(result_path.read_text()) if result_path.is_file() else None
            if rc != 0 or not result or not result.get("ok"):
                error = (result or {}).get("error") or {
                    "type": "JobError",
                    "reason": "crashed",
                    "message": f"training process exited with {rc}: {_tail(work / 'train.log')}",
                }
                return self._fail(job_id, error)
            bundle = Path(result.get("bundle") or staging)
            if not ((bundle / "model.onnx").is_file() and (bundle / "card.json").is_file()):
                return self._fail(
                    job_id,
                    {
                        "type": "JobError",
                        "reason": "no_bundle",
                        "message": f"training produced no bundle at {bundle}",
                    },
                )
            final = self.models_dir / name
            if final.exists():
                return self._fail(
                    job_id,
                    {
                        "type": "JobError",
                        "reason": "conflict",
                        "message": f"a model named {name!r} appeared meanwhile",
                    },
                )
            os.replace(bundle, final)  # atomic: the model shows up complete or not at all
            self.store.update(job_id, status="succeeded", finished_at=time.time(), model=name, bundle=str(final))
        finally:
            shutil.rmtree(staging.parent, ignore_errors=True)
            if job["data_source"] == "upload":
                shutil.rmtree(work / "data", ignore_errors=True)
                (work / "upload").unlink(missing_ok=True)


def _tail(path: Path, n: int = 800) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip()
    except OSError:
        return ""
