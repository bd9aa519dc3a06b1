"""End-to-end tagging: clips/s for 10 s WAV files, earshot (onnxruntime bundle) vs the same weights in eager
torch, in one run; cold start of `earshot predict` in a fresh process; peak RSS; 1-hour timeline.

Usage: python benchmarks/tagging.py [--n 200] [--hour] [--install-size]
Prints figures and ratios measured in this run; no thresholds are asserted here.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from _common import DATA, ROOT, child_peak_rss, run_child, ten_second_wavs


def torch_reference(files: list[Path]) -> float:
    """clips/s of the same weights in eager torch (soundfile → soxr → front-end → network), one clip at a time."""
    import soxr
    import torch

    from earshot.models import spec
    from earshot.models.weights import fetch

    s = spec("mn04-as")
    model = s.build(fetch(s.filename, s.url, s.sha256))
    torch.set_num_threads(2)
    t = time.perf_counter()
    with torch.no_grad():
        for f in files:
            y, sr = sf.read(f, dtype="float32")
            model(torch.from_numpy(soxr.resample(y, sr, 32000))[None])
    return len(files) / (time.perf_counter() - t)


def earshot_throughput(files: list[Path]) -> tuple[float, float]:
    import earshot

    clf = earshot.load("mn04-as")
    list(clf.predict_many(files[:4]))  # warm-up
    t = time.perf_counter()
    preds = list(clf.predict_many(files))
    rate = len(files) / (time.perf_counter() - t)
    return rate, sum(p.ok for p in preds) / len(preds)


def zero_shot_esc10(model: str | Path = "mn04-as", native_rates: bool | None = None) -> float:
    """ESC-10 folds 1-4 scored zero-shot with the shared AudioSet label map (reference: 0.9625); `model`: a
    registry name or a bundle directory with AudioSet's labels."""
    return esc10_scores(model, native_rates)[0]


def esc10_scores(model: str | Path = "mn04-as", native_rates: bool | None = None,
                 rate: int | None = None) -> tuple[float, np.ndarray]:
    """(zero-shot ESC-10 accuracy, every clip's score vector [160, classes]); `native_rates` as in Classifier;
    `rate`: the clips resampled to that rate first (written as 16-bit WAVs, as a recording at that rate would be)."""
    import csv
    import json

    import earshot
    from earshot.bundle import read_bundle
    from earshot.models import resolve

    clf = earshot.Classifier(read_bundle(resolve(model)), native_rates=native_rates)
    spec = json.loads((DATA.parent / "reference" / "esc10_audioset_map.json").read_text())
    classes = sorted(spec["map"])
    cols = [[clf.labels.index(n) for n in spec["map"][c]] for c in classes]
    with open(DATA / "esc50" / "meta" / "esc50.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["esc10"] == "True"]
    files = [DATA / "esc50" / "audio" / r["filename"] for r in rows]
    if rate is not None:
        import soxr

        folder = Path(tempfile.gettempdir()) / "earshot-bench" / f"esc10-{rate}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(files):
            files[i] = folder / f.name
            if not files[i].exists():
                y, sr = sf.read(f, dtype="float32")
                sf.write(files[i], np.clip(soxr.resample(y, sr, rate), -1, 1), rate, subtype="PCM_16")
    preds = clf.predict_many(files, top_k=len(clf.labels))
    scores = np.array([[dict(zip(p.labels, p.probabilities))[name] for name in clf.labels] for p in preds])
    correct = sum(classes[int(np.argmax([s[c].max() for c in cols]))] == r["category"] for r, s in zip(rows, scores))
    return correct / len(rows), scores


def rate_graph_agreement(model: str | Path = "mn04-as", rate: int = 16000) -> str:
    """The bundle's graph for `rate` against resampling to 32 kHz, on the ESC-10 clips at that rate: accuracy of
    each, per-clip top-5 overlap, max and mean |score difference|."""
    clips_rate = None if rate == 16000 else rate  # the shared clips are 16 kHz
    acc, native = esc10_scores(model, True, clips_rate)
    ref_acc, ref = esc10_scores(model, False, clips_rate)
    top5 = np.mean([len(set(np.argsort(-a)[:5]) & set(np.argsort(-b)[:5])) / 5 for a, b in zip(native, ref)])
    d = np.abs(native - ref)
    return (f"ESC-10 {acc:.4f} (resampled {ref_acc:.4f}), top-5 overlap {top5:.3f}, max |d score| {d.max():.3f}, "
            f"mean |d| {d.mean():.5f}")


def cold_start(wav: Path) -> tuple[float, float]:
    exe = shutil.which("earshot", path=str(Path(sys.executable).parent)) or "earshot"
    run_child([exe, "predict", str(wav)])  # page cache warm, bundle present
    best = min((run_child([exe, "predict", str(wav)]) for _ in range(3)), key=lambda r: r[0])
    assert best[2].returncode == 0, best[2].stderr
    return best[0], best[1]


def hour_timeline(folder: Path) -> tuple[float, float, int]:
    """Wall time, peak RSS and segment count for a 1-hour 16 kHz FLAC through `timeline` (1 s windows, 0.5 s hop)."""
    path = folder / "hour.flac"
    if not path.exists():
        clips = sorted((DATA / "esc50" / "audio").glob("*.wav"))
        with sf.SoundFile(path, "w", 16000, 1, subtype="PCM_16") as out:
            i = 0
            while out.frames < 3600 * 16000:
                y, _ = sf.read(clips[i % len(clips)], dtype="float32")
                out.write(y[: 3600 * 16000 - out.frames])
                i += 1
    code = (
        "import time, earshot; c = earshot.load('mn04-as'); t = time.perf_counter(); "
        f"p = c.timeline({str(path)!r}, window=1.0, hop=0.5); "
        "print(time.perf_counter() - t, len(p.segments), len(p.events))"
    )
    rss, out = child_peak_rss(code)
    wall, segs, _ = out.split()
    return float(wall), rss, int(segs)


def core_install_size() -> float:
    """MB of site-packages for `pip install earshot` (core: predict without torch or PyAV) in a fresh venv."""
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-m", "venv", d], check=True)
        subprocess.run([f"{d}/bin/pip", "install", "-q", str(ROOT)], check=True)
        site = next(Path(d).glob("lib/python*/site-packages"))
        pip_own = sum(f.stat().st_size for p in site.glob("pip*") for f in p.rglob("*") if f.is_file())
        total = sum(f.stat().st_size for f in site.rglob("*") if f.is_file())
        return (total - pip_own) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--hour", action="store_true", help="also run the 1-hour timeline")
    ap.add_argument("--install-size", action="store_true")
    args = ap.parse_args()
    folder = Path(tempfile.gettempdir()) / "earshot-bench"
    files = ten_second_wavs(folder / "ten", args.n)

    wall, rss = cold_start(files[0])  # first, while this process is small (see run_child)
    rss_one, _ = child_peak_rss(f"import earshot; earshot.load('mn04-as').predict({str(files[0])!r})")
    rate, ok = earshot_throughput(files)
    ref = torch_reference(files[: max(20, args.n // 4)])
    print(f"tagging 10 s WAV clips, {args.n} files, 2 cores")
    print(f"  eager torch, same weights      {ref:7.1f} clips/s   (reference, 1.00x)")
    print(f"  earshot predict_many (ORT)     {rate:7.1f} clips/s   {rate / ref:5.2f}x   ok={ok:.0%}")
    print(f"  peak RSS, one prediction (python API)  {rss_one:6.0f} MB")
    print(f"  cold start `earshot predict x.wav`     {wall:6.2f} s   peak RSS {rss:.0f} MB")
    print(f"  zero-shot ESC-10 folds 1-4 accuracy    {zero_shot_esc10(native_rates=False):.4f}   "
          "(resampled to 32 kHz; reference implementation 0.9625)")
    for rate in (16000, 8000):
        print(f"  {rate // 1000} kHz graph vs resampling: {rate_graph_agreement(rate=rate)}")
    if args.hour:
        wall, rss, segs = hour_timeline(folder)
        print(f"  1-hour timeline: {wall:.1f} s = {3600 / wall:.0f}x real time, peak RSS {rss:.0f} MB, {segs} segments")
    if args.install_size:
        print(f"  core install (no torch, no PyAV): {core_install_size():.0f} MB")


if __name__ == "__main__":
    main()
