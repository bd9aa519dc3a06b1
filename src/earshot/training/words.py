"""The word family: a head on EfficientWord-Net's spoken-word embedding (`earshot.models.words`), a ResNet-50
trained to tell words apart across many real voices, frozen. The window (the CNN's, so the three members of
``cnn+speech+word`` see the same audio) is centred and padded or cut to the network's 1.5 s; an MLP head learns the
labels from its 2048-d unit vectors, with early stopping on validation (`speech.train_frozen_head`).

The member joins only data with recordings enough (`RECORDED_PER_LABEL` a label, synthetic takes left out, at most
`CLIPS_PER_LABEL` a label): the network costs about ten times the speech embedding a window, on every training
clip, and a head fit to synthetic voices learns cues real speakers lack (`speech.head_clips`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from earshot.models import words
from earshot.models.tagger import WaveformTagger
from earshot.training.loop import Log, Trained
from earshot.training.manifest import Manifest
from earshot.training.speech import CentredInput, train_recorded_head

FAMILY = "word"
CLIPS_PER_LABEL = 200  # training recordings a label the head sees at most (chosen at random with the seed)
INPUT_SAMPLES = int(words.WINDOW_SECONDS * words.SAMPLE_RATE)


class WordBackbone(nn.Module):
    """Filterbank → (no logits, the 2048-d word embedding): the backbone a head sits on."""

    def __init__(self, network: words.WordEmbedding) -> None:
        super().__init__()
        self.network = network

    def forward(self, fbank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.network(fbank)
        return e[:, :0], e


def feature_model() -> WaveformTagger:
    """The frozen front-end and network, without a head."""
    fbank, network = words.load()
    return WaveformTagger(CentredInput(fbank, INPUT_SAMPLES), WordBackbone(network), multi_label=False).eval()


def train_word(manifest: Manifest, tr: np.ndarray, va: np.ndarray, waves: dict[int, np.ndarray], *,
               epochs: int | None, seed: int, log: Log, window: float | None = None) -> Trained | None:
    """MLP head on the frozen word embedding; None when the data has too few recordings (`speech.recorded_clips`)."""
    config = {"backbone": "word-embedding", "source": words.SOURCE, "license": words.LICENSE,
              "weights": {"url": words.WHEEL_URL, "sha256": words.WHEEL_SHA256},
              "features": f"the 2048-d word embedding of the window's content centred in {words.WINDOW_SECONDS:g} s"}
    return train_recorded_head(FAMILY, feature_model, manifest, tr, va, waves, per_label=CLIPS_PER_LABEL,
                               config=config, epochs=epochs, seed=seed, log=log, window=window)
