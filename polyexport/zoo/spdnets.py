"""SPD-Conv networks (Sunkara & Luo, "No More Strided Convolutions or Pooling", ECML-PKDD 2022).

Written from the official code, LabSAINT/SPD-Conv, with the project's `space_to_depth` / `SPDConv`:

- `spd_resnet18` (ResNet18-SPD/models/resnet50_spd.py, Tiny-ImageNet, 64×64, 200 classes): the net
  the README trains and reports as ResNet18-SPD (`train_tiny.py -net resnet18_spd`, 64.52 % top-1),
  i.e. that file's `resnet18()`, which is `ResNet(BottleNeck, [3, 4, 6, 3])` — 50 layers deep,
  whatever its name; built as the official code builds it (same tensors in the same order, so an
  official state_dict maps onto ours by position; the names follow torchvision). The stem
  is `Focus(3, 64, k=1)` (space-to-depth, 1×1 conv, BN, SiLU) instead of conv + max-pool; in each
  stride-2 bottleneck the 3×3 runs at stride 1 and space_to_depth follows it (BN over 4·planes, the
  last 1×1 maps 4·planes -> 4·planes). The 1×1 shortcut keeps its stride 2, as in the official code.
  Baseline `resnet18_64`: the plain ResNet-18 the paper compares with on Tiny-ImageNet (the repo's
  `-net resnet18`, pytorch-cifar100's ResNet): 3×3 stride-1 stem, no max-pool, 200 classes.
- `spd_yolov5n_backbone` (YOLOv5-SPD/models/space_depth_n.yaml, backbone rows 0-13, 640×640): each
  stride-2 Conv of YOLOv5 v6.0 becomes a stride-1 Conv followed by space_to_depth, and the 6×6 s2
  stem becomes Focus(3, 16, k=3). Baseline `yolov5n_backbone`: the plain YOLOv5n v6.0 backbone.
  Both return the SPPF output (P5) by default — one tensor, as the tools and benchmarks expect, and
  every backbone layer lies on its path; `all_features=True` returns (P3, P4, P5) for a neck.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..layers.spd_conv import SPDConv, space_to_depth
from . import register
from .resnet import BasicBlock, ResNet, conv_bn


class SPDBottleneck(nn.Module):
    """The official SPD BottleNeck: at stride 2, 3×3 (s1) -> space_to_depth -> BN(4c) -> ReLU -> 1×1 (4c -> 4·planes)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        scale = 4 if stride == 2 else 1
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.spd = space_to_depth() if stride == 2 else nn.Identity()
        self.bn2 = nn.BatchNorm2d(planes * scale)
        self.conv3 = nn.Conv2d(planes * scale, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(*conv_bn(cin, planes * 4, 1, stride))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.spd(self.conv2(out))))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class Focus(nn.Sequential):
    """YOLOv5's Focus (the official SPD stem): space_to_depth, k×k conv, BN, SiLU — an SPDConv and a SiLU."""

    def __init__(self, cin: int, cout: int, k: int = 1):
        super().__init__(SPDConv(cin, cout, k), nn.SiLU(inplace=True))


def resnet18_64_stem() -> nn.Sequential:
    """pytorch-cifar100's ResNet stem, used by the SPD paper's Tiny-ImageNet ResNets: 3×3 s1, BN, ReLU."""
    return nn.Sequential(*conv_bn(3, 64, 3), nn.ReLU(inplace=True))


@register("resnet18_64", input_shape=(1, 3, 64, 64))
def resnet18_64(num_classes: int = 200) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, stem=resnet18_64_stem())


@register("spd_resnet18", input_shape=(1, 3, 64, 64), baseline="resnet18_64")
def spd_resnet18(num_classes: int = 200) -> ResNet:
    return ResNet(SPDBottleneck, [3, 4, 6, 3], num_classes, stem=Focus(3, 64, 1))


# --- YOLOv5 v6.0 backbone (ultralytics/yolov5 models/common.py: Conv, Bottleneck, C3, SPPF) ---

class Conv(nn.Sequential):
    """YOLOv5's Conv: conv (padding k//2, or p), BN, SiLU."""

    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1, p: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2 if p is None else p, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.SiLU(inplace=True)


class YoloBottleneck(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.cv1 = Conv(c, c, 1)
        self.cv2 = Conv(c, c, 3)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class C3(nn.Module):
    """CSP bottleneck with 3 convs: two 1×1 branches (one through n Bottlenecks), concatenated, 1×1."""

    def __init__(self, cin: int, cout: int, n: int = 1):
        super().__init__()
        c = cout // 2
        self.cv1 = Conv(cin, c, 1)
        self.cv2 = Conv(cin, c, 1)
        self.cv3 = Conv(2 * c, cout, 1)
        self.m = nn.Sequential(*(YoloBottleneck(c) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained k×k max-pools (stride 1), concatenated with the input."""

    def __init__(self, cin: int, cout: int, k: int = 5):
        super().__init__()
        c = cin // 2
        self.cv1 = Conv(cin, c, 1)
        self.cv2 = Conv(c * 4, cout, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat([x, y1, y2, self.m(y2)], 1))


class YoloV5Backbone(nn.Module):
    """YOLOv5 v6.0 backbone (rows 0-13 of the yaml) at a depth/width multiple; `spd` selects the SPD variant.

    Returns P5 (the SPPF output), or with `all_features` (P3, P4, P5): rows 4 (6 with SPD), 6 (9)
    and 9 (13), the features the neck concatenates.
    """

    def __init__(self, depth: float = 0.33, width: float = 0.25, spd: bool = False, all_features: bool = False):
        super().__init__()
        self.all_features = all_features
        ch = lambda c: math.ceil(c * width / 8) * 8  # YOLOv5: make_divisible(c * width, 8)
        n = lambda r: max(round(r * depth), 1)  # YOLOv5: repeats scaled by depth_multiple
        layers: list[nn.Module] = [Focus(3, ch(64), 3) if spd else Conv(3, ch(64), 6, 2, 2)]
        cin, self.taps = ch(64), []
        for i, (c, r) in enumerate([(128, 3), (256, 6), (512, 9), (1024, 3)]):
            if spd:  # Conv(s1) + space_to_depth, then C3 on 4x the channels
                layers += [Conv(cin, ch(c), 3, 1), space_to_depth(), C3(4 * ch(c), ch(c), n(r))]
            else:
                layers += [Conv(cin, ch(c), 3, 2), C3(ch(c), ch(c), n(r))]
            cin = ch(c)
            if i in (1, 2):
                self.taps.append(len(layers) - 1)
        layers.append(SPPF(cin, cin, 5))
        self.taps.append(len(layers) - 1)
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        outs = []
        for i, layer in enumerate(self.model):
            x = layer(x)
            if i in self.taps:
                outs.append(x)
        return tuple(outs) if self.all_features else x


@register("yolov5n_backbone", input_shape=(1, 3, 640, 640), test_shape=(1, 3, 128, 128))
def yolov5n_backbone() -> YoloV5Backbone:
    return YoloV5Backbone(0.33, 0.25, spd=False)


@register("spd_yolov5n_backbone", input_shape=(1, 3, 640, 640), baseline="yolov5n_backbone", test_shape=(1, 3, 128, 128))
def spd_yolov5n_backbone() -> YoloV5Backbone:
    return YoloV5Backbone(0.33, 0.25, spd=True)
