"""Beyond one machine, measured on this one: `earshot batch` on the local engine vs Ray (a one-node and a two-node
cluster of real `ray start` processes), a Ray worker killed mid-run, `earshot train --devices 2` vs one process,
and the serverless handler's cold start and peak memory.

Batch: N five-second clips (cut from real ESC-50 clips) in a folder, classified into a folder by the `earshot batch`
command (a fresh process each run, so start-up is included alike). The local engine uses one classifier thread
per core; each Ray cluster holds as many one-CPU actors as the machine has cores (one node with all of them, or
two nodes sharing them), so files/s compare at the same cores. Each engine also runs on 20 files: the difference
of the two runs gives its marginal seconds per file without start-up (connect, ship the bundle, start actors).
Both clusters stay up for the whole section and the engines run in interleaved rounds (median reported).
Kill: the two-node cluster classifies the N files again while one actor process gets SIGKILL after the first
results; lost = inputs without a result, duplicated = inputs with more than one.

DDP: ESC-10 (folds 1-3 → 4), transfer family, a fixed number of head epochs: one process (torch's default
threads, then half the cores' threads) vs `--devices 2` (one thread each on two cores): validation accuracy, total
wall time and the head-training time from the log. Two CPU processes on two cores cannot show a real speed-up
(they share the cores the single process already uses); this checks accuracy and overhead, not scaling.

Serverless: a fresh interpreter imports `earshot.serverless` and handles one S3 event for one clip on a local S3
server (moto), as a Lambda cold start does: wall time to the first result and peak RSS, against Lambda's
1024 MB / 10 s; then a warm invocation in the same process.

    python benchmarks/scale.py [--n 2000] [--rounds 3] [--skip-ddp] [--skip-ray] [--skip-serverless]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from _common import DATA, ROOT, run_child
from pipeline import make_clips, start_moto

sys.path.insert(0, str(ROOT / "tests"))
from raycluster import RayCluster  # noqa: E402

EARSHOT = [sys.executable, "-m", "earshot.cli"]


def results(out: Path) -> dict[str, int]:
    """{input key: number of result files} under a local output folder."""
    got: dict[str, int] = {}
    for p in out.rglob("*.json"):
        rel = p.relative_to(out).as_posix()
        key = rel[: -len(".error.json")] if rel.endswith(".error.json") else rel[: -len(".json")]
        got[key] = got.get(key, 0) + 1
    return got


def timed_batch(src: Path, out: Path, ledger: Path, extra: list[str], env: dict[str, str] | None = None) -> dict:
    t, load = time.perf_counter(), os.getloadavg()[0]
    r = subprocess.run([*EARSHOT, "batch", str(src), "--output", str(out), "--ledger", str(ledger), "--quiet",
                        *extra], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if r.returncode not in (0, 1):
        raise RuntimeError(r.stderr[-3000:])
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    return {"wall": wall, "summary": summary, "load": (load + os.getloadavg()[0]) / 2}


def batch_section(tmp: Path, n: int, rounds: int) -> dict:
    cores = os.cpu_count() or 1
    src, small = tmp / "src", tmp / "small"
    t = time.perf_counter()
    paths = make_clips(src, n)
    small.mkdir()
    for p in paths[:20]:
        shutil.copyfile(p, small / p.name)
    print(f"made {n} clips in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    for name in ("one", "two"):
        (tmp / name).mkdir()
    one, two = (RayCluster(tmp / name, env={"OMP_NUM_THREADS": "1"}) for name in ("one", "two"))
    runs: dict[str, list[dict]] = {}
    try:
        t = time.perf_counter()
        one.start([cores])
        two.start([max(1, cores // 2), max(1, cores - cores // 2)])
        print(f"clusters up in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        engines = {"local": ([], None), "ray, 1 node": (["--engine", "ray", "--address", one.address], one.env),
                   "ray, 2 nodes": (["--engine", "ray", "--address", two.address], two.env)}
        for r in range(rounds):  # rounds interleave the engines: a change of background load hits them alike
            for name, (extra, env) in engines.items():
                tag = f"{name.replace(' ', '').replace(',', '-')}-{r}"
                for label, folder in ((name, src), (name + ", 20 files", small)):
                    row = timed_batch(folder, tmp / f"out-{tag}-{folder.name}", tmp / f"{tag}-{folder.name}.sqlite",
                                      extra, env)
                    runs.setdefault(label, []).append(row)
            print(f"round {r + 1}/{rounds} done", file=sys.stderr)
        kill = killed_run(two, src, tmp, n)
    finally:
        one.stop()
        two.stop()
    rows = {name: median_row(v) for name, v in runs.items()}
    rows["ray, 2 nodes, actor killed"] = kill
    return rows


def median_row(rows: list[dict]) -> dict:
    """The run of median wall time, with every round's wall time and load beside it."""
    ranked = sorted(rows, key=lambda r: r["wall"])
    mid = dict(ranked[len(ranked) // 2])
    mid["walls"] = [round(r["wall"], 2) for r in rows]
    mid["loads"] = [round(r["load"], 1) for r in rows]
    return mid


def killed_run(cluster: RayCluster, src: Path, tmp: Path, n: int) -> dict:
    out, ledger = tmp / "out-kill", tmp / "kill.sqlite"
    cmd = [*EARSHOT, "batch", str(src), "--output", str(out), "--ledger", str(ledger), "--quiet", "--engine", "ray",
           "--address", cluster.address]
    t = time.perf_counter()
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=cluster.env, text=True)
    killed, at = None, 0
    while killed is None and driver.poll() is None:
        actors = cluster.actor_pids(1) or cluster.actor_pids(0)
        at = len(results(out)) if out.exists() else 0
        if actors and at >= n // 10:
            killed = actors[0]
            os.kill(killed, 9)
        time.sleep(0.1)
    stdout, _ = driver.communicate()
    wall = time.perf_counter() - t
    got = results(out)
    names = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    summary = json.loads(stdout[stdout.index("{"):])
    return {"wall": wall, "summary": summary, "killed_pid": killed, "results_at_kill": at,
            "lost": len(names - set(got)), "duplicated": sum(v > 1 for v in got.values()),
            "stray": len(set(got) - names), "load": os.getloadavg()[0]}


def ddp_section(tmp: Path, epochs: int) -> dict:
    esc50 = DATA / "esc50"
    rows = {}
    cores = os.cpu_count() or 1
    for devices, threads in ((1, None), (1, max(1, cores // 2)), (2, None)):
        out = tmp / f"esc10-{devices}-{threads}"
        args = [*EARSHOT, "train", str(esc50), "--out", str(out), "--model", "transfer", "--filter", "esc10=True",
                "--val-fold", "4", "--epochs", str(epochs), *(["--devices", str(devices)] if devices > 1 else [])]
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        t = time.perf_counter()
        r = subprocess.run(args, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t
        if r.returncode:
            raise RuntimeError(r.stderr[-3000:])
        stamps = {m.group(2): float(m.group(1)) for m in re.finditer(r"\[\s*([\d.]+)s\] (split|transfer head)",
                                                                      r.stderr)}
        card = json.loads((out / "card.json").read_text())
        name = f"{devices} process{'es' if devices > 1 else ''}"
        rows[name + (f", {threads} thread{'s' if threads > 1 else ''}" if threads else "")] = {
            "wall": wall, "head_seconds": stamps.get("transfer head", 0.0) - stamps.get("split", 0.0),
            "accuracy": card["metrics"]["accuracy"], "epochs": card["training"]["epochs_run"]}
    return rows


SERVERLESS_CHILD = """
import json, os, re, sys, time
t0 = time.perf_counter()
from earshot import serverless
event = json.loads(sys.argv[1])
first = serverless.handler(event, None)
t1, cold = time.perf_counter(), time.time() - float(sys.argv[2])
warm = serverless.handler(event, None)
t2 = time.perf_counter()
hwm = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
print(json.dumps({"cold": cold, "in_process_first": t1 - t0, "warm": t2 - t1, "peak_mb": hwm,
                  "state": first["results"][0]["state"], "load_seconds": first["model_load_seconds"],
                  "torch": "torch" in sys.modules}))
"""


def serverless_section(tmp: Path) -> dict:
    moto, url = start_moto()
    try:
        import boto3

        env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": url, "EARSHOT_OUTPUT": "s3://bench/results/",
               "EARSHOT_MODEL": "mn04-as"}
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="bench",
                          aws_secret_access_key="bench")
        s3.create_bucket(Bucket="bench")
        clip = sorted((DATA / "esc50" / "audio").glob("*.wav"))[0]
        key = "uploads/first clip.wav"
        s3.put_object(Bucket="bench", Key=key, Body=clip.read_bytes())
        event = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                              "s3": {"bucket": {"name": "bench"}, "object": {"key": urllib.parse.quote_plus(key)}}}]}
        runs = []
        for _ in range(3):
            wall, rss, r = run_child([sys.executable, "-c", SERVERLESS_CHILD, json.dumps(event), repr(time.time())],
                                     env=env)
            if r.returncode:
                raise RuntimeError(r.stderr.decode()[-3000:])
            row = json.loads(r.stdout.decode().strip().splitlines()[-1])
            row["process_wall"] = wall
            row["ru_maxrss_mb"] = rss
            runs.append(row)
        return {"runs": runs}
    finally:
        moto.kill()
        moto.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--skip-ddp", action="store_true")
    ap.add_argument("--skip-serverless", action="store_true")
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    report: dict = {"cores": cores, "n": a.n}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not a.skip_serverless:
            report["serverless"] = serverless_section(tmp)
        if not a.skip_ray:
            report["batch"] = batch_section(tmp, a.n, a.rounds)
        if not a.skip_ddp:
            report["ddp"] = ddp_section(tmp, a.epochs)

    print(f"\n{cores} CPUs, shared with other work ('load avg': the machine's 1-minute load average during a run)")
    if "batch" in report:
        rows = report["batch"]
        local = rows["local"]["wall"]
        local_marginal = (rows["local"]["wall"] - rows["local, 20 files"]["wall"]) / (a.n - 20)
        print(f"\nbatch of {a.n} five-second clips, folder -> folder, {cores} cores in every configuration, median of "
              f"{a.rounds} interleaved rounds (both clusters up throughout)")
        print(f"{'engine':28s} {'files/s':>8s} {'vs local':>9s} {'s/file marginal':>16s} {'start-up s':>11s} "
              f"{'load avg':>9s}")
        for name in ("local", "ray, 1 node", "ray, 2 nodes"):
            if name not in rows:
                continue
            wall = rows[name]["wall"]
            marginal = (wall - rows[name + ", 20 files"]["wall"]) / (a.n - 20)
            start = rows[name + ", 20 files"]["wall"] - 20 * marginal
            print(f"{name:28s} {a.n / wall:8.1f} {local / wall:9.2f} {marginal * 1000:13.2f} ms {start:11.1f} "
                  f"{rows[name]['load']:9.1f}   rounds: {rows[name]['walls']} s at load {rows[name]['loads']}")
        for name in ("ray, 1 node", "ray, 2 nodes"):
            if name in rows:
                m = (rows[name]["wall"] - rows[name + ", 20 files"]["wall"]) / (a.n - 20)
                print(f"Ray overhead per file ({name}): {(m - local_marginal) * 1000:+.2f} ms "
                      f"(marginal, start-up excluded); per-core throughput vs local "
                      f"{local_marginal / m:.2f}x marginal, {local / rows[name]['wall']:.2f}x with start-up")
        k = rows.get("ray, 2 nodes, actor killed")
        if k:
            print(f"actor killed (pid {k['killed_pid']}) after {k['results_at_kill']} results: lost {k['lost']}, "
                  f"duplicated {k['duplicated']}, stray {k['stray']}; {a.n / k['wall']:.1f} files/s; "
                  f"done {k['summary']['done']} failed {k['summary']['failed']}")
    if "ddp" in report:
        print(f"\nESC-10 transfer, {a.epochs} head epochs, folds 1-3 -> 4")
        for name, r in report["ddp"].items():
            print(f"{name:22s} accuracy {r['accuracy']:.4f}  head training {r['head_seconds']:.1f}s  "
                  f"total {r['wall']:.1f}s (export included)")
    if "serverless" in report:
        runs = report["serverless"]["runs"]
        best = min(runs, key=lambda r: r["cold"])
        print("\nserverless handler, fresh process, one S3 event (Lambda budget 1024 MB / 10 s)")
        for r in runs:
            print(f"cold start to first result {r['cold']:.2f}s (after imports {r['in_process_first']:.2f}s, "
                  f"model load {r['load_seconds']:.2f}s), warm {r['warm'] * 1000:.0f} ms, peak RSS "
                  f"{r['peak_mb']:.0f} MB, torch imported: {r['torch']}, {r['state']}")
        print(f"best: {best['cold']:.2f}s / {best['peak_mb']:.0f} MB")
    print(json.dumps(report, default=str))


if __name__ == "__main__":
    main()
