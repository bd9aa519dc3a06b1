"""Inputs at a rate the bundle has a graph for (16 and 8 kHz for the registry tagger): scored without resampling, in
agreement with resampling to the model's rate, on real audio."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf
import soxr
from conftest import DATA, esc50_clip


def _esc10(n: int) -> list:
    with open(DATA / "esc50" / "meta" / "esc50.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["esc10"] == "True"]
    return [DATA / "esc50" / "audio" / r["filename"] for r in rows[:: max(1, len(rows) // n)]][:n]


@pytest.fixture(scope="module")
def resampling(tagger):
    import earshot

    return earshot.Classifier(tagger.bundle, native_rates=False)


def _vector(pred, labels) -> np.ndarray:
    got = dict(zip(pred.labels, pred.probabilities))
    return np.array([got[name] for name in labels])


def test_registry_bundle_carries_16k_and_8k_graphs(tagger):
    card = tagger.bundle.card
    for rate in ("16000", "8000"):
        entry = card["rate_graphs"][rate]
        assert (tagger.bundle.path / entry["file"]).is_file()
        assert entry["onnx_check"]["max_abs_score_diff"] < 1e-4
        assert 0 < entry["max_abs_score_diff_vs_resampled"] < 0.05  # noise: a real difference, and a small one
    assert set(tagger.graphs) == {32000, 16000, 8000}


def test_16k_clips_scored_natively_agree_with_resampling(tagger, resampling):
    import earshot

    files = _esc10(24)
    assert {sf.info(f).samplerate for f in files} == {16000}
    fresh = earshot.Classifier(tagger.bundle, threads=1)
    native = list(fresh.predict_many(files, top_k=len(tagger.labels), workers=1))
    assert set(fresh._sessions) == {(16000, 1)}  # the 16 kHz graph alone ran: no resampling, no 32 kHz session
    ref = list(resampling.predict_many(files, top_k=len(tagger.labels)))
    a = np.stack([_vector(p, tagger.labels) for p in native])
    b = np.stack([_vector(p, tagger.labels) for p in ref])
    assert 0 < np.abs(a - b).max() < 0.1
    assert np.abs(a - b).mean() < 2e-3
    top1 = np.mean(a.argmax(1) == b.argmax(1))
    top5 = np.mean([len(set(np.argsort(-x)[:5]) & set(np.argsort(-y)[:5])) / 5 for x, y in zip(a, b)])
    assert top1 >= 23 / 24 and top5 >= 0.95


def test_8k_recordings_scored_natively_agree_with_resampling(tagger, resampling):
    """FSDD's spoken digits are recorded at 8 kHz: the 8 kHz graph scores them as resampling to 32 kHz does."""
    import earshot

    files = sorted((DATA / "fsdd" / "recordings").glob("*.wav"))[::150][:16]
    assert len(files) == 16 and {sf.info(f).samplerate for f in files} == {8000}
    fresh = earshot.Classifier(tagger.bundle, threads=1)
    native = list(fresh.predict_many(files, top_k=len(tagger.labels), workers=1))
    assert set(fresh._sessions) == {(8000, 1)}
    ref = list(resampling.predict_many(files, top_k=len(tagger.labels)))
    a = np.stack([_vector(p, tagger.labels) for p in native])
    b = np.stack([_vector(p, tagger.labels) for p in ref])
    assert 0 < np.abs(a - b).max() < 0.1 and np.abs(a - b).mean() < 2e-3
    assert np.mean(a.argmax(1) == b.argmax(1)) >= 15 / 16
    assert np.mean([len(set(np.argsort(-x)[:5]) & set(np.argsort(-y)[:5])) / 5 for x, y in zip(a, b)]) >= 0.9


def test_other_rates_are_resampled(tagger, tmp_path):
    """A 44.1 kHz input has no graph of its own: it is resampled to 32 kHz, as before."""
    import earshot

    fresh = earshot.Classifier(tagger.bundle, threads=1)
    p = fresh.predict(_resampled(esc50_clip("rooster"), tmp_path, 44100))
    assert set(fresh._sessions) == {(32000, 1)}
    assert p.labels[0] == tagger.predict(esc50_clip("rooster")).labels[0]


def test_timeline_windows_are_the_same_in_time(tagger, resampling):
    """Window starts and ends of a 16 kHz timeline are those of the resampled one; so are its events' labels."""
    clip = esc50_clip("dog")
    native = tagger.timeline(clip, window=1.0, hop=0.25)
    ref = resampling.timeline(clip, window=1.0, hop=0.25)
    assert [(s.start, s.end) for s in native.segments] == [(s.start, s.end) for s in ref.segments]
    assert native.duration == ref.duration == 5.0
    agree = np.mean([s.labels[0] == r.labels[0] for s, r in zip(native.segments, ref.segments)])
    assert agree >= 0.9
    assert {e.label for e in native.events} == {e.label for e in ref.events}
    # a hop that is no whole number of 16 kHz samples falls back to the 32 kHz graph: same windows again
    odd = tagger.timeline(clip, window=1.0, hop=1 / 32000 * 8001)
    assert [s.start for s in odd.segments] == [s.start for s in resampling.timeline(
        clip, window=1.0, hop=1 / 32000 * 8001).segments]


def test_turned_off_by_environment(tagger, monkeypatch):
    import earshot

    monkeypatch.setenv("EARSHOT_NATIVE_RATES", "0")
    assert set(earshot.Classifier(tagger.bundle).graphs) == {32000}


def test_rate_graph_entries_stay_inside_the_bundle(tagger, tmp_path):
    from earshot.bundle import read_bundle

    out = tmp_path / "b"
    out.mkdir()
    (out / "model.onnx").write_bytes(tagger.bundle.model_path.read_bytes())
    (tmp_path / "evil.onnx").write_bytes(b"x")
    card = dict(tagger.bundle.card, rate_graphs={"16000": {"file": "../evil.onnx"}, "8000": {"file": "gone.onnx"}})
    (out / "card.json").write_text(json.dumps(card))
    assert read_bundle(out).rate_graphs == {}


def test_frontend_at_16k_tracks_the_resampled_logmel():
    torch = pytest.importorskip("torch")
    from earshot.frontend import EfficientATMel

    fe = EfficientATMel().eval()
    fe16 = fe.at_rate(16000).eval()
    for category in ("dog", "rain", "helicopter"):  # measured: mean 0.0002 / 0.008 / 0.009, median 0 / 0.001 / 0.0012
        y, sr = sf.read(esc50_clip(category), dtype="float32")
        with torch.no_grad():
            ref = fe(torch.from_numpy(soxr.resample(y, sr, 32000))[None])[0].numpy()
            got = fe16(torch.from_numpy(y)[None])[0].numpy()
        assert got.shape == ref.shape
        d = np.abs(got - ref)
        assert d.mean() < 0.015  # in normalised log-mel units; the bands span about 3 units
        assert np.median(d) < 2e-3
    with pytest.raises(ValueError, match="source_rate"):
        fe.at_rate(12000)


def test_display_logmel_comes_from_the_same_graph(tagger, resampling):
    """The page's spectrogram of a 16 kHz clip: the 16 kHz graph's own log-mel, as many frames as resampled."""
    import earshot

    clip = esc50_clip("rain")
    fresh = earshot.Classifier(tagger.bundle, threads=1)
    m = fresh.logmel(clip)
    assert set(fresh._sessions) == {(16000, 1)}
    ref = resampling.logmel(clip)
    assert m.shape == ref.shape == (128, 500)
    assert np.abs(m - ref).mean() < 0.015


def test_a_damaged_rate_graph_is_a_typed_error_for_its_inputs_only(tagger, tmp_path):
    import shutil

    import earshot

    out = tmp_path / "bundle"
    shutil.copytree(tagger.bundle.path, out)
    (out / "model_16000.onnx").write_bytes(b"not a graph")
    clf = earshot.load(out)
    bad, good = list(clf.predict_many([esc50_clip("dog"), _resampled(esc50_clip("dog"), tmp_path, 44100)]))
    assert bad.error is not None and bad.error["type"] == "ModelError" and bad.error["reason"] == "bad_graph"
    assert "model_16000.onnx" in bad.error["message"]
    assert good.error is None and good.labels[0] == tagger.predict(esc50_clip("dog")).labels[0]


def _resampled(path, folder, rate: int):
    y, sr = sf.read(path, dtype="float32")
    out = folder / f"{path.stem}_{rate}.wav"
    sf.write(out, soxr.resample(y, sr, rate), rate)
    return out
