"""ShuffleNetV2 (Ma et al., ECCV 2018), torchvision's layout and parameter names, written here.

`dr_shufflenetv2_0_5x` is its DRConv variant (Chen et al., CVPR 2021); see `dr_shufflenetv2_0_5x`.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from . import register

#: makes the unit's pointwise conv: (in, out) -> module; the papers' layers swap in here
PointwiseFactory = Callable[[int, int], nn.Module]


def _pw(cin: int, cout: int) -> nn.Module:
    return nn.Conv2d(cin, cout, 1, bias=False)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class InvertedResidual(nn.Module):
    """The ShuffleNetV2 unit: split (or, strided, both halves) → 1×1, dw 3×3, 1×1 → concat → shuffle."""

    def __init__(self, cin: int, cout: int, stride: int, pw: PointwiseFactory = _pw) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.Conv2d(cin, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        c2 = cin if stride > 1 else half
        self.branch2 = nn.Sequential(
            pw(c2, half), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False), nn.BatchNorm2d(half),
            pw(half, half), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, stages_repeats: list[int], stages_out_channels: list[int], num_classes: int = 1000,
                 pw: PointwiseFactory = _pw) -> None:
        super().__init__()
        cin = stages_out_channels[0]
        self.conv1 = nn.Sequential(nn.Conv2d(3, cin, 3, 2, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, (repeats, cout) in enumerate(zip(stages_repeats, stages_out_channels[1:4]), start=2):
            units = [InvertedResidual(cin, cout, 2, pw)] + [InvertedResidual(cout, cout, 1, pw) for _ in range(repeats - 1)]
            setattr(self, f"stage{i}", nn.Sequential(*units))
            cin = cout
        cout = stages_out_channels[-1]
        self.conv5 = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
        self.fc = nn.Linear(cout, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean((2, 3)))


#: ShuffleNetV2 0.5× (Ma et al. 2018, Table 5, the architecture): stage repeats and output channels
REPEATS_0_5X, CHANNELS_0_5X = [4, 8, 4], [24, 48, 96, 192, 1024]


@register("shufflenetv2_0_5x", test_shape=(1, 3, 64, 64),
          paper={"params_m": 1.4, "gflops": 0.041, "source": "Ma et al. 2018 (ShuffleNet v2 0.5x: 41 MFLOPs); megvii-model/ShuffleNet-Series README: 41M FLOPs, 1.4M params",
                 "params_tol": 0.03, "why": "the paper rounds to 0.1 M (1.37 M, torchvision's count, prints as 1.4)"})
def shufflenetv2_0_5x(num_classes: int = 1000) -> ShuffleNetV2:
    return ShuffleNetV2(REPEATS_0_5X, CHANNELS_0_5X, num_classes)
