"""Find every recording like this one: `earshot index` / `earshot search`, the index format, `/v1/search` and the
page's "More like this", on real ESC-50 clips."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from apiserver import running_server
from chromium import ARTIFACTS
from conftest import esc50_clip

from earshot.search import SearchError, SearchIndex, index_sources, query_embeddings, search
from earshot.search.index import writer_lock

CLASSES = ("crying_baby", "rooster", "sea_waves", "chainsaw", "dog", "rain")
PER_CLASS = 6


def cls(hit_id: str) -> str:
    return hit_id.split("/")[0]


def earshot_cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "earshot.cli", *args], capture_output=True, input=stdin,
                          timeout=120)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """36 ESC-50 clips, six of each of six classes, in a folder per class."""
    root = tmp_path_factory.mktemp("clips")
    for c in CLASSES:
        (root / c).mkdir()
        for i in range(PER_CLASS):
            shutil.copy(esc50_clip(c, i), root / c)
    return root


@pytest.fixture(scope="module")
def built(clips, tmp_path_factory, tagger) -> Path:
    out = tmp_path_factory.mktemp("index") / "esc"
    report = index_sources(str(clips), str(out))
    assert (report.added, report.failed, report.files) == (36, 0, 36)
    return out


def test_a_clip_finds_itself_then_its_class(built, clips, tagger):
    index = SearchIndex.open(built)
    assert index.summary()["dim"] == 384 and index.model == "mn04-as"
    query = sorted((clips / "crying_baby").iterdir())[0]
    hits = search(index, query_embeddings(index, query, tagger), 10)
    assert hits[0].id == f"crying_baby/{query.name}" and hits[0].score >= 0.999, hits[:2]
    assert hits[0].source == str(query)
    assert sum(cls(h.id) == "crying_baby" for h in hits[1:5]) >= 3, hits[:5]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert 0 <= hits[0].start < hits[0].end <= 5.0
    # every clip, searched by its id, comes first; the next four mostly share its class
    same = []
    for fid in index.files:
        hits = search(index, query_embeddings(index, fid), 5)
        assert hits[0].id == fid and hits[0].score >= 0.999
        same.append(sum(cls(h.id) == cls(fid) for h in hits[1:5]) / 4)
    assert np.mean(same) >= 0.7, np.mean(same)


def test_index_again_embeds_only_what_changed(clips, tmp_path, tagger):
    data = tmp_path / "data"
    data.mkdir()
    for c in ("dog", "rain"):
        for i in range(2):
            shutil.copy(esc50_clip(c, i), data / f"{c}{i}.wav")
    (data / "notes.wav").write_text("not audio")
    out = tmp_path / "idx"
    first = index_sources(str(data), str(out))
    assert (first.added, first.failed, first.files) == (4, 1, 4)
    assert first.errors[0]["source"].endswith("notes.wav") and first.errors[0]["reason"] == "unsupported"
    before = {e.id: (e.n, e.first, e.sha256) for e in SearchIndex.open(out).files.values()}

    shutil.copy(esc50_clip("rooster", 0), data / "rooster0.wav")
    shutil.copy(esc50_clip("rooster", 1), data / "rooster1.wav")
    os.utime(data / "dog0.wav", ns=(1, 1))  # touched: same bytes, new mtime
    shutil.copy(esc50_clip("sea_waves", 0), data / "rain1.wav")  # new content under an old name
    again = index_sources(str(data), str(out))
    assert (again.added, again.replaced, again.unchanged, again.failed) == (2, 1, 3, 1)
    index = SearchIndex.open(out)
    assert len(index) == 6 and again.files == 6
    after = {e.id: (e.n, e.first, e.sha256) for e in index.files.values()}
    for fid in ("dog0.wav", "dog1.wav", "rain0.wav"):  # not embedded again: same rows
        assert after[fid] == before[fid]
    assert after["rain1.wav"][1] > max(v[1] for v in before.values())  # new rows for new content
    assert after["rain1.wav"][2] != before["rain1.wav"][2]
    hits = search(index, query_embeddings(index, esc50_clip("rain", 1), tagger), 6)
    assert not any(h.id == "rain1.wav" and h.score > 0.999 for h in hits)  # the old content is gone
    hits = search(index, query_embeddings(index, esc50_clip("sea_waves", 0), tagger), 1)
    assert hits[0].id == "rain1.wav" and hits[0].score >= 0.999

    third = index_sources(str(data), str(out))
    assert (third.added, third.replaced, third.unchanged) == (0, 0, 6)
    (data / "rooster1.wav").unlink()
    pruned = index_sources(str(data), str(out), prune=True)
    assert pruned.removed == 1 and "rooster1.wav" not in SearchIndex.open(out).files
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        ["index.json", *SearchIndex.open(out).meta["data"].values()])  # old data files removed
    with writer_lock(out), pytest.raises(SearchError) as held:  # one writer at a time
        index_sources(str(data), str(out))
    assert held.value.reason == "locked"


def test_replacing_most_files_compacts_the_vectors(tmp_path, tagger):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        shutil.copy(esc50_clip("rain", i), data / f"clip{i}.wav")
    out = tmp_path / "idx"
    index_sources(str(data), str(out))
    before = SearchIndex.open(out).meta["rows"]
    for i in range(3):
        shutil.copy(esc50_clip("chainsaw", i), data / f"clip{i}.wav")
    report = index_sources(str(data), str(out))
    assert report.replaced == 3
    index = SearchIndex.open(out)
    assert index.meta["rows"] == index.meta["live_rows"] == report.windows < before + report.windows
    assert [e.first for e in sorted(index.files.values(), key=lambda e: e.first)][0] == 0
    for i in range(4):
        clip = esc50_clip("chainsaw" if i < 3 else "rain", i)
        hits = search(index, query_embeddings(index, clip, tagger), 2)
        assert hits[0].id == f"clip{i}.wav" and hits[0].score >= 0.999, hits


def test_cli_in_a_fresh_process_matches(built, clips, tagger):
    query = sorted((clips / "rooster").iterdir())[2]
    index = SearchIndex.open(built)
    expected = [h.to_dict() for h in search(index, query_embeddings(index, query, tagger), 5)]
    out = earshot_cli("search", str(built), str(query), "--k", "5", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == expected
    by_id = earshot_cli("search", str(built), f"rooster/{query.name}", "-k", "3", "--format", "jsonl")
    rows = [json.loads(line) for line in by_id.stdout.decode().splitlines()]
    assert [r["id"] for r in rows] == [e["id"] for e in expected[:3]]
    assert set(rows[0]) == {"id", "score", "start", "end", "source"}
    piped = earshot_cli("search", str(built), "-", "-k", "1", stdin=query.read_bytes())
    assert json.loads(piped.stdout)[0]["id"] == f"rooster/{query.name}"
    missing = earshot_cli("search", str(built), "no-such-clip.wav")
    assert missing.returncode == 2 and b"neither a file nor an id" in missing.stderr


def test_cli_index_reports_and_refuses_another_model(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    shutil.copy(esc50_clip("dog"), data / "dog.wav")
    (data / "bad.flac").write_bytes(b"fLaC" + b"\0" * 10)
    out = earshot_cli("index", str(data), "--out", str(tmp_path / "i"))
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert (report["added"], report["failed"]) == (1, 1)
    assert report["windows"] == 1  # one bark, then four seconds of digital silence (left out)
    assert b"bad.flac" in out.stderr
    other = earshot_cli("index", str(data), "--out", str(tmp_path / "i"), "--window", "2")
    assert other.returncode == 2 and b"window" in other.stderr


def test_http_search_plays_hits(built, clips, tmp_path):
    query = sorted((clips / "chainsaw").iterdir())[1]
    with running_server(tmp_path, index=str(built.parent), samples_dir=clips) as base, \
            httpx.Client(base_url=base, timeout=60) as c:
        r = c.post("/v1/search", params={"k": 4}, files={"file": (query.name, query.read_bytes(), "audio/wav")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["index"] == "esc" and body["model"] == "mn04-as" and len(body["results"]) == 4
        top = body["results"][0]
        assert top["id"] == f"chainsaw/{query.name}" and top["score"] >= 0.999
        assert sum(cls(h["id"]) == "chainsaw" for h in body["results"][1:]) >= 2
        played = c.get(top["url"])
        assert played.status_code == 200 and played.content == query.read_bytes()
        raw = c.post("/v1/search", params={"k": 2, "index": "esc"}, content=query.read_bytes())
        assert raw.json()["results"] == body["results"][:2]
        by_id = c.post("/v1/search", params={"id": top["id"], "k": 4})
        assert [h["id"] for h in by_id.json()["results"]] == [h["id"] for h in body["results"]]
        listed = c.get("/v1/indexes").json()
        assert listed["default"] == "esc" and listed["indexes"][0]["files"] == 36
        assert c.post("/v1/search", params={"index": "nope"}, content=query.read_bytes()).status_code == 404
        bad = c.post("/v1/search", content=b"not audio at all")
        assert bad.status_code == 415 and bad.json()["error"]["reason"] == "unsupported"
        assert c.post("/v1/search", params={"k": 0}, content=query.read_bytes()).status_code == 422
        assert "/v1/search" in c.get("/openapi.json").json()["paths"]


def test_index_on_s3(s3, tmp_path, tagger):
    client = s3.client()
    for c in ("dog", "rooster"):
        for i in range(2):
            client.put_object(Bucket="earshot", Key=f"clips/{c}/{i}.wav", Body=esc50_clip(c, i).read_bytes())
    client.put_object(Bucket="earshot", Key="clips/readme.txt", Body=b"not listed")
    first = index_sources("s3://earshot/clips", "s3://earshot/indexes/animals")
    assert (first.added, first.failed, first.files) == (4, 0, 4)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="earshot", Prefix="indexes/")["Contents"]}
    assert "indexes/animals/index.json" in keys and len(keys) == 3
    index = SearchIndex.open("s3://earshot/indexes/animals")
    hits = search(index, query_embeddings(index, esc50_clip("rooster", 1), tagger), 2)
    assert hits[0].id == "rooster/1.wav" and hits[0].source == "s3://earshot/clips/rooster/1.wav"
    client.put_object(Bucket="earshot", Key="clips/rain/0.wav", Body=esc50_clip("rain").read_bytes())
    again = index_sources("s3://earshot/clips", "s3://earshot/indexes/animals")
    assert (again.added, again.unchanged, again.files) == (1, 4, 5)
    out = earshot_cli("search", "s3://earshot/indexes/animals", "s3://earshot/clips/rain/0.wav", "-k", "1")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["id"] == "rain/0.wav"


def test_serving_imports_no_index_library():
    code = ("import sys, earshot.cli, earshot.serve.app; "
            "assert 'faiss' not in sys.modules and 'torch' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_more_like_this_button(browser, built, clips, tmp_path):
    with running_server(tmp_path, index=str(built), samples_dir=clips) as base:
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        page = ctx.new_page()
        page.set_default_timeout(20_000)
        page.goto(base)
        page.wait_for_selector("#gallery-list .chip")
        page.locator("#gallery-list .chip", has_text="1-39901-A-11").first.click()
        page.wait_for_selector("#chart .bar-row")
        page.click("#similar-btn")
        page.wait_for_selector("#similar-list li")
        items = page.locator("#similar-list li")
        assert "sea_waves/1-39901-A-11.wav" in items.first.inner_text()
        assert items.count() >= 5
        page.locator("#similar-list li button.play").first.click()
        page.wait_for_function("document.querySelector('#similar-player').src.startsWith('blob:')")
        page.wait_for_function("document.querySelector('#similar-player').currentTime > 0")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web_similar.png"), full_page=True)
        ctx.close()
