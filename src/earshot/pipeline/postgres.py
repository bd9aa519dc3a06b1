"""The PostgreSQL ledger: the SQLite ledger's schema and queries on a shared server, for workers on several hosts.

Needs `psycopg` (3): `pip install 'earshot[postgres]'`. `open_ledger("postgresql://...")` returns one.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from contextlib import nullcontext

from earshot.errors import StorageError
from earshot.pipeline.ledger import CLAIM_SET, COLUMNS, DUE, SCHEMA, Item, SQLiteLedger

SCHEMA_LOCK = 0x65617273686F74  # PostgreSQL advisory lock id ("earshot") that serialises schema creation


class PostgresLedger(SQLiteLedger):
    """PostgreSQL via psycopg (3), for workers on several hosts: the same schema and queries, plus row locks
    (claims skip rows another worker is claiming, sync and finish wait for them)."""

    _FOR_UPDATE = " FOR UPDATE"

    def __init__(self, url: str, *, timeout: float = 60.0):
        try:
            import psycopg
        except ImportError as e:
            raise StorageError("a PostgreSQL ledger needs psycopg: pip install 'earshot[postgres]'",
                               source=_redact(url), reason="needs_psycopg") from e
        self._psycopg = psycopg
        self._dsn = url
        self.path = _redact(url)  # shown in status and logs
        self.timeout = timeout
        self._local = threading.local()
        self._writer = nullcontext()  # row locks: transactions run side by side
        with self._tx() as c:
            c.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))  # two first starts at once
            c.executescript(SCHEMA)

    def _conn(self) -> _PgAdapter:
        c = getattr(self._local, "conn", None)
        if c is None or c.conn.closed:  # psycopg closes a connection the server dropped: connect again
            try:
                conn = self._psycopg.connect(self._dsn, autocommit=True, connect_timeout=int(self.timeout))
            except self._psycopg.OperationalError as e:
                raise StorageError(str(e), source=self.path, reason="unreachable") from e
            c = self._local.conn = _PgAdapter(conn)
        return c

    def _begin(self, c) -> None:
        c.execute("BEGIN")

    def claim_many(self, source, sink, owner, lease, limit):
        now = time.time()
        # The CTE runs once (a LIMIT subquery under IN may be re-run per row and lease more than `limit`); rows
        # that another worker is claiming are skipped, not waited for.
        with self._tx() as c:
            rows = c.execute(
                f"WITH due AS (SELECT key AS due_key FROM items WHERE {DUE} FOR UPDATE SKIP LOCKED) "
                f"UPDATE items SET {CLAIM_SET} FROM due WHERE source_url=? AND sink_url=? AND key=due.due_key "
                f"RETURNING {COLUMNS}",
                (source, sink, now, now, limit, owner, now + lease, now, source, sink),
            ).fetchall()
        return sorted((Item(*r) for r in rows), key=lambda i: (i.created_at, i.key))


def _redact(url: str) -> str:
    """The URL without its password (for status output and logs)."""
    p = urllib.parse.urlsplit(url)
    netloc = p.netloc
    if p.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}"
    query = urllib.parse.urlencode([(k, "***" if k == "password" else v)
                                    for k, v in urllib.parse.parse_qsl(p.query, keep_blank_values=True)])
    return urllib.parse.urlunsplit(p._replace(netloc=netloc, query=query))


class _PgAdapter:
    """Lets the SQLite queries (qmark style) run on a psycopg connection."""

    def __init__(self, conn):
        self.conn = conn

    def execute(self, sql, args=()):
        return self.conn.execute(sql.replace("?", "%s"), tuple(args))

    def executescript(self, script):
        for stmt in script.split(";"):
            if stmt.strip():
                self.conn.execute(stmt)

    def close(self):
        self.conn.close()
