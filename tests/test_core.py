"""The core data path on real audio: front-end and model port against the reference, ONNX export, tagging."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import soxr
from conftest import DATA, REFERENCE, SHARED, esc50_clip

REF = json.loads((REFERENCE / "mn04_as" / "reference.json").read_text())


def _reference_input(item) -> np.ndarray:
    """The reference's exact preprocessing: soundfile float32 → mono → soxr default to 32 kHz."""
    y, sr = sf.read(SHARED / item["file"], dtype="float32")
    if y.ndim > 1:
        y = y.mean(axis=1)
    return soxr.resample(y, sr, 32000)


def test_frontend_matches_reference_logmel():
    torch = pytest.importorskip("torch")
    from earshot.frontend import EfficientATMel

    fe = EfficientATMel().eval()
    for i, item in enumerate(REF["items"][:2]):
        ref = np.load(REFERENCE / "mn04_as" / f"logmel_{i}.npy")
        with torch.no_grad():
            got = fe(torch.from_numpy(_reference_input(item))[None])[0].numpy()
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() < 1e-4


@pytest.mark.parametrize("config", ["efficientat", "cnn"])
def test_frontend_odd_lengths_match_direct_stft(config):
    """The factorised DFT equals torch.stft power for lengths that do not fill the last chunk, and the log-mel
    equals the mel banks applied to it, with EfficientAT's settings and the compact CNN's."""
    torch = pytest.importorskip("torch")
    from earshot.frontend import EfficientATMel, kaldi_mel_banks, normalised_log
    from earshot.models.cnn import CNN_FRONTEND

    kw = {} if config == "efficientat" else dict(CNN_FRONTEND)
    fe = EfficientATMel(**kw).eval()
    n_fft, hop, win_length = fe.n_fft, fe.hop, kw.get("win_length", 800)
    x = torch.randn(3, fe.sample_rate + 123, generator=torch.Generator().manual_seed(1)) * 0.1
    pad = n_fft // 2
    y = torch.nn.functional.pad((x[:, 1:] - 0.97 * x[:, :-1]).unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    win = torch.hann_window(win_length, periodic=False)
    ref = torch.stft(y, n_fft, hop, win_length, window=win, center=False, return_complex=True).abs() ** 2
    got = fe.power(x).reshape(3, -1, fe.n_bins).transpose(1, 2)
    assert got.shape[2] == ref.shape[2] == fe.n_frames(x.shape[1])
    assert torch.allclose(got, ref[:, : fe.n_bins], rtol=1e-3, atol=1e-3)
    banks = kaldi_mel_banks(fe.n_mels, n_fft, fe.sample_rate, kw.get("fmin", 0.0), kw.get("fmax", 15000.0))
    mel = normalised_log(torch.from_numpy(banks).double() @ ref.double())
    with torch.no_grad():
        assert (fe(x).double() - mel).abs().max() < 1e-4


def test_widened_stem_is_the_same_function():
    """`widen_stem` (zero channels for onnxruntime's blocked convolutions) changes no output."""
    torch = pytest.importorskip("torch")
    from earshot.models.mobilenet import MobileNetAudio, widen_stem

    net = MobileNetAudio().eval()
    with torch.no_grad():
        for m in net.modules():  # non-trivial statistics, so that a wrong padding would show
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.5, 0.5)
        mel = torch.randn(2, 1, 128, 100)
        ref = net(mel)
        wide = widen_stem(net)
        assert wide.features[0][0].out_channels == 16
        got = wide(mel)
    for a, b in zip(ref, got):
        assert torch.allclose(a, b, atol=1e-5)


def test_model_port_reproduces_reference_scores_and_embeddings(tagger):
    """All 26 reference clips through the ONNX bundle: scores within 1e-3, embeddings close."""
    worst_s = worst_e = 0.0
    for item in REF["items"]:
        scores, emb = tagger.run(_reference_input(item)[None], ("scores", "embedding"))
        worst_s = max(worst_s, float(np.abs(scores[0] - np.asarray(item["scores"])).max()))
        worst_e = max(worst_e, float(np.abs(emb[0] - np.asarray(item["embedding"])).max()))
    assert worst_s < 1e-3
    assert worst_e < 1e-2


def test_weights_load_strict_and_onnx_matches_torch(tagger):
    torch = pytest.importorskip("torch")
    from earshot.models import spec
    from earshot.models.weights import fetch

    s = spec("mn04-as")
    model = s.build(fetch(s.filename, s.url, s.sha256))  # load_state_dict(strict=True, weights_only=True)
    for seconds, item in [(0.6, REF["items"][-1]), (5.0, REF["items"][0]), (12.5, REF["items"][3])]:
        y = _reference_input(item)
        y = np.resize(y, int(seconds * 32000)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(y)[None])[0].numpy()
        got = tagger.run(y[None])[0]
        assert np.abs(ref - got).max() <= 1e-4


@pytest.mark.parametrize(
    ("category", "expected"),
    [("dog", {"Dog", "Bark", "Animal"}), ("rooster", {"Chicken, rooster", "Crowing, cock-a-doodle-doo"}),
     ("rain", {"Rain", "Rain on surface", "Raindrop"}), ("crying_baby", {"Baby cry, infant cry", "Crying, sobbing"}),
     ("helicopter", {"Helicopter"}), ("chainsaw", {"Chainsaw"})],
)
def test_esc50_labels_in_top3(tagger, category, expected):
    hits = 0
    for i in range(8):
        p = tagger.predict(esc50_clip(category, i), top_k=3)
        assert p.model == "mn04-as" and p.duration == pytest.approx(5.0, abs=0.01)
        assert all(lid and lid.startswith(("/m/", "/t/")) for lid in p.labels_info)
        hits += bool(expected & set(p.labels))
    assert hits >= 5, f"{category}: expected one of {expected} in the top 3 for most of 8 clips"


def test_zero_shot_esc10_matches_reference_accuracy(tagger):
    """The 320 ESC-10 clips of folds 1-4 scored zero-shot with the shared label map (reference: 0.9625)."""
    import csv

    spec = json.loads((REFERENCE / "esc10_audioset_map.json").read_text())
    classes = sorted(spec["map"])
    cols = [[tagger.labels.index(n) for n in spec["map"][c]] for c in classes]
    with open(DATA / "esc50" / "meta" / "esc50.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["esc10"] == "True"]
    files = [DATA / "esc50" / "audio" / r["filename"] for r in rows]
    correct = 0
    for r, f in zip(rows, files):
        s = tagger.clip_scores(tagger.decode(f))
        correct += classes[int(np.argmax([s[c].max() for c in cols]))] == r["category"]
    accuracy = correct / len(rows)
    assert len(rows) == 320
    assert accuracy >= spec["reference_zero_shot_accuracy"]["esc10_folds_1_to_4"] - 0.01


def test_spoken_digits_are_speech(tagger):
    files = sorted((DATA / "fsdd" / "recordings").glob("*.wav"))[::100]
    preds = list(tagger.predict_many(files, top_k=1))
    speech = sum(p.labels[0] == "Speech" for p in preds)
    assert speech >= 0.85 * len(preds)
    assert all(p.labels_info[0] for p in preds)


def test_predict_many_matches_predict_and_keeps_order(tagger, tmp_path):
    files = [esc50_clip("dog", 0), DATA / "fsdd" / "recordings" / "3_theo_10.wav", esc50_clip("rain", 0)]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    batch = list(tagger.predict_many([files[0], bad, files[1], files[2]], top_k=3))
    assert [p.title for p in batch] == [str(files[0]), str(bad), str(files[1]), str(files[2])]
    assert batch[1].labels == [] and batch[1].error["type"] == "AudioError"
    for f, p in zip(files, [batch[0], batch[2], batch[3]]):
        single = tagger.predict(f, top_k=3)
        assert single.labels == p.labels
        assert np.allclose(single.probabilities, p.probabilities, atol=1e-4)


def test_timeline_finds_dog_in_the_middle_of_rain(tagger, tmp_path):
    """Rain, then a dog clip, then rain: a Dog/Bark event lies inside the dog's span, not elsewhere."""
    rain = tagger.decode(esc50_clip("rain", 1))
    dog = tagger.decode(esc50_clip("dog", 0))
    y = np.concatenate([rain, rain, dog, rain, rain]) * 0.8
    path = tmp_path / "street.flac"
    sf.write(path, y, 32000)
    p = tagger.timeline(path, window=1.0, hop=0.5)
    assert p.duration == pytest.approx(25.0, abs=0.01)
    assert len(p.segments) >= 40
    dogs = [e for e in p.events if e.label in ("Dog", "Bark")]
    assert dogs, p.events
    assert all(9.0 <= e.start and e.end <= 16.0 for e in dogs)
    assert any(e.label in ("Rain", "Rain on surface") and e.end - e.start >= 4 for e in p.events)
    for e in p.events:
        assert 0 <= e.start < e.end <= 25.0 and 0 < e.score <= 1


def test_long_audio_is_windowed(tagger):
    y = np.concatenate([tagger.decode(esc50_clip("helicopter", i)) for i in range(5)])
    scores = tagger.clip_scores(y)
    assert tagger.labels[int(np.argmax(scores))] in ("Helicopter", "Vehicle", "Aircraft")


def test_short_clip_is_padded_not_failed(tagger):
    y = tagger.decode(DATA / "fsdd" / "recordings" / "0_george_0.wav")[:3000]
    p = tagger.predict(sf_bytes(y, 32000), top_k=3)
    assert p.ok and p.duration == pytest.approx(3000 / 32000, abs=1e-3)


def sf_bytes(y: np.ndarray, sr: int) -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, y, sr, format="WAV")
    return buf.getvalue()


def test_embed_and_logmel(tagger):
    e = tagger.embed(esc50_clip("dog", 0))
    assert e.shape == (384,) and np.isfinite(e).all()
    m = tagger.logmel(esc50_clip("dog", 0))
    assert m.shape == (128, 500)


def test_serving_path_never_imports_torch(tagger):
    code = (
        "import sys, earshot; c = earshot.load('mn04-as'); "
        f"c.predict({str(esc50_clip('dog', 0))!r}); c.timeline({str(esc50_clip('dog', 0))!r}); "
        "import earshot.cli, earshot.serve.app, earshot.watch, earshot.batch; "
        "assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_optimised_graph_is_kept_and_a_damaged_one_rebuilt(tagger, tmp_path, monkeypatch):
    """The first load saves onnxruntime's optimised graph; later loads use it; a damaged file is replaced."""
    import earshot
    from earshot.classifier import optimized_graph_path

    monkeypatch.setenv("EARSHOT_HOME", str(tmp_path))
    path = optimized_graph_path(tagger.bundle.model_path)
    assert path is not None and str(path).startswith(str(tmp_path)) and not path.exists()
    clip = esc50_clip("dog")
    ref = tagger.predict(clip, top_k=5)
    first = earshot.Classifier(tagger.bundle).warm()
    assert path.is_file() and path.stat().st_size > 1_000_000
    path.write_bytes(b"not an onnx graph")
    again = earshot.Classifier(tagger.bundle).warm()
    assert path.stat().st_size > 1_000_000
    for clf in (first, again):
        p = clf.predict(clip, top_k=5)
        assert p.labels == ref.labels
        assert np.abs(np.asarray(p.probabilities) - ref.probabilities).max() < 1e-3
