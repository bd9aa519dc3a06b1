"""earshot watch: stores, ledger, and the exactly-one-result contract under crashes, races and outages."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import esc50_clip
from s3server import (
    assert_exactly_one,
    build_corpus,
    free_port,
    list_results,
    local_results,
    s3_fixture,  # noqa: F401  (provides the `s3` fixture)
    upload_folder,
    watcher_cmd,
)

from earshot.errors import StorageError
from earshot.pipeline.ledger import SQLiteLedger
from earshot.pipeline.storage import LocalStore, S3Store, open_store, safe_key
from earshot.watch import status, watch

# ------------------------------------------------------------------------------------------------ helpers


def s3_results(client, bucket: str, prefix: str) -> dict[str, list[str]]:
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"][len(prefix) :] for o in page.get("Contents", [])]
    return list_results(keys)


def wait_for(cond, timeout: float, step: float = 0.1) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


@pytest.fixture(scope="module")
def corpus200(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("corpus200")
    return root, build_corpus(root, 200)


# ------------------------------------------------------------------------------------------------ unit


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a\\..\\b", "a//b", "./a", "C:evil", "a\x00b",
                                 "", "a/.", ".."])
def test_unsafe_keys_rejected(key, tmp_path):
    with pytest.raises(StorageError) as e:
        safe_key(key)
    assert e.value.reason == "unsafe_key"
    with pytest.raises(StorageError):
        LocalStore(tmp_path).put_atomic(key, b"x")
    assert list(tmp_path.parent.glob("x")) == [] and not (tmp_path.parent / "evil").exists()


def test_local_store_keys_and_symlink_escape(tmp_path):
    store = LocalStore(tmp_path / "root", create=True)
    key = "dir with space/été 深い.wav.json"
    store.put_atomic(key, b"{}")
    assert [o.key for o in store.list()] == [key]
    assert store.get(key) == b"{}"
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.root / "link").symlink_to(outside, target_is_directory=True)
    for key in ("link/x.json", "link/new folder/x.json"):  # also through folders not created yet
        with pytest.raises(StorageError):
            store.put_atomic(key, b"{}")
    assert not list(outside.iterdir())
    assert isinstance(open_store("s3://b/some/prefix"), S3Store)
    assert open_store("s3://b/some/prefix").prefix == "some/prefix/"


# ------------------------------------------------------------------------------------------------ end to end


def test_watch_local_200(corpus200, tmp_path, tagger):
    src, kinds = corpus200
    out = tmp_path / "out"
    res = watch(src, out, model=tagger, once=True, workers=2, ledger=tmp_path / "l.sqlite")
    assert res["counts"]["done"] == sum(k == "ok" for k in kinds.values())
    assert_exactly_one(kinds, local_results(out), lambda f: (out / f).read_bytes())
    st = status(tmp_path / "l.sqlite")
    assert st["counts"]["pending"] == 0 and st["counts"]["failed"] == len(kinds) - res["counts"]["done"]
    assert {e["reason"] for e in st["top_errors"]} == {"empty", "unsupported", "truncated"}
    # Second run: nothing to do, nothing rewritten.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}
    res2 = watch(src, out, model=tagger, once=True, ledger=tmp_path / "l.sqlite")
    assert res2["counts"]["done"] == 0 and {p: p.stat().st_mtime_ns for p in out.rglob("*.json")} == before


def test_watch_s3_200(corpus200, tmp_path, tagger, s3):
    src, kinds = corpus200
    c = s3.client()
    upload_folder(c, "earshot", src, "in/")
    res = watch("s3://earshot/in", "s3://earshot/results/", model=tagger, once=True, workers=2,
                ledger=tmp_path / "l.sqlite")
    assert res["counts"]["done"] == sum(k == "ok" for k in kinds.values())
    results = s3_results(c, "earshot", "results/")
    assert_exactly_one(kinds, results,
                       lambda f: c.get_object(Bucket="earshot", Key="results/" + f)["Body"].read())


def test_output_inside_source_is_not_reprocessed(tmp_path, tagger):
    src = tmp_path / "src"
    kinds = build_corpus(src, 12, n_bad=1)
    res = watch(src, src / "results", model=tagger, once=True, ledger=tmp_path / "l.sqlite")
    assert res["counts"]["done"] + res["counts"]["failed"] == 12
    assert_exactly_one(kinds, local_results(src / "results"), lambda f: (src / "results" / f).read_bytes())


def test_changed_object_reprocessed_s3(tmp_path, tagger, s3, shared_data):
    from conftest import esc50_clip

    c = s3.client()
    key = "in/changing file é.wav"
    led = tmp_path / "l.sqlite"

    def run():
        watch("s3://earshot/in/", "s3://earshot/out/", model=tagger, once=True, ledger=led)
        return s3_results(c, "earshot", "out/")

    c.put_object(Bucket="earshot", Key=key, Body=esc50_clip("dog").read_bytes())
    r = run()
    assert r == {"changing file é.wav": ["changing file é.wav.json"]}
    first = json.loads(c.get_object(Bucket="earshot", Key="out/changing file é.wav.json")["Body"].read())
    c.put_object(Bucket="earshot", Key=key, Body=b"now it is text, not audio")
    assert run() == {"changing file é.wav": ["changing file é.wav.error.json"]}
    c.put_object(Bucket="earshot", Key=key, Body=esc50_clip("rooster").read_bytes())
    assert run() == {"changing file é.wav": ["changing file é.wav.json"]}
    second = json.loads(c.get_object(Bucket="earshot", Key="out/changing file é.wav.json")["Body"].read())
    assert first["labels"] != second["labels"]


def test_watch_local_inotify_and_change(tmp_path, tagger, shared_data):
    """A running watcher picks up new and rewritten files (watchdog when installed, else polling)."""
    from conftest import esc50_clip

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    stop = threading.Event()
    ready = threading.Event()
    info = {}
    t = threading.Thread(target=watch, args=(src, out), daemon=True, kwargs=dict(
        model=tagger, ledger=tmp_path / "l.sqlite", poll=0.5, scan_interval=30, settle=0.3, stop_event=stop,
        on_ready=lambda i: (info.update(i), ready.set())))
    t.start()
    assert ready.wait(30)
    shutil.copyfile(esc50_clip("dog"), src / "new dog.wav")
    assert wait_for(lambda: (out / "new dog.wav.json").exists(), 20)
    dog = json.loads((out / "new dog.wav.json").read_text())
    time.sleep(0.05)
    (src / "new dog.wav").write_bytes(b"")
    assert wait_for(lambda: (out / "new dog.wav.error.json").exists(), 20)
    assert wait_for(lambda: not (out / "new dog.wav.json").exists(), 5)
    stop.set()
    t.join(30)
    assert dog["error"] is None and "Dog" in dog["labels"][:3]
    assert local_results(out) == {"new dog.wav": ["new dog.wav.error.json"]}


def test_s3_event_endpoint(tmp_path, tagger, s3, shared_data):
    """S3 event notifications (url-encoded keys) enqueue work without waiting for the next listing."""
    from conftest import esc50_clip

    c = s3.client()
    port = free_port()
    stop = threading.Event()
    ready = threading.Event()
    t = threading.Thread(target=watch, args=("s3://earshot/in/", "s3://earshot/out/"), daemon=True, kwargs=dict(
        model=tagger, ledger=tmp_path / "l.sqlite", poll=3600, stop_event=stop, http=f"127.0.0.1:{port}",
        on_ready=lambda i: ready.set()))
    t.start()
    assert ready.wait(30)
    time.sleep(0.5)  # the first listing (empty) is done
    key = "in/event dir/猫 + dog.wav"
    r = c.put_object(Bucket="earshot", Key=key, Body=esc50_clip("cat").read_bytes())
    event = {"Records": [
        {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "earshot"},
                                                  "object": {"key": urllib.parse.quote_plus(key), "eTag": r["ETag"]}}},
        {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "other"}, "object": {"key": "in/x.wav"}}},
        {"eventName": "ObjectRemoved:Delete", "s3": {"bucket": {"name": "earshot"}, "object": {"key": "in/y.wav"}}},
    ]}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/events", data=json.dumps(event).encode(),
                                 headers={"Content-Type": "application/json"})
    assert json.loads(urllib.request.urlopen(req, timeout=10).read()) == {"queued": 1}
    assert wait_for(lambda: s3_results(c, "earshot", "out/") == {"event dir/猫 + dog.wav": [
        "event dir/猫 + dog.wav.json"]}, 20)

    def served_status() -> dict:
        return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10).read())

    assert wait_for(lambda: served_status()["counts"]["done"] == 1, 5)  # marked done right after the write
    stop.set()
    t.join(30)


def test_stop_mid_run_leaves_nothing_leased(tmp_path, tagger, shared_data):
    """Stopping a watcher lets in-flight items finish (result written, then recorded) and gives claimed but
    unstarted items back with their attempt refunded: nothing stays leased, nothing is half done."""

    class Slow:
        name = tagger.name

        def predict(self, data, **kw):
            time.sleep(0.3)
            return tagger.predict(data, **kw)

    src, out, led = tmp_path / "src", tmp_path / "out", tmp_path / "l.sqlite"
    build_corpus(src, 24, n_bad=0)
    stop = threading.Event()
    t = threading.Thread(target=watch, args=(src, out), daemon=True, kwargs=dict(
        model=Slow(), workers=3, ledger=led, poll=0.2, settle=0, stop_event=stop, use_watchdog=False))
    t.start()
    assert wait_for(lambda: out.exists() and any(out.rglob("*.json")), 30, 0.02)
    stop.set()
    t.join(30)
    items = SQLiteLedger(led).items()
    done = {i.key for i in items if i.state == "done"}
    assert 0 < len(done) < 24 and {i.state for i in items} == {"done", "pending"}
    assert all(i.attempts == 0 for i in items if i.state == "pending")
    assert set(local_results(out)) == done


def test_worker_lost_repeatedly_gets_error_record(tmp_path, tagger, shared_data):
    """An object whose workers keep dying (lease runs out each time) ends with an error record, not a loop."""
    from conftest import esc50_clip

    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(esc50_clip("dog"), src / "poison.wav")
    led = SQLiteLedger(tmp_path / "l.sqlite")
    store, out = LocalStore(src), LocalStore(tmp_path / "out", create=True)
    led.sync(store.url, out.url, [(o.key, o.version, o.size) for o in store.list()])
    for i in range(3):  # three workers on another host claimed it and vanished
        assert led.claim(store.url, out.url, f"otherhost:{i}:1", lease=0.01).attempts == i + 1
        time.sleep(0.02)
    watch(src, out.root, model=tagger, once=True, ledger=led, max_attempts=3)
    doc = json.loads((out.root / "poison.wav.error.json").read_text())
    assert doc["reason"] == "worker_lost" and doc["attempts"] == 3 and doc["labels"] == []
    assert not (out.root / "poison.wav.json").exists()


# ------------------------------------------------------------------------------------------------ processes


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


def test_model_bundle_loads_from_s3(tagger, s3, tmp_path, monkeypatch):
    """A bundle uploaded to a bucket prefix serves like a local one; a changed card is fetched again."""
    import earshot

    monkeypatch.setenv("EARSHOT_HOME", str(tmp_path / "home"))
    c = s3.client()
    card = dict(tagger.card, name="remote-tagger")
    for f in tagger.bundle.path.glob("*.onnx"):  # every graph of the bundle, as `aws s3 sync` would copy them
        c.put_object(Bucket="earshot", Key=f"models/tagger/{f.name}", Body=f.read_bytes())
    c.put_object(Bucket="earshot", Key="models/tagger/card.json", Body=json.dumps(card).encode())
    clip = esc50_clip("dog")
    remote = earshot.load("s3://earshot/models/tagger")
    assert set(remote.graphs) == set(tagger.graphs)
    p, ref = remote.predict(clip, top_k=3), tagger.predict(clip, top_k=3)
    assert p.model == "remote-tagger" and p.labels == ref.labels and p.probabilities == ref.probabilities
    c.put_object(Bucket="earshot", Key="models/tagger/card.json",
                 Body=json.dumps(dict(card, name="remote-tagger-2")).encode())
    assert earshot.load("s3://earshot/models/tagger").name == "remote-tagger-2"
    with pytest.raises(earshot.StorageError) as e:
        earshot.load("s3://earshot/models/nothing-here")
    assert e.value.reason == "not_found"
