"""earshot watch in the test's process, on local folders and S3 (a real moto server): 200 mixed files, changed
objects, inotify, S3 event notifications, a stop mid-run and a worker lost again and again."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.parse
import urllib.request

from conftest import esc50_clip, free_port
from corpus import assert_exactly_one, build_corpus, local_results, s3_results, upload_folder, wait_for

from earshot.pipeline.ledger import SQLiteLedger
from earshot.pipeline.storage import LocalStore
from earshot.watch import status, watch


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
