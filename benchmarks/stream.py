"""Live streams: latency from sample arrival to record (CLI and WebSocket) and the real-time WebSocket streams one
core sustains. Prints figures, asserts nothing.

    python benchmarks/stream.py [--seconds 20] [--streams 10,20,30,40] [--model mn04-as]

- latency: a 16 kHz recording (ESC-50 clips back to back) is fed at real time in 20 ms chunks, to `earshot stream -`
  on a pipe and to `/v1/stream` of a running server; for each segment record, latency = the time the record is read
  minus the time the last sample of its window was sent. p50/p99 against the target hop + 50 ms.
- concurrency: the server is pinned to one core (its ONNX Runtime to one thread), the clients to the other; N
  streams send real-time audio at once (window 1 s, hop 0.5 s). A load is sustained when every stream keeps up:
  its records' latency stays bounded (p99 under hop + 1 s) and none ends with an error. The largest N sustained
  is the figure (target >= 20 a core with mn04-as).

- long file as bytes: `--file-minutes` (60) of the same recording as a 16 kHz MP3, its bytes sent as fast as the
  server takes them (`format=file`: decoded by the server as they arrive), against the same audio as s16le PCM in
  the same run: wall, times real time, and the server's resident memory (largest of samples every 0.1 s) above
  its size before the stream.

Keyword accuracy per held-out speaker, with and without each lever, is `benchmarks/keywords.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
import soxr
from _common import DATA, ROOT

RATE = 16000
CHUNK_S = 0.02
HOP = 0.5


def recording(seconds: float) -> bytes:
    """`seconds` of 16 kHz s16le made of ESC-50 clips (sorted by name) back to back."""
    parts, total = [], 0
    for f in sorted((DATA / "esc50" / "audio").glob("*.wav")):
        y, sr = sf.read(f, dtype="float32")
        y = soxr.resample(y, sr, RATE)
        parts.append(y)
        total += len(y)
        if total >= seconds * RATE:
            break
    x = np.concatenate(parts)[: int(seconds * RATE)]
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def percentiles(xs: list[float]) -> str:
    a = np.asarray(xs) * 1000
    return f"p50 {np.percentile(a, 50):6.1f} ms  p99 {np.percentile(a, 99):6.1f} ms  (n={len(a)})"


async def paced_send(send, pcm: bytes, t0: float) -> None:
    """Each 20 ms chunk is sent when its last sample would have been captured (t0 + its end time), as a live
    source delivers it: a record can then not come before the audio it scores."""
    n = int(RATE * CHUNK_S) * 2
    for i in range(0, len(pcm), n):
        end = (i + len(pcm[i : i + n])) / 2 / RATE
        await asyncio.sleep(max(0.0, t0 + end - time.perf_counter()))
        await send(pcm[i : i + n])


async def cli_latency(pcm: bytes, model: str) -> list[float]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "earshot.cli", "stream", "-", "--model", model, "--raw-format", "s16le", "--rate",
        str(RATE), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert proc.stdin and proc.stdout
    await asyncio.sleep(3.0)  # let it import and load the model before the clock starts
    t0 = time.perf_counter()

    async def send(b: bytes) -> None:
        proc.stdin.write(b)
        await proc.stdin.drain()

    async def feed() -> None:
        await paced_send(send, pcm, t0)
        proc.stdin.close()

    task = asyncio.create_task(feed())
    lags = []
    async for line in proc.stdout:
        r = json.loads(line)
        if r["type"] == "segment":
            lags.append(time.perf_counter() - t0 - r["end"])
    await task
    await proc.wait()
    return lags


async def ws_stream(url: str, pcm: bytes, lags: list[float], errors: list[str]) -> None:
    import websockets

    async with websockets.connect(url, max_size=None) as ws:
        ready = json.loads(await ws.recv())
        if ready["type"] != "ready":
            errors.append(ready["error"]["reason"])
            return
        t0 = time.perf_counter()

        async def feed() -> None:
            await paced_send(ws.send, pcm, t0)
            await ws.send('{"type": "end"}')

        task = asyncio.create_task(feed())
        async for m in ws:
            r = json.loads(m)
            if r["type"] == "segment":
                lags.append(time.perf_counter() - t0 - r["end"])
            elif r["type"] == "error":
                errors.append(r["error"]["reason"])
        await task


async def ws_send_all(url: str, frames: list[bytes]) -> dict:
    """Send every frame as fast as the server reads them, then `end`; the summary record (or the error)."""
    import websockets

    async with websockets.connect(url, max_size=None) as ws:
        async def send() -> None:
            for f in frames:
                await ws.send(f)
            await ws.send(json.dumps({"type": "end"}))

        task = asyncio.create_task(send())
        last: dict = {}
        async for m in ws:
            last = json.loads(m)
        await task
        return last


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def long_file(url: str, pid: int, pcm: bytes, minutes: float) -> None:
    """The `--file-minutes` phase (see the module doc)."""
    import tempfile
    import threading

    reps = int(np.ceil(minutes * 60 * RATE * 2 / len(pcm)))
    audio = np.frombuffer(pcm * reps, "<i2")[: int(minutes * 60 * RATE)]
    with tempfile.TemporaryDirectory() as tmp:
        mp3 = Path(tmp) / "long.mp3"
        sf.write(mp3, audio.astype(np.float32) / 32768, RATE, subtype="MPEG_LAYER_III")
        data = mp3.read_bytes()
    cases = [("s16le PCM", url, [audio[i : i + RATE].tobytes() for i in range(0, len(audio), RATE)]),
             ("MP3 bytes", url.replace("format=s16le", "format=file"),
              [data[i : i + 65536] for i in range(0, len(data), 65536)])]
    print(f"long file, {minutes:g} min of audio sent as fast as the server takes it ({len(data) / 1e6:.1f} MB MP3):")
    for name, u, frames in cases:
        base, peak, done = rss_mb(pid), [0.0], threading.Event()

        def watch(base=base, peak=peak, done=done) -> None:
            while not done.wait(0.1):
                peak[0] = max(peak[0], rss_mb(pid) - base)

        w = threading.Thread(target=watch)
        w.start()
        t = time.perf_counter()
        last = asyncio.run(ws_send_all(u, frames))
        wall = time.perf_counter() - t
        done.set()
        w.join()
        dur = last.get("duration") or 0.0
        print(f"  {name:10s} {wall:6.1f} s = {dur / wall:6.0f}x real time, {dur / 60:.1f} min scored, server RSS "
              f"+{peak[0]:.0f} MB over {base:.0f} MB; last record {last.get('type')} "
              f"{(last.get('error') or {}).get('reason', '')}")


def start_server(model: str, port: int, cpu: int | None, **env: str) -> subprocess.Popen:
    e = {**os.environ, **{"EARSHOT_" + k.upper(): v for k, v in env.items()}}
    code = f"from earshot.serve import run; run({model!r}, '127.0.0.1', {port}, log_level='warning')"
    cmd = [sys.executable, "-c", code]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    proc = subprocess.Popen(cmd, env=e)
    for _ in range(1200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json()["models_loaded"]:
                return proc
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="audio per stream")
    ap.add_argument("--streams", default="10,20,30,40", help="concurrent streams to try")
    ap.add_argument("--model", default="mn04-as")
    ap.add_argument("--port", type=int, default=8791)
    ap.add_argument("--file-minutes", type=float, default=60.0, help="long-file phase (0: skip)")
    args = ap.parse_args()
    os.environ.setdefault("EARSHOT_MODEL_MIRROR", str(ROOT.parent / "shared" / "weights"))
    pcm = recording(args.seconds)
    cores = os.cpu_count() or 1
    print(f"{args.seconds:g} s of audio per stream, window 1 s, hop {HOP} s, {cores} cores, model {args.model}")

    lags = asyncio.run(cli_latency(pcm, args.model))
    print(f"latency CLI (stdin pipe)     {percentiles(lags)}   target p50 <= {(HOP + 0.05) * 1000:.0f} ms")

    pinned = 0 if cores > 1 else None
    proc = start_server(args.model, args.port, pinned, ort_threads="1", workers="1", max_streams="500")
    if pinned is not None:
        os.sched_setaffinity(0, {1})
    url = f"ws://127.0.0.1:{args.port}/v1/stream?rate={RATE}&format=s16le&window=1&hop={HOP}"  # the served model
    try:
        lags, errors = [], []
        asyncio.run(ws_stream(url, pcm, lags, errors))
        print(f"latency WebSocket (1 stream) {percentiles(lags)}   errors {errors or 'none'}")
        if args.file_minutes > 0:
            long_file(url, proc.pid, pcm, args.file_minutes)
        where = "one core (server pinned to cpu 0, clients on cpu 1)" if pinned is not None else "one core"
        print(f"concurrent real-time streams on {where}:")
        best = 0
        for n in (int(x) for x in args.streams.split(",")):
            per: list[list[float]] = [[] for _ in range(n)]
            errs: list[str] = []

            async def many(per=per, errs=errs, n=n) -> None:
                await asyncio.gather(*(ws_stream(url, pcm, per[i], errs) for i in range(n)))

            t = time.perf_counter()
            asyncio.run(many())
            wall = time.perf_counter() - t
            flat = [x for p in per for x in p]
            p99 = float(np.percentile(flat, 99)) if flat else float("inf")
            ok = not errs and p99 < HOP + 1.0 and all(len(p) == len(per[0]) for p in per)
            best = max(best, n) if ok else best
            print(f"  {n:4d} streams  {percentiles(flat)}  wall {wall:5.1f} s for {args.seconds:g} s audio  "
                  f"errors {len(errs)}  {'sustained' if ok else 'NOT sustained'}")
        print(f"streams sustained on one core: {best} (target >= 20)")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
