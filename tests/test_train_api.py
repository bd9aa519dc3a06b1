"""Training through the HTTP API: `POST /v1/train` with an uploaded zip or a path on the server, jobs that end
succeeded or failed (and survive a restart), and the trained bundle served at once."""

from __future__ import annotations

import io
import zipfile

import httpx
import pytest
from apiserver import HAS_TRAIN, class_zip, running_server, wait_job
from conftest import DATA, esc50_clip


def test_train_upload_checks(tmp_path):
    root = tmp_path / "allowed"
    root.mkdir()
    with (
        running_server(tmp_path, train_roots=[root], max_train_upload_mb=2) as base,
        httpx.Client(base_url=base, timeout=30) as c,
    ):
        r = c.post("/v1/train", files={"file": ("data.zip", b"not an archive")})
        assert r.status_code == 415 and r.json()["error"]["reason"] == "unsupported"
        evil = io.BytesIO()
        with zipfile.ZipFile(evil, "w") as z:
            z.writestr("dog/ok.wav", esc50_clip("dog").read_bytes())
            z.writestr("../../escaped.wav", b"RIFF")
        r = c.post("/v1/train", files={"file": ("evil.zip", evil.getvalue())})
        assert r.status_code == 400 and r.json()["error"]["reason"] == "unsafe_archive"
        assert not list(tmp_path.rglob("escaped.wav"))
        r = c.post("/v1/train", files={"file": ("big.zip", b"PK\x03\x04" + b"\0" * (3 << 20))})
        assert r.status_code == 413
        r = c.post("/v1/train", files={"file": ("d.zip", class_zip(1))}, data={"name": "mn04-as"})
        assert r.status_code == 409
        r = c.post("/v1/train", files={"file": ("d.zip", class_zip(1))}, data={"name": "../x"})
        assert r.status_code == 422
        assert c.post("/v1/train", json={"path": "/etc"}).status_code == 403
        assert c.post("/v1/train", json={"path": str(root / ".." / "x")}).status_code == 403
        assert c.post("/v1/train", json={"path": str(root / "missing")}).status_code == 404
        assert c.get("/v1/jobs/nope").status_code == 404
        assert c.get("/v1/jobs").json()["jobs"] == []


def test_jobs_survive_restart_and_failures_end_failed(tmp_path):
    from earshot.serve import schemas
    from earshot.serve.jobs import JobStore

    state = tmp_path / "state"
    store = JobStore(state / "jobs.sqlite3")
    running = store.create("was-running", str(tmp_path / "gone"), "path", {})
    store.start(running["id"])
    queued = store.create("was-queued", str(tmp_path / "gone"), "path", {})
    store.close()
    with running_server(tmp_path, state_dir=state) as base, httpx.Client(base_url=base) as c:
        job = c.get(f"/v1/jobs/{running['id']}").json()
        assert job["status"] == "failed" and job["error"]["message"] == "interrupted by restart"
        job = wait_job(c, queued["id"], timeout=60)  # re-queued, and its data set is missing: must end failed
        assert job["status"] == "failed" and job["error"]["message"] and job["timings"]["run_s"] is not None
        assert {j["id"] for j in c.get("/v1/jobs").json()["jobs"]} == {running["id"], queued["id"]}
        schemas.JobList.model_validate(c.get("/v1/jobs").json())  # the documented shape


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRAIN, reason="earshot.train is not importable yet (training issue in progress)")
def test_train_job_end_to_end(tmp_path):
    with running_server(tmp_path) as base, httpx.Client(base_url=base, timeout=60) as c:
        assert "dogs-vs-roosters" not in {m["name"] for m in c.get("/v1/models").json()["models"]}
        r = c.post("/v1/train", files={"file": ("animals.zip", class_zip(8))}, data={"name": "dogs-vs-roosters"})
        assert r.status_code == 202, r.text
        assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
        job = wait_job(c, r.json()["id"], timeout=180)
        assert job["status"] == "succeeded", job
        assert job["model"] == "dogs-vs-roosters" and job["timings"]["run_s"] > 0
        names = {m["name"] for m in c.get("/v1/models").json()["models"]}
        assert "dogs-vs-roosters" in names  # without a restart
        card = c.get("/v1/models/dogs-vs-roosters").json()
        assert sorted(card["labels"]) == ["dog", "rooster"]
        r = c.post(
            "/v1/predict",
            params={"model": "dogs-vs-roosters"},
            files={"file": ("r.wav", esc50_clip("rooster", 9).read_bytes())},
        )
        assert r.status_code == 200 and r.json()["labels"][0] == "rooster", r.text
        assert not (tmp_path / "state" / "jobs" / job["id"] / "data").exists()  # upload cleaned up


@pytest.mark.slow
def test_train_job_from_keywords_alone(tmp_path):
    """`POST /v1/train` with a JSON body of `words` and no `path`: a keyword model from synthetic voices alone,
    trained as a job, served at once; its card says so and a real speaker's word is classified by it."""
    from earshot.training import synthesis

    if not synthesis.available_engines():
        pytest.fail("needs a speech synthesiser (.ci/run installs espeak-ng, flite and festival)")
    with running_server(tmp_path) as base, httpx.Client(base_url=base, timeout=60) as c:
        bad = c.post("/v1/train", json={"words": "one,three", "synth_per_label": 0})
        assert bad.status_code == 422 and "synth_per_label" in bad.json()["error"]["message"]
        assert c.post("/v1/train", json={"name": "kw"}).status_code == 400  # neither path nor words
        r = c.post("/v1/train", json={"words": "one,three", "synth_per_label": 12, "epochs": 2})
        assert r.status_code == 202, r.text
        assert r.json()["name"] == "keywords" and r.json()["data_source"] == "words"
        job = wait_job(c, r.json()["id"], timeout=300)
        assert job["status"] == "succeeded", job
        card = c.get("/v1/models/keywords").json()
        assert card["labels"] == ["_silence_", "_unknown_", "one", "three"]
        assert card["background_labels"] == ["_silence_", "_unknown_"]
        assert card["data"]["layout"] == "words" and card["data"]["synthetic"]["per_label"] == {"one": 12, "three": 12}
        unknown = card["data"]["synthetic"]["unknown"]  # as many everyday words as a keyword's takes, once each
        assert len(unknown["words"]) == 12 and unknown["n"] == 12
        take = DATA / "fsdd" / "recordings" / "3_theo_0.wav"
        r = c.post("/v1/predict", params={"model": "keywords"}, files={"file": (take.name, take.read_bytes())})
        assert r.status_code == 200 and r.json()["labels"][0] in card["labels"], r.text
