"""Throughput of the object-storage pipeline vs direct classification of the same files.

N five-second clips are cut from real ESC-50 clips (a random 5 s span of two concatenated clips, so every file
is distinct). Measured in one run, objects/s:
  direct   clf.predict_many over the local paths (what `earshot predict` does)
  local    earshot.batch folder -> folder (ledger + atomic per-object result files), 1 and 2 workers
  s3       earshot.batch s3:// -> s3:// on a local moto server subprocess, 1 and 2 workers
and the pipeline's overhead relative to direct: direct_rate / pipeline_rate - 1.

    python benchmarks/pipeline.py [--n 1000] [--skip-s3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EARSHOT_SHARED", ROOT.parent / "shared")).resolve()
os.environ.setdefault("EARSHOT_MODEL_MIRROR", str(SHARED / "weights"))
os.environ.setdefault("EARSHOT_HOME", str(ROOT / ".cache" / "earshot"))


def make_clips(folder: Path, n: int, seed: int = 0) -> list[Path]:
    clips = sorted((SHARED / "data" / "esc50" / "audio").glob("*.wav"))
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        a, b = (clips[int(j)] for j in rng.integers(len(clips), size=2))
        ya, sr = sf.read(a, dtype="float32")
        yb, _ = sf.read(b, dtype="float32")
        y = np.concatenate([ya, yb])
        start = int(rng.integers(0, len(y) - 5 * sr))
        p = folder / f"clip {i:05d}.wav"
        sf.write(p, y[start : start + 5 * sr], sr)
        paths.append(p)
    return paths


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto server did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--skip-s3", action="store_true")
    a = ap.parse_args()

    import earshot
    from earshot.batch import batch

    clf = earshot.load("mn04-as")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        paths = make_clips(tmp / "src", a.n)
        print(f"made {a.n} clips in {time.perf_counter() - t:.1f}s", file=sys.stderr)

        for p in paths[:20]:  # warm up the session and the page cache
            clf.predict(str(p))
        t = time.perf_counter()
        preds = list(clf.predict_many([str(p) for p in paths], top_k=5))
        direct = a.n / (time.perf_counter() - t)
        assert all(p.ok for p in preds)
        rows.append(("direct predict_many", None, direct))
        t = time.perf_counter()
        for p in paths:
            clf.predict(str(p), top_k=5)
        rows.append(("direct predict (one by one)", None, a.n / (time.perf_counter() - t)))

        for w in (1, 2, 3):
            t = time.perf_counter()
            s = batch(tmp / "src", tmp / f"out{w}", model=clf, workers=w, ledger=tmp / f"l{w}.sqlite",
                      progress=False)
            rows.append((f"local batch, {w} worker(s)", w, a.n / (time.perf_counter() - t)))
            assert s["done"] == a.n, s

        if not a.skip_s3:
            proc, url = start_moto()
            try:
                os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                                  AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=url)
                import boto3

                c = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
                c.create_bucket(Bucket="bench")
                for p in paths:
                    c.put_object(Bucket="bench", Key="in/" + p.name, Body=p.read_bytes())
                for w in (1, 2):
                    t = time.perf_counter()
                    s = batch("s3://bench/in/", f"s3://bench/out{w}/", model=clf, workers=w,
                              ledger=tmp / f"s3l{w}.sqlite", progress=False)
                    rows.append((f"s3 (moto) batch, {w} worker(s)", w, a.n / (time.perf_counter() - t)))
                    assert s["done"] == a.n, s
            finally:
                proc.kill()
                proc.wait()

    print(f"\nN = {a.n} five-second clips, {os.cpu_count()} CPUs, model {clf.name}")
    print(f"{'path':34s} {'objects/s':>10s} {'overhead vs direct':>20s}")
    for name, _, rate in rows:
        over = "" if name.startswith("direct predict_many") else f"{(direct / rate - 1) * 100:+.0f}%"
        print(f"{name:34s} {rate:10.1f} {over:>20s}")
    print(json.dumps({name: round(rate, 2) for name, _, rate in rows}))


if __name__ == "__main__":
    main()
