"""The whisper family: a head on Whisper tiny.en's audio encoder (`earshot.models.whisper`), trained to transcribe
English from 680,000 hours of speech in many voices and accents, frozen. The window (the CNN's, so every member
of an average sees the same audio) is centred and padded or cut to `INPUT_SECONDS`; the encoder's 80 outputs are
pooled (mean and max, 768 numbers) and an MLP head learns the labels from them, with early stopping on validation
(`speech.train_frozen_head`).

Like the word member it joins only data with recordings enough (`speech.RECORDED_PER_LABEL` a label, synthetic
takes left out, at most `CLIPS_PER_LABEL` a label: `speech.train_recorded_head`). On FSDD with each speaker held
out, the head alone scored 0.904 / 0.968 / 0.992 / 0.994 / 0.998 (nicolas, george, jackson, lucas, theo), and
averaged with the CNN, the speech and word heads it lifted the mean over the five from 0.970 to 0.979 (README).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from earshot.models import whisper
from earshot.models.tagger import WaveformTagger
from earshot.training.loop import Log, Trained
from earshot.training.manifest import Manifest
from earshot.training.speech import CentredInput, train_recorded_head

FAMILY = "whisper"
CLIPS_PER_LABEL = 200  # training recordings a label the head sees at most (chosen at random with the seed)
INPUT_SECONDS = 1.6  # 160 log-mel frames, 80 encoder outputs: a spoken word with room either side
INPUT_SAMPLES = int(INPUT_SECONDS * whisper.SAMPLE_RATE)


class WhisperPooled(nn.Module):
    """Log-mel → (no logits, [mean | max] of the encoder's outputs over time): the backbone a head sits on."""

    def __init__(self, encoder: whisper.WhisperEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, logmel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.encoder(logmel)  # [batch, steps, 384]
        pooled = torch.cat([e.mean(dim=1), e.amax(dim=1)], dim=1)
        return pooled[:, :0], pooled


def feature_model() -> WaveformTagger:
    """The frozen front-end and encoder, without a head."""
    mel, encoder = whisper.load()
    return WaveformTagger(CentredInput(mel, INPUT_SAMPLES), WhisperPooled(encoder), multi_label=False).eval()


def train_whisper(manifest: Manifest, tr: np.ndarray, va: np.ndarray, waves: dict[int, np.ndarray], *,
                  epochs: int | None, seed: int, log: Log, window: float | None = None) -> Trained | None:
    """MLP head on the frozen Whisper encoder; None when the data has too few recordings (`recorded_clips`)."""
    config = {"backbone": "whisper-tiny.en-encoder", "source": whisper.SOURCE, "license": whisper.LICENSE,
              "weights": {"url": whisper.WHEEL_URL, "sha256": whisper.WHEEL_SHA256},
              "features": f"mean | max of the encoder's {whisper.DIM}-d outputs (every 20 ms) over the window's "
                          f"content centred in {INPUT_SECONDS:g} s"}
    return train_recorded_head(FAMILY, feature_model, manifest, tr, va, waves, per_label=CLIPS_PER_LABEL,
                               config=config, epochs=epochs, seed=seed, log=log, window=window)
