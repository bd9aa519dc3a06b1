"""Compact CNN trained from scratch on log-mel, for domains far from AudioSet (spoken digits, keywords).

Same interface as `MobileNetAudio`: log-mel [batch, 1, mels, frames] → (logits, embedding), so `WaveformTagger`
exports it with its front-end. Variable-length input: frequency is kept (flattened into channels after
pooling), time is pooled by mean and max.
"""

from __future__ import annotations

import torch
from torch import nn

# Front-end for speech-like data (see EfficientATMel): 16 kHz, 32 ms window, 10 ms hop, 64 mels.
CNN_FRONTEND = {"sample_rate": 16000, "n_fft": 512, "win_length": 400, "hop": 160, "n_mels": 64,
                "fmin": 20.0, "fmax": 8000.0, "preemphasis": 0.97}


def _block(cin: int, cout: int, pool: tuple[int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.MaxPool2d(pool),
    )


class CompactCNN(nn.Module):
    """Four conv blocks (conv3x3, BN, ReLU, max-pool; 16-32-64-128 channels, time pooled x4) → per-frame
    features (channels x remaining mel bands) → 1x1 projection → mean+max over time = embedding → linear.

    About 0.17 M parameters and 25 M multiply-adds per second of 16 kHz audio: trains on 2 CPU cores.
    """

    def __init__(self, num_classes: int, n_mels: int = 64, widths=(16, 32, 64, 128), embedding_dim: int = 256,
                 dropout: float = 0.3) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        self.input_norm = nn.BatchNorm2d(1)
        self.features = nn.Sequential(
            _block(1, w1, (2, 2)), _block(w1, w2, (2, 2)), _block(w2, w3, (2, 1)), _block(w3, w4, (2, 1))
        )
        bands = n_mels // 16
        self.project = nn.Sequential(
            nn.Conv1d(w4 * bands, embedding_dim // 2, 1, bias=False), nn.BatchNorm1d(embedding_dim // 2),
            nn.ReLU(inplace=True),
        )
        self.embedding_dim = embedding_dim
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(embedding_dim, num_classes))

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.features(self.input_norm(mel))  # [b, c, bands, t]
        x = self.project(x.flatten(1, 2))  # [b, e/2, t]
        embedding = torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1)
        return self.classifier(embedding), embedding
