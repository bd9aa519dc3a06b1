"""Training's pieces on real recordings: metrics, the CNN's window, its augmentation and the utterance
normalisation."""

from __future__ import annotations

import pytest
from shareddata import FSDD

import earshot
from earshot.training import metrics_for

pytest.importorskip("torch")

from earshot.training import fit, window_for  # noqa: E402


def test_metrics_for():
    m = metrics_for([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(0.6) and m["n"] == 5
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["per_class"]["b"] == {"precision": pytest.approx(2 / 3, abs=1e-6), "recall": 1.0,
                                   "f1": pytest.approx(0.8), "support": 2}
    assert m["per_class"]["c"]["f1"] == 0.0
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3, abs=1e-6)


def test_window_for():
    assert window_for([0.4, 0.5, 0.6]) == 1.0
    assert window_for([5.0] * 10) == 5.0
    assert window_for([3.2, 3.9, 4.0]) == 4.0
    assert window_for([60.0]) == 10.0


def test_cnn_augmentation_varies_level_and_colouring():
    """Each training example gets its own level (±20 dB) and a smooth equaliser curve: the recording chains of
    unseen sources differ by that much (FSDD speakers sit 20 dB apart)."""
    import math

    import torch

    from earshot.training.augment import MelAugment as _MelAugment

    x = torch.full((256, 1, 64, 100), 0.5)  # a flat, steady spectrum
    out = _MelAugment(torch.Generator().manual_seed(0))(x)
    db = (out.median(dim=3).values[:, 0] - 0.5) * 5 * 10 / math.log(10)  # per example and band, in dB
    level = db.median(dim=1).values
    assert level.max() - level.min() > 30 and level.abs().max() < 40
    shape = db - db.median(dim=1, keepdim=True).values
    assert (shape.std(dim=1) > 2).float().mean() > 0.5  # most examples are coloured, not just shifted
    # smooth: neighbouring bands move together (masked bands excepted, hence the median)
    assert shape.diff(dim=1).abs().median() < 1.0


def test_utterance_norm_cancels_the_recording_chain():
    """`--input-norm utterance`: a fixed gain and a smooth equaliser (offsets on the log-mel) leave what the network
    sees unchanged, on a real spoken digit; an unknown norm is refused."""
    import math

    import torch

    from earshot.frontend import EfficientATMel
    from earshot.models.cnn import CNN_FRONTEND
    from earshot.training.cnn import UtteranceNorm

    class Seen(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    y = earshot.audio.decode(FSDD / "recordings" / "3_theo_0.wav", 16000)
    mel = EfficientATMel(**CNN_FRONTEND).eval()(torch.as_tensor(y[None]).float()).unsqueeze(1)
    band = torch.linspace(0, 1, mel.shape[2]).view(1, 1, -1, 1)
    offset = (12 + 6 * torch.cos(math.pi * band)) * math.log(10) / 10 / 5  # +12 dB, ±6 dB tilt, as log-mel units
    norm = UtteranceNorm(Seen())
    a, _ = norm(mel)
    b, _ = norm(mel + offset)
    kept = (a > norm.floor) & (b > norm.floor)
    assert kept.float().mean() > 0.3 and torch.allclose(a[kept], b[kept], atol=0.05)
    assert abs(float(mel.mean()) - float((mel + offset).mean())) > 0.5  # the raw inputs did differ
    with pytest.raises(earshot.DataError, match="input-norm"):
        fit(FSDD / "recordings", model="cnn", input_norm="cepstral", quiet=True)
