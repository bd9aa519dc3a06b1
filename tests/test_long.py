"""Inputs of any length in bounded memory: clip predictions and embeddings stream through their windows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from conftest import esc50_clip

from earshot import clips


def _long_wav(path: Path, seconds: float, rate: int = 8000) -> Path:
    """`seconds` of real recordings (ESC-50 clips of several classes, repeated) written block by block."""
    parts = [sf.read(esc50_clip(c, i), dtype="float32")[0] for c in ("dog", "rain", "helicopter") for i in range(3)]
    loop = soxr.resample(np.concatenate(parts), 16000, rate)
    n = int(seconds * rate)
    with sf.SoundFile(path, "w", rate, 1, "PCM_16") as f:
        done = 0
        while done < n:
            k = min(len(loop), n - done)
            f.write(loop[:k])
            done += k
    return path


def test_streamed_clip_scores_equal_the_in_memory_policy(tagger, tmp_path):
    import earshot
    from earshot import audio

    path = _long_wav(tmp_path / "two_minutes.wav", 127.3)
    resampling = earshot.Classifier(tagger.bundle, native_rates=False)
    y = resampling.decode(path)
    whole = resampling.clip_scores(y)
    p = resampling.predict(path, top_k=5)
    assert p.duration == pytest.approx(127.3, abs=1e-3)
    idx = [tagger.labels.index(lab) for lab in p.labels]
    assert np.abs(np.asarray(p.probabilities) - whole[idx]).max() < 2e-4
    assert p.labels[0] == tagger.labels[int(np.argmax(whole))]
    emb = resampling.embed(path)
    ref = resampling.embed_waveform(y)
    assert np.abs(emb - ref).max() < 1e-4
    # at the file's own rate (8 kHz, the bundle's 8 kHz graph) the streamed windows are the in-memory ones too
    y8 = audio.decode(path)
    frames = clips.clip_frames(y8, 8000, tagger.window_seconds, tagger.min_seconds)
    rows = np.concatenate([tagger.run(frames[i : i + 4], rate=8000)[0] for i in range(0, len(frames), 4)])
    whole8 = clips.aggregate(rows, tagger.multi_label)
    p8 = tagger.predict(path, top_k=5)
    assert p8.duration == p.duration
    assert np.abs(np.asarray(p8.probabilities) - whole8[[tagger.labels.index(lab) for lab in p8.labels]]).max() < 2e-4
    emb8 = np.concatenate([tagger.run(frames[i : i + 4], ("embedding",), rate=8000)[0]
                           for i in range(0, len(frames), 4)]).mean(axis=0)
    assert np.abs(tagger.embed(path) - emb8).max() < 1e-4


def test_windows_stream_like_the_whole_clip():
    rng = np.random.default_rng(0)
    for n in (500, 1000, 1500, 1501, 4321, 10_000):
        y = rng.standard_normal(n).astype(np.float32)
        want = clips.clip_frames(y, 100, 10.0, 1.0)
        w = clips.Windows(1000, 500, one_pass=1500, tail="end", min_samples=100)
        got = [f for b in np.array_split(y, 7) if len(b) and (f := w.push(b)) is not None]
        last = w.finish()
        got += [last] if last is not None else []
        frames = np.concatenate([g[1] for g in got])
        assert frames.shape == want.shape and np.array_equal(frames, want), n


@pytest.mark.slow
def test_one_hour_file_predicts_in_bounded_memory(tmp_path):
    path = _long_wav(tmp_path / "hour.wav", 3600.0)
    code = (
        "import resource, subprocess, sys; "
        "r = subprocess.run([sys.executable, '-m', 'earshot.cli', 'predict', sys.argv[1], '-f', 'jsonl'], "
        "capture_output=True, text=True); "
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.stdout.strip())"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300,
                         env=os.environ.copy())
    rc, rss_kb, result = out.stdout.split(" ", 2)
    assert rc == "0", out.stdout + out.stderr
    pred = json.loads(result)
    assert pred["duration"] == 3600.0 and pred["error"] is None
    assert {"Dog", "Rain"} & set(pred["labels"]), pred
    assert int(rss_kb) < 300 * 1024, f"peak RSS {int(rss_kb) / 1024:.0f} MB for a 1-hour file"


def test_embed_windows_is_bounded_like_a_timeline(tagger):
    """Window embeddings (indexing, search queries) take the timeline's bounds: hop, input length, deadline and
    cancellation stop the work with a typed error instead of running on."""
    import threading
    import time

    from earshot.errors import AudioError
    from earshot.limits import Cancelled, LimitError

    dog = esc50_clip("dog")
    starts, emb = tagger.embed_windows(dog, window=1.0, hop=0.5)
    assert len(starts) == len(emb) == 9 and emb.shape[1] > 100
    with pytest.raises(LimitError) as e:
        tagger.embed_windows(dog, window=1.0, hop=0.0001)
    assert e.value.param == "hop"
    with pytest.raises(AudioError) as e:
        tagger.embed_windows(dog, max_seconds=2.0)
    assert e.value.reason == "too_long"
    with pytest.raises(Cancelled) as e:
        tagger.embed_windows(dog, deadline=time.monotonic() - 1)
    assert e.value.reason == "deadline"
    gone = threading.Event()
    gone.set()
    with pytest.raises(Cancelled):
        tagger.embed_windows(dog, cancel=gone)
