"""Helpers shared by the benchmark scripts: shared-data paths, test corpora, child-process RSS."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EARSHOT_SHARED", ROOT.parent / "shared")).resolve()
DATA = SHARED / "data"
os.environ.setdefault("EARSHOT_MODEL_MIRROR", str(SHARED / "weights"))
os.environ.setdefault("EARSHOT_HOME", str(ROOT / ".cache" / "earshot"))


def ten_second_wavs(folder: Path, n: int, rate: int | None = None) -> list[Path]:
    """n 10 s WAV files (16 kHz, as the shared ESC-50 clips are, or resampled to `rate`) made by joining pairs of
    real ESC-50 clips."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = sorted((DATA / "esc50" / "audio").glob("*.wav"))
    out = []
    for i in range(n):
        p = folder / f"clip{i:04d}{'' if rate is None else f'_{rate}'}.wav"
        if not p.exists():
            a, sr = sf.read(clips[(2 * i) % len(clips)], dtype="float32")
            b, _ = sf.read(clips[(2 * i + 1) % len(clips)], dtype="float32")
            y = np.concatenate([a, b])
            if rate is not None and rate != sr:
                import soxr

                y, sr = np.clip(soxr.resample(y, sr, rate), -1.0, 1.0), rate
            sf.write(p, y, sr, subtype="PCM_16")
        out.append(p)
    return out


def run_child(args: list[str], **kw) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall seconds and peak RSS (MB) of this one child process (its own rusage from wait4, not the maximum over
    every child so far)."""
    import threading

    t = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    got: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda k=k, f=f: got.__setitem__(k, f.read()))
               for k, f in (("out", proc.stdout), ("err", proc.stderr))]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    for r in readers:
        r.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024, subprocess.CompletedProcess(args, proc.returncode, got["out"], got["err"])


def child_peak_rss(code: str) -> tuple[float, str]:
    """Peak RSS (MB) of `python -c code` read by the child at exit (VmHWM: not inherited across fork+exec
    as ru_maxrss is), and what it printed."""
    wrapped = code + (
        "\nimport re\nhwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)"
        "\nprint('RSS', int(hwm) / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    return float(lines[-1].split()[1]), "\n".join(lines[:-1])
