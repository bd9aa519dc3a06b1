"""The ledger contract on SQLite and on a real (throwaway) PostgreSQL server, and `earshot batch` / `watch` with
`--ledger postgresql://...` end to end."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
import traceback

import pytest
from corpus import assert_exactly_one, build_corpus, local_results, watcher_cmd
from pgserver import pg_fixture  # noqa: F401  (provides the `pg` fixture)

from earshot.pipeline.ledger import Final, backoff_delay, open_ledger
from earshot.pipeline.postgres import PostgresLedger
from earshot.pipeline.storage import LocalStore


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request, tmp_path) -> str:
    """A fresh ledger of each kind: a SQLite file, or a new database on the throwaway PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "l.sqlite")
    return request.getfixturevalue("pg").new_database()


def test_ledger_lease_retry_and_versions(ledger_url):
    led = open_ledger(ledger_url)
    assert led.sync("s", "d", [("a", "v1", 1)]) == 1
    assert led.sync("s", "d", [("a", "v1", 1)]) == 0  # unchanged: nothing to do
    it = led.claim("s", "d", "h:1:1", lease=0.3)
    assert it.key == "a" and it.attempts == 1 and it.lease_owner == "h:1:1"
    assert led.claim("s", "d", "h:2:1", lease=5) is None  # leased
    time.sleep(0.35)
    again = led.claim("s", "d", "h:2:1", lease=5)  # lease ran out: a crashed worker's item comes back
    assert again.key == "a" and again.attempts == 2
    assert not led.finish(it, "h:1:1", "done")  # the old owner lost it
    assert not led.renew(it, "h:1:1", 5) and led.renew(again, "h:2:1", 5)
    assert led.retry(again, "h:2:1", 0.2, error="boom", reason="read_error")
    assert led.claim("s", "d", "h:2:1", lease=5) is None  # backing off
    time.sleep(0.25)
    third = led.claim("s", "d", "h:2:1", lease=5)
    assert third.attempts == 3 and third.last_reason == "read_error"
    # A new version while leased: finishing the old one puts it back to pending with the new version.
    assert led.sync("s", "d", [("a", "v2", 2)]) == 1
    assert led.finish(third, "h:2:1", "failed", error="x", reason="read_error")
    fourth = led.claim("s", "d", "h:2:1", lease=5)
    assert (fourth.version, fourth.attempts) == ("v2", 1)
    assert led.retry(fourth, "h:2:1", 0.0, error="down", reason="unreachable", count=False)  # attempt refunded
    fourth = led.claim("s", "d", "h:2:1", lease=5)
    assert fourth.attempts == 1
    assert led.finish(fourth, "h:2:1", "done", result='{"title": "a"}')
    st = led.status("s", "d")
    assert st["counts"]["done"] == 1 and st["total"] == 1 and led.unfinished("s", "d") == 0
    assert led.results("s", "d") == [("a", '{"title": "a"}')]
    # A changed object after done is processed again.
    assert led.sync("s", "d", [("a", "v3", 3)]) == 1
    assert led.claim("s", "d", "h:2:1", lease=5).version == "v3"
    assert 0.75 <= backoff_delay(1) <= 1.25 and 3 <= backoff_delay(3) <= 5


def test_ledger_batches_and_dead_workers(ledger_url):
    led = open_ledger(ledger_url)
    keys = ["b0", "b1", "b2", "Zz", "é 深い"]
    assert led.sync("s", "d", [(k, "v1", 10**10) for k in keys]) == 5  # sizes past 32 bits
    first = led.claim_many("s", "d", "h:3:1", 5, 3)
    rest = led.claim_many("s", "d", "h:4:1", 5, 10)
    assert len(first) == 3 and len(rest) == 2 and led.claim_many("s", "d", "h:4:1", 5, 10) == []
    assert sorted(i.key for i in first + rest) == sorted(keys) and all(i.size == 10**10 for i in first)
    # Several finishes in one transaction; an item this owner does not hold is reported, the others stand.
    ok = led.finish_many("h:3:1", [Final(first[0], "done", result="{}"), Final(rest[0], "done"),
                                   Final(first[1], "failed", error="bad", reason="truncated")])
    assert ok == [True, False, True]
    with pytest.raises(ValueError):
        led.finish_many("h:3:1", [Final(first[2], "leased")])
    assert [k for k, _ in led.results("s", "d")] == sorted([first[0].key, first[1].key])  # code-point order
    st = led.status("s", "d")
    assert st["counts"] == {"pending": 0, "leased": 3, "done": 1, "failed": 1}
    assert st["top_errors"] == [{"reason": "truncated", "count": 1}]
    # Leases of dead workers on this host come back at once; other hosts' leases wait for their expiry.
    dead = f"{socket.gethostname()}:999999999:1"
    assert led.sync("s", "d", [("c", "v1", 1)]) == 1
    assert led.claim("s", "d", dead, lease=60).key == "c"
    assert led.release_dead("s", "d", alive=lambda pid: pid != 999999999) == 1
    back = led.claim("s", "d", "h:5:1", lease=60)
    assert (back.key, back.attempts) == ("c", 2)
    assert [i.key for i in led.items("s", "d", "leased")] == sorted([first[2].key, *(i.key for i in rest), "c"])


ROWS = [(f"k{i:04d}", "v", 1) for i in range(600)]


def _claimer(url: str, barrier, q) -> None:
    try:
        led = open_ledger(url)
        owner = f"h:{os.getpid()}:1"
        barrier.wait(60)
        synced = led.sync("s", "d", ROWS)  # every process records the same new objects at the same moment
        barrier.wait(60)  # and then all claim at once
        got: list[str] = []
        while items := led.claim_many("s", "d", owner, 60, 1 + len(got) % 3):
            got += [i.key for i in items]
            time.sleep(0.001)  # the work: without it one process can take every turn of the SQLite write lock
            if not all(led.finish_many(owner, [Final(i, "done") for i in items])):
                raise AssertionError("lost a lease it held")
        q.put((synced, got))
    except BaseException:
        q.put(traceback.format_exc())


def test_ledger_claims_are_exclusive_across_processes(ledger_url):
    open_ledger(ledger_url)  # create the schema once
    ctx = mp.get_context("spawn")
    q, barrier = ctx.Queue(), ctx.Barrier(4)
    procs = [ctx.Process(target=_claimer, args=(ledger_url, barrier, q)) for _ in range(4)]
    for p in procs:
        p.start()
    answers = [q.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(isinstance(a, tuple) for a in answers), [a for a in answers if not isinstance(a, tuple)]
    assert sum(n for n, _ in answers) == 600  # each object recorded once, by whichever process came first
    flat = [k for _, got in answers for k in got]
    assert len(flat) == 600 and set(flat) == {k for k, _, _ in ROWS}
    assert sum(1 for _, got in answers if got) >= 2  # really concurrent
    assert open_ledger(ledger_url).status("s", "d")["counts"]["done"] == 600


def test_postgres_url_password_is_not_shown(pg):
    url = pg.url.replace("earshot@", "earshot:s3cret@") + "?application_name=earshot"
    led = PostgresLedger(url)  # trust auth: the password is not checked
    assert "s3cret" not in led.path and "s3cret" not in json.dumps(led.status())
    assert led.path.startswith("postgresql://earshot:***@127.0.0.1:")


@pytest.mark.slow
def test_batch_and_watchers_on_a_postgres_ledger(pg, tmp_path, shared_data):
    """`earshot batch --ledger postgresql://...` (then resumed: nothing redone), and two watcher processes sharing
    one PostgreSQL ledger: every object classified exactly once, one result each."""
    url = pg.new_database()
    src, out = tmp_path / "src", tmp_path / "out"
    kinds = build_corpus(src, 16, seed=8, n_bad=3)
    cmd = [sys.executable, "-m", "earshot.cli", "batch", str(src), "--output", str(out), "--ledger", url,
           "--workers", "2", "--quiet"]
    runs = [subprocess.run(cmd, capture_output=True, text=True, timeout=300) for _ in range(2)]
    first, second = (json.loads(r.stdout) for r in runs)
    assert runs[0].returncode == 1, runs[0].stderr[-2000:]  # the bad inputs failed
    assert (first["done"], first["failed"], first["skipped"]) == (13, 3, 0)
    assert (second["done"], second["failed"], second["skipped"]) == (0, 0, 16)
    assert_exactly_one(kinds, local_results(out), lambda f: (out / f).read_bytes())

    src2, out2 = tmp_path / "src2", tmp_path / "out2"
    kinds2 = build_corpus(src2, 40, seed=9)
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    procs = [subprocess.Popen(watcher_cmd(src2, out2, url, "--once", "--workers", 2), stdout=subprocess.DEVNULL,
                              stderr=lg.open("wb")) for lg in logs]  # noqa: SIM115
    for p, lg in zip(procs, logs):
        assert p.wait(300) == 0, lg.read_text()[-3000:]
    events = [[json.loads(line) for line in lg.read_text().splitlines() if line.startswith("{")] for lg in logs]
    per_proc = [[e["key"] for e in ev if e.get("event") in ("done", "failed")] for ev in events]
    assert sorted(per_proc[0] + per_proc[1]) == sorted(kinds2), "each object processed exactly once"
    assert_exactly_one(kinds2, local_results(out2), lambda f: (out2 / f).read_bytes())
    led = open_ledger(url)
    assert all(i.attempts == 1 for i in led.items(LocalStore(src2).url, LocalStore(out2).url))
