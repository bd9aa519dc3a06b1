"""`earshot stream`: live input classified as it arrives — pipes, raw PCM, paced files, URLs, bad streams."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from conftest import esc50_clip
from shareddata import SPEECH

from earshot.errors import AudioError
from earshot.stream import EventTracker, run, stream


def stream_cli(*args: str, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "earshot.cli", "stream", *args], input=stdin,
                          capture_output=True, timeout=timeout, env=os.environ.copy())


def records(out: bytes) -> list[dict]:
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


def of(recs: list[dict], kind: str) -> list[dict]:
    return [r for r in recs if r["type"] == kind]


@pytest.fixture(scope="module")
def keywords(tmp_path_factory) -> tuple[np.ndarray, int]:
    """Six spoken keywords (Speech Commands, six speakers), back to back: 6 s of 16 kHz speech."""
    words = ["yes", "no", "stop", "go", "left", "right"]
    clips = [sf.read(sorted((SPEECH / w).glob("*.wav"))[0], dtype="int16") for w in words]
    assert all(sr == 16000 for _, sr in clips)
    y = np.concatenate([np.pad(c, (0, max(0, 16000 - len(c)))) for c, _ in clips])
    return y, 16000


def test_wav_piped_through_cat_gives_timed_segments_and_a_dog_event(tmp_path):
    dog = esc50_clip("dog")
    cmd = f"cat {dog} | {sys.executable} -m earshot.cli stream - --top-k 5"
    p = subprocess.run(cmd, shell=True, capture_output=True, timeout=60, env=os.environ.copy())
    assert p.returncode == 0, p.stderr.decode()
    recs = records(p.stdout)
    segs = of(recs, "segment")
    assert [(s["start"], s["end"]) for s in segs] == [(0.5 * i, 0.5 * i + 1.0) for i in range(9)]  # 5 s clip
    assert all(len(s["labels"]) == 5 == len(s["probabilities"]) == len(s["labels_info"]) for s in segs)
    events = of(recs, "event")
    assert any(e["label"] in ("Dog", "Bark") and e["label_id"] for e in events), events
    dog_ev = next(e for e in events if e["label"] == "Dog")
    assert 0.0 <= dog_ev["start"] < dog_ev["end"] <= 5.0 and dog_ev["score"] >= 0.3
    starts = of(recs, "event_start")
    assert {e["label"] for e in starts} == {e["label"] for e in events}  # each event announced when it began
    assert recs.index(next(r for r in starts if r["label"] == "Dog")) < recs.index(dog_ev)
    summary = recs[-1]
    assert summary["type"] == "summary" and summary["stopped"] == "eof" and summary["error"] is None
    assert summary["duration"] == 5.0 and summary["segments"] == 9 and summary["labels"][0] == "Dog"
    counts = {label: [e["label"] for e in events].count(label) for label in {e["label"] for e in events}}
    assert summary["event_counts"] == counts and summary["events"] == len(events) and counts["Dog"] >= 1
    assert list(summary["event_counts"].values()) == sorted(counts.values(), reverse=True)  # most heard first


def test_stream_agrees_with_classifier_timeline(tagger):
    """Same windows, same scores, same events as the offline timeline of the same file."""
    for category in ("dog", "rooster"):
        clip = esc50_clip(category)
        offline = tagger.timeline(clip, window=1.0, hop=0.5, min_duration=0.5)
        recs = list(stream(str(clip), model=tagger, min_duration=0.5))
        segs = of(recs, "segment")
        assert [(s["start"], s["end"], s["labels"][0]) for s in segs] == \
            [(s.start, s.end, s.labels[0]) for s in offline.segments]
        assert np.allclose([s["probabilities"] for s in segs], [s.probabilities for s in offline.segments],
                           atol=2e-3)
        assert [(e["label"], e["start"], e["end"]) for e in of(recs, "event")] == \
            [(e.label, e.start, e.end) for e in offline.events]


def test_raw_pcm_on_stdin_spoken_keywords_are_speech(keywords):
    y, sr = keywords
    p = stream_cli("-", "--raw-format", "s16le", "--rate", str(sr), "--channels", "1", stdin=y.tobytes())
    assert p.returncode == 0, p.stderr.decode()
    recs = records(p.stdout)
    segs = of(recs, "segment")
    assert len(segs) == 11 and segs[-1]["end"] == 6.0
    speech = [s for s in segs if s["labels"][0] == "Speech"]
    assert len(speech) >= 0.7 * len(segs), [s["labels"][0] for s in segs]
    assert any(e["label"] == "Speech" for e in of(recs, "event"))
    assert recs[-1]["labels"][0] == "Speech" and recs[-1]["duration"] == 6.0


def test_stereo_raw_and_wav_formats_on_a_pipe(tagger, keywords, tmp_path):
    """Interleaved stereo s16 and a 24-bit WAV on a pipe decode like the mono original."""
    import io

    y, sr = keywords
    stereo = np.stack([y, y], axis=1).tobytes()
    a = of(list(stream(io.BytesIO(stereo), model=tagger, raw_format="s16le", rate=sr, channels=2)), "segment")
    b = io.BytesIO()
    sf.write(b, y.astype(np.float32) / 32768, sr, format="WAV", subtype="PCM_24")
    c = of(list(stream(io.BytesIO(b.getvalue()), model=tagger)), "segment")
    assert [s["labels"] for s in a] == [s["labels"] for s in c] and len(a) == 11


def test_realtime_pacing_first_segment_after_one_window(tagger, keywords, tmp_path):
    y, sr = keywords
    path = tmp_path / "three.wav"
    sf.write(path, y[: 3 * sr], sr)
    t0 = time.monotonic()
    arrivals = [(time.monotonic() - t0, r) for r in stream(str(path), model=tagger, realtime=True)]
    segs = [(t, r) for t, r in arrivals if r["type"] == "segment"]
    assert [r["end"] for _, r in segs] == [1.0, 1.5, 2.0, 2.5, 3.0]
    first, total = segs[0][0], arrivals[-1][0]
    assert 0.9 <= first <= 1.4, first  # after one window, not at the end
    assert 2.9 <= total <= 3.8, total  # the file takes about its own length
    for t, r in segs:  # each window is reported within a fraction of a hop after its audio "arrived"
        assert r["end"] - 0.05 <= t <= r["end"] + 0.4, (t, r["end"])


def test_max_seconds_stops_an_endless_source(tagger, keywords):
    import io

    y, sr = keywords
    recs = list(stream(io.BytesIO(y.tobytes()), model=tagger, raw_format="s16le", rate=sr, max_seconds=2.0))
    assert recs[-1]["stopped"] == "max_seconds" and recs[-1]["duration"] == 2.0
    assert [s["end"] for s in of(recs, "segment")] == [1.0, 1.5, 2.0]


def test_url_refused_unless_allowed(tagger, tmp_path):
    with pytest.raises(AudioError, match="--allow-url") as e:
        stream("http://127.0.0.1:9/clip.wav", model=tagger)
    assert e.value.reason == "url_not_allowed"
    with pytest.raises(AudioError, match="scheme"):  # even when allowed: no file://, ftp://, concat:...
        stream("file:///etc/passwd", model=tagger, allow_urls=True)
    out = tmp_path / "out.jsonl"
    assert run("https://example.com/a.mp3", output=out, model=tagger) == 1
    (rec,) = records(out.read_bytes())
    assert rec["type"] == "error" and "--allow-url" in rec["error"]["message"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_url_streamed_when_allowed(tagger, tmp_path):
    pytest.importorskip("av")
    (tmp_path / "dog.wav").write_bytes(esc50_clip("dog").read_bytes())
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "http.server did not start"
                time.sleep(0.05)
        recs = list(stream(f"http://127.0.0.1:{port}/dog.wav", model=tagger, allow_urls=True))
        assert recs[-1]["type"] == "summary" and recs[-1]["error"] is None, recs[-1]
        assert len(of(recs, "segment")) == 9
        assert any(e["label"] in ("Dog", "Bark") for e in of(recs, "event"))
        missing = list(stream(f"http://127.0.0.1:{port}/nope.wav", model=tagger, allow_urls=True))
        assert missing[-1]["type"] == "error" and missing[-1]["error"]["type"] == "AudioError"
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.parametrize("case", ["truncated", "garbage", "empty", "text"])
def test_bad_stream_ends_with_an_error_record_not_a_traceback(case):
    wav = esc50_clip("dog").read_bytes()
    data = {"truncated": wav[:100_000], "garbage": bytes(range(256)) * 64, "empty": b"",
            "text": b"this is not audio at all, just a note\n" * 10}[case]
    p = stream_cli("-", stdin=data)
    assert p.returncode == 1
    assert b"Traceback" not in p.stderr, p.stderr.decode()
    recs = records(p.stdout)
    assert recs[-1]["type"] == "error" and recs[-1]["error"]["type"] == "AudioError"
    assert recs[-2]["type"] == "summary" and recs[-2]["stopped"] == "error"
    if case == "truncated":  # what arrived before the cut was still classified
        info = sf.info(esc50_clip("dog"))
        arrived = (100_000 - 44) / (2 * info.channels * info.samplerate)  # 16-bit PCM after a 44-byte header
        assert recs[-1]["error"]["reason"] == "truncated" and recs[-1]["at"] == pytest.approx(arrived, abs=0.02)
        assert [s["end"] for s in of(recs, "segment")] == [1.0 + 0.5 * i for i in range(int((arrived - 1) / 0.5) + 1)]


def test_ctrl_c_stops_cleanly_with_a_summary(keywords, tmp_path):
    y, sr = keywords
    path = tmp_path / "six.wav"
    sf.write(path, y, sr)
    # Ctrl-C as a terminal delivers it: under a runner that started the tests in the background, SIGINT would
    # be inherited as ignored, and Python then installs no KeyboardInterrupt handler
    p = subprocess.Popen([sys.executable, "-m", "earshot.cli", "stream", str(path), "--realtime"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy(),
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = p.stdout.readline()  # the first segment, ~1 s of audio in
    assert json.loads(first)["type"] == "segment"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0 and b"Traceback" not in err, err.decode()
    recs = records(first + out)
    assert recs[-1]["type"] == "summary" and recs[-1]["stopped"] == "interrupted"
    assert recs[-1]["duration"] < 5.0


def test_microphone_needs_sounddevice(tagger):
    try:
        import sounddevice  # noqa: F401
    except (ImportError, OSError):
        pass
    else:
        pytest.skip("sounddevice is installed")
    with pytest.raises(AudioError, match="pip install sounddevice"):
        stream("mic:0", model=tagger)


def test_event_tracker_rule_threshold_hysteresis_min_duration():
    """On at >= threshold, stays on while >= half of it, kept when long enough; single-label: winners only."""
    labels = ["a", "b"]
    s = np.array([[0.1, 0.0], [0.35, 0.0], [0.2, 0.0], [0.16, 0.0], [0.1, 0.0], [0.5, 0.0], [0.5, 0.6], [0.0, 0.0]],
                 dtype=np.float32)
    begin = np.arange(len(s)) * 0.5
    end = begin + 1.0
    multi = SimpleNamespace(labels=labels, label_ids=["/m/a", None], multi_label=True,
                            thresholds=np.full(2, 0.3, np.float32))
    events = EventTracker.for_classifier(multi).events(s, begin, end)
    assert [(e.label, e.start, e.end, e.score) for e in events] == [
        ("a", 0.5, 2.5, 0.35), ("a", 2.5, 4.0, 0.5), ("b", 3.0, 4.0, 0.6)]
    assert events[0].label_id == "/m/a"
    long_only = EventTracker.for_classifier(multi, min_duration=1.5).events(s, begin, end)
    assert [(e.label, e.start) for e in long_only] == [("a", 0.5), ("a", 2.5)]
    single = SimpleNamespace(**{**vars(multi), "multi_label": False})
    winners = EventTracker.for_classifier(single, threshold=0.3).events(s, begin, end)
    assert [(e.label, e.start, e.end) for e in winners] == [("a", 0.5, 2.5), ("a", 2.5, 3.5), ("b", 3.0, 4.0)]
    tracker = EventTracker.for_classifier(multi)  # incremental: the same events, in closing order
    closed = [e for row, b, e_ in zip(s, begin, end) for e in tracker.update(row, b, e_)[1]] + tracker.flush()
    assert sorted(closed, key=lambda e: (e.start, -e.score)) == events


def test_live_pipe_is_classified_while_it_is_still_being_written(keywords):
    """A WAV written to stdin at 2x real time: segments come out before the writer has finished."""
    import io
    import threading

    y, sr = keywords
    b = io.BytesIO()
    sf.write(b, y, sr, format="WAV", subtype="PCM_16")
    data = b.getvalue()
    p = subprocess.Popen([sys.executable, "-m", "earshot.cli", "stream", "-"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    done = threading.Event()

    def writer() -> None:
        step = sr * 2 // 4  # 0.25 s of audio every 0.125 s
        p.stdin.write(data[:44])
        for i in range(44, len(data), step):
            p.stdin.write(data[i : i + step])
            p.stdin.flush()
            time.sleep(0.125)
        done.set()
        p.stdin.close()

    t = threading.Thread(target=writer)
    t.start()
    first = json.loads(p.stdout.readline())
    written_when_first_arrived = done.is_set()
    t.join(60)
    out, err = p.stdout.read(), p.stderr.read()
    p.wait(30)
    assert first["type"] == "segment" and first["end"] == 1.0
    assert not written_when_first_arrived, "the first segment waited for the end of the input"
    recs = records(out)
    assert p.returncode == 0 and recs[-1]["type"] == "summary" and recs[-1]["duration"] == 6.0, err.decode()


def test_class_filters_apply_to_segments_events_and_summary():
    """--exclude Animal drops the whole subtree (Dog, Bark, ...) everywhere; --classes Animal keeps only it."""
    from earshot.ontology import load

    animal = set(load().subtree("Animal"))
    dog = str(esc50_clip("dog"))
    kept = records(stream_cli(dog, "--top-k", "5", "--classes", "Animal").stdout)
    dropped = records(stream_cli(dog, "--top-k", "5", "--exclude", "Animal").stdout)
    for recs, inside in ((kept, True), (dropped, False)):
        ids = [i for r in of(recs, "segment") + of(recs, "summary") for i in r["labels_info"]]
        ids += [e["label_id"] for e in of(recs, "event") + of(recs, "event_start")]
        assert ids and all((i in animal) == inside for i in ids), (inside, ids)
    assert any(e["label"] == "Dog" for e in of(kept, "event"))
    bad = stream_cli(dog, "--classes", "Dgo")
    assert bad.returncode == 1 and of(records(bad.stdout), "error")[0]["error"]["reason"] == "unknown_label"
