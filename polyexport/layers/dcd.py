"""Dynamic Convolution Decomposition (Li et al., ICLR 2021): the reference layers.

Written to match liyunsheng13/dcd (models/imagenet/resnet_dcd.py: `conv_dy`, `conv_basic_dy`;
models/imagenet/mobilenetv2_dcd.py: `DYModule`) name for name, so their state_dicts load unchanged.
Every variant computes  out = p(bn2(Φ(x)·z) + z) + Λ(x) ⊙ conv(x),  z = bn1(q(x)),
with Φ(x) (dim×dim) and Λ(x) (per output channel) from a pooled SE-like branch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Hsigmoid(nn.Module):
    """relu6(x + 3) / 3, as the official code has it (range [0, 2], not MobileNetV3's /6)."""

    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) / 3.0


class SEModule_small(nn.Module):  # noqa: N801 - official name
    """x ⊙ hsigmoid(Linear(x)), the gate inside `fc`."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channel, channel, bias=False), Hsigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x)


class _DCDBase(nn.Module):
    """Shared forward; subclasses only differ in sizes, pooling and submodule names."""

    mul: int = 1  # the pooled map is mul = pool² cells per channel

    def parts(self) -> tuple[nn.Conv2d, nn.Conv2d, nn.Conv2d]:
        """(static conv, q, p) whatever the variant names them."""
        return self.conv, self.q, self.p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, q, p = self.parts()
        r = conv(x)
        b, c = x.shape[:2]
        y = self.fc(self.avg_pool(x).reshape(b, c * self.mul))
        phi = self.fc_phi(y).view(b, self.dim, self.dim)
        scale = self.hs(self.fc_scale(y)).view(b, -1, 1, 1)
        r = scale.expand_as(r) * r
        out = self.bn1(q(x))
        _, _, h, w = out.shape
        out = out.view(b, self.dim, -1)
        out = self.bn2(torch.matmul(phi, out)) + out
        out = out.view(b, -1, h, w)
        return p(out) + r


class conv_dy(_DCDBase):  # noqa: N801 - official name (ResNet bottleneck convs)
    """k×k (or 1×1) static conv + low-rank dynamic residual; dim = ⌊√in⌋, global pooling."""

    def __init__(self, inplanes: int, planes: int, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(inplanes, planes, kernel_size=kernel_size, stride=stride, padding=padding, bias=False)
        self.dim = int(math.sqrt(inplanes))
        squeeze = max(inplanes, self.dim**2) // 16
        self.q = nn.Conv2d(inplanes, self.dim, 1, stride, 0, bias=False)
        self.p = nn.Conv2d(self.dim, planes, 1, 1, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(self.dim)
        self.bn2 = nn.BatchNorm1d(self.dim)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(inplanes, squeeze, bias=False), SEModule_small(squeeze))
        self.fc_phi = nn.Linear(squeeze, self.dim**2, bias=False)
        self.fc_scale = nn.Linear(squeeze, planes, bias=False)
        self.hs = Hsigmoid()


class conv_basic_dy(_DCDBase):  # noqa: N801 - official name (ResNet basic-block 3×3 convs)
    """3×3 static conv; pooled to 2×2 (so fc sees 4·in features), dim = ⌊√(4·in)⌋, squeeze ≥ 4."""

    mul = 4

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.dim = int(math.sqrt(inplanes * 4))
        squeeze = max(max(inplanes * 4, self.dim**2) // 16, 4)
        self.q = nn.Conv2d(inplanes, self.dim, 1, stride, 0, bias=False)
        self.p = nn.Conv2d(self.dim, planes, 1, 1, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(self.dim)
        self.bn2 = nn.BatchNorm1d(self.dim)
        self.avg_pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Sequential(nn.Linear(inplanes * 4, squeeze, bias=False), SEModule_small(squeeze))
        self.fc_phi = nn.Linear(squeeze, self.dim**2, bias=False)
        self.fc_scale = nn.Linear(squeeze, planes, bias=False)
        self.hs = Hsigmoid()


class DYModule(_DCDBase):
    """MobileNetV2's 1×1 DCD conv: `conv_q`/`conv_p`, 2×2 pooling when expanding (inp < oup)."""

    def __init__(self, inp: int, oup: int, fc_squeeze: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(inp, oup, 1, 1, 0, bias=False)
        if inp < oup:
            self.mul, reduction = 4, 8
            self.avg_pool = nn.AdaptiveAvgPool2d(2)
        else:
            self.mul, reduction = 1, 2
            self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.dim = min((inp * self.mul) // reduction, oup // reduction)
        while self.dim**2 > inp * self.mul * 2:
            reduction *= 2
            self.dim = min((inp * self.mul) // reduction, oup // reduction)
        self.dim = max(self.dim, 4)
        squeeze = max(max(inp * self.mul, self.dim**2) // fc_squeeze, 4)
        self.conv_q = nn.Conv2d(inp, self.dim, 1, 1, 0, bias=False)
        self.fc = nn.Sequential(nn.Linear(inp * self.mul, squeeze, bias=False), SEModule_small(squeeze))
        self.fc_phi = nn.Linear(squeeze, self.dim**2, bias=False)
        self.fc_scale = nn.Linear(squeeze, oup, bias=False)
        self.hs = Hsigmoid()
        self.conv_p = nn.Conv2d(self.dim, oup, 1, 1, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(self.dim)
        self.bn2 = nn.BatchNorm1d(self.dim)

    def parts(self) -> tuple[nn.Conv2d, nn.Conv2d, nn.Conv2d]:
        return self.conv, self.conv_q, self.conv_p


DCD_TYPES = (conv_dy, conv_basic_dy, DYModule)
