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
- `spd_yolov5n` (space_depth_n.yaml, the whole detector the paper's COCO figures are for): that backbone
  with `all_features=True`, the v6.0 PANet head, in which each stride-2 Conv also becomes Conv(s1) +
  space_to_depth (the C3 after the concat takes 4·c + c channels), and Detect (80 classes, 3 anchors per
  level) returning the three raw maps, no decode (see `Detect`). Baseline `yolov5n`: plain YOLOv5n v6.0.
  Both load the official state_dict by position and reproduce the official code's raw maps exactly.
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
    """YOLOv5's Bottleneck (e=1.0, as C3 builds it): 1×1, 3×3, plus the input if `shortcut` (the head's C3s have none)."""

    def __init__(self, c: int, shortcut: bool = True):
        super().__init__()
        self.cv1 = Conv(c, c, 1)
        self.cv2 = Conv(c, c, 3)
        self.add = shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with 3 convs: two 1×1 branches (one through n Bottlenecks), concatenated, 1×1.

    `shortcut=False` is the yaml's `C3, [c, False]` (the neck): Bottlenecks without the residual add.
    """

    def __init__(self, cin: int, cout: int, n: int = 1, shortcut: bool = True):
        super().__init__()
        c = cout // 2
        self.cv1 = Conv(cin, c, 1)
        self.cv2 = Conv(cin, c, 1)
        self.cv3 = Conv(2 * c, cout, 1)
        self.m = nn.Sequential(*(YoloBottleneck(c, shortcut) for _ in range(n)))

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


def yolo_width(c: int, width: float) -> int:
    """YOLOv5's channel scaling: make_divisible(c * width_multiple, 8)."""
    return math.ceil(c * width / 8) * 8


def yolo_depth(n: int, depth: float) -> int:
    """YOLOv5's repeat scaling: max(round(n * depth_multiple), 1)."""
    return max(round(n * depth), 1) if n > 1 else n


def yolo_down(cin: int, cout: int, spd: bool) -> list[nn.Module]:
    """A YOLOv5 downsampling step: Conv(k3, s2), or with SPD Conv(k3, s1) + space_to_depth (4·cout channels out)."""
    return [Conv(cin, cout, 3, 1), space_to_depth()] if spd else [Conv(cin, cout, 3, 2)]


class YoloV5Backbone(nn.Module):
    """YOLOv5 v6.0 backbone (rows 0-13 of the yaml) at a depth/width multiple; `spd` selects the SPD variant.

    Returns P5 (the SPPF output), or with `all_features` (P3, P4, P5): rows 4 (6 with SPD), 6 (9)
    and 9 (13), the features the neck concatenates; `out_channels` are theirs.
    """

    def __init__(self, depth: float = 0.33, width: float = 0.25, spd: bool = False, all_features: bool = False):
        super().__init__()
        self.all_features = all_features
        ch = lambda c: yolo_width(c, width)  # noqa: E731
        layers: list[nn.Module] = [Focus(3, ch(64), 3) if spd else Conv(3, ch(64), 6, 2, 2)]
        cin, self.taps = ch(64), []
        for i, (c, r) in enumerate([(128, 3), (256, 6), (512, 9), (1024, 3)]):
            # plain: Conv(s2), C3; SPD: Conv(s1) + space_to_depth, then C3 on 4x the channels
            layers += [*yolo_down(cin, ch(c), spd), C3((4 if spd else 1) * ch(c), ch(c), yolo_depth(r, depth))]
            cin = ch(c)
            if i in (1, 2):
                self.taps.append(len(layers) - 1)
        layers.append(SPPF(cin, cin, 5))
        self.taps.append(len(layers) - 1)
        self.out_channels = (ch(256), ch(512), ch(1024))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        outs = []
        for i, layer in enumerate(self.model):
            x = layer(x)
            if i in self.taps:
                outs.append(x)
        return tuple(outs) if self.all_features else x


class YoloV5Neck(nn.Module):
    """YOLOv5 v6.0 head up to Detect (rows 10-23, SPD 14-29): top-down FPN, then bottom-up PAN, C3s without shortcut.

    Takes the backbone's (P3, P4, P5) and returns (P3, P4, P5) for Detect. The modules are created in the
    yaml's row order (Upsample and Concat have no tensors), so the parameters line up with the official ones.
    With `spd`, each stride-2 Conv of the PAN becomes Conv(s1) + space_to_depth and the C3 after the
    concat takes what the concat gives: 4·c (space_to_depth) + c (the lateral 1×1 Conv's output).
    """

    def __init__(self, in_channels: tuple[int, int, int], depth: float = 0.33, width: float = 0.25, spd: bool = False):
        super().__init__()
        c3, c4, c5 = in_channels
        c256, c512, c1024 = (yolo_width(c, width) for c in (256, 512, 1024))
        n, s = yolo_depth(3, depth), 4 if spd else 1
        self.lat5 = Conv(c5, c512, 1)  # 10 (SPD 14): the 1×1 whose output the PAN's P5 concat takes
        self.up = nn.Upsample(scale_factor=2, mode="nearest")  # 11, 15 (SPD 15, 19)
        self.td4 = C3(c512 + c4, c512, n, shortcut=False)  # 12 Concat backbone P4, 13 C3 (SPD 16, 17)
        self.lat4 = Conv(c512, c256, 1)  # 14 (SPD 18)
        self.out3 = C3(c256 + c3, c256, n, shortcut=False)  # 16 Concat backbone P3, 17 C3: P3/8 (SPD 20, 21)
        self.down3 = nn.Sequential(*yolo_down(c256, c256, spd))  # 18 (SPD 22, 23)
        self.out4 = C3(s * c256 + c256, c512, n, shortcut=False)  # 19 Concat row 14, 20 C3: P4/16 (SPD 24 with 18, 25)
        self.down4 = nn.Sequential(*yolo_down(c512, c512, spd))  # 21 (SPD 26, 27)
        self.out5 = C3(s * c512 + c512, c1024, n, shortcut=False)  # 22 Concat row 10, 23 C3: P5/32 (SPD 28 with 14, 29)
        self.out_channels = (c256, c512, c1024)

    def forward(self, feats):
        p3, p4, p5 = feats
        l5 = self.lat5(p5)
        l4 = self.lat4(self.td4(torch.cat([self.up(l5), p4], 1)))
        o3 = self.out3(torch.cat([self.up(l4), p3], 1))
        o4 = self.out4(torch.cat([self.down3(o3), l4], 1))
        o5 = self.out5(torch.cat([self.down4(o4), l5], 1))
        return o3, o4, o5


#: YOLOv5 v6.0 anchors (pixels, w,h pairs) per level P3/8, P4/16, P5/32
YOLOV5_ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))


class Detect(nn.Module):
    """YOLOv5's Detect without the decode: per level one 1×1 Conv2d (with bias) to na·(nc+5) channels.

    Returns the three raw maps (P3, P4, P5), each (N, na·(nc+5), H, W), as the official Detect computes
    them before its reshape/sigmoid/grid decode (its training-mode output, un-permuted). The decode is left
    out on purpose: it is post-processing, not part of what an export must reproduce exactly, and it
    mixes scales — box centres and sizes in pixels (hundreds) next to objectness and class probabilities
    in [0, 1] — so one parity tolerance relative to a concatenated decoded tensor would be set by the
    pixel coordinates and hide errors in the class scores. Checking each raw map on its own scale does
    not. Deployments decode separately anyway (e.g. TensorRT in a plugin, or after the engine, before NMS).
    `anchors` and `strides` are kept for that decode; they are not tensors of the model.
    """

    def __init__(self, nc: int = 80, anchors=YOLOV5_ANCHORS, in_channels: tuple[int, ...] = (64, 128, 256)):
        super().__init__()
        self.nc, self.no, self.na = nc, nc + 5, len(anchors[0]) // 2
        self.anchors, self.strides = anchors, (8, 16, 32)
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in in_channels)

    def forward(self, feats):
        return tuple(conv(x) for conv, x in zip(self.m, feats))


class YoloV5(nn.Module):
    """The full YOLOv5 v6.0 detector (yolov5n.yaml / SPD's space_depth_n.yaml): backbone, PANet neck, raw Detect.

    Same tensors in the same order as the official `Model` (its state_dict less Detect's `anchors` buffer maps
    onto ours by position), and the same function: like the official `initialize_weights`, every BN gets
    eps 1e-3 and momentum 0.03 (the backbone-only zoo entries keep PyTorch's defaults).
    """

    def __init__(self, depth: float = 0.33, width: float = 0.25, spd: bool = False, nc: int = 80, anchors=YOLOV5_ANCHORS):
        super().__init__()
        self.backbone = YoloV5Backbone(depth, width, spd, all_features=True)
        self.neck = YoloV5Neck(self.backbone.out_channels, depth, width, spd)
        self.detect = Detect(nc, anchors, self.neck.out_channels)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = 1e-3, 0.03

    def forward(self, x):
        return self.detect(self.neck(self.backbone(x)))


@register("yolov5n_backbone", input_shape=(1, 3, 640, 640), test_shape=(1, 3, 128, 128))
def yolov5n_backbone() -> YoloV5Backbone:
    return YoloV5Backbone(0.33, 0.25, spd=False)


@register("spd_yolov5n_backbone", input_shape=(1, 3, 640, 640), baseline="yolov5n_backbone", test_shape=(1, 3, 128, 128))
def spd_yolov5n_backbone() -> YoloV5Backbone:
    return YoloV5Backbone(0.33, 0.25, spd=True)


@register("yolov5n", input_shape=(1, 3, 640, 640), test_shape=(1, 3, 128, 128), paper={
    "params_m": 1.9, "gflops": 2.25,
    "source": "ultralytics/yolov5 v6.0 README table, YOLOv5n: params 1.9 M, FLOPs@640 (B) 4.5; YOLOv5 reports "
              "FLOPs as thop MACs x 2, so 4.5 B FLOPs = 2.25 G multiply-adds",
    "params_tol": 0.03,
    "why": "1.9 M is rounded to 0.1 M (1.85..1.95 M, up to 2.6 % off); ours is 1,872,157, the count ultralytics' "
           "own model summary prints for yolov5n.yaml"})
def yolov5n() -> YoloV5:
    return YoloV5(0.33, 0.25, spd=False)


@register("spd_yolov5n", input_shape=(1, 3, 640, 640), baseline="yolov5n", test_shape=(1, 3, 128, 128), paper={
    "params_m": 2.2,
    "source": "LabSAINT/SPD-Conv README table, YOLOv5-spd-n: AP 31.0, Params (M) 2.2 (no FLOPs given)",
    "params_tol": 0.045,
    "why": "the README truncates to 0.1 M rather than rounding (2.2 means 2.2..2.3 M, up to 4.5 % off): built from "
           "space_depth_{n,s,m,l}.yaml, ours count 2.256 / 8.771 / 24.647 / 52.708 M against its 2.2 / 8.7 / 24.6 / "
           "52.7 (8.771 would round to 8.8), and the same code gives ultralytics' exact counts for plain YOLOv5n/s/m/l"})
def spd_yolov5n() -> YoloV5:
    return YoloV5(0.33, 0.25, spd=True)
