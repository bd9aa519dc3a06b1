"""The HTTP server end to end: a real uvicorn on 127.0.0.1, real clips, httpx as the client."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from apiserver import running_server
from conftest import DATA, esc50_clip

from earshot.serve import Settings


def wav_bytes(seconds: float) -> bytes:
    """A WAV of real dog clips from ESC-50 concatenated to about `seconds`."""
    clips = [sf.read(esc50_clip("dog", i), dtype="float32")[0] for i in range(max(1, int(np.ceil(seconds / 5))))]
    buf = io.BytesIO()
    sf.write(buf, np.concatenate(clips), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def failure_shape(body: dict, reason: str | None = None) -> None:
    assert body["labels"] == []
    assert set(body["error"]) >= {"type", "reason", "message"}
    if reason:
        assert body["error"]["reason"] == reason, body


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("samples")
    for cat in ("dog", "rooster", "rain"):
        shutil.copy(esc50_clip(cat), root / f"{cat}.wav")
    (root / "notes.txt").write_text("not audio")
    (root / "outside.wav").symlink_to(esc50_clip("crow"))  # a link out of the root is neither listed nor served
    return root


@pytest.fixture(scope="module")
def base(tmp_path_factory, samples) -> str:
    with running_server(tmp_path_factory.mktemp("srv"), samples_dir=samples, max_upload_mb=1) as url:
        yield url


@pytest.fixture(scope="module")
def client(base):
    with httpx.Client(base_url=base, timeout=60) as c:
        yield c


DOG = esc50_clip("dog")


def test_predict_multipart_and_raw(client):
    r = client.post("/v1/predict", files={"file": (DOG.name, DOG.read_bytes(), "audio/wav")}, params={"top_k": 3})
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["title"] == DOG.name and p["model"] == "mn04-as" and p["error"] is None
    assert len(p["labels"]) == 3 == len(p["probabilities"]) == len(p["labels_info"])
    assert "Dog" in p["labels"] and "/m/0bt9lr" in p["labels_info"]
    assert p["duration"] == pytest.approx(5.0, abs=0.01)
    r = client.post("/v1/predict", content=DOG.read_bytes(), params={"title": "raw.wav"})
    assert r.status_code == 200 and r.json()["title"] == "raw.wav" and r.json()["labels"]


def test_predict_timeline_and_spectrogram(client):
    r = client.post(
        "/v1/predict",
        files={"file": ("dog.wav", DOG.read_bytes())},
        params={"timeline": "true", "window": 1.0, "hop": 0.5, "spectrogram": "true"},
    )
    p = r.json()
    assert r.status_code == 200, r.text
    assert p["segments"] and p["segments"][0]["start"] == 0.0
    assert any(e["label"] == "Dog" for e in p["events"])
    assert p["spectrogram"].startswith("data:image/png;base64,")
    assert base64.b64decode(p["spectrogram"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    r = client.post("/v1/spectrogram", content=DOG.read_bytes())
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"", 400, "empty"),
        (b"just some text, not audio at all\n" * 10, 415, "unsupported"),
        (DOG.read_bytes()[:300], 422, "truncated"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 100, 415, "unsupported"),
    ],
    ids=["empty", "text", "truncated-wav", "png"],
)
def test_bad_uploads_are_4xx_json(client, body, status, reason):
    r = client.post("/v1/predict", files={"file": ("clip.wav", body, "audio/wav")})
    assert r.status_code == status, r.text
    failure_shape(r.json(), reason)
    assert r.json()["title"] == "clip.wav"
    assert client.get("/healthz").status_code == 200  # still serving


def test_oversize_is_413_while_streaming(client):
    big = b"RIFF" + b"\0" * (2 << 20)
    r = client.post("/v1/predict", files={"file": ("big.wav", big)})
    assert r.status_code == 413
    failure_shape(r.json(), "too_large")

    def chunks():  # no Content-Length: the cap must hold while the body streams in
        for _ in range(64):
            yield b"\0" * 65536

    r = client.post("/v1/predict", content=chunks())
    assert r.status_code == 413
    failure_shape(r.json(), "too_large")
    assert client.post("/v1/predict", content=DOG.read_bytes()).status_code == 200


def test_bad_parameters_and_unknown_model(client):
    r = client.post("/v1/predict", params={"top_k": "lots"}, content=DOG.read_bytes())
    assert r.status_code == 422
    failure_shape(r.json(), "invalid_request")
    r = client.post("/v1/predict", params={"model": "no-such-model"}, content=DOG.read_bytes())
    assert r.status_code == 404
    failure_shape(r.json(), "not_found")
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["reason"] == "not_found"


def test_models_and_card(client):
    data = client.get("/v1/models").json()
    assert data["default"] == "mn04-as"
    assert any(m["name"] == "mn04-as" and m["default"] for m in data["models"])
    card = client.get("/v1/models/mn04-as").json()
    assert len(card["labels"]) == 527 and card["sample_rate"] == 32000
    assert client.get("/v1/models/nope").status_code == 404


def test_bundle_dropped_in_models_dir_is_served_at_once(tmp_path):
    """A bundle folder copied into the models directory of a running server answers by its name at the next
    request; once removed, the name is a 404 again; a name that is no folder name never reaches the disk."""
    from earshot.models import pull

    with running_server(tmp_path) as base, httpx.Client(base_url=base, timeout=60) as c:
        assert c.post("/v1/predict", params={"model": "dropped"}, content=DOG.read_bytes()).status_code == 404
        dropped = shutil.copytree(pull("mn04-as"), tmp_path / "models" / "dropped")
        card = json.loads((dropped / "card.json").read_text())
        (dropped / "card.json").write_text(json.dumps({**card, "name": "dropped"}))
        r = c.post("/v1/predict", params={"model": "dropped"}, content=DOG.read_bytes())
        assert r.status_code == 200 and r.json()["model"] == "dropped"
        same = c.post("/v1/predict", content=DOG.read_bytes()).json()  # the default model: the same weights
        assert r.json()["labels"] == same["labels"] and same["model"] == "mn04-as"
        assert "dropped" in {m["name"] for m in c.get("/v1/models").json()["models"]}
        shutil.rmtree(tmp_path / "models" / "dropped")
        assert c.post("/v1/predict", params={"model": "dropped"}, content=DOG.read_bytes()).status_code == 404
        for bad in ("../models/dropped", ".hidden", "a/b"):
            assert c.post("/v1/predict", params={"model": bad}, content=DOG.read_bytes()).status_code == 404


def test_samples_listed_and_served_safely(client, samples):
    names = [s["name"] for s in client.get("/v1/samples").json()["samples"]]
    assert names == ["dog.wav", "rain.wav", "rooster.wav"]
    r = client.get("/v1/samples/dog.wav")
    assert r.status_code == 200 and r.content == (samples / "dog.wav").read_bytes()
    for bad in (
        "%2e%2e/%2e%2e/etc/passwd",
        "..%2f..%2fetc%2fpasswd",
        "outside.wav",
        "notes.txt",
        "%2fetc%2fpasswd",
    ):
        r = client.get("/v1/samples/" + bad)
        assert r.status_code == 404, bad
        failure_shape(r.json())


def test_health_metrics_docs_page(client):
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and "mn04-as" in h["models_loaded"]
    assert 1 <= h["workers"] <= len(os.sched_getaffinity(0)) and h["ort_threads"] >= 1
    text = client.get("/metrics").text
    assert 'earshot_http_requests_total{route="/v1/predict",method="POST",status="200"}' in text
    assert 'earshot_http_request_duration_seconds_bucket{route="/v1/predict",le="+Inf"}' in text
    assert "earshot_http_in_flight 1" in text  # the scrape itself
    assert 'earshot_errors_total{route="/v1/predict",type="AudioError"}' in text
    spec = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/models", "/v1/models/{name}", "/v1/train", "/v1/jobs/{job_id}"} <= set(spec["paths"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text and "cdn" not in docs.text
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "earshot" in page.text
    for asset in ("/static/app.js", "/static/live.js", "/static/listen-worklet.js", "/static/app.css",
                  "/static/favicon.svg"):
        body = client.get(asset)
        assert body.status_code == 200
        assert "https://" not in body.text and "http://" not in body.text.replace("http://www.w3.org", "")


def test_openapi_documents_the_prediction_contract(client):
    from earshot import prediction
    from earshot.serve import schemas

    spec = client.get("/openapi.json").json()
    ok = spec["paths"]["/v1/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/Prediction"}
    models = spec["components"]["schemas"]
    for cls in (prediction.Prediction, prediction.Segment, prediction.Event):
        extra = ["spectrogram"] if cls is prediction.Prediction else []
        assert list(models[cls.__name__]["properties"]) == [f.name for f in dataclasses.fields(cls)] + extra
    assert "error" in models["Prediction"]["required"] and "segments" not in models["Prediction"]["required"]
    answers = spec["paths"]["/v1/predict"]["post"]["responses"]
    for status in ("413", "422", "503"):
        assert answers[status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert "HTTPValidationError" not in models  # 422s are answered in the failure shape
    r = client.post("/v1/predict", content=DOG.read_bytes(), params={"timeline": "true", "spectrogram": "true"})
    assert schemas.Prediction.model_validate(r.json()).segments
    r = client.post("/v1/predict", content=DOG.read_bytes())
    assert "segments" not in r.json() and "spectrogram" not in r.json() and r.json()["error"] is None
    schemas.Prediction.model_validate(r.json())
    r = client.post("/v1/predict", content=b"not audio at all")
    schemas.Prediction.model_validate(r.json())
    schemas.ErrorBody.model_validate(r.json())
    schemas.ModelList.model_validate(client.get("/v1/models").json())
    schemas.ModelCard.model_validate(client.get("/v1/models/mn04-as").json())


def test_api_keys(tmp_path):
    with running_server(tmp_path, api_keys=["s3cret", "other"]) as base, httpx.Client(base_url=base) as c:
        r = c.get("/v1/models")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        failure_shape(r.json(), "unauthorized")
        assert c.get("/v1/models", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.post("/v1/predict", content=DOG.read_bytes()).status_code == 401
        assert c.get("/metrics").status_code == 401
        assert c.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": "Bearer other"}).status_code == 200
        r = c.post("/v1/predict", content=DOG.read_bytes(), headers={"X-API-Key": "s3cret"})
        assert r.status_code == 200 and r.json()["labels"]
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200


def test_a_full_server_asks_for_the_key_before_it_answers_503(tmp_path):
    """With every inference slot taken, a request without a valid key is still a 401, and one with a key a 503."""
    with running_server(tmp_path, api_keys=["s3cret"], max_inflight=1, max_queue=0) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as slow:  # headers only: holds the one slot
            slow.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-API-Key: s3cret\r\n"
                         b"Content-Length: 100000\r\n\r\nRIFF")
            deadline = time.time() + 5
            while httpx.get(base + "/healthz").json()["inference_slots_used"] < 1:
                assert time.time() < deadline, "the slow upload was not admitted"
                time.sleep(0.02)
            assert httpx.post(base + "/v1/predict", content=DOG.read_bytes()).status_code == 401
            r = httpx.post(base + "/v1/predict", content=DOG.read_bytes(), headers={"X-API-Key": "s3cret"})
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            failure_shape(r.json(), "overloaded")


def test_cors(tmp_path):
    with running_server(tmp_path, cors_origins=["http://app.example"]) as base:
        r = httpx.options(
            base + "/v1/predict",
            headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert r.headers["access-control-allow-origin"] == "http://app.example"
        r = httpx.get(base + "/v1/models", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_overload_answers_503_quickly_then_recovers(tmp_path):
    long_wav = wav_bytes(60)
    with running_server(tmp_path, max_inflight=1, max_queue=1, max_upload_mb=8) as base:

        def post(_):
            t0 = time.perf_counter()
            r = httpx.post(base + "/v1/predict", content=long_wav, params={"timeline": "true"}, timeout=60)
            return r, time.perf_counter() - t0

        with ThreadPoolExecutor(10) as pool:
            results = list(pool.map(post, range(10)))
        codes = sorted(r.status_code for r, _ in results)
        assert set(codes) <= {200, 503} and codes.count(200) >= 1 and codes.count(503) >= 3, codes
        for r, dt in results:
            if r.status_code == 503:
                assert r.headers["retry-after"] == "1"
                failure_shape(r.json(), "overloaded")
                assert dt < 2.0
        r = httpx.post(base + "/v1/predict", content=DOG.read_bytes(), timeout=30)
        assert r.status_code == 200  # recovered
        assert 'earshot_rejected_total{reason="overload"}' in httpx.get(base + "/metrics").text


def test_timeout_is_504(tmp_path):
    long_wav = wav_bytes(120)
    with running_server(tmp_path, request_timeout_s=0.05, max_upload_mb=8) as base:
        t0 = time.perf_counter()
        r = httpx.post(base + "/v1/predict", content=long_wav, params={"timeline": "true"}, timeout=30)
        assert r.status_code == 504 and time.perf_counter() - t0 < 2
        failure_shape(r.json(), "timeout")
        assert httpx.get(base + "/healthz").status_code == 200


def test_torch_never_imported_by_serving(tmp_path):
    code = (
        "import sys; from earshot.serve import Settings, create_app; "
        f"app = create_app(Settings.from_env({{}}, state_dir={str(tmp_path)!r})); "
        f"p = app.state.store.get(None).predict({str(DOG)!r}); assert p.labels; "
        "assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_settings_from_env():
    s = Settings.from_env(
        {
            "EARSHOT_API_KEYS": "a, b",
            "EARSHOT_MAX_UPLOAD_MB": "3",
            "EARSHOT_CORS_ORIGINS": "*",
            "EARSHOT_SAMPLES": str(DATA),
            "EARSHOT_TRAIN_ROOTS": os.pathsep.join(["/a", "/b"]),
        }
    )
    assert s.api_keys == ["a", "b"] and s.max_upload_mb == 3.0 and s.cors_origins == ["*"]
    assert s.samples_dir == DATA and [str(p) for p in s.train_roots] == ["/a", "/b"]
    assert s.max_inflight == s.workers >= 1 and s.max_queue == 4 * s.max_inflight
    with pytest.raises(TypeError):
        Settings.from_env({}, no_such_setting=1)
