"""WebSocket `/v1/stream` against a real server process: a generated sequence of known sounds streamed live,
the same records as `earshot stream` on stdin, and every way a stream can go wrong ending with an error record
and a clean close while the server stays healthy."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import soxr
import websockets
from apiserver import server_process
from conftest import esc50_clip

RATE = 16000
HOP = 0.5
# (ESC-50 category, clip index, the AudioSet label the tagger gives it)
SCENE = [("dog", 2, "Dog"), ("cow", 1, "Cattle, bovinae"), ("sheep", 0, "Sheep"), ("crow", 2, "Crow"),
         ("siren", 3, "Siren"), ("pig", 1, "Pig")]


def from_onset(y: np.ndarray, rel: float = 0.3) -> np.ndarray:
    """`y` from its first 10 ms frame louder than `rel` of its loudest: where the sound starts."""
    f = RATE // 100
    n = len(y) // f
    rms = np.sqrt((y[: n * f].reshape(n, f) ** 2).mean(axis=1))
    return y[int(np.argmax(rms > rel * rms.max())) * f :]


@pytest.fixture(scope="module")
def scene() -> tuple[bytes, list[tuple[str, float]]]:
    """36 s of 16 kHz s16le: six real sounds (cut at their onsets, at most 3 s each) with silence or faint noise
    between, each placed on the 0.5 s hop grid; and the truth, (label, onset seconds)."""
    rng = np.random.default_rng(0)
    parts, truth, t = [], [], 0
    for i, (category, index, label) in enumerate(SCENE):
        gap = int(rng.integers(4, 7)) * RATE // 2
        parts.append((rng.standard_normal(gap) * 0.002).astype(np.float32) if i % 2 else np.zeros(gap, np.float32))
        t += gap
        y, sr = sf.read(esc50_clip(category, index), dtype="float32")
        y = from_onset(soxr.resample(y, sr, RATE))[: 3 * RATE]
        truth.append((label, t / RATE))
        n = -(-len(y) // (RATE // 2)) * (RATE // 2)
        parts.append(np.pad(y, (0, n - len(y))))
        t += n
    parts.append(np.zeros(2 * RATE, np.float32))
    x = np.concatenate(parts)
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes(), truth


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("ws")
    with server_process(tmp, api_keys="k1", max_streams="3", stream_idle_timeout_s="2", stream_max_frame_mb="1",
                        stream_max_pending="200", stream_send_timeout_s="20") as (base, _pid):
        yield base.replace("http://", "ws://")


def ws_url(base: str, key: str | None = "k1", **params: object) -> str:
    q = {**({"api_key": key} if key else {}), **params}
    return base + "/v1/stream?" + "&".join(f"{k}={v}" for k, v in q.items())


async def talk(url: str, frames: list[bytes | str], *, pace: float = 0.0, read: bool = True,
               close_early: bool = False) -> tuple[list[dict], int | None]:
    """Send `frames` (bytes: audio, str: text), then read every record until the server closes; the records and
    the close code. `pace`: seconds between frames. `close_early`: drop the connection after the frames."""
    out: list[dict] = []
    async with websockets.connect(url, max_size=None) as ws:
        try:
            for f in frames:
                await ws.send(f)
                if pace:
                    await asyncio.sleep(pace)
        except websockets.ConnectionClosed:  # the server refused the stream before it was all sent
            pass
        if close_early:
            return out, None
        out += await read_all(ws)
        return out, ws.close_code


async def read_all(ws) -> list[dict]:
    """Every record until the server closes (a close that is not 1000 ends the list too)."""
    out = []
    try:
        async for m in ws:
            out.append(json.loads(m))
    except websockets.ConnectionClosed:
        pass
    return out


def chunks(pcm: bytes, seconds: float = 0.1, width: int = 2) -> list[bytes]:
    n = int(RATE * seconds) * width
    return [pcm[i : i + n] for i in range(0, len(pcm), n)]


def of(recs: list[dict], kind: str) -> list[dict]:
    return [r for r in recs if r["type"] == kind]


def healthy(base: str) -> dict:
    return httpx.get(base.replace("ws://", "http://") + "/healthz", timeout=10).json()


def streams_open(base: str) -> int:
    return healthy(base)["streams_open"]


def wait_closed(base: str, within: float = 10.0) -> None:
    deadline = time.time() + within
    while streams_open(base):
        assert time.time() < deadline, "streams still open"
        time.sleep(0.1)


def test_scene_over_websocket_matches_the_cli_and_truth(server, scene):
    pcm, truth = scene
    recs, code = asyncio.run(talk(ws_url(server, title="scene.raw"), [*chunks(pcm), '{"type": "end"}']))
    assert code == 1000
    ready = recs[0]
    assert ready["type"] == "ready" and ready["model"] == "mn04-as" and ready["sample_rate"] == RATE
    assert ready["hop"] == HOP and ready["window"] == 1.0 and "Dog" in ready["labels"]
    events = of(recs, "event")
    for label, onset in truth:  # every sound found where it starts, to within one hop
        starts = [e["start"] for e in events if e["label"] == label]
        assert any(abs(s - onset) <= HOP + 1e-6 for s in starts), (label, onset, starts)
    summary = recs[-1]
    assert summary["type"] == "summary" and summary["stopped"] == "eof" and summary["error"] is None
    assert summary["duration"] == pytest.approx(len(pcm) / 2 / RATE, abs=1e-3)

    # the same audio through `earshot stream` on stdin gives the same records
    p = subprocess.run([sys.executable, "-m", "earshot.cli", "stream", "-", "--raw-format", "s16le", "--rate",
                        str(RATE)], input=pcm, capture_output=True, timeout=120, env=os.environ.copy())
    assert p.returncode == 0, p.stderr.decode()
    cli = [json.loads(line) for line in p.stdout.decode().splitlines()]
    assert [r["type"] for r in cli] == [r["type"] for r in recs[1:]]
    for a, b in zip(cli, recs[1:]):
        if a["type"] == "summary":
            a, b = {**a, "source": None}, {**b, "source": None}
        assert a.keys() == b.keys()
        for k in a:
            if k == "probabilities":
                np.testing.assert_allclose(a[k], b[k], atol=2e-4)
            elif k != "score":
                assert a[k] == b[k], (k, a, b)


def test_float_stereo_at_44k_is_resampled_and_classified(server):
    y, sr = sf.read(esc50_clip("cow", 1), dtype="float32")
    stereo = np.stack([y, 0.5 * y], axis=1).astype("<f4").tobytes()
    frames = [stereo[i : i + 35280] for i in range(0, len(stereo), 35280)]
    recs, code = asyncio.run(talk(ws_url(server, rate=sr, format="f32le", channels=2, top_k=5), frames + [
        '{"type": "end"}']))
    assert code == 1000 and recs[-1]["type"] == "summary"
    assert recs[-1]["duration"] == pytest.approx(5.0, abs=1e-3) and recs[-1]["labels"][0] == "Cattle, bovinae"


@pytest.mark.parametrize(("suffix", "subtype"), [("flac", "PCM_16"), ("ogg", "VORBIS"), ("mp3", "MPEG_LAYER_III")])
def test_an_audio_file_streamed_as_bytes_is_decoded_by_the_server(server, scene, tmp_path, suffix, subtype):
    """`format=file`: a compressed file's bytes in frames (no decoding on the client), decoded by the server as
    they come, give the records of `earshot stream -` on the same bytes."""
    pcm, truth = scene
    y = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    up = soxr.resample(y, RATE, 44100)
    path = tmp_path / f"scene.{suffix}"
    sf.write(path, np.stack([up, 0.5 * up], axis=1), 44100, subtype=subtype)  # stereo at 44.1 kHz
    data = path.read_bytes()
    frames = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    recs, code = asyncio.run(talk(ws_url(server, format="file", title=path.name), [*frames, '{"type": "end"}']))
    assert code == 1000, recs[-1]
    assert recs[0]["type"] == "ready" and recs[0]["format"] == "file" and recs[0]["sample_rate"] is None
    summary = recs[-1]
    assert summary["type"] == "summary" and summary["stopped"] == "eof" and summary["error"] is None
    assert summary["duration"] == pytest.approx(len(y) / RATE, abs=0.06)  # codec padding at most
    events = of(recs, "event")
    for label, onset in truth if suffix == "flac" else ():  # lossy codecs move some scores (the cow's at 8.5 s)
        assert any(e["label"] == label and abs(e["start"] - onset) <= HOP + 1e-6 for e in events), (label, onset)
    assert {"Dog", "Crow", "Siren"} <= {e["label"] for e in events}
    p = subprocess.run([sys.executable, "-m", "earshot.cli", "stream", "-"], input=data, capture_output=True,
                       timeout=120, env=os.environ.copy())
    assert p.returncode == 0, p.stderr.decode()
    cli = [json.loads(line) for line in p.stdout.decode().splitlines()]
    assert [(r["type"], r.get("label"), r.get("start")) for r in cli] == [
        (r["type"], r.get("label"), r.get("start")) for r in recs[1:]]


def test_bytes_that_are_no_audio_file_end_with_an_error(server):
    recs, code = asyncio.run(talk(ws_url(server, format="file"), [b"this is a text file, not audio\n" * 200,
                                                                  '{"type": "end"}']))
    assert code == 1007 and recs[-1]["type"] == "error" and recs[-1]["error"]["reason"] == "unsupported"
    wait_closed(server)
    health = healthy(server)
    assert health["status"] == "ok" and health["decodes_containers"] is True  # CI installs the media extra
    assert health["stream_formats"][-1] == "file" and "s16le" in health["stream_formats"]


def test_live_pace_records_follow_the_audio(server):
    """Fed at real time, each segment arrives about one hop after its window is complete, not at the end."""
    y, sr = sf.read(esc50_clip("dog", 2), dtype="float32")
    pcm = (soxr.resample(y, sr, RATE) * 32767).astype("<i2").tobytes()

    async def run() -> list[float]:
        lags = []
        async with websockets.connect(ws_url(server)) as ws:
            t0 = time.perf_counter()

            async def send() -> None:
                for i, c in enumerate(chunks(pcm, 0.05)):
                    await asyncio.sleep(max(0.0, t0 + i * 0.05 - time.perf_counter()))
                    await ws.send(c)
                await ws.send('{"type": "end"}')

            sender = asyncio.create_task(send())
            async for m in ws:
                r = json.loads(m)
                if r["type"] == "segment":
                    lags.append(time.perf_counter() - t0 - r["end"])
            await sender
        return lags

    lags = asyncio.run(run())
    assert len(lags) == 9
    assert np.median(lags) < 0.5, lags  # chunks of 50 ms: a record follows its window's last sample closely


@pytest.mark.parametrize(("params", "reason", "param"), [
    ({"rate": 10}, "out_of_bounds", "rate"),
    ({"format": "mp3"}, "out_of_bounds", "format"),
    ({"hop": 0.0001}, "out_of_bounds", "hop"),
    ({"top_k": 0}, "out_of_bounds", "top_k"),
    ({"model": "no-such-model"}, "not_found", None),
    ({"classes": "Nonsense%20class"}, "unknown_label", None),
])
def test_bad_parameters_get_an_error_record_and_close_1008(server, params, reason, param):
    recs, code = asyncio.run(talk(ws_url(server, **params), []))
    assert code == 1008 and len(recs) == 1 and recs[0]["type"] == "error", recs
    assert recs[0]["error"]["reason"] == reason and recs[0]["error"].get("param") == param


def test_api_key_required_header_or_query(server):
    recs, code = asyncio.run(talk(ws_url(server, key=None), [b"\0\0" * 1600, '{"type": "end"}']))
    assert code == 1008 and recs[0]["error"]["reason"] == "unauthorized"
    recs, code = asyncio.run(talk(ws_url(server, key="wrong"), []))
    assert code == 1008 and recs[0]["error"]["reason"] == "unauthorized"

    async def with_header() -> list[dict]:
        async with websockets.connect(ws_url(server, key=None), additional_headers={"X-API-Key": "k1"}) as ws:
            await ws.send(b"\0\0" * 16000)
            await ws.send('{"type": "end"}')
            return [json.loads(m) async for m in ws]

    assert asyncio.run(with_header())[-1]["type"] == "summary"


def test_garbage_float_frames_end_with_bad_samples_1007(server):
    rng = np.random.default_rng(1)
    garbage = rng.integers(0, 256, 64000, dtype=np.uint8).tobytes()
    recs, code = asyncio.run(talk(ws_url(server, format="f32le"), [garbage]))
    assert code == 1007
    assert [r["type"] for r in recs] == ["ready", "summary", "error"]
    assert recs[1]["stopped"] == "error" and recs[2]["error"]["reason"] == "bad_samples"


def test_a_text_frame_that_is_not_end_is_bad_message(server):
    recs, code = asyncio.run(talk(ws_url(server), [b"\0\0" * 20000, "hello"]))
    assert code == 1007 and recs[-1]["type"] == "error" and recs[-1]["error"]["reason"] == "bad_message"
    assert of(recs, "segment"), "audio before the bad frame was classified"


def test_frame_past_the_cap_is_1009(server):
    recs, code = asyncio.run(talk(ws_url(server), [bytes((1 << 20) + 2)]))
    assert code == 1009 and recs[-1]["error"]["reason"] == "frame_too_large"


def test_idle_stream_ends(server, tmp_path):
    t = time.perf_counter()
    recs, code = asyncio.run(talk(ws_url(server), [b"\0\0" * 8000]))
    assert code == 1008 and recs[-1]["error"]["reason"] == "idle" and time.perf_counter() - t < 15
    # a file's bytes that stop coming mid-file: the same idle error, not a decoder's "truncated"
    y, sr = sf.read(esc50_clip("dog", 2), dtype="float32")
    sf.write(tmp_path / "dog.flac", y, sr)
    half = (tmp_path / "dog.flac").read_bytes()[:4000]
    recs, code = asyncio.run(talk(ws_url(server, format="file"), [half]))
    assert code == 1008 and recs[-1]["error"]["type"] == "StreamError" and recs[-1]["error"]["reason"] == "idle"


def test_abrupt_end_and_odd_bytes_leave_the_server_healthy(server):
    asyncio.run(talk(ws_url(server), [b"\1\2" * 40000 + b"\3"], close_early=True))  # half a sample, then gone
    wait_closed(server)
    recs, code = asyncio.run(talk(ws_url(server), [b"\0\0" * 16000 + b"\7", b"\0" * 31999, '{"type": "end"}']))
    assert code == 1000 and recs[-1]["duration"] == 2.0  # a sample split across frames is joined
    assert healthy(server)["status"] == "ok"


def test_streams_past_the_limit_are_refused_1013(server):
    async def run() -> tuple[list[dict], int | None]:
        opened = [await websockets.connect(ws_url(server)) for _ in range(3)]
        try:
            for ws in opened:
                json.loads(await ws.recv())  # ready: admitted
            return await talk(ws_url(server), [])
        finally:
            for ws in opened:
                await ws.close()

    recs, code = asyncio.run(run())
    assert code == 1013 and recs[0]["error"]["reason"] == "overloaded"
    wait_closed(server)
    _, code = asyncio.run(talk(ws_url(server), [b"\0\0" * 16000, '{"type": "end"}']))
    assert code == 1000


def test_a_client_that_does_not_read_is_a_slow_consumer(tmp_path):
    """Five minutes of audio at hop 0.1 s: thousands of records the client does not read. The server stops the
    stream (its slot is free while the client still reads nothing) instead of piling records up; when the client
    reads at last, the records end with an error record (reason slow_consumer) and close code 1008."""
    pcm = (np.random.default_rng(2).standard_normal(300 * RATE) * 300).astype("<i2").tobytes()
    with server_process(tmp_path, stream_max_pending="50", stream_send_timeout_s="2") as (base, _pid):
        base = base.replace("http://", "ws://")

        async def run() -> tuple[list[dict], int | None]:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)  # a client's small receive buffer
            sock.connect(("127.0.0.1", int(base.rsplit(":", 1)[1])))
            url = ws_url(base, key=None, hop=0.1, top_k=100)  # no compression: records keep their size
            async with websockets.connect(url, sock=sock, max_queue=1, compression=None, max_size=None) as ws:
                for c in chunks(pcm, 5.0):
                    await ws.send(c)
                await ws.send('{"type": "end"}')
                await asyncio.to_thread(wait_closed, base, 90.0)  # reading nothing meanwhile
                return await read_all(ws), ws.close_code

        recs, code = asyncio.run(run())
        assert code == 1008 and recs[-1]["type"] == "error" and recs[-1]["error"]["reason"] == "slow_consumer", (
            code, len(recs), recs[-1] if recs else None)
        assert len(of(recs, "segment")) < 2990 and not of(recs, "summary")
        assert healthy(base)["status"] == "ok"


def test_page_route_still_answers_while_streams_run(server, scene):
    """A stream does not take the REST API's inference slots."""
    pcm, _ = scene

    async def run() -> int:
        async with websockets.connect(ws_url(server)) as ws:
            for c in chunks(pcm[: 4 * RATE * 2]):
                await ws.send(c)
            dog = Path(esc50_clip("dog", 2)).read_bytes()
            async with httpx.AsyncClient() as client:
                r = await client.post(server.replace("ws://", "http://") + "/v1/predict", content=dog,
                                      headers={"X-API-Key": "k1"}, timeout=60)
            await ws.send('{"type": "end"}')
            async for _ in ws:
                pass
            return r.status_code

    assert asyncio.run(run()) == 200
