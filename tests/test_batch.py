"""earshot batch: one pass over a folder or bucket, resumable on its ledger, json or jsonl, local or Ray."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
from corpus import build_corpus, local_results, upload_folder

from earshot.batch import RAY_HINT, batch
from earshot.pipeline.ledger import SQLiteLedger


@pytest.fixture(scope="module")
def corpus60(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus60")
    return root, build_corpus(root, 60, seed=11)


def test_batch_local_json_then_skip(corpus60, tmp_path, tagger):
    src, kinds = corpus60
    out, led = tmp_path / "out", tmp_path / "l.sqlite"
    n_ok = sum(k == "ok" for k in kinds.values())
    s = batch(src, out, model=tagger, workers=2, ledger=led, progress=False)
    assert (s["done"], s["failed"], s["skipped"], s["total"]) == (n_ok, len(kinds) - n_ok, 0, len(kinds))
    res = local_results(out)
    assert set(res) == set(kinds) and all(len(v) == 1 for v in res.values())
    for key, kind in kinds.items():
        doc = json.loads((out / res[key][0]).read_text())
        assert (doc["error"] is None) == (kind == "ok") and doc["title"] == key
    again = batch(src, out, model=tagger, ledger=led, progress=False)
    assert (again["done"], again["failed"], again["skipped"]) == (0, 0, len(kinds))


def test_batch_s3_jsonl(corpus60, tmp_path, tagger, s3):
    src, kinds = corpus60
    c = s3.client()
    upload_folder(c, "earshot", src, "audio/")
    s = batch("s3://earshot/audio/", "s3://earshot/reports/run1.jsonl", model=tagger, workers=2, fmt="jsonl",
              ledger=tmp_path / "l.sqlite", progress=True)
    assert s["done"] + s["failed"] == len(kinds) and s["lines"] == len(kinds)
    body = c.get_object(Bucket="earshot", Key="reports/run1.jsonl")["Body"].read().decode()
    rows = [json.loads(line) for line in body.splitlines()]
    assert sorted(r["title"] for r in rows) == sorted(kinds)
    for r in rows:
        assert (r["error"] is None) == (kinds[r["title"]] == "ok")
    keys = [o["Key"] for o in c.list_objects_v2(Bucket="earshot", Prefix="reports/").get("Contents", [])]
    assert keys == ["reports/run1.jsonl"]  # no per-object files in jsonl mode


@pytest.mark.slow
def test_batch_resumes_after_kill9(tmp_path, shared_data):
    """A batch killed mid-run resumes on its ledger: finished objects are skipped, none is lost or doubled."""
    src, out, led = tmp_path / "src", tmp_path / "out", tmp_path / "l.sqlite"
    kinds = build_corpus(src, 150, seed=2)
    code = ("import sys, json; from earshot.batch import batch; "
            "print(json.dumps(batch(sys.argv[1], sys.argv[2], ledger=sys.argv[3], progress=False)))")
    p = subprocess.Popen([sys.executable, "-c", code, str(src), str(out), str(led)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and (not out.exists() or sum(1 for _ in out.rglob("*.json")) < 20):
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    first = sum(1 for _ in out.rglob("*.json"))
    assert 0 < first < len(kinds)
    r = subprocess.run([sys.executable, "-c", code, str(src), str(out), str(led)], capture_output=True, timeout=180)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    s = json.loads(r.stdout.decode().strip().splitlines()[-1])
    # Results written within the last ledger tick (stored, not yet marked done) are redone, under the same key.
    assert s["skipped"] >= first - 12
    assert s["skipped"] + s["done"] + s["failed"] == len(kinds)
    res = local_results(out)
    assert set(res) == set(kinds) and all(len(v) == 1 for v in res.values())
    assert all(json.loads((out / v[0]).read_text())["title"] == k for k, v in res.items())
    assert all(i.state in ("done", "failed") for i in SQLiteLedger(led).items())


def test_ray_engine_missing_names_the_extra(tmp_path):
    """Without Ray installed (simulated by blocking the import in a fresh interpreter) the error names the extra."""
    code = ("import sys; sys.modules['ray'] = None\n"
            "from earshot.batch import batch\n"
            "try:\n    batch(sys.argv[1], sys.argv[1] + '/out', engine='ray', progress=False)\n"
            "except ImportError as e:\n    print('ERR', e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert f"ERR {RAY_HINT}" in r.stdout, r.stderr[-2000:]
    assert "pip install 'earshot[ray]'" in RAY_HINT


@pytest.mark.slow
def test_ray_engine_local_cluster(tmp_path, tagger, s3):
    """engine="ray" on a 2-CPU local Ray cluster: one Classifier per actor, results as with the local engine."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    src = tmp_path / "src"
    kinds = build_corpus(src, 24, seed=4, n_bad=3)
    c = s3.client()
    upload_folder(c, "earshot", src, "in/")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        s = batch("s3://earshot/in/", tmp_path / "out", model="mn04-as", workers=2, engine="ray",
                  ledger=tmp_path / "l.sqlite", progress=False)
        s2 = batch("s3://earshot/in/", tmp_path / "out", model="mn04-as", workers=2, engine="ray",
                   ledger=tmp_path / "l.sqlite", progress=False)
    finally:
        ray.shutdown()
    assert (s["done"], s["failed"]) == (21, 3) and s2["skipped"] == 24
    res = local_results(tmp_path / "out")
    assert set(res) == set(kinds) and all(len(v) == 1 for v in res.values())
    assert all(v[0].endswith(".error.json") == (kinds[k] != "ok") for k, v in res.items())


def test_ray_engine_keeps_a_bundle_loaded_from_a_path(tmp_path, shared_data):
    """engine="ray" given a Classifier loaded from a bundle directory whose name is in no registry: the actors
    load that bundle (its name is on every result), not a registry model of the same name."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    import earshot
    from earshot.models import resolve

    bundle = tmp_path / "my bundle"
    shutil.copytree(resolve("mn04-as"), bundle)
    card = json.loads((bundle / "card.json").read_text())
    card["name"] = "my-own-tagger"
    (bundle / "card.json").write_text(json.dumps(card))
    clf = earshot.load(bundle)
    assert clf.name == "my-own-tagger"
    src = tmp_path / "src"
    src.mkdir()
    for clip in sorted((shared_data / "esc50" / "audio").glob("*.wav"))[:4]:
        shutil.copyfile(clip, src / clip.name)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        s = batch(src, tmp_path / "out", model=clf, workers=1, engine="ray", ledger=tmp_path / "l.sqlite",
                  progress=False)
    finally:
        ray.shutdown()
    assert (s["done"], s["failed"]) == (4, 0)
    docs = [json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("*.json"))]
    assert len(docs) == 4 and all(d["error"] is None and d["model"] == "my-own-tagger" for d in docs)


def test_results_follow_the_umask(tmp_path, shared_data):
    """Result files and folders are readable as the process umask allows (not mkstemp's 0600), and so are
    bundle cards."""
    src = tmp_path / "in" / "sub"
    src.mkdir(parents=True)
    for f in sorted((shared_data / "esc50" / "audio").glob("*.wav"))[:3]:
        shutil.copy(f, src / f.name)
    (src / "bad.wav").write_bytes(b"RIFF....WAVEfmt ")
    code = (
        "import os, sys; os.umask(0o027)\n"
        "from pathlib import Path\n"
        "from earshot.batch import batch\n"
        "from earshot.bundle import write_json_atomic\n"
        "batch(sys.argv[1], sys.argv[2], workers=1, ledger=sys.argv[3], progress=False)\n"
        "write_json_atomic(Path(sys.argv[2]) / 'card.json', {'a': 1})\n"
    )
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "in"), str(out), str(tmp_path / "l.sqlite")],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(files) == 5 and any(p.name.endswith(".error.json") for p in files)
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o640)}
    assert {oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_dir()} == {oct(0o750)}
