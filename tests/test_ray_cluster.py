"""`earshot batch --engine ray --address HOST:PORT` on a real two-node Ray cluster (two `ray start` processes on
this machine): 600 objects from the test S3 server, an actor process killed with SIGKILL mid-run, and still
exactly one result or error record per object, resumable on the same ledger."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from conftest import DATA
from corpus import BAD_KINDS, assert_exactly_one, list_results
from raycluster import RayCluster, running
from s3server import S3_ENV

from earshot.pipeline.ledger import SQLiteLedger

pytest.importorskip("ray.data")


def small_corpus(n: int, n_bad: int, seed: int = 0) -> dict[str, bytes]:
    """{key: file bytes}: 1 s WAV cuts of real ESC-50 clips under keys with spaces and unicode, plus `n_bad`
    undecodable files (empty, text, truncated)."""
    rng = np.random.default_rng(seed)
    clips = sorted((DATA / "esc50" / "audio").glob("*.wav"))[:40]
    waves = [sf.read(c, dtype="int16") for c in clips]
    out: dict[str, bytes] = {}
    for i in range(n):
        folder = ("", "a/", "b c/", "été/")[i % 4]
        if i < n_bad:
            kind = BAD_KINDS[i % len(BAD_KINDS)]
            out[f"{folder}bad {kind} {i:03d}.wav"] = {"empty": b"", "text": b"not audio\n" * 30}.get(kind, b"RIFF")
            continue
        y, sr = waves[int(rng.integers(len(waves)))]
        start = int(rng.integers(0, len(y) - sr))
        buf = io.BytesIO()
        sf.write(buf, y[start : start + sr], sr, format="WAV", subtype="PCM_16")
        out[f"{folder}clip {i:03d}.wav"] = buf.getvalue()
    return out


@pytest.fixture
def cluster(tmp_path, s3):
    """A head node and a second node, one CPU each, started with the S3 credentials in their environment."""
    c = RayCluster(tmp_path, env={**S3_ENV, "AWS_ENDPOINT_URL": s3.url})
    pids: list[int] = []
    try:
        c.start([1, 1])
        pids = c.node_pids(0) + c.node_pids(1)
        yield c
    finally:
        pids += c.node_pids(0) + c.node_pids(1) if len(c.nodes) == 2 else []
        c.stop()
    left = [p for p in set(pids) if running(p)]
    assert not left, f"processes of the test cluster left running: {left}"


@pytest.mark.slow
def test_batch_on_a_two_node_cluster_survives_a_killed_worker(tmp_path, s3, cluster):
    c = s3.client()
    corpus = small_corpus(600, n_bad=12)
    for key, data in corpus.items():
        c.put_object(Bucket="earshot", Key="in/" + key, Body=data)
    names = {k: k.rsplit("/", 1)[-1] for k in corpus}
    kinds = {k: (n.split()[1] if n.startswith("bad ") else "ok") for k, n in names.items()}
    led = tmp_path / "ledger.sqlite"
    cmd = [sys.executable, "-m", "earshot.cli", "batch", "s3://earshot/in/", "--output", "s3://earshot/out/",
           "--engine", "ray", "--address", cluster.address, "--ledger", str(led), "--quiet"]
    log = (tmp_path / "driver.log").open("wb")
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=cluster.env)

    def results() -> dict[str, list[str]]:
        pages = c.get_paginator("list_objects_v2").paginate(Bucket="earshot", Prefix="out/")
        return list_results([o["Key"][4:] for p in pages for o in p.get("Contents", [])])

    killed = None
    deadline = time.time() + 120
    while killed is None and time.time() < deadline and driver.poll() is None:
        actors = cluster.actor_pids(1) or cluster.actor_pids(0)
        if actors and len(results()) >= 60:
            before = set(cluster.actor_pids(0) + cluster.actor_pids(1))
            killed = actors[0]
            at_kill = len(results())
            subprocess.run(["kill", "-9", str(killed)], check=True)
        else:
            time.sleep(0.2)
    assert killed is not None, "no actor process was seen running"
    assert at_kill < len(corpus), "the run was over before the kill"
    restarted = False
    while not restarted and driver.poll() is None:  # Ray starts a new actor process for the killed one
        restarted = bool(set(cluster.actor_pids(0) + cluster.actor_pids(1)) - before)
        time.sleep(0.1)
    assert restarted, "the killed actor was not replaced before the run ended"
    out, _ = driver.communicate(timeout=180)
    log.close()
    assert driver.returncode == 1, (tmp_path / "driver.log").read_text()[-3000:]  # the bad files failed
    summary = json.loads(out.decode()[out.decode().index("{"):])
    assert (summary["done"], summary["failed"], summary["skipped"]) == (len(corpus) - 12, 12, 0)

    def read(name: str) -> bytes:
        return c.get_object(Bucket="earshot", Key="out/" + name)["Body"].read()

    assert_exactly_one(kinds, results(), read)
    assert all(i.state in ("done", "failed") for i in SQLiteLedger(led).items())
    assert killed not in cluster.actor_pids(0) + cluster.actor_pids(1)

    again = subprocess.run(cmd, capture_output=True, env=cluster.env, timeout=120)
    summary = json.loads(again.stdout.decode()[again.stdout.decode().index("{"):])
    assert (summary["done"], summary["failed"], summary["skipped"]) == (0, 0, len(corpus))

    # One results file instead (the records travel back to the driver): a folder of the source, a new ledger.
    sub = {k[2:]: v for k, v in kinds.items() if k.startswith("a/")}
    jsonl = subprocess.run([*cmd[:4], "s3://earshot/in/a/", "--output", "s3://earshot/report.jsonl", "--format",
                            "jsonl", *cmd[7:11], "--ledger", str(tmp_path / "jsonl.sqlite"), "--quiet"],
                           capture_output=True, env=cluster.env, timeout=120)
    assert jsonl.returncode == 1, jsonl.stderr.decode()[-3000:]
    lines = c.get_object(Bucket="earshot", Key="report.jsonl")["Body"].read().decode().splitlines()
    docs = {d["title"]: d for d in map(json.loads, lines)}
    assert len(lines) == len(docs) == len(sub)
    assert {t: (d["error"] is None) for t, d in docs.items()} == {k: v == "ok" for k, v in sub.items()}



def test_exposures_single_out_a_key_that_keeps_killing_actors():
    """The bookkeeping behind it (a plain class; Ray runs it as an actor): a batch's keys are opened and closed;
    keys left open by a dead actor come back as exposed, are then opened one at a time, and a key that dies with
    its actor `max_attempts` times is the only one to reach that count."""
    from earshot.pipeline.ray_engine import Exposures

    e = Exposures()
    batch = ["a", "b", "c"]
    assert e.begin(batch, True) == [0, 0, 0]
    e.end(batch)
    assert e.begin(batch, True) == [0, 0, 0]  # closed keys start fresh
    # The actor dies mid-batch: the retried batch finds all three exposed once, and opens none of them.
    assert e.begin(batch, True) == [1, 1, 1]
    for key in ("a", "b"):  # one at a time: a and b succeed
        assert e.begin([key], False) == [1]
        e.end([key])
    for dies in range(1, 3):  # c kills its actor each time it runs alone
        assert e.begin(["c"], False) == [dies]
    assert e.begin(batch, True) == [0, 0, 3]  # c is now at max_attempts=3: a worker_lost record, not a 4th try
