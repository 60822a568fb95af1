"""VGG-16 (Simonyan & Zisserman 2015, configuration D), torchvision's `vgg16` layout and names, written here.

The ImageNet VGG-16 without BN: the baseline of HetConv's ImageNet experiments (Singh et al.,
CVPR 2019). `conv` is a factory so that hetnets.py can put HetConv in the 3×3 convs.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from . import register

CFG_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]

ConvFactory = Callable[[int, int, int], nn.Module]  # (in, out, layer index) -> 3x3 conv, stride 1, padding 1


def plain_conv3x3(cin: int, cout: int, index: int) -> nn.Module:  # index unused: same signature as HetConv's factory
    return nn.Conv2d(cin, cout, 3, padding=1)


class VGG(nn.Module):
    def __init__(self, cfg: list = CFG_D, num_classes: int = 1000, conv: ConvFactory = plain_conv3x3):
        super().__init__()
        layers: list[nn.Module] = []
        cin, index = 3, 0
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [conv(cin, v, index), nn.ReLU(inplace=True)]
                cin, index = v, index + 1
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


@register("vgg16", paper={"params_m": 138.36, "gflops": 15.47,
                          "source": "torchvision vgg16 model card (138.36M params, 15.47 GFLOPS = G multiply-adds at 224)"})
def vgg16(num_classes: int = 1000) -> VGG:
    return VGG(CFG_D, num_classes)
