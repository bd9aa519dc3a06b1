"""The speech family: Google's speech embedding ported to torch, a head on it, and its average with the CNN, on
FSDD speakers held out of training."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import soundfile as sf
import soxr
import torch
from conftest import fsdd_digits_csv, fsdd_take, need_engine
from onnx import numpy_helper

from earshot.adaptation import adapt
from earshot.classifier import Classifier
from earshot.models import speech
from earshot.training import fit, train
from earshot.training.manifest import Item, Manifest
from earshot.training.speech import RECORDED_PER_LABEL, centred, head_clips

DIGITS = (1, 3, 6, 9)


def _released(member: str) -> ort.InferenceSession:
    with zipfile.ZipFile(speech.weights_file()) as z:
        return ort.InferenceSession(z.read(member), providers=["CPUExecutionProvider"])


def test_port_reproduces_the_released_onnx_graphs():
    """The torch front-end and network give the released graphs' outputs on a real recording: the log-mel, and
    the embeddings of every 76-frame window 8 frames apart from one pass over the whole clip."""
    y, sr = sf.read(fsdd_take("nicolas", 6, 3), dtype="float32")
    y = np.pad(soxr.resample(y, sr, 16000).astype(np.float32), (8000, 8000))
    mel_ref = np.squeeze(_released(speech.MEL_MEMBER).run(None, {"input": (y * 32767)[None]})[0]) / 10 + 2
    windows = np.stack([mel_ref[i:i + speech.RECEPTIVE_FRAMES]
                        for i in range(0, len(mel_ref) - speech.RECEPTIVE_FRAMES + 1, speech.STEP_FRAMES)])
    emb_ref = _released(speech.NET_MEMBER).run(None, {"input_1": windows[..., None].astype(np.float32)})[0]
    emb_ref = emb_ref.reshape(len(windows), speech.DIM)
    frontend, network = speech.load()
    with torch.no_grad():
        mel = frontend(torch.as_tensor(y)[None])
        emb = network(mel.unsqueeze(1))[0].numpy().T
    assert mel.shape[2] == frontend.n_frames(len(y)) == len(mel_ref)
    assert np.abs(mel[0].numpy().T - mel_ref).max() < 1e-4
    assert emb.shape == emb_ref.shape and len(emb) >= 3
    assert np.abs(emb - emb_ref).max() < 1e-3 * np.abs(emb_ref).max()


def test_short_clips_are_centred_and_stream_windows_left_alone():
    """A take padded with zeros at the end (a short clip under the clip policy) has its content moved to the
    middle; a window of continuous audio (no trailing zeros) comes out unchanged."""
    y, sr = sf.read(fsdd_take("george", 3, 7), dtype="float32")
    y = soxr.resample(y, sr, 16000).astype(np.float32)
    clip = torch.as_tensor(np.pad(y, (0, 16000 - len(y))))[None]
    out = centred(clip)[0].numpy()
    nz = np.flatnonzero(out)
    before, after = nz[0], 16000 - 1 - nz[-1]
    assert abs(before - after) <= 1 and before > 1000
    assert np.array_equal(out[nz[0]:nz[-1] + 1], y[np.flatnonzero(y)[0]:np.flatnonzero(y)[-1] + 1])
    stream = torch.as_tensor(np.concatenate([y, y, y])[:16000] + 1e-3)[None]
    assert torch.equal(centred(stream), stream)


def test_synthetic_takes_join_the_head_only_when_recordings_are_few():
    """Recordings enough for every label: the speech head learns from them alone; fewer: the synthetic takes
    stay beside them."""
    def manifest(recorded: int) -> Manifest:
        items = [Item(path=fsdd_take("theo", d, k), label=str(d)) for d in DIGITS for k in range(recorded)]
        items += [Item(path=fsdd_take("theo", d, 0), label=str(d), extra={"synthetic": "espeak-ng"})
                  for d in DIGITS for _ in range(30)]
        return Manifest(items)

    many = manifest(RECORDED_PER_LABEL)
    kept, why = head_clips(many, np.arange(len(many.items)))
    assert len(kept) == RECORDED_PER_LABEL * len(DIGITS) and "left out" in why
    assert not any("synthetic" in many.items[int(i)].extra for i in kept)
    few = manifest(8)
    kept, why = head_clips(few, np.arange(len(few.items)))
    assert len(kept) == len(few.items) and why.startswith(f"{30 * len(DIGITS)} beside {8 * len(DIGITS)}")


def _digits(tmp_path, takes: int) -> str:
    return fsdd_digits_csv(tmp_path, takes, DIGITS)


def test_auto_with_synthetic_voices_trains_only_the_word_families(tmp_path):
    """auto with --synthesize: the labels are spoken words, so neither the transfer head nor its AudioSet features
    are computed; the CNN, the speech head and their average are trained, and the reason says so. Nine recordings
    a digit are too few for the word and Whisper heads, which are left out."""
    need_engine("espeak-ng")
    r = fit(_digits(tmp_path, 3), model="auto", val_fold="nicolas", test_fold="lucas", epochs=1, synthesize=True,
            synth_per_label=2, quiet=True)
    assert [c.family for c in r.candidates] == ["cnn", "speech", "cnn+speech"]
    assert r.why.startswith("auto: --synthesize") and "no transfer head" in r.why
    assert r.added.synthetic["n"] == 2 * len(DIGITS)
    assert r.chosen.family in ("cnn", "speech", "cnn+speech")


@pytest.mark.slow
def test_speech_head_hears_a_speaker_it_never_had(tmp_path):
    """Twenty takes a digit from three speakers: the head on the speech embedding names a fourth speaker's digits
    (the test fold, in nothing of training) nearly always, and the bundle runs on onnxruntime alone."""
    bundle = train(_digits(tmp_path, 20), tmp_path / "speech", model="speech", val_fold="nicolas", test_fold="lucas",
                   quiet=True)
    card = json.loads((bundle / "card.json").read_text())
    assert card["training"]["family"] == "speech"
    assert card["training"]["weights"]["sha256"] == speech.WHEEL_SHA256
    assert "Apache-2.0" in card["license"]
    test = card["metrics"]["test"]
    assert test["n"] == 80 and test["accuracy"] >= 0.9, test
    clf = Classifier.load(bundle)
    pred = clf.predict(fsdd_take("lucas", 6, 40))  # a take outside every fold used
    assert pred.labels[0] == "6", pred
    scores = clf.clip_scores(np.zeros(16000, dtype=np.float32))
    assert abs(float(scores.sum()) - 1.0) < 1e-4
    take = clf.decode(fsdd_take("lucas", 3, 41))
    gap = 16000 - len(take)
    end_padded, middle = np.pad(take, (0, gap)), np.pad(take, (gap // 2, gap - gap // 2))
    a, b = clf.run(np.stack([end_padded, middle]))[0]
    assert np.allclose(a, b, atol=1e-5)  # the exported graph centres a short clip itself

    # `earshot adapt` moves the head's input standardisation, the graph's one normalisation layer, to the mean and
    # variance of the embeddings the bundle gives a voice it never trained on (lucas, the test fold; takes outside
    # every fold), every weight unchanged
    files = [fsdd_take("lucas", d, i) for d in DIGITS for i in range(30, 36)]
    out = adapt(bundle, files, tmp_path / "speech-lucas")
    info = json.loads((out / "card.json").read_text())["adaptation"]
    assert info["layers"] == 1 and info["files"] == len(files)
    emb = np.concatenate([clf.run(clf.clip_inputs(clf.decode(f)), ("embedding",))[0] for f in files]).astype(float)
    graph = onnx.load(str(out / "model.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    (node,) = [n for n in graph.node if n.op_type == "BatchNormalization"]
    assert node.input[3] == "head.mean"
    assert np.allclose(inits[node.input[3]], emb.mean(axis=0), atol=1e-4)
    assert np.allclose(inits[node.input[4]], emb.var(axis=0), rtol=1e-3, atol=1e-6)
    adapted = Classifier.load(out)
    assert not np.allclose(adapted.clip_scores(take), clf.clip_scores(take), atol=1e-4)
    assert adapted.predict(fsdd_take("lucas", 9, 47)).labels[0] == "9"


@pytest.mark.slow
def test_cnn_plus_speech_averages_both_in_one_bundle(tmp_path):
    """--model cnn+speech: one graph whose scores are the mean of the CNN's and the speech head's, chosen as
    asked even when a member alone validates as well; the held-out speaker is far above chance."""
    bundle = train(_digits(tmp_path, 12), tmp_path / "both", model="cnn+speech", val_fold="nicolas",
                   test_fold="lucas", epochs=6, quiet=True)
    card = json.loads((bundle / "card.json").read_text())
    training = card["training"]
    assert training["family"] == "cnn+speech"
    assert set(training["candidates"]) == {"cnn", "speech", "cnn+speech"}
    assert set(training["members"]) == {"cnn", "speech"}
    assert card["metrics"]["test"]["accuracy"] >= 0.7, card["metrics"]["test"]
    clf = Classifier.load(bundle)
    takes = [clf.pad(clf.decode(fsdd_take("lucas", d, 45)))[:16000] for d in DIGITS]
    scores, embedding = clf.run(np.stack([np.pad(t, (0, 16000 - len(t))) for t in takes]), ("scores", "embedding"))
    assert np.allclose(scores.sum(axis=1), 1.0, atol=1e-4)
    assert embedding.shape[1] > 2 * speech.DIM  # the CNN's embedding beside the pooled speech embedding
