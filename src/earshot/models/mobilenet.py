"""MobileNetV3 audio tagger in the configuration of EfficientAT's `mn` models (Schmid et al., ICASSP 2023).

Written for earshot so that the released EfficientAT state dicts load with `strict=True`: module names and
shapes follow that checkpoint layout (features.{i}.block.{j}, conc_se_layers, classifier.{2,5}). Squeeze-and-
excitation pools over frequency and time (the "c" variant), with max aggregation over its single branch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor`, never dropping more than 10 % (as in MobileNetV2/V3)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=0.001, momentum=0.01)


class ConvBNAct(nn.Sequential):
    """conv (no bias) → BatchNorm → optional activation; indices 0/1/2 match the checkpoint."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type | None = None):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            _bn(cout),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel gates from the mean over frequency and time."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * s[:, :, None, None]


class ConcurrentSE(nn.Module):
    """Container holding the SE branch under the checkpoint's `conc_se_layers.0` name (one branch: max = identity)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.conc_se_layers = nn.ModuleList([SqueezeExcitation(channels, squeeze)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conc_se_layers[0](x)


@dataclass(frozen=True)
class BlockSpec:
    cin: int
    kernel: int
    expanded: int
    cout: int
    se: bool
    hardswish: bool
    stride: int


class InvertedResidual(nn.Module):
    def __init__(self, s: BlockSpec) -> None:
        super().__init__()
        act = nn.Hardswish if s.hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if s.expanded != s.cin:
            layers.append(ConvBNAct(s.cin, s.expanded, 1, act=act))
        layers.append(ConvBNAct(s.expanded, s.expanded, s.kernel, s.stride, groups=s.expanded, act=act))
        if s.se:
            layers.append(ConcurrentSE(s.expanded, make_divisible(s.expanded // 4, 8)))
        layers.append(ConvBNAct(s.expanded, s.cout, 1))
        self.block = nn.Sequential(*layers)
        self.residual = s.stride == 1 and s.cin == s.cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


# MobileNetV3-Large bottlenecks (Howard et al., 2019): in, kernel, expanded, out, SE, hardswish, stride.
_LARGE = [
    (16, 3, 16, 16, False, False, 1),
    (16, 3, 64, 24, False, False, 2),
    (24, 3, 72, 24, False, False, 1),
    (24, 5, 72, 40, True, False, 2),
    (40, 5, 120, 40, True, False, 1),
    (40, 5, 120, 40, True, False, 1),
    (40, 3, 240, 80, False, True, 2),
    (80, 3, 200, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 480, 112, True, True, 1),
    (112, 3, 672, 112, True, True, 1),
    (112, 5, 672, 160, True, True, 2),
    (160, 5, 960, 160, True, True, 1),
    (160, 5, 960, 160, True, True, 1),
]


class MobileNetAudio(nn.Module):
    """Log-mel [batch, 1, mels, frames] → (logits [batch, classes], embedding [batch, 6 * last block width])."""

    def __init__(self, width: float = 0.4, num_classes: int = 527, head_width: int = 1280, dropout: float = 0.2):
        super().__init__()

        def ch(c: int) -> int:
            return make_divisible(c * width, 8)

        specs = [BlockSpec(ch(a), k, ch(e), ch(o), se, hs, st) for a, k, e, o, se, hs, st in _LARGE]
        last = specs[-1].cout
        self.embedding_dim = 6 * last
        layers: list[nn.Module] = [ConvBNAct(1, specs[0].cin, 3, 2, act=nn.Hardswish)]
        layers += [InvertedResidual(s) for s in specs]
        layers.append(ConvBNAct(last, self.embedding_dim, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        hidden = make_divisible(head_width * width, 8)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
            nn.Linear(self.embedding_dim, hidden),
            nn.Hardswish(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.features(mel)
        embedding = x.mean(dim=(2, 3))
        return self.classifier(x), embedding


def _widened(layer: ConvBNAct, cin: int, cout: int) -> ConvBNAct:
    """`layer` with zero input channels appended up to `cin` and zero output channels up to `cout` (a depthwise
    layer stays depthwise); the added outputs are exactly 0 after BatchNorm and the activation."""
    conv, bn = layer[0], layer[1]
    depthwise = conv.groups > 1
    act = type(layer[2]) if len(layer) > 2 else None
    new = ConvBNAct(cin, cout, conv.kernel_size[0], conv.stride[0], groups=cout if depthwise else 1, act=act)
    new_conv, new_bn = new[0], new[1]
    with torch.no_grad():
        new_conv.weight.zero_()
        new_conv.weight[: conv.out_channels, : conv.weight.shape[1]] = conv.weight
        new_bn.weight.zero_()
        new_bn.bias.zero_()
        new_bn.running_mean.zero_()
        new_bn.running_var.fill_(1.0)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(new_bn, name)[: bn.num_features] = getattr(bn, name)
    new_bn.eps = bn.eps
    return new.train(layer.training)


def widen_stem(net: MobileNetAudio, channels: int = 16) -> MobileNetAudio:
    """The same function with the stem and the first bottleneck (8 channels at width 0.4) widened with zero
    channels to `channels`, in place: onnxruntime's blocked (NCHWc) convolutions work on 16 channels at a time
    on AVX-512, and an 8-channel tensor at the highest resolution made it reorder to and from plain layout around
    slow kernels. For export only: the state dict no longer matches the checkpoint."""
    stem, first, second = net.features[0], net.features[1], net.features[2]
    narrow = stem[0].out_channels
    if narrow >= channels or not first.residual or len(first.block) != 2:
        return net
    net.features[0] = _widened(stem, 1, channels)
    first.block[0] = _widened(first.block[0], channels, channels)
    first.block[1] = _widened(first.block[1], channels, channels)
    head = second.block[0]
    second.block[0] = _widened(head, channels, head[0].out_channels)
    return net
