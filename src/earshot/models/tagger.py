"""The exported network: waveform → (scores, embedding, log-mel), front-end included."""

from __future__ import annotations

import torch
from torch import nn


class WaveformTagger(nn.Module):
    """Front-end + backbone (+ optional head on the embedding) + output activation, as one exportable graph.

    The backbone maps log-mel [batch, 1, mels, frames] to (logits, embedding). A head, when given, replaces
    the backbone's logits with head(embedding) — the transfer-learning layout.
    """

    def __init__(self, frontend: nn.Module, backbone: nn.Module, head: nn.Module | None = None, multi_label=True):
        super().__init__()
        self.frontend, self.backbone, self.head = frontend, backbone, head
        self.multi_label = multi_label

    def at_rate(self, source_rate: int) -> WaveformTagger:
        """The same network for waveforms at `source_rate`, an integer divisor of the front-end's rate, sharing
        the backbone and head: its front-end skips the resampling (`EfficientATMel.at_rate`)."""
        return WaveformTagger(self.frontend.at_rate(source_rate), self.backbone, self.head, self.multi_label)

    def logits(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mel = self.frontend(waveform)
        logits, embedding = self.backbone(mel.unsqueeze(1))
        if self.head is not None:
            logits = self.head(embedding)
        return logits, embedding, mel

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, embedding, mel = self.logits(waveform)
        scores = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
        return scores, embedding, mel
