"""earshot watch as real processes: killed with SIGKILL five times, two processes on one ledger, the S3 server
killed and restarted under them; every input ends with exactly one result."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time

import pytest
from corpus import assert_exactly_one, build_corpus, local_results, s3_results, upload_folder, wait_for, watcher_cmd

from earshot.pipeline.ledger import SQLiteLedger
from earshot.watch import status


@pytest.mark.slow
def test_kill9_five_times_then_complete(tmp_path, shared_data):
    """kill -9 the watcher process at random moments 5 times; the restarted watcher completes the job with
    exactly one complete result per input and no leftovers."""
    src, out, led = tmp_path / "src", tmp_path / "out", tmp_path / "l.sqlite"
    kinds = build_corpus(src, 120, seed=3)
    rng = random.Random(7)
    kills = 0
    log = (tmp_path / "watch.log").open("ab")  # noqa: SIM115 - shared by the subprocesses below
    while kills < 5:
        n0 = sum(1 for _ in out.rglob("*.json")) if out.exists() else 0
        p = subprocess.Popen(watcher_cmd(src, out, led, "--poll", 0.3, "--lease", 30, "--max-attempts", 10),
                             stdout=log, stderr=log)
        # wait until this process is producing results, then kill it at a random moment
        ok = wait_for(lambda n0=n0: sum(1 for _ in out.rglob("*.json")) > n0 if out.exists() else False, 60, 0.02)
        time.sleep(rng.uniform(0.0, 0.1))  # soon: a whole run of 120 clips takes about a second
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        kills += 1
        if not ok:
            break
    assert kills == 5
    done_before = sum(1 for _ in out.rglob("*.json"))
    assert done_before < len(kinds), "the kills should land before the job is finished"
    final = subprocess.run(watcher_cmd(src, out, led, "--once", "--max-attempts", 10), stdout=log, stderr=log,
                           timeout=180)
    assert final.returncode == 0
    assert_exactly_one(kinds, local_results(out), lambda f: (out / f).read_bytes())
    leftovers = [p for p in out.rglob("*") if p.is_file() and not p.name.endswith(".json")]
    assert leftovers == []
    st = status(led)
    assert st["counts"]["pending"] == st["counts"]["leased"] == 0


@pytest.mark.slow
def test_two_processes_share_one_ledger(corpus200, tmp_path, s3):
    """Two watcher processes (2 threads each) on one ledger: every object is classified exactly once."""
    src, kinds = corpus200
    c = s3.client()
    upload_folder(c, "earshot", src, "in/")
    led = tmp_path / "l.sqlite"
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    procs = [subprocess.Popen(watcher_cmd("s3://earshot/in/", "s3://earshot/out/", led, "--once", "--workers", 2),
                              stdout=subprocess.DEVNULL, stderr=lg.open("wb")) for lg in logs]  # noqa: SIM115
    for p, lg in zip(procs, logs):
        assert p.wait(180) == 0, lg.read_text()[-3000:]
    per_proc = []
    for lg in logs:
        events = [json.loads(line) for line in lg.read_text().splitlines() if line.startswith("{")]
        per_proc.append([e["key"] for e in events if e.get("event") in ("done", "failed")])
    processed = per_proc[0] + per_proc[1]
    assert sorted(processed) == sorted(kinds), "each object processed exactly once"
    assert all(per_proc), [len(x) for x in per_proc]
    assert all(it.attempts == 1 for it in SQLiteLedger(led).items())
    assert_exactly_one(kinds, s3_results(c, "earshot", "out/"),
                       lambda f: c.get_object(Bucket="earshot", Key="out/" + f)["Body"].read())


@pytest.mark.slow
def test_s3_server_killed_and_restarted(tmp_path, s3, shared_data):
    """The S3 server dies mid-run (moto is in-memory: it comes back empty, so the test re-creates the bucket and
    re-uploads, as a real outage with durable storage would look). The watcher rides out the connection errors
    without crashing, burns no attempts on them, and completes."""
    src = tmp_path / "src"
    kinds = build_corpus(src, 80, seed=5)
    keys = sorted(kinds)
    first = keys[:50]
    c = s3.client()
    for k in first:
        c.put_object(Bucket="earshot", Key="in/" + k, Body=(src / k).read_bytes())
    out, led = tmp_path / "out", tmp_path / "l.sqlite"
    log = (tmp_path / "watch.log").open("wb")  # noqa: SIM115 - the watcher subprocess writes it
    p = subprocess.Popen(watcher_cmd("s3://earshot/in/", out, led, "--poll", 0.5, "--backoff", 0.2), stdout=log,
                         stderr=log)
    try:
        assert wait_for(lambda: len(local_results(out)) >= 5 if out.exists() else False, 60, 0.02)
        s3.kill()
        time.sleep(3)
        assert p.poll() is None, "watcher must survive the outage"
        s3.start()
        c = s3.client()
        c.create_bucket(Bucket="earshot")
        for k in keys:
            c.put_object(Bucket="earshot", Key="in/" + k, Body=(src / k).read_bytes())
        assert wait_for(lambda: set(local_results(out)) == set(kinds), 90, 0.2), \
            sorted(set(kinds) - set(local_results(out)))[:5]
        assert p.poll() is None
    finally:
        p.send_signal(signal.SIGTERM)
        rc = p.wait(60)
    assert rc == 0
    assert_exactly_one(kinds, local_results(out), lambda f: (out / f).read_bytes())
    text = (tmp_path / "watch.log").read_text()
    assert "unreachable" in text or "scan_error" in text  # the outage was really seen
    items = SQLiteLedger(led).items()
    assert not [i for i in items if i.last_reason == "unreachable" and i.state == "failed"]
