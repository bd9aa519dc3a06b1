"""Cold start and end-to-end throughput of `earshot predict` against YAMNet on TFLite, whole processes, same run.

- cold start: one 5 s WAV, a fresh process per run, median (and min) of --runs, peak RSS of each process;
- end to end: --n ten-second WAV files classified by one process (start-up, decoding, model, output included).

The WAVs are 16 kHz (--rate: another), so earshot scores them with its bundle's 16 kHz graph; each figure is
also measured with that graph turned off (EARSHOT_NATIVE_RATES=0: resampled to 32 kHz, the model's rate), in the
same run.

earshot and YAMNet runs alternate, so that both see the same load on a shared machine. Both start as installed
packages do: with their modules' bytecode compiled (pip compiles at install time; an editable checkout, or a shell
with PYTHONDONTWRITEBYTECODE set, would otherwise compile earshot's sources again at every start).

The reference (benchmarks/yamnet_ref.py) needs `pip install ai-edge-litert`. Prints figures and ratios measured
in this run; no thresholds are asserted here.

Usage: python benchmarks/coldstart.py [--runs 9] [--n 100] [--model mn04-as] [--rate 16000]
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


def timed(cmds: list[tuple[list[str], dict[str, str] | None]], runs: int) -> list[tuple[float, float, float, float]]:
    """For each (command, environment): (median wall s, min wall s, median peak RSS MB, median of the per-run ratios
    last command's time / this command's time) over `runs` fresh processes, the commands alternating so that all
    see the same machine load."""
    walls: list[list[float]] = [[] for _ in cmds]
    rsss: list[list[float]] = [[] for _ in cmds]
    for _ in range(runs):
        for i, (cmd, env) in enumerate(cmds):
            wall, rss, proc = run_child(cmd, env=env)
            if proc.returncode != 0:
                raise SystemExit(f"{cmd[:4]} failed: {proc.stderr.decode()[-2000:]}")
            walls[i].append(wall)
            rsss[i].append(rss)
    return [(statistics.median(w), min(w), statistics.median(r), statistics.median(b / a for a, b in zip(w, walls[-1])))
            for w, r in zip(walls, rsss)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--model", default="mn04-as")
    ap.add_argument("--rate", type=int, default=16000, help="sample rate of the ten-second WAVs (default 16000)")
    args = ap.parse_args()
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # the children inherit this environment
    resampled = {**os.environ, "EARSHOT_NATIVE_RATES": "0"}
    compileall.compile_dir(str(ROOT / "src" / "earshot"), quiet=1)
    clip = str(sorted((DATA / "esc50" / "audio").glob("*.wav"))[0])
    model = ["--model", args.model]
    run_child(EARSHOT + model + [clip])  # builds the bundle and its optimised graphs once
    run_child(EARSHOT + model + [clip], env=resampled)
    run_child(YAMNET + [clip])
    print(f"cold start, one 5 s WAV (16 kHz), median of {args.runs} fresh processes (min):")
    one = EARSHOT + model + [clip]
    e, e32, y = timed([(one, None), (one, resampled), (YAMNET + [clip], None)], args.runs)
    print(f"  earshot {args.model:<12} {e[0]:.3f} s ({e[1]:.3f})  {e[2]:.0f} MB")
    print(f"    resampled to 32 kHz  {e32[0]:.3f} s ({e32[1]:.3f})  {e32[2]:.0f} MB  (EARSHOT_NATIVE_RATES=0)")
    print(f"  YAMNet TFLite          {y[0]:.3f} s ({y[1]:.3f})  {y[2]:.0f} MB")
    print(f"  ratio earshot/YAMNet   {e[0] / y[0]:.2f}x time, {e[2] / y[2]:.2f}x memory")
    with tempfile.TemporaryDirectory() as tmp:
        files = [str(f) for f in ten_second_wavs(Path(tmp), args.n, args.rate)]
        runs = max(3, args.runs // 3)
        e, e32, y = timed([(EARSHOT + model + files, None), (EARSHOT + model + files, resampled),
                           (YAMNET + files, None)], runs)
    print(f"end to end, {args.n} ten-second WAVs ({args.rate / 1000:g} kHz) in one process, median of {runs} "
          "(runs alternate):")
    print(f"  earshot {args.model:<12} {e[0]:.2f} s = {args.n / e[0]:.1f} files/s  {e[2]:.0f} MB  "
          f"{y[0] / e[0]:.2f}x YAMNet (median of per-run ratios {e[3]:.2f}x)")
    print(f"    resampled to 32 kHz  {e32[0]:.2f} s = {args.n / e32[0]:.1f} files/s  {e32[2]:.0f} MB  "
          f"{y[0] / e32[0]:.2f}x YAMNet (median of per-run ratios {e32[3]:.2f}x; EARSHOT_NATIVE_RATES=0)")
    print(f"  YAMNet TFLite          {y[0]:.2f} s = {args.n / y[0]:.1f} files/s  {y[2]:.0f} MB")


if __name__ == "__main__":
    main()
