"""Load test of `earshot serve`: throughput and latency under N clients, overload at 4x the limit, hostile requests.

Starts a real server in a subprocess, posts 5 s ESC-50 clips, prints figures (no assertions):

    python benchmarks/serve.py [--clients 8] [--seconds 20] [--client raw|httpx] [--port 0] [--pin]

- steady: `--clients` closed-loop clients (fewer than the admission limit): the answered rate (req/s).
- overload: 4x the admission limit, every client retrying at once: the answered rate and its ratio to the
  steady rate (goodput), and the latency of 200s and of 503s separately.
- The two phases alternate in `--slices` slices each, so that on a machine shared with other work both see the
  same background load; each phase also reports the server's own CPU seconds (from /proc), per answer and per
  rejection, which other work does not change.
- `--pin`: the server on one CPU and the load generator on the others, so that the clients' own work (a retry
  storm's included) is not taken from the server: the overload figure is then what rejecting costs the server.
- hostile: server RSS around a timeline request with a microscopic hop (422), a 173 MB upload from urllib (413
  read by the client, or a reset), and a timeline that runs past the deadline: when the 504 comes and how long
  the server's CPU stays busy after it.

The default client speaks HTTP/1.1 on asyncio streams (keep-alive, body sent whole before the answer is read,
as httpx does) so that the load generator, which shares the cores, costs little; `--client httpx` uses httpx.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EARSHOT_SHARED", ROOT.parent / "shared"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clips(n: int = 16) -> list[bytes]:
    files = sorted((SHARED / "data" / "esc50" / "audio").glob("*.wav"))[:: max(1, 600 // n)][:n]
    return [f.read_bytes() for f in files]


def start_server(port: int, env: dict[str, str], cpus: set[int] | None = None) -> subprocess.Popen:
    """`earshot serve` in a child process (on `cpus` only, when given), once its default model is loaded."""
    code = f"from earshot.serve import run; run('mn04-as', '127.0.0.1', {port}, log_level='warning')"
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **env}, preexec_fn=pin)
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


class RawClient:
    """One keep-alive HTTP/1.1 connection; `post` sends the whole request, then reads the whole answer."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, target: str, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        try:
            self.writer.write(head + body)
            await self.writer.drain()
            lines = (await self.reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
            status = int(lines[0].split()[1])
            headers = dict(line.lower().split(b": ", 1) for line in lines[1:] if b": " in line)
            await self.reader.readexactly(int(headers.get(b"content-length", b"0")))
        except (OSError, asyncio.IncompleteReadError, ValueError):
            await self.close()
            raise
        if headers.get(b"connection") == b"close":
            await self.close()
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def load(base: str, data: list[bytes], clients: int, seconds: float, kind: str = "raw",
               retry_after: float = 0.0) -> dict:
    """`clients` closed loops posting clips for `seconds`; returns latencies by status and the client's CPU.
    `retry_after`: seconds a client waits after a 503 before its next request (0: it retries at once)."""
    lat: dict[int, list[float]] = {}
    errors: list[str] = []
    stop = time.perf_counter() + seconds
    host, port = base.removeprefix("http://").split(":")
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    cpu0 = time.process_time()
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as hc:

        async def worker(i: int) -> None:
            k = i
            raw = RawClient(host, int(port))
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    if kind == "raw":
                        status = await raw.post(f"/v1/predict?title=clip{k}.wav", data[k % len(data)])
                    else:
                        r = await hc.post("/v1/predict", content=data[k % len(data)], params={"title": f"clip{k}.wav"})
                        status = r.status_code
                    lat.setdefault(status, []).append(time.perf_counter() - t0)
                    if status == 503 and retry_after:
                        await asyncio.sleep(retry_after)
                except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, ValueError) as e:
                    errors.append(type(e).__name__)
                k += clients
            await raw.close()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        wall = time.perf_counter() - t0
    return {"lat": lat, "errors": errors, "wall": wall, "client_cpu": time.process_time() - cpu0}


def rate(res: dict, status: int = 200) -> float:
    return len(res["lat"].get(status, [])) / res["wall"]


def percentiles(values: list[float]) -> str:
    a = np.asarray(values) * 1000
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return f"p50 {p50:.0f} ms  p95 {p95:.0f} ms  p99 {p99:.0f} ms  max {a.max():.0f} ms"


def report(title: str, res: dict) -> None:
    lat, wall = res["lat"], res["wall"]
    total = sum(len(v) for v in lat.values())
    print(f"\n== {title}")
    print(f"  requests {total} in {wall:.1f} s; 200: {len(lat.get(200, []))} ({rate(res):.1f} req/s)", end="")
    print("".join(f"; {s}: {len(v)}" for s, v in sorted(lat.items()) if s != 200), end="")
    print(f"; client errors: {len(res['errors'])}; client CPU {res['client_cpu']:.1f} s")
    for status, values in sorted(lat.items()):
        print(f"  {status}: {percentiles(values)}")
    if "server_cpu" in res:
        ok = len(lat.get(200, []))
        print(f"  server CPU {res['server_cpu']:.1f} s, {ok / max(res['server_cpu'], 1e-9):.0f} answers per CPU second")


def merge(parts: list[dict]) -> dict:
    """One result from the slices of a phase."""
    out: dict = {"lat": {}, "errors": [], "wall": 0.0, "client_cpu": 0.0, "server_cpu": 0.0}
    for p in parts:
        for status, values in p["lat"].items():
            out["lat"].setdefault(status, []).extend(values)
        out["errors"] += p["errors"]
        for key in ("wall", "client_cpu", "server_cpu"):
            out[key] += p.get(key, 0.0)
    return out


def measured(pid: int, fn) -> dict:
    """`fn()`'s result with the server's CPU seconds spent meanwhile."""
    cpu0 = proc_stat(pid)[0]
    res = fn()
    res["server_cpu"] = proc_stat(pid)[0] - cpu0
    return res


def proc_stat(pid: int) -> tuple[float, float]:
    """(CPU seconds, RSS MB) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
    return cpu, rss


def busy_for(pid: int, window: float = 0.5, busy: float = 0.05, within: float = 120.0) -> float:
    """Seconds from now until the process starts a `window` with less than `busy` CPU seconds in it."""
    t0 = time.perf_counter()
    samples = [(t0, proc_stat(pid)[0])]
    while samples[-1][0] - t0 < within:
        time.sleep(0.05)
        now = (time.perf_counter(), proc_stat(pid)[0])
        samples.append(now)
        then = next((s for s in reversed(samples) if now[0] - s[0] >= window), None)
        if then is not None and now[1] - then[1] < busy:
            return then[0] - t0
    return float("inf")


class Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        k = min(len(b), self.left)
        b[:k] = bytes(k)
        self.left -= k
        return k


def hostile(base: str, pid: int, clip: bytes, timeout: float) -> None:
    print("\n== hostile requests")
    cpu, rss0 = proc_stat(pid)
    t0 = time.perf_counter()
    r = httpx.post(
        base + "/v1/predict", params={"timeline": "true", "window": 1, "hop": 1e-9}, content=clip, timeout=120
    )
    err = r.json()["error"]["message"] if r.status_code >= 400 else ""
    print(
        f"  microscopic hop: {r.status_code} in {(time.perf_counter() - t0) * 1000:.0f} ms ({err}); server RSS "
        f"{rss0:.0f} MB before, {proc_stat(pid)[1]:.0f} MB after"
    )
    size = 173 << 20
    req = urllib.request.Request(base + "/v1/predict", data=Zeros(size), method="POST",
                                 headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})
    t0 = time.perf_counter()
    try:
        urllib.request.urlopen(req, timeout=120)
        outcome = "200?"
    except urllib.error.HTTPError as e:
        outcome = f"{e.code} {json.loads(e.read())['error']['reason']}"
    except OSError as e:
        outcome = f"client error {e!r}"
    print(f"  173 MB upload with urllib: {outcome} in {time.perf_counter() - t0:.2f} s")
    buf = io.BytesIO()
    sf.write(buf, np.zeros(1200 * 16000, np.float32), 16000, format="FLAC", subtype="PCM_16")
    t0 = time.perf_counter()
    r = httpx.post(
        base + "/v1/predict",
        params={"timeline": "true", "window": 1, "hop": 0.02},
        content=buf.getvalue(),
        timeout=timeout + 60,
    )
    answered = time.perf_counter() - t0
    cpu0 = proc_stat(pid)[0]
    after = busy_for(pid)
    time.sleep(max(0.0, 2.0 - (time.perf_counter() - t0 - answered)))
    print(
        f"  timeline past the deadline (1200 s, hop 0.02 s): {r.status_code} after {answered:.2f} s "
        f"(timeout {timeout:g} s); server idle {after:.2f} s after the answer (first 0.5 s with < 0.05 CPU s), "
        f"{proc_stat(pid)[0] - cpu0:.2f} CPU s in the 2 s after it; RSS {proc_stat(pid)[1]:.0f} MB"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0, help="per phase")
    ap.add_argument("--slices", type=int, default=5, help="alternating slices per phase")
    ap.add_argument("--timeout", type=float, default=10.0, help="server request timeout (EARSHOT_REQUEST_TIMEOUT_S)")
    ap.add_argument("--client", choices=("raw", "httpx"), default="raw")
    ap.add_argument("--no-hostile", action="store_true", help="skip the hostile requests")
    ap.add_argument("--retry", choices=("now", "after"), default="now",
                    help="overload clients retry a 503 at once (now) or after its Retry-After (after)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--pin", action="store_true",
                    help="server on the first CPU, load generator on the others: what the server alone sustains, "
                         "without the clients' own CPU (retry loops included) taken from it")
    args = ap.parse_args()
    port = args.port or free_port()
    env = {"EARSHOT_REQUEST_TIMEOUT_S": str(args.timeout)}
    env.setdefault("EARSHOT_MODEL_MIRROR", str(SHARED / "weights"))
    env.setdefault("EARSHOT_HOME", os.environ.get("EARSHOT_HOME", str(ROOT / ".cache" / "earshot")))
    data = clips()
    server_cpus = None
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--pin needs two CPUs")
        server_cpus = {cpus[0]}
        os.sched_setaffinity(0, set(cpus[1:]))
    proc = start_server(port, env, server_cpus)
    base = f"http://127.0.0.1:{port}"
    try:
        health = httpx.get(base + "/healthz").json()
        limit = health["inference_slots"]
        clients = min(args.clients, limit - 1)  # steady: under the admission limit
        print(
            f"server: {health['workers']} workers x {health['ort_threads']} threads"
            f"{' on 1 pinned CPU, clients on the others' if args.pin else f', {os.cpu_count()} CPUs shared'}, "
            f"admission limit {limit} (running + queue), "
            f"timeout {args.timeout:g} s; {len(data)} distinct 5 s clips; {args.client} client; "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        asyncio.run(load(base, data, 2, 2.0, args.client))  # warm-up
        over, part = 4 * limit, args.seconds / args.slices
        slices: dict[str, list[dict]] = {"steady": [], "overload": []}
        for _ in range(args.slices):
            for name, n in (("steady", clients), ("overload", over)):
                wait = float(args.retry == "after" and name == "overload") * health.get("retry_after_s", 1)
                slices[name].append(measured(proc.pid, lambda n=n, w=wait: asyncio.run(
                    load(base, data, n, part, args.client, w))))
        steady, res = merge(slices["steady"]), merge(slices["overload"])
        report(f"steady: {clients} clients, {args.seconds:g} s in {args.slices} slices", steady)
        report(f"overload: {over} clients (4x the limit, retrying {args.retry}), {args.seconds:g} s in "
               f"{args.slices} slices", res)
        slowest = max((max(v) for v in res["lat"].values()), default=0.0)
        print(
            f"  slowest answer {slowest:.2f} s vs timeout {args.timeout:g} s"
            f" -> {'within' if slowest <= args.timeout + 0.5 else 'PAST'} the timeout"
        )
        rejected = res["lat"].get(503, [])
        print(
            f"  goodput {rate(res):.1f} / {rate(steady):.1f} req/s = {rate(res) / max(rate(steady), 1e-9):.0%} of "
            f"steady; 503s: {len(rejected)}"
            + (f", p50 {np.percentile(rejected, 50) * 1000:.1f} ms, p99 {np.percentile(rejected, 99) * 1000:.1f} ms"
               if rejected else "")
        )
        per_ok = steady["server_cpu"] / max(len(steady["lat"].get(200, [])), 1)
        spare = res["server_cpu"] - per_ok * len(res["lat"].get(200, []))
        print(
            f"  server CPU per answer {per_ok * 1000:.1f} ms (steady); per 503 about "
            f"{max(spare, 0.0) / max(len(rejected), 1) * 1e6:.0f} us (overload CPU beyond its answers)"
        )
        t0 = time.perf_counter()
        r = httpx.post(base + "/v1/predict", content=data[0], timeout=30)
        print(
            f"\n== recovery: first request after the overload -> {r.status_code} in "
            f"{(time.perf_counter() - t0) * 1000:.0f} ms"
        )
        if not args.no_hostile:
            hostile(base, proc.pid, data[0], args.timeout)
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
