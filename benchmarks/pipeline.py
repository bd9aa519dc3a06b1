"""Throughput of the object-storage pipeline vs direct classification of the same files, like with like.

N five-second clips are cut from real ESC-50 clips (a random 5 s span of two concatenated clips, so every file
is distinct). Objects/s of:
  direct   clf.predict_many(workers=W) over the local paths (`earshot predict` uses W = cores)
  local    earshot.batch folder -> folder (ledger + atomic per-object result files) with W classifier threads
  s3       earshot.batch s3:// -> s3:// on a local moto server subprocess (which takes CPU from the classifier)
for W = 1, cores and cores + 1. Every configuration runs once per round, rounds interleave them so that a change
in background load hits all of them alike, and dirty pages are written out (sync) before each run. Reported: the
median rate over rounds and the median per-round overhead of each pipeline row, `direct_rate / rate - 1`, against
direct with the same W ("same W") and against `earshot predict` (W = cores), and the CPU time this process spent per
object (the moto server's is not counted): on a machine shared with other work the rates move with the load, the
CPU per object much less. Each run also records how much of the cores other processes took; the figures come
from the rounds in which that stayed under 10 % in every local run (all rounds, with a warning, when none did).

    python benchmarks/pipeline.py [--n 1000] [--rounds 3] [--skip-s3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import soundfile as sf
from _common import DATA


def make_clips(folder: Path, n: int, seed: int = 0) -> list[Path]:
    clips = sorted((DATA / "esc50" / "audio").glob("*.wav"))
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
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-s3", action="store_true")
    ap.add_argument("--tmpfs", action="store_true", help="also batch into /dev/shm (tmpfs): no inode or fsync cost "
                    "from a disk file system, to tell that cost apart from the rest of the pipeline")
    a = ap.parse_args()

    import earshot
    from earshot.batch import batch

    cores = os.cpu_count() or 1
    threads = sorted({1, cores, cores + 1})
    clf = earshot.load("mn04-as")
    moto = None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        paths = make_clips(tmp / "src", a.n)
        print(f"made {a.n} clips in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        for w in threads:  # warm up both sessions and the page cache
            assert all(p.ok for p in clf.predict_many([str(p) for p in paths[:20]], workers=w))

        sources = [str(p) for p in paths]

        def direct(w: int, tag: str) -> None:
            assert all(p.ok for p in clf.predict_many(sources, top_k=5, workers=w))

        def one_by_one(tag: str) -> None:
            for src in sources:
                clf.predict(src, top_k=5)

        def run_batch(src: str, out: str, w: int, tag: str) -> None:
            s = batch(src, out + tag + "/", model=clf, workers=w, ledger=tmp / f"{tag}.sqlite", progress=False)
            assert s["done"] == a.n, s

        runs: dict[str, Callable[[str], None]] = {f"direct predict_many, W={w}": partial(direct, w) for w in threads}
        runs["direct predict, one by one"] = one_by_one
        runs.update({f"local batch, W={w}": partial(run_batch, str(tmp / "src"), f"{tmp}/", w) for w in threads})
        if a.tmpfs:
            shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
            runs[f"local batch -> tmpfs, W={cores}"] = partial(run_batch, str(tmp / "src"), f"{shm}/", cores)
        if not a.skip_s3:
            moto, url = start_moto()
            os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                              AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=url)
            import boto3

            s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
            s3.create_bucket(Bucket="bench")
            for p in paths:
                s3.put_object(Bucket="bench", Key="in/" + p.name, Body=p.read_bytes())
            runs.update({f"s3 (moto) batch, W={w}": partial(run_batch, "s3://bench/in/", "s3://bench/", w)
                         for w in threads})
        try:
            rates: dict[str, list[float]] = {name: [] for name in runs}
            cpu: dict[str, list[float]] = {name: [] for name in runs}  # this process's CPU ms per object
            other: dict[str, list[float]] = {name: [] for name in runs}  # other processes' share of the cores
            for r in range(a.rounds):
                for i, (name, run) in enumerate(runs.items()):
                    os.sync()
                    t, cpu0, busy = time.perf_counter(), time.process_time(), busy_seconds()
                    run(f"r{r}c{i}")
                    wall, own = time.perf_counter() - t, time.process_time() - cpu0
                    rates[name].append(a.n / wall)
                    cpu[name].append(own * 1000 / a.n)
                    other[name].append(max(0.0, busy_seconds() - busy - own) / (wall * cores))
        finally:
            if moto is not None:
                moto.kill()
                moto.wait()
            if a.tmpfs:
                shutil.rmtree(shm, ignore_errors=True)

    # Rounds in which other processes (not the moto server) took under 10 % of the cores in every local run.
    clean = [r for r in range(a.rounds) if all(v[r] < 0.1 for name, v in other.items() if "s3" not in name)]
    use = clean or list(range(a.rounds))

    def med(v: list[float]) -> float:
        return statistics.median([v[r] for r in use])

    def overhead(name: str, ref: str) -> str:
        return f"{med([d / x - 1 for d, x in zip(rates[ref], rates[name])]) * 100:+.0f}%"

    predict = f"direct predict_many, W={cores}"
    print(f"\nN = {a.n} five-second clips, {cores} CPUs, model {clf.name}, median of rounds {use} of {a.rounds}"
          + ("" if clean else " (no round ran without other load: figures are unreliable)"))
    print(f"{'path':32s} {'objects/s':>10s} {'vs same W':>10s} {'vs predict':>11s} {'CPU ms/object':>14s} "
          f"{'other load':>11s}")
    for name in runs:
        same = re.sub(r"^.*batch.*, W=", "direct predict_many, W=", name)
        cells = ("", "") if "batch" not in name else (overhead(name, same), overhead(name, predict))
        print(f"{name:32s} {med(rates[name]):10.1f} {cells[0]:>10s} {cells[1]:>11s} {med(cpu[name]):14.2f} "
              f"{med(other[name]) * 100:10.0f}%")
    print(json.dumps({"objects_per_s": {name: [round(x, 1) for x in v] for name, v in rates.items()},
                      "other_load": {name: [round(x, 2) for x in v] for name, v in other.items()}}))


def busy_seconds() -> float:
    """CPU seconds all processes have spent so far (Linux /proc/stat; 0 elsewhere): what other processes take
    during a run shows as this minus our own CPU time."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


if __name__ == "__main__":
    main()
