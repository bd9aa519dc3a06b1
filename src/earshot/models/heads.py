"""Heads on pretrained features, and the transfer network that puts one on a backbone for export."""

from __future__ import annotations

import torch
from torch import nn


class EmbeddingHead(nn.Module):
    """Standardise (training-set mean/std, stored as buffers) → dropout → [linear → ReLU → dropout] → linear."""

    def __init__(self, dim: int, num_classes: int, *, hidden: int = 0, dropout: float = 0.5,
                 mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim) if mean is None else mean.float().clone())
        self.register_buffer("std", torch.ones(dim) if std is None else std.float().clamp_min(1e-4).clone())
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if hidden:
            layers += [nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(hidden or dim, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


class TransferNet(nn.Module):
    """Pretrained tagger backbone + head on [embedding | sigmoid(tagger logits)] (the features of
    `train.transfer_features`). log-mel → (head logits, embedding): a backbone for `WaveformTagger`."""

    def __init__(self, backbone: nn.Module, head: nn.Module, use_scores: bool = True) -> None:
        super().__init__()
        self.backbone, self.head, self.use_scores = backbone, head, use_scores

    def features(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, embedding = self.backbone(mel)
        feats = torch.cat([embedding, torch.sigmoid(logits)], dim=1) if self.use_scores else embedding
        return feats, embedding

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, embedding = self.features(mel)
        return self.head(feats), embedding
