"""Bounds, deadlines and refusals under hostile clients and parameters.

The server runs as its own process on 127.0.0.1 (its memory and CPU time are read from /proc); the clients are
the standard library's (urllib, http.client, raw sockets), which send a whole body before reading anything.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import soundfile as sf
from apiserver import server_process
from conftest import esc50_clip

from earshot import limits

DOG = esc50_clip("dog")
CAP_MB = 2
TIMEOUT_S = 2.0
LONG_SECONDS = 600  # a timeline of it at hop 0.01 s is 60 000 windows: about a minute of CPU on 2 cores


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def seconds_until_idle(pid: int, within: float = 5.0, window: float = 0.5, busy: float = 0.05) -> float:
    """Seconds until the process starts a `window` in which it spends less than `busy` CPU seconds (sampled every
    50 ms); fails when that has not happened `within` seconds from now."""
    t0 = time.perf_counter()
    samples = [(t0, cpu_seconds(pid))]
    while samples[-1][0] - t0 < within + window:
        time.sleep(0.05)
        now = (time.perf_counter(), cpu_seconds(pid))
        samples.append(now)
        then = next((s for s in reversed(samples) if now[0] - s[0] >= window), None)
        if then is not None and now[1] - then[1] < busy:
            return then[0] - t0
    raise AssertionError(f"server still busy {within:g} s later")


def slots_used(base: str) -> int:
    return httpx.get(base + "/healthz").json()["inference_slots_used"]


def wait_slots_free(base: str, within: float = 5.0) -> None:
    deadline = time.time() + within
    while slots_used(base):
        assert time.time() < deadline, "inference slots still held"
        time.sleep(0.05)


class Zeros(io.RawIOBase):
    """`size` zero bytes as a file, so a huge body is streamed rather than held."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        k = min(len(b), self.left)
        b[:k] = bytes(k)
        self.left -= k
        return k


def long_flac(seconds: int = LONG_SECONDS) -> bytes:
    """A long recording that fits the upload cap: silence compresses to almost nothing."""
    y = np.zeros(seconds * 16000, dtype=np.float32)
    buf = io.BytesIO()
    sf.write(buf, y, 16000, format="FLAC", subtype="PCM_16")
    assert len(buf.getvalue()) < CAP_MB << 20
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, int]]:
    with server_process(
        tmp_path_factory.mktemp("limits"),
        request_timeout_s=str(TIMEOUT_S),
        max_upload_mb=str(CAP_MB),
        drain_timeout_s="10",
    ) as srv:
        yield srv


def failure(body: bytes, reason: str) -> dict:
    data = json.loads(body)
    assert data["labels"] == [] and data["error"]["reason"] == reason, data
    return data["error"]


@pytest.mark.parametrize("size", [(CAP_MB << 20) + 1024, 256 << 20], ids=["a-bit-over", "256MB"])
def test_oversize_upload_is_413_json_for_clients_that_send_everything_first(server, size):
    base, _ = server
    req = urllib.request.Request(
        base + "/v1/predict",
        data=Zeros(size),
        method="POST",
        headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=60)
    assert info.value.code == 413
    assert f"{CAP_MB} MB" in failure(info.value.read(), "too_large")["message"]

    host, port = base.removeprefix("http://").split(":")
    for chunked in (False, True):
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        if chunked:  # no Content-Length: cut off while it streams in
            conn.request("POST", "/v1/predict", body=iter(lambda z=Zeros(size): z.read(1 << 16), b""),
                         encode_chunked=True)
        else:
            conn.request("POST", "/v1/predict", body=Zeros(size), headers={"Content-Length": str(size)})
        resp = conn.getresponse()
        assert resp.status == 413
        failure(resp.read(), "too_large")
        conn.close()
    assert httpx.post(base + "/v1/predict", content=DOG.read_bytes(), timeout=30).status_code == 200


def test_early_answers_reach_clients_that_send_everything_first(server):
    base, _ = server
    body = DOG.read_bytes() * 4  # under the cap, more than the socket buffers hold
    req = urllib.request.Request(base + "/v1/predict?model=no-such-model", data=body, method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=30)
    assert info.value.code == 404
    failure(info.value.read(), "not_found")
    req = urllib.request.Request(base + "/v1/predict?timeline=true&hop=0.000000001", data=body, method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=30)
    assert info.value.code == 422
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)  # keep-alive: the connection serves on
    conn.request("POST", "/v1/predict?model=no-such-model", body=body)
    resp = conn.getresponse()
    assert resp.status == 404
    failure(resp.read(), "not_found")
    conn.request("POST", "/v1/predict", body=DOG.read_bytes())
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["labels"]
    conn.close()


def test_microscopic_hop_is_422_naming_the_bound_and_memory_stays_small(server):
    base, pid = server
    before = rss_mb(pid)
    r = httpx.post(
        base + "/v1/predict",
        params={"timeline": "true", "window": 1, "hop": 0.000000001},
        content=DOG.read_bytes(),
        timeout=60,
    )
    assert r.status_code == 422, r.text
    err = failure(r.content, "out_of_bounds")
    assert err["type"] == "LimitError" and err["param"] == "hop" and "at least 0.01 s" in err["message"]
    assert r.json()["title"] == "upload" and r.json()["model"] == "mn04-as"
    assert rss_mb(pid) - before < 100
    r = httpx.post(
        base + "/v1/predict", params={"timeline": "true", "hop": 0.05}, content=DOG.read_bytes(), timeout=60
    )
    assert r.status_code == 200 and len(r.json()["segments"]) == 81
    assert rss_mb(pid) - before < 100


@pytest.mark.parametrize(
    ("params", "param", "bound"),
    [
        ({"top_k": 0}, "top_k", "between 1 and 100"),
        ({"top_k": 1000}, "top_k", "between 1 and 100"),
        ({"timeline": "true", "window": 100}, "window", "between 0.1 and 60 s"),
        ({"timeline": "true", "window": 0.01}, "window", "between 0.1 and 60 s"),
        ({"timeline": "true", "window": 60, "hop": 0.1}, "hop", "at least 0.6 s"),
        ({"timeline": "true", "hop": 1000}, "hop", "at most 60 s"),
        ({"threshold": 2}, "threshold", "between 0 and 1"),
    ],
)
def test_out_of_bound_parameters_are_422(server, params, param, bound):
    base, _ = server
    r = httpx.post(base + "/v1/predict", params=params, content=DOG.read_bytes(), timeout=30)
    assert r.status_code == 422, r.text
    err = failure(r.content, "out_of_bounds")
    assert err["param"] == param and bound in err["message"], err


def test_too_many_segments_for_the_audio_is_422(server):
    base, _ = server
    r = httpx.post(
        base + "/v1/predict",
        params={"timeline": "true", "window": 1, "hop": 0.01},
        content=long_flac(1200),  # 1200 s / 0.01 s: 120 000 windows, over the 100 000 bound
        timeout=30,
    )
    assert r.status_code == 422, r.text
    err = failure(r.content, "out_of_bounds")
    assert f"at most {limits.MAX_SEGMENTS} segments" in err["message"]


def test_deadline_is_504_and_the_work_behind_it_stops(server):
    base, pid = server
    data = long_flac()
    t0 = time.perf_counter()
    r = httpx.post(
        base + "/v1/predict", params={"timeline": "true", "window": 1, "hop": 0.01}, content=data, timeout=60
    )
    answered = time.perf_counter() - t0
    assert r.status_code == 504, r.text
    failure(r.content, "timeout")
    idle = seconds_until_idle(pid)
    print(f"504 after {answered:.2f} s; server idle {idle:.2f} s later")
    wait_slots_free(base)
    assert httpx.post(base + "/v1/predict", content=DOG.read_bytes(), timeout=30).status_code == 200


def test_client_that_disconnects_stops_its_work(server):
    base, pid = server
    data = long_flac()
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            b"POST /v1/predict?timeline=true&window=1&hop=0.01 HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        time.sleep(0.5)
        assert slots_used(base) == 1  # admitted, and working
    idle = seconds_until_idle(pid)
    print(f"server idle {idle:.2f} s after the client left")
    wait_slots_free(base)


def test_admission_answers_503_before_the_body_and_slow_uploads_end_at_the_deadline(server):
    base, _ = server
    host, port = base.removeprefix("http://").split(":")
    limit = httpx.get(base + "/healthz").json()["inference_slots"]
    head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    slow = [socket.create_connection((host, int(port))) for _ in range(limit)]
    try:
        for s in slow:  # headers only: each holds a slot while its body never comes
            s.sendall(head + b"RIFF")
        deadline = time.time() + 5
        while slots_used(base) < limit:
            assert time.time() < deadline, "slow uploads were not admitted"
            time.sleep(0.02)
        with socket.create_connection((host, int(port))) as s:
            s.settimeout(5)
            s.sendall(head)  # no body sent at all: the answer must not wait for it
            answer = read_response(s)
        assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer.lower()
        assert b'"reason":"overloaded"' in answer
        # the same answer, titled and counted as the app would, whichever layer gives it: a plain keep-alive
        # request (answered outside the app's layers) and one that asks to close (answered by `Admission`)
        for extra in (b"", b"Connection: close\r\n"):
            with socket.create_connection((host, int(port))) as s:
                s.settimeout(5)
                s.sendall(b"POST /v1/predict?title=shed.wav HTTP/1.1\r\nHost: x\r\n" + extra
                          + b"Content-Length: 100000\r\n\r\n")
                head, _, body = read_response(s).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503") and b"x-error-type: overloaded" in head.lower(), head
            data = json.loads(body)
            assert (data["title"], data["model"], data["error"]["reason"]) == ("shed.wav", "mn04-as", "overloaded")
        text = httpx.get(base + "/metrics").text
        line = next(x for x in text.splitlines()
                    if x.startswith('earshot_http_requests_total{route="/v1/predict",method="POST",status="503"}'))
        assert int(line.split()[-1]) >= 3
        for s in slow:  # past the deadline every slow upload is answered 504 and its slot freed
            s.settimeout(TIMEOUT_S + 5)
            assert read_response(s).startswith(b"HTTP/1.1 504")
        wait_slots_free(base)
    finally:
        for s in slow:
            s.close()


def read_response(s: socket.socket) -> bytes:
    """Status line, headers and Content-Length body of one response."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")[1:])
                  if k.strip().lower() == b"content-length")
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return head + b"\r\n\r\n" + body


def test_classifier_refuses_out_of_bound_timelines(tagger):
    with pytest.raises(limits.LimitError) as info:
        tagger.timeline(DOG, window=1, hop=1e-9)
    assert info.value.param == "hop" and info.value.bound == limits.MIN_HOP_S
    assert isinstance(info.value, ValueError)
    with pytest.raises(limits.LimitError, match="at most 100 segments"):
        tagger.timeline(DOG, window=1, hop=0.01, max_segments=100)
    with pytest.raises(limits.LimitError, match="window must be between"):
        tagger.predict(DOG, timeline=True, window=600)
    assert len(tagger.timeline(DOG, window=1, hop=0.5).segments) == 9


def test_classifier_stops_when_cancelled_or_past_its_deadline(tagger):
    data = long_flac()
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    with pytest.raises(limits.Cancelled) as info:
        tagger.timeline(data, window=1, hop=0.01, cancel=cancel)
    assert info.value.reason == "cancelled"
    with pytest.raises(limits.Cancelled) as info:
        tagger.predict(data, timeline=True, window=1, hop=0.01, deadline=time.monotonic() + 0.3)
    assert info.value.reason == "deadline"
    with pytest.raises(limits.Cancelled):
        tagger.predict(data, deadline=time.monotonic())
    assert tagger.predict(DOG, deadline=time.monotonic() + 60, cancel=threading.Event()).labels


def test_limits_checks():
    assert limits.check_window(1) == 1.0
    for bad in (0.05, 61, float("nan"), "x"):
        with pytest.raises(limits.LimitError, match="window must be"):
            limits.check_window(bad)
    assert limits.check_hop(None, 2.0) == 1.0 and limits.check_hop(0.01, 1.0) == 0.01
    with pytest.raises(limits.LimitError, match=r"hop must be at least 0\.01 s$"):
        limits.check_hop(0.001, 1.0)
    with pytest.raises(limits.LimitError, match=r"at least 0\.3 s for a 30 s window") as info:
        limits.check_hop(0.2, 30.0)
    assert info.value.param == "hop" and info.value.bound == pytest.approx(0.3)
    with pytest.raises(limits.LimitError, match="at most 60 s"):
        limits.check_hop(61, 1.0)
    assert limits.check_top_k(527, 527) == 527
    for bad in (0, 528, True, 2.5):
        with pytest.raises(limits.LimitError, match="between 1 and 527"):
            limits.check_top_k(bad, 527)
    assert limits.check_threshold(None) is None and limits.check_threshold(0.5) == 0.5
    with pytest.raises(limits.LimitError, match="between 0 and 1"):
        limits.check_threshold(-0.1)
    assert limits.timeline_segments(0.5, 1.0, 0.5) == 1
    assert limits.timeline_segments(5.0, 1.0, 0.5) == 9
    assert limits.timeline_segments(5.0, 1.0, 0.01) == 401
    assert limits.check_segments(limits.MAX_SEGMENTS) == limits.MAX_SEGMENTS
    with pytest.raises(limits.LimitError, match="at most 100000 segments"):
        limits.check_segments(limits.MAX_SEGMENTS + 1)
    with pytest.raises(limits.LimitError, match="segment labels"):
        limits.check_segments(limits.MAX_SEGMENTS, top_k=50)
    assert limits.check_timeline(1.0, None, 5, duration=3600) == (1.0, 0.5)
    with pytest.raises(limits.LimitError, match="raise hop or shorten the audio"):
        limits.check_timeline(1.0, 0.01, 5, duration=3600)
    assert limits.check_max_seconds(None) is None
    with pytest.raises(limits.LimitError):
        limits.check_max_seconds(0)
    for window, hop in ((1.0, 0.5), (1.0, 0.01), (60.0, 0.6), (0.1, 0.01), (60.0, 60.0), (10.0, 0.1)):
        block = limits.timeline_block_seconds(window, hop)  # the windows one block makes: within the budget
        assert block >= hop and round(block / hop) * window <= max(limits.FRAME_BUDGET_S, window) + 1e-9
    assert limits.timeline_block_seconds(1.0, 0.5) == limits.DEFAULT_TIMELINE_BLOCK_S
    assert limits.stopper() is None
    stop = limits.stopper(deadline=time.monotonic() - 1)
    with pytest.raises(limits.Cancelled, match="deadline"):
        stop()
    event = threading.Event()
    stop = limits.stopper(deadline=time.monotonic() + 60, cancel=event)
    stop()
    event.set()
    with pytest.raises(limits.Cancelled) as info:
        stop()
    assert info.value.reason == "cancelled"


def test_rejections_are_held_only_under_a_retry_storm():
    """A 503 waits `reject_hold_ms` (no CPU) only while rejections come faster than `reject_hold_above` a second:
    clients that retry at once are slowed down, clients that honour Retry-After get their 503 at once."""
    from earshot.serve.inference import Inference
    from earshot.serve.metrics import Metrics
    from earshot.serve.settings import Settings

    inference = Inference(Settings(reject_hold_ms=30, reject_hold_above=100), Metrics())
    try:
        holds = [inference.reject_hold() for _ in range(150)]
        assert holds[:100] == [0.0] * 100  # the first hundred in this second: no storm yet
        assert set(holds[101:]) == {0.03}
        calm = Inference(Settings(reject_hold_ms=30, reject_hold_above=100), Metrics())
        assert [calm.reject_hold() for _ in range(20)] == [0.0] * 20
        calm.shutdown()
    finally:
        inference.shutdown()


def test_a_held_request_takes_a_slot_freed_during_its_hold():
    """Under a retry storm a request that finds every slot taken waits for one: a slot freed during the hold
    goes to the longest waiter (first come, first served) instead of back to the pool, a waiter whose hold
    runs out is refused and counted, and a waiter cancelled as it is handed a slot gives the slot back."""
    import asyncio

    from earshot.serve.inference import Inference
    from earshot.serve.metrics import Metrics
    from earshot.serve.settings import Settings

    async def scenario() -> None:
        metrics = Metrics()
        inference = Inference(Settings(max_inflight=1, max_queue=0, reject_hold_ms=200, reject_hold_above=0),
                              metrics)
        try:
            first = await inference.admit_or_hold()
            assert first is not None and inference.limiter.used == 1
            second = asyncio.ensure_future(inference.admit_or_hold())
            third = asyncio.ensure_future(inference.admit_or_hold())
            await asyncio.sleep(0.02)
            assert not second.done() and not third.done()
            first.drop()  # the slot passes to the first waiter; the count of slots in use stays 1
            ticket = await asyncio.wait_for(second, 1)
            assert ticket is not None and inference.limiter.used == 1 and not third.done()
            assert await asyncio.wait_for(third, 1) is None  # its hold ran out: 503
            assert 'earshot_rejected_total{reason="overload"} 1' in metrics.render()
            fourth = asyncio.ensure_future(inference.limiter.wait(1.0))
            await asyncio.sleep(0.01)
            ticket.drop()  # handed to the fourth waiter, which is cancelled before it runs again
            fourth.cancel()
            with pytest.raises(asyncio.CancelledError):
                await fourth
            assert inference.limiter.used == 0
            assert await inference.admit_or_hold() is not None
        finally:
            inference.shutdown()

    asyncio.run(scenario())


def test_a_request_held_in_front_of_the_app_goes_on_with_the_slot_it_is_handed(tmp_path):
    """The plain overloaded request waits in `Shed`, outside the app's layers; handed a freed slot, it goes on
    through the app, whose `Admission` takes that slot, and the route answers it (here 415: four bytes are no
    audio); afterwards no slot stays taken."""
    import asyncio

    from earshot.serve.app import create_app
    from earshot.serve.settings import Settings

    app = create_app(Settings(model="mn04-as", models_dir=tmp_path / "models", state_dir=tmp_path / "state",
                              max_inflight=1, max_queue=0, reject_hold_ms=2000, reject_hold_above=0))
    limiter = app.state.inference.limiter
    scope = {"type": "http", "method": "POST", "path": "/v1/predict", "root_path": "", "query_string": b"",
             "headers": [(b"host", b"x"), (b"content-length", b"4")], "http_version": "1.1", "scheme": "http",
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5555)}

    async def scenario() -> list[dict]:
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"RIFF", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        assert limiter.try_acquire()  # the one slot is taken
        task = asyncio.ensure_future(app(dict(scope), receive, send))
        await asyncio.sleep(0.1)
        assert not sent and not task.done()  # held, not refused
        limiter.release()  # freed: handed to the held request
        await asyncio.wait_for(task, 10)
        return sent

    sent = asyncio.run(scenario())
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 415, sent[0]
    assert limiter.used == 0 and app.state.inference.metrics.rejected.get("overload", 0) == 0
    app.state.inference.shutdown()
