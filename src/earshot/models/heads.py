"""Transfer learning on a pretrained tagger: the feature network (whole clip + 2 s crops) and the head on it."""

from __future__ import annotations

import torch
from torch import nn

from earshot.frontend import SILENCE_LOGMEL


class EmbeddingHead(nn.Module):
    """Standardise (training-set mean and variance, stored as buffers) → dropout → [linear → ReLU → dropout] → linear.

    The standardisation is a batch-normalisation node in the exported graph (statistics = the training features'
    mean and variance, no affine), so `earshot adapt` re-estimates it on a new domain's features like any other
    normalisation layer: the embeddings of a voice never heard are re-centred where the head expects them. The
    small epsilon keeps a feature that is constant in the new domain at zero instead of dividing by zero.
    """

    def __init__(self, dim: int, num_classes: int, *, hidden: int = 0, dropout: float = 0.5,
                 mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim) if mean is None else mean.float().clone())
        self.register_buffer("var", torch.ones(dim) if std is None else std.float().clamp_min(1e-4).square())
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if hidden:
            layers += [nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(hidden or dim, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(nn.functional.batch_norm(x, self.mean, self.var, training=False, eps=1e-8))


class CropPooledFeatures(nn.Module):
    """log-mel → (the backbone's whole-clip logits, [whole-clip embedding | mean embedding of crops]).

    Crops are `crop` frames long with a hop of `crop // 2`; the clip is padded with silence to a whole number
    of hops (at least one crop). The crop view matters for short events in a longer clip: on UrbanSound8K
    fold 1 → 2 the mean crop embedding of mn04-as scores about 0.84 against 0.80 for the whole-clip embedding
    alone, while the whole-clip view keeps ESC-10 at 1.0. Built from reshapes and slices only, so the ONNX
    graph keeps a dynamic length.
    """

    def __init__(self, backbone: nn.Module, crop: int = 200) -> None:
        super().__init__()
        if crop % 2:
            raise ValueError("crop must be even")
        self.backbone, self.crop = backbone, crop

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, whole = self.backbone(mel)
        b, _, m, t = mel.shape
        hop = self.crop // 2
        blocks = torch.sym_max((t + hop - 1) // hop, 2)
        pad = blocks * hop - t
        x = torch.cat([mel, torch.full((b, 1, m, pad), SILENCE_LOGMEL, dtype=mel.dtype)], dim=3)
        x = x.reshape(b, m, blocks, hop)
        crops = torch.cat([x[:, :, :-1], x[:, :, 1:]], dim=3)  # [b, mels, blocks-1, crop]
        crops = crops.permute(0, 2, 1, 3).reshape(-1, 1, m, self.crop)
        _, emb = self.backbone(crops)
        pooled = emb.reshape(b, -1, emb.shape[1]).mean(dim=1)
        return logits, torch.cat([whole, pooled], dim=1)
