"""Durable work ledger of the pipeline: one row per (source, sink, key), claimed under a lease.

States: pending -> leased -> done | failed; a failed attempt goes back to pending with an exponential
`not_before` until `max_attempts`. A lease that runs out (its worker crashed) makes the item claimable again;
a changed object (new version) is pending again. SQLite (WAL) is the default; a `postgresql://` URL shares one
ledger between hosts (earshot.pipeline.postgres, needs `psycopg`). Every state change is a single transaction, so
a crash at any point leaves the ledger consistent; claims and finishes can cover several items per transaction.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from earshot.errors import StorageError

STATES = ("pending", "leased", "done", "failed")

# The SQL below is shared by every backend (qmark parameters; the PostgreSQL adapter rewrites them).
SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    source_url   TEXT NOT NULL,
    sink_url     TEXT NOT NULL,
    key          TEXT NOT NULL,
    version      TEXT NOT NULL,
    next_version TEXT,
    size         BIGINT,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'leased', 'done', 'failed')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    lease_owner  TEXT,
    lease_until  DOUBLE PRECISION,
    not_before   DOUBLE PRECISION NOT NULL DEFAULT 0,
    last_error   TEXT,
    last_reason  TEXT,
    result       TEXT,
    created_at   DOUBLE PRECISION NOT NULL,
    updated_at   DOUBLE PRECISION NOT NULL,
    finished_at  DOUBLE PRECISION,
    PRIMARY KEY (source_url, sink_url, key)
);
CREATE INDEX IF NOT EXISTS items_claim ON items (source_url, sink_url, state, not_before);
"""

COLUMNS = (
    "source_url, sink_url, key, version, size, state, attempts, lease_owner, lease_until, not_before, "
    "last_error, last_reason, created_at, updated_at, finished_at"
)

# Claimable items of (source, sink) at a time `now` (params: source, sink, now, now, limit), oldest first.
DUE = (
    "source_url=? AND sink_url=? AND ((state='pending' AND not_before<=?) OR (state='leased' AND lease_until<?)) "
    "ORDER BY not_before, created_at, key LIMIT ?"
)
# A claim (params: owner, lease_until, now): the lease, one more attempt, and the newest version seen.
CLAIM_SET = (
    "state='leased', attempts=attempts+1, lease_owner=?, lease_until=?, version=COALESCE(next_version, version), "
    "next_version=NULL, updated_at=?"
)


def default_owner(tag: object = None) -> str:
    """`host:pid:tag` (tag defaults to the thread id) — identifies a worker; the pid lets a restart on the same
    host reclaim its leases at once."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() if tag is None else tag}"


def backoff_delay(attempts: int, base: float = 1.0, cap: float = 300.0) -> float:
    """Exponential backoff with jitter: base * 2**(attempts-1), +-25%, at most `cap` seconds."""
    d = min(cap, base * (2 ** max(0, attempts - 1)))
    return d * random.uniform(0.75, 1.25)


@dataclass
class Item:
    """A claimed (or inspected) ledger row."""

    source_url: str
    sink_url: str
    key: str
    version: str
    size: int | None
    state: str
    attempts: int
    lease_owner: str | None
    lease_until: float | None
    not_before: float
    last_error: str | None
    last_reason: str | None
    created_at: float
    updated_at: float
    finished_at: float | None


@dataclass
class Final:
    """The final outcome of a held item, for `Ledger.finish_many`."""

    item: Item
    state: str  # done | failed
    error: str | None = None
    reason: str | None = None
    result: str | None = None


class Ledger(ABC):
    """Pluggable ledger interface (SQLite and PostgreSQL implement it)."""

    @abstractmethod
    def sync(self, source: str, sink: str, objects: Iterable[tuple[str, str, int | None]]) -> int:
        """Record (key, version, size) objects: new or changed ones become pending. Returns how many."""

    @abstractmethod
    def claim_many(self, source: str, sink: str, owner: str, lease: float, limit: int) -> list[Item]:
        """Atomically lease up to `limit` (at most 500) due items (pending, or leased with an expired lease);
        attempts += 1 each."""

    def claim(self, source: str, sink: str, owner: str, lease: float) -> Item | None:
        """Lease the next due item, or None."""
        items = self.claim_many(source, sink, owner, lease, 1)
        return items[0] if items else None

    @abstractmethod
    def renew(self, item: Item, owner: str, lease: float) -> bool:
        """Extend a held lease; False when it was lost."""

    @abstractmethod
    def finish_many(self, owner: str, finals: Sequence[Final]) -> list[bool]:
        """Mark held items done or failed in one transaction; per item False when its lease was lost. A changed
        object goes back to pending instead."""

    def finish(self, item: Item, owner: str, state: str, *, error: str | None = None,
               reason: str | None = None, result: str | None = None) -> bool:
        """Mark one held item done or failed (see `finish_many`)."""
        return self.finish_many(owner, [Final(item, state, error, reason, result)])[0]

    @abstractmethod
    def retry(self, item: Item, owner: str, delay: float, *, error: str | None, reason: str | None,
              count: bool = True) -> bool:
        """Give a held item back as pending after `delay` s; `count=False` refunds the attempt."""

    @abstractmethod
    def release_dead(self, source: str, sink: str, alive) -> int:
        """Make leases of dead local workers (`alive(pid)` false, same host) claimable now."""

    @abstractmethod
    def items(self, source: str | None = None, sink: str | None = None, state: str | None = None) -> list[Item]:
        ...

    @abstractmethod
    def results(self, source: str, sink: str) -> list[tuple[str, str | None]]:
        """(key, stored result JSON) of finished items, by key (for single-file outputs)."""

    @abstractmethod
    def unfinished(self, source: str, sink: str) -> int:
        """Items still pending or leased."""

    @abstractmethod
    def status(self, source: str | None = None, sink: str | None = None) -> dict:
        ...

    def close(self) -> None:  # noqa: B027 - optional for implementations
        """Release connections."""


class SQLiteLedger(Ledger):
    """SQLite in WAL mode; one connection per thread; claims under BEGIN IMMEDIATE (the database write lock)."""

    # Row lock for servers with concurrent writers (PostgreSQL); SQLite serialises writers with BEGIN IMMEDIATE.
    _FOR_UPDATE = ""

    def __init__(self, path: str | os.PathLike, *, timeout: float = 60.0):
        self.path = str(Path(path).expanduser())
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self._local = threading.local()
        # SQLite has one writer at a time: this process's threads queue on a lock that wakes the next one at
        # once, instead of polling the database lock in SQLite's busy handler (sleeps of 1 ms and more).
        self._writer: AbstractContextManager = threading.Lock()
        self._conn().executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=True)
            c.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            # Switching a new database to WAL can answer "locked" without waiting on the busy handler when
            # another process creates it at the same moment: retry within the timeout.
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    c.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            c.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = c
        return c

    def _begin(self, c) -> None:
        for i in range(50):
            try:
                c.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e) or i == 49:
                    raise StorageError(str(e), source=self.path, reason="ledger_busy") from e
                time.sleep(0.05 * (i + 1))

    @contextmanager
    def _tx(self):
        """One transaction on this thread's connection: commit on success, roll back on any error."""
        with self._writer:
            c = self._conn()
            self._begin(c)
            try:
                yield c
            except BaseException:
                with suppress(Exception):  # a dropped connection cannot roll back; keep the original error
                    c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

    def _change(self, c, source: str, sink: str, key: str, version: str, lock: str = "") -> tuple | None:
        """None when `version` of `key` is already recorded; () when the key is new; else (state, lease_until)."""
        cur = c.execute(
            "SELECT version, next_version, state, lease_until, last_reason FROM items "
            f"WHERE source_url=? AND sink_url=? AND key=?{lock}",
            (source, sink, key),
        ).fetchone()
        if cur is None:
            return ()
        old, nxt, state, until, last_reason = cur
        if version in (old, nxt) and not (state == "failed" and last_reason == "vanished"):
            return None  # unchanged (an object that vanished mid-run and is back is new work)
        return state, until

    def sync(self, source, sink, objects):
        now = time.time()
        n = 0
        rows = sorted(objects)  # one lock order for every writer (PostgreSQL row locks)
        if not rows:
            return 0
        with self._tx() as c:
            for key, version, size in rows:
                change = self._change(c, source, sink, key, version)
                if change and self._FOR_UPDATE:  # only rows that change are locked, then read again
                    change = self._change(c, source, sink, key, version, self._FOR_UPDATE)
                if change is None:
                    continue
                if change == ():
                    # Another process may record the same new object at the same moment: its row stands.
                    n += c.execute(
                        "INSERT INTO items (source_url, sink_url, key, version, size, state, created_at, updated_at)"
                        " VALUES (?,?,?,?,?,'pending',?,?) ON CONFLICT DO NOTHING",
                        (source, sink, key, version, size, now, now),
                    ).rowcount
                    continue
                state, until = change
                if state == "leased" and (until or 0) >= now:
                    # A worker holds the old version: it goes pending again with this one when that finishes.
                    c.execute(
                        "UPDATE items SET next_version=?, size=?, updated_at=? "
                        "WHERE source_url=? AND sink_url=? AND key=?",
                        (version, size, now, source, sink, key),
                    )
                else:
                    c.execute(
                        "UPDATE items SET version=?, next_version=NULL, size=?, state='pending', attempts=0, "
                        "lease_owner=NULL, lease_until=NULL, not_before=0, last_error=NULL, last_reason=NULL, "
                        "finished_at=NULL, updated_at=? WHERE source_url=? AND sink_url=? AND key=?",
                        (version, size, now, source, sink, key),
                    )
                n += 1
        return n

    def claim_many(self, source, sink, owner, lease, limit):
        now, limit = time.time(), min(int(limit), 500)  # keys are bound parameters: old SQLite allows 999
        with self._tx() as c:  # the write lock: nobody else can claim between the SELECT and the UPDATE
            keys = [r[0] for r in c.execute(f"SELECT key FROM items WHERE {DUE}", (source, sink, now, now, limit))]
            if not keys:
                return []
            marks = ",".join("?" * len(keys))
            c.execute(f"UPDATE items SET {CLAIM_SET} WHERE source_url=? AND sink_url=? AND key IN ({marks})",
                      (owner, now + lease, now, source, sink, *keys))
            rows = c.execute(f"SELECT {COLUMNS} FROM items WHERE source_url=? AND sink_url=? AND key IN ({marks})",
                             (source, sink, *keys)).fetchall()
        return sorted((Item(*r) for r in rows), key=lambda i: (i.created_at, i.key))

    def renew(self, item, owner, lease):
        with self._tx() as c:
            cur = c.execute(
                "UPDATE items SET lease_until=? WHERE source_url=? AND sink_url=? AND key=? "
                "AND state='leased' AND lease_owner=?",
                (time.time() + lease, item.source_url, item.sink_url, item.key, owner),
            )
            return cur.rowcount == 1

    def finish_many(self, owner, finals):
        if any(f.state not in ("done", "failed") for f in finals):
            raise ValueError([f.state for f in finals])
        if not finals:
            return []
        now = time.time()
        ok = [False] * len(finals)
        with self._tx() as c:
            for i in sorted(range(len(finals)), key=lambda i: finals[i].item.key):  # one lock order (see sync)
                f, it = finals[i], finals[i].item
                ok[i] = c.execute(
                    "UPDATE items SET "
                    "state=CASE WHEN next_version IS NULL THEN ? ELSE 'pending' END, "
                    "attempts=CASE WHEN next_version IS NULL THEN attempts ELSE 0 END, "
                    "version=COALESCE(next_version, version), next_version=NULL, "
                    "lease_owner=NULL, lease_until=NULL, not_before=0, last_error=?, last_reason=?, result=?, "
                    "finished_at=?, updated_at=? "
                    "WHERE source_url=? AND sink_url=? AND key=? AND state='leased' AND lease_owner=?",
                    (f.state, f.error, f.reason, f.result, now, now, it.source_url, it.sink_url, it.key, owner),
                ).rowcount == 1
        return ok

    def retry(self, item, owner, delay, *, error, reason, count=True):
        now = time.time()
        with self._tx() as c:
            cur = c.execute(
                "UPDATE items SET state='pending', lease_owner=NULL, lease_until=NULL, not_before=?, "
                "attempts=attempts-?, last_error=?, last_reason=?, updated_at=? "
                "WHERE source_url=? AND sink_url=? AND key=? AND state='leased' AND lease_owner=?",
                (now + delay, 0 if count else 1, error, reason, now, item.source_url, item.sink_url, item.key,
                 owner),
            )
            return cur.rowcount == 1

    def release_dead(self, source, sink, alive):
        host = socket.gethostname()
        n = 0
        with self._tx() as c:
            rows = c.execute(
                "SELECT key, lease_owner FROM items WHERE source_url=? AND sink_url=? AND state='leased'",
                (source, sink),
            ).fetchall()
            for key, owner in sorted(rows):  # one lock order (see sync)
                try:
                    h, pid, _ = (owner or "").split(":")
                    pid = int(pid)
                except ValueError:
                    continue
                if h == host and not alive(pid):
                    c.execute(
                        "UPDATE items SET lease_until=0 WHERE source_url=? AND sink_url=? AND key=? "
                        "AND state='leased' AND lease_owner=?",
                        (source, sink, key, owner),
                    )
                    n += 1
        return n

    def items(self, source=None, sink=None, state=None):
        q, args = self._where(source, sink)
        if state:
            q += " AND state=?"
            args.append(state)
        rows = self._conn().execute(f"SELECT {COLUMNS} FROM items WHERE {q}", args).fetchall()
        return sorted((Item(*r) for r in rows), key=lambda i: i.key)  # code-point order on every backend

    def results(self, source, sink):
        return sorted(self._conn().execute(
            "SELECT key, result FROM items WHERE source_url=? AND sink_url=? AND state IN ('done','failed')",
            (source, sink),
        ).fetchall())

    def unfinished(self, source, sink):
        return self._conn().execute(
            "SELECT COUNT(*) FROM items WHERE source_url=? AND sink_url=? AND state IN ('pending','leased')",
            (source, sink),
        ).fetchone()[0]

    @staticmethod
    def _where(source, sink):
        q, args = "1=1", []
        if source:
            q += " AND source_url=?"
            args.append(source)
        if sink:
            q += " AND sink_url=?"
            args.append(sink)
        return q, args

    def status(self, source=None, sink=None):
        q, args = self._where(source, sink)
        c = self._conn()
        counts = dict.fromkeys(STATES, 0)
        for state, n in c.execute(f"SELECT state, COUNT(*) FROM items WHERE {q} GROUP BY state", args):
            counts[state] = n
        now = time.time()
        oldest = c.execute(
            f"SELECT key, created_at FROM items WHERE {q} AND state='pending' ORDER BY created_at LIMIT 1", args
        ).fetchone()
        reasons = c.execute(
            f"SELECT last_reason, COUNT(*) AS n FROM items WHERE {q} AND state='failed' "
            "GROUP BY last_reason ORDER BY n DESC LIMIT 5",
            args,
        ).fetchall()
        retrying = c.execute(
            f"SELECT COUNT(*) FROM items WHERE {q} AND state='pending' AND attempts>0", args
        ).fetchone()[0]
        return {
            "ledger": self.path,
            "counts": counts,
            "total": sum(counts.values()),
            "retrying": retrying,
            "oldest_pending": {"key": oldest[0], "age_s": round(now - oldest[1], 3)} if oldest else None,
            "top_errors": [{"reason": r or "unknown", "count": n} for r, n in reasons],
        }

    def close(self):
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None


def default_ledger_path(source: str, sink: str) -> Path:
    """`$EARSHOT_HOME/ledgers/<hash of source+sink>.sqlite` (EARSHOT_HOME defaults to ~/.cache/earshot)."""
    import hashlib

    from earshot.models.weights import earshot_home

    home = earshot_home()
    h = hashlib.sha256(f"{source}\n{sink}".encode()).hexdigest()[:16]
    return home / "ledgers" / f"{h}.sqlite"


def open_ledger(spec: str | os.PathLike | Ledger | None, source: str = "", sink: str = "") -> Ledger:
    """A Ledger from an instance, a `postgresql://` URL, a SQLite path, or None (the default path)."""
    if isinstance(spec, Ledger):
        return spec
    if spec is None:
        return SQLiteLedger(default_ledger_path(source, sink))
    s = os.fspath(spec)
    if s.startswith(("postgresql://", "postgres://")):
        from earshot.pipeline.postgres import PostgresLedger

        return PostgresLedger(s)
    if s.startswith("sqlite:///"):
        s = s[len("sqlite:///") :]
    return SQLiteLedger(s)


def dumps(obj) -> str:
    """Compact JSON, as results are kept in the ledger."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
