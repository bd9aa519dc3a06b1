"""Load test of `earshot serve`: throughput and latency under N clients, then overload at 4x the limit.

Starts a real server in a subprocess, posts 5 s ESC-50 clips, prints figures (no assertions):

    python benchmarks/serve.py [--clients 8] [--seconds 20] [--port 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EARSHOT_SHARED", ROOT.parent / "shared"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clips(n: int = 16) -> list[bytes]:
    files = sorted((SHARED / "data" / "esc50" / "audio").glob("*.wav"))[:: max(1, 600 // n)][:n]
    return [f.read_bytes() for f in files]


def start_server(port: int, env: dict[str, str]) -> subprocess.Popen:
    code = f"from earshot.serve import run; run('mn04-as', '127.0.0.1', {port}, log_level='warning')"
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **env})
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json()["models_loaded"]:
                return proc
        except (httpx.HTTPError, ValueError):
            pass
        if proc.poll() is not None:
            raise SystemExit("server exited during startup")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become ready")


async def load(base: str, data: list[bytes], clients: int, seconds: float) -> dict:
    """`clients` loops posting clips for `seconds`; returns latencies by status."""
    lat: dict[int, list[float]] = {}
    errors: list[str] = []
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as c:

        async def worker(i: int) -> None:
            k = i
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = await c.post("/v1/predict", content=data[k % len(data)], params={"title": f"clip{k}.wav"})
                    lat.setdefault(r.status_code, []).append(time.perf_counter() - t0)
                except httpx.HTTPError as e:
                    errors.append(type(e).__name__)
                k += clients

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        wall = time.perf_counter() - t0
    return {"lat": lat, "errors": errors, "wall": wall}


def report(title: str, res: dict) -> None:
    lat, wall = res["lat"], res["wall"]
    total = sum(len(v) for v in lat.values())
    ok = lat.get(200, [])
    print(f"\n== {title}")
    print(f"  requests {total} in {wall:.1f} s; 200: {len(ok)} ({len(ok) / wall:.1f} req/s)", end="")
    print("".join(f"; {s}: {len(v)}" for s, v in sorted(lat.items()) if s != 200), end="")
    print(f"; client errors: {len(res['errors'])}")
    for status, values in sorted(lat.items()):
        a = np.asarray(values) * 1000
        p50, p95, p99 = np.percentile(a, [50, 95, 99])
        print(f"  {status}: p50 {p50:.0f} ms  p95 {p95:.0f} ms  p99 {p99:.0f} ms  max {a.max():.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--timeout", type=float, default=10.0, help="server request timeout (EARSHOT_REQUEST_TIMEOUT_S)")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    port = args.port or free_port()
    env = {"EARSHOT_REQUEST_TIMEOUT_S": str(args.timeout)}
    env.setdefault("EARSHOT_MODEL_MIRROR", str(SHARED / "weights"))
    env.setdefault("EARSHOT_HOME", os.environ.get("EARSHOT_HOME", str(ROOT / ".cache" / "earshot")))
    data = clips()
    proc = start_server(port, env)
    base = f"http://127.0.0.1:{port}"
    try:
        health = httpx.get(base + "/healthz").json()
        limit = health["inference_slots"]
        print(
            f"server: {os.cpu_count()} cores, admission limit {limit} (running + queue), "
            f"timeout {args.timeout:g} s; {len(data)} distinct 5 s clips"
        )
        asyncio.run(load(base, data, 2, 2.0))  # warm-up
        report(
            f"steady: {args.clients} clients, {args.seconds:g} s",
            asyncio.run(load(base, data, args.clients, args.seconds)),
        )
        over = 4 * limit
        res = asyncio.run(load(base, data, over, args.seconds))
        report(f"overload: {over} clients (4x the limit), {args.seconds:g} s", res)
        slowest = max((max(v) for v in res["lat"].values()), default=0.0)
        print(
            f"  slowest answer {slowest:.2f} s vs timeout {args.timeout:g} s"
            f" -> {'within' if slowest <= args.timeout + 0.5 else 'PAST'} the timeout"
        )
        t0 = time.perf_counter()
        r = httpx.post(base + "/v1/predict", content=data[0], timeout=30)
        print(
            f"\n== recovery: first request after the overload -> {r.status_code} in "
            f"{(time.perf_counter() - t0) * 1000:.0f} ms"
        )
        metrics = httpx.get(base + "/metrics").text
        for line in metrics.splitlines():
            if line.startswith(("earshot_rejected_total", "earshot_http_in_flight")):
                print("  " + line)
        print(json.dumps({"health": httpx.get(base + "/healthz").json()}))
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
