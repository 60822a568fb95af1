"""ResNet-50 0.5× with C2sp (Wu et al., "Convolution with even-sized kernels and symmetric padding", NeurIPS 2019).

Follows the official TF code, boluoweifenda/CNN `source/nets/resnet50_c2sp.py` (the non-"optim"
branch, options/resnet50_c2sp.py "ResNet-50, 0.5x"), with the project's `C2sp`:
  - stem: 7×7 conv stride 2 (TF 'SAME', no BN or activation after it), 3×3 max-pool stride 2 ('SAME');
  - stages of [3, 4, 6, 3] pre-activation bottlenecks, outputs 128, 256, 512, 1024 (0.5× of
    ResNet-50), inner width out/4; activation ReLU6;
  - bottleneck: BN, ReLU6 -> 1×1 -> BN, ReLU6 -> [2×2 avg-pool if stride 2] -> C2sp (stride 1)
    -> BN, ReLU6 -> 1×1; the shortcut, where shapes change, takes the pre-activated input through
    a 2×2 avg-pool (stride 2, "Bag of Tricks") and a 1×1 conv;
  - head: BN, ReLU6, global average pool, fc with bias.
Every conv is bias-free. The baseline `c3_resnet` is the same net with the 3×3 ('c3') conv there.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.even_conv import C2sp
from ..layers.mixconv import Conv2dSame, same_pad_amounts
from . import register

SpatialConv = Callable[[int, int], nn.Module]


def conv3x3(cin: int, cout: int) -> nn.Module:
    """The official 'c3' mode: 3×3, stride 1, 'SAME' (= padding 1)."""
    return nn.Conv2d(cin, cout, 3, 1, 1, bias=False)


class MaxPoolSame(nn.Module):
    """TF max_pool, 3×3 stride 2, 'SAME' padding (padded cells never win).

    TF pads (0, 1) on an even axis and (1, 1) on an odd one: PyTorch's pool with padding 0 or 1 and
    ceil_mode (the last window may run one cell past the end). Written so rather than as a -inf Pad
    and a MaxPool, which the graph simplifier mis-folds.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, left = (same_pad_amounts(int(n), 3, 2, 1)[0] for n in x.shape[-2:])  # static per graph
        return F.max_pool2d(x, 3, 2, (top, left), ceil_mode=True)


class PreActBottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, spatial: SpatialConv):
        super().__init__()
        width = cout // 4
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.pool = nn.AvgPool2d(2, 2) if stride != 1 else nn.Identity()
        self.conv2 = spatial(width, width)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.act = nn.ReLU6(inplace=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2) if stride != 1 else nn.Identity(),
                                          nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity())

    def forward(self, x):
        pre = self.act(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.act(self.bn2(self.conv1(pre)))
        out = self.act(self.bn3(self.conv2(self.pool(out))))
        return self.conv3(out) + shortcut


class PreActResNet(nn.Module):
    def __init__(self, spatial: SpatialConv, repeats=(3, 4, 6, 3), widths=(128, 256, 512, 1024), num_classes: int = 1000):
        super().__init__()
        self.conv1 = Conv2dSame(3, 64, 7, 2, bias=False)
        self.maxpool = MaxPoolSame()
        cin, stages = 64, []
        for i, (r, cout) in enumerate(zip(repeats, widths)):
            blocks = [PreActBottleneck(cin if j == 0 else cout, cout, 2 if (i > 0 and j == 0) else 1, spatial) for j in range(r)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(cin)
        self.act = nn.ReLU6()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.maxpool(self.conv1(x))))))
        return self.fc(self.act(self.bn(x)).mean((2, 3)))


@register("c3_resnet", test_shape=(1, 3, 64, 64),
          paper={"params_m": 6.9, "gflops": 1.127,
                 "source": "Wu et al. NeurIPS 2019, ImageNet table, as reproduced on the official poster (boluoweifenda/CNN neurips2019_poster.pdf): ResNet-50 0.5x C3: 6.9M params, 1127M FLOPs"})
def c3_resnet(num_classes: int = 1000) -> PreActResNet:
    return PreActResNet(conv3x3, num_classes=num_classes)


@register("c2sp_resnet", baseline="c3_resnet", test_shape=(1, 3, 64, 64),
          paper={"params_m": 5.3, "gflops": 0.870,
                 "source": "Wu et al. NeurIPS 2019, ImageNet table, as reproduced on the official poster (boluoweifenda/CNN neurips2019_poster.pdf): ResNet-50 0.5x C2sp: 5.3M params, 870M FLOPs"})
def c2sp_resnet(num_classes: int = 1000) -> PreActResNet:
    return PreActResNet(C2sp, num_classes=num_classes)
