"""A stand-in for a user's own model package: `usernets:build` and friends."""
from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, 1, 1, groups=2)
        self.bn2 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


def build() -> nn.Module:
    from polyexport.testing import randomize_

    return randomize_(TinyNet(), seed=3)


class TwoHeads(nn.Module):
    """Two inputs, two outputs: the multi-input path."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Linear(5, 4)

    def forward(self, img, vec):
        f = self.a(img).mean((2, 3))
        return f + self.b(vec), f * 2


def two_heads() -> nn.Module:
    return TwoHeads()


class Cummax(nn.Module):
    def forward(self, x):
        return torch.cummax(x, 1)[0]


def unexportable() -> nn.Module:
    """A model with an op the ONNX exporter does not know, deep inside."""
    net = build()
    net.conv2 = nn.Sequential(net.conv2, Cummax())
    return net


class ExportsDifferently(nn.Module):
    """Computes one thing in PyTorch and another once exported: parity must catch it."""

    def __init__(self):
        super().__init__()
        self.net = build()

    def forward(self, x):
        y = self.net(x)
        if torch.onnx.is_in_onnx_export():
            y = y + 0.05 * y.abs().amax()
        return y


def exports_differently() -> nn.Module:
    return ExportsDifferently()


def not_a_module():
    return 42
