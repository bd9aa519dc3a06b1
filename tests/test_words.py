"""The word family: EfficientWord-Net's spoken-word embedding ported to torch and a head on it (the average with the
other members, on FSDD speakers held out of training, is in test_whisper)."""

from __future__ import annotations

import zipfile

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import fsdd_digits_csv, fsdd_take, fsdd_take_at
from python_speech_features import logfbank

from earshot import audio
from earshot.models import words
from earshot.training import train
from earshot.training.manifest import Item, Manifest
from earshot.training.speech import RECORDED_PER_LABEL, CentredInput, recorded_clips
from earshot.training.words import CLIPS_PER_LABEL, INPUT_SAMPLES

DIGITS = (1, 3, 6, 9)


def _take_in_window(speaker: str, digit: int, index: int, at: int = 5000) -> np.ndarray:
    return fsdd_take_at(speaker, digit, index, INPUT_SAMPLES, at)


def test_filterbank_matches_the_features_the_network_was_trained_on():
    """The torch filterbank gives python_speech_features' logfbank (the library the network's features came from)
    on a real recording, 149 frames for 1.5 s, silent frames included."""
    x = _take_in_window("nicolas", 6, 3)
    ref = logfbank(x, samplerate=16000, winlen=0.025, winstep=0.01, nfilt=64, nfft=512, preemph=0.0)
    with torch.no_grad():
        ours = words.WordFbank()(torch.as_tensor(x)[None])[0].numpy()
    assert ours.shape == ref.shape == (words.n_frames(INPUT_SAMPLES), 64) == (149, 64)
    assert np.abs(ours - ref).max() < 1e-4
    assert ref.min() < -30  # the padding's digital silence is in the comparison


def test_port_reproduces_the_released_onnx_graph():
    """The torch network gives the released graph's unit vectors on the same features, for two different words;
    the two words' embeddings are far apart, two takes of one word close."""
    with zipfile.ZipFile(words.weights_file()) as z:
        released = ort.InferenceSession(z.read(words.NET_MEMBER), providers=["CPUExecutionProvider"])
    fbank, network = words.load()
    takes = [_take_in_window("jackson", 6, 10), _take_in_window("jackson", 6, 11, at=9000),
             _take_in_window("jackson", 1, 10)]
    with torch.no_grad():
        feats = fbank(torch.as_tensor(np.stack(takes)))
        ours = network(feats.unsqueeze(1)).numpy()
    ref = np.concatenate([released.run(None, {"input": f[None, None].numpy()})[0] for f in feats])
    assert ours.shape == ref.shape == (3, words.DIM)
    assert np.abs(ours - ref).max() < 1e-4
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert ours[0] @ ours[1] > ours[0] @ ours[2] + 0.2


def test_window_is_centred_in_the_networks_input():
    """A 1 s window with a word at its start reaches the network as the same word centred in 1.5 s; a 3 s window is
    cut to its middle 1.5 s."""
    y = audio.decode(fsdd_take("theo", 3, 2), 16000)
    inp = CentredInput(words.WordFbank(), INPUT_SAMPLES)
    short = np.zeros(16000, dtype=np.float32)
    short[: len(y)] = y
    middle = np.zeros(INPUT_SAMPLES, dtype=np.float32)
    start = (INPUT_SAMPLES - len(y)) // 2
    middle[start : start + len(y)] = y
    with torch.no_grad():
        a = inp(torch.as_tensor(short)[None])
        b = words.WordFbank()(torch.as_tensor(middle)[None])
        long = torch.as_tensor(np.concatenate([np.full(24000, 0.01), y, np.full(24000, 0.01)]), dtype=torch.float32)
        c = inp(long[None])
    assert a.shape == b.shape == (1, 149, 64)
    assert (a - b).abs().max() < 2e-3 * b.abs().max()
    assert c.shape == (1, 149, 64)


def test_the_word_head_trains_on_recordings_only_and_only_when_there_are_enough():
    """At least 50 recordings a label: the head's clips are recordings, at most `CLIPS_PER_LABEL` a label, drawn
    with the seed; fewer: no clips (the member is not trained)."""
    def manifest(recorded: int) -> Manifest:
        items = [Item(path=fsdd_take("theo", d, k % 50), label=str(d)) for d in DIGITS for k in range(recorded)]
        items += [Item(path=fsdd_take("theo", d, 0), label=str(d), extra={"synthetic": "espeak-ng"})
                  for d in DIGITS for _ in range(30)]
        return Manifest(items)

    many = manifest(CLIPS_PER_LABEL + 30)
    kept = recorded_clips(many, np.arange(len(many.items)), 0, CLIPS_PER_LABEL)
    assert kept is not None and len(kept) == CLIPS_PER_LABEL * len(DIGITS)
    assert not any("synthetic" in many.items[int(i)].extra for i in kept)
    assert np.array_equal(kept, recorded_clips(many, np.arange(len(many.items)), 0, CLIPS_PER_LABEL))
    assert not np.array_equal(kept, recorded_clips(many, np.arange(len(many.items)), 1, CLIPS_PER_LABEL))
    enough = manifest(RECORDED_PER_LABEL)
    kept = recorded_clips(enough, np.arange(len(enough.items)), 0, CLIPS_PER_LABEL)
    assert kept is not None and len(kept) == RECORDED_PER_LABEL * len(DIGITS)
    few = manifest(RECORDED_PER_LABEL - 1)
    assert recorded_clips(few, np.arange(len(few.items)), 0, CLIPS_PER_LABEL) is None


def test_the_server_offers_every_training_family():
    """The REST training route (which cannot import torch) lists the same families as `earshot train`."""
    from earshot.serve.routers.train import TRAIN_FAMILIES
    from earshot.training.families import FAMILIES

    assert TRAIN_FAMILIES == FAMILIES


def _digits(tmp_path, takes: int) -> str:
    return fsdd_digits_csv(tmp_path, takes, DIGITS)


def test_word_family_needs_recordings_enough(tmp_path):
    """--model word on 12 recordings a label: a clear error naming the minimum and the alternative."""
    from earshot.errors import DataError

    with pytest.raises(DataError, match=f"at least {RECORDED_PER_LABEL} recordings a label"):
        train(_digits(tmp_path, 4), tmp_path / "few", model="word", val_fold="nicolas", test_fold="lucas",
              quiet=True)
