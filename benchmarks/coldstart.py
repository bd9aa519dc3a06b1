"""Cold start and end-to-end throughput of `earshot predict` against YAMNet on TFLite, whole processes, same run.

- cold start: one 5 s WAV, a fresh process per run, median (and min) of --runs, peak RSS of each process;
- end to end: --n ten-second WAV files classified by one process (start-up, decoding, model, output included).

earshot and YAMNet runs alternate, so that both see the same load on a shared machine. Both start as installed
packages do: with their modules' bytecode compiled (pip compiles at install time; an editable checkout, or a shell
with PYTHONDONTWRITEBYTECODE set, would otherwise compile earshot's sources again at every start).

The reference (benchmarks/yamnet_ref.py) needs `pip install ai-edge-litert`. Prints figures and ratios measured
in this run; no thresholds are asserted here.

Usage: python benchmarks/coldstart.py [--runs 9] [--n 100] [--model mn04-as]
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import sys
import tempfile
from pathlib import Path

from _common import DATA, ROOT, run_child, ten_second_wavs

EARSHOT = [sys.executable, "-m", "earshot.cli", "predict", "--format", "jsonl", "--quiet"]
YAMNET = [sys.executable, str(ROOT / "benchmarks" / "yamnet_ref.py")]


def timed_pair(a: list[str], b: list[str], runs: int) -> tuple[tuple[float, float, float], ...]:
    """For each command: (median wall s, min wall s, median peak RSS MB) over `runs` fresh processes, the two
    commands alternating so that both see the same machine load; then (median of the per-run ratios b/a, 0, 0)."""
    walls: list[list[float]] = [[], []]
    rsss: list[list[float]] = [[], []]
    for _ in range(runs):
        for i, cmd in enumerate((a, b)):
            wall, rss, proc = run_child(cmd)
            if proc.returncode != 0:
                raise SystemExit(f"{cmd[:4]} failed: {proc.stderr.decode()[-2000:]}")
            walls[i].append(wall)
            rsss[i].append(rss)
    ratio = statistics.median(y / x for x, y in zip(*walls))
    return (*((statistics.median(w), min(w), statistics.median(r)) for w, r in zip(walls, rsss)), (ratio, 0.0, 0.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--model", default="mn04-as")
    args = ap.parse_args()
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # the children inherit this environment
    compileall.compile_dir(str(ROOT / "src" / "earshot"), quiet=1)
    clip = str(sorted((DATA / "esc50" / "audio").glob("*.wav"))[0])
    model = ["--model", args.model]
    run_child(EARSHOT + model + [clip])  # builds the bundle and its optimised graph once
    run_child(YAMNET + [clip])
    print(f"cold start, one 5 s WAV, median of {args.runs} fresh processes (min):")
    e, y, _ = timed_pair(EARSHOT + model + [clip], YAMNET + [clip], args.runs)
    print(f"  earshot {args.model:<12} {e[0]:.3f} s ({e[1]:.3f})  {e[2]:.0f} MB")
    print(f"  YAMNet TFLite          {y[0]:.3f} s ({y[1]:.3f})  {y[2]:.0f} MB")
    print(f"  ratio earshot/YAMNet   {e[0] / y[0]:.2f}x time, {e[2] / y[2]:.2f}x memory")
    with tempfile.TemporaryDirectory() as tmp:
        files = [str(f) for f in ten_second_wavs(Path(tmp), args.n)]
        runs = max(3, args.runs // 3)
        e, y, r = timed_pair(EARSHOT + model + files, YAMNET + files, runs)
    print(f"end to end, {args.n} ten-second WAVs in one process, median of {runs} (runs alternate):")
    print(f"  earshot {args.model:<12} {e[0]:.2f} s = {args.n / e[0]:.1f} files/s  {e[2]:.0f} MB")
    print(f"  YAMNet TFLite          {y[0]:.2f} s = {args.n / y[0]:.1f} files/s  {y[2]:.0f} MB")
    print(f"  speed-up over YAMNet   {y[0] / e[0]:.2f}x (median of per-run ratios {r[0]:.2f}x)")


if __name__ == "__main__":
    main()
