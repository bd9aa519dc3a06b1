"""Embeddings and multi-label heads: `earshot embed` throughput and memory, head training time, pooling choice.

    python benchmarks/embeddings.py [--only embed,heads,rss] [--clips 2000] [--seeds 0,1,2] [--keep DIR]

(a) embed: clips/s of `earshot embed --no-cache` (mn04-as, 1 s windows) on the ESC-10 mixtures of the tests
(b) heads: validation mAP of attention, mean and max pooling on the same mixtures (train on mixtures of folds 1-3
    clips, validate on mixtures of fold 4 clips), a few seeds, and the fit time of each head; chance is the mean
    label prevalence
(c) rss: `earshot embed --no-cache` over `--clips` generated 2 s clips in a child process, its RSS sampled every
    0.25 s: memory must stay flat as the file grows
(d) audioset (not in the default --only): seconds per epoch of the attention head at AudioSet balanced-train
    scale (22 160 clips x 10 x 128 uint8, 527 classes, 1024 units, batches of 500), on random frames
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import DATA  # noqa: E402
from mixtures import build_mixtures  # noqa: E402


def embed_cli(data: Path, out: Path, *extra: str) -> tuple[float, dict, list[tuple[float, float]]]:
    """Wall seconds, JSON summary and (seconds, RSS MB) samples of one `earshot embed` child process."""
    proc = subprocess.Popen([sys.executable, "-m", "earshot.cli", "embed", str(data), "--out", str(out), "-q",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples, t0 = [], time.perf_counter()
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024
            samples.append((time.perf_counter() - t0, rss))
        except (OSError, StopIteration):
            pass
        time.sleep(0.25)
    out_text, err_text = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"earshot embed failed: {err_text[-2000:]}")
    return wall, json.loads(out_text), samples


def bench_embed(root: Path) -> dict:
    csv_path = build_mixtures(root / "mix", n_train=160, n_val=80, seed=0)
    wall, summary, samples = embed_cli(csv_path, root / "mix.h5", "--no-cache")
    windows = summary["n"] * summary["frames"]
    return {"clips": summary["n"], "windows": windows, "wall_s": round(wall, 2),
            "clips_per_s": round(summary["n"] / wall, 1), "windows_per_s": round(windows / wall, 1),
            "embed_seconds_in_process": summary["seconds"], "peak_rss_mb": round(max(r for _, r in samples), 1)}


def bench_heads(root: Path, seeds: list[int]) -> dict:
    import torch

    from earshot.packed import PackedReader
    from earshot.training.loop import torch_settings
    from earshot.training.multilabel import fit_head

    mix = root / "mix.h5"
    if not mix.exists():
        embed_cli(build_mixtures(root / "mix", n_train=160, n_val=80, seed=0), mix)
    out: dict = {"torch": torch.__version__}
    with PackedReader(mix) as r, torch_settings():
        ids = r.video_ids
        tr = np.array([i for i, v in enumerate(ids) if "/train_" in v])
        va = np.array([i for i, v in enumerate(ids) if "/val_" in v])
        out["chance_mAP"] = round(float(r.y[va].mean(axis=0).mean()), 4)
        out["n_train"], out["n_validation"] = len(tr), len(va)
        for pooling in ("attention", "mean", "max"):
            maps, secs, epochs = [], [], []
            for seed in seeds:
                t = time.perf_counter()
                fitted = fit_head(r, tr, va, pooling=pooling, seed=seed)
                secs.append(time.perf_counter() - t)
                maps.append(fitted.val_map)
                epochs.append(len(fitted.history))
            out[pooling] = {
                "val_mAP_mean": round(float(np.mean(maps)), 4), "val_mAP_std": round(float(np.std(maps)), 4),
                "val_mAP": [round(m, 4) for m in maps], "fit_s_mean": round(float(np.mean(secs)), 2),
                "epochs": epochs, "hidden": fitted.config["hidden"],
            }
    return out


def bench_rss(root: Path, n: int) -> dict:
    clips = sorted((DATA / "esc50" / "audio").glob("*.wav"))
    rng = np.random.default_rng(0)
    folder = root / "many"
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    cats = ["a", "b", "c", "d", "e"]
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "labels"])
        for i in range(n):
            p = folder / "audio" / f"clip{i:05d}.wav"
            if not p.exists():
                y, sr = sf.read(clips[i % len(clips)], dtype="float32")
                start = int(rng.integers(0, len(y) - 2 * sr))
                sf.write(p, y[start : start + 2 * sr], sr, subtype="PCM_16")
            w.writerow([f"audio/{p.name}", ";".join(rng.choice(cats, int(rng.integers(1, 3)), replace=False))])
    wall, summary, samples = embed_cli(folder / "labels.csv", root / "many.h5", "--no-cache")
    rss = np.array([r for _, r in samples])
    quarter = max(1, len(rss) // 4)
    return {"clips": summary["n"], "wall_s": round(wall, 1), "clips_per_s": round(summary["n"] / wall, 1),
            "file_mb": round((root / "many.h5").stat().st_size / 2**20, 1), "samples": len(rss),
            "rss_mb_by_quarter": [round(float(rss[k * quarter : (k + 1) * quarter].max()), 1) for k in range(4)],
            "peak_rss_mb": round(float(rss.max()), 1)}


def bench_audioset(root: Path, n: int = 22160, epochs: int = 1) -> dict:
    import h5py
    import torch

    from earshot.packed import PackedReader, split_rows
    from earshot.training.loop import torch_settings, training_device
    from earshot.training.multilabel import fit_head

    path = root / "audioset_like.h5"
    rng = np.random.default_rng(0)
    if not path.exists():
        with h5py.File(path, "w") as f:
            f["x"] = rng.integers(0, 256, (n, 10, 128), dtype=np.uint8)
            f["y"] = rng.random((n, 527)) < 2.5 / 527
    with PackedReader(path) as r, torch_settings():
        tr, va = split_rows(r.n, 0.1, 0)
        t = time.perf_counter()
        fitted = fit_head(r, tr, va, epochs=epochs)
        wall = time.perf_counter() - t
    return {"clips": n, "n_train": len(tr), "epochs": epochs, "wall_s": round(wall, 1),
            "s_per_epoch": round(wall / epochs, 1), "hidden": fitted.config["hidden"],
            "batch_size": fitted.config["batch_size"], "steps_per_epoch": fitted.config["steps_per_epoch"],
            "device": str(training_device()), "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="embed,heads,rss")
    ap.add_argument("--clips", type=int, default=2000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--keep", type=Path, default=None)
    args = ap.parse_args()
    only = set(args.only.split(","))
    root = args.keep or Path(tempfile.mkdtemp(prefix="earshot-bench-emb-"))
    root.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    if "embed" in only:
        results["embed"] = bench_embed(root)
        print(json.dumps({"embed": results["embed"]}), flush=True)
    if "heads" in only:
        results["heads"] = bench_heads(root, [int(s) for s in args.seeds.split(",")])
        print(json.dumps({"heads": results["heads"]}), flush=True)
    if "rss" in only:
        results["rss"] = bench_rss(root, args.clips)
        print(json.dumps({"rss": results["rss"]}), flush=True)
    if "audioset" in only:
        results["audioset"] = bench_audioset(root)
        print(json.dumps({"audioset": results["audioset"]}), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
