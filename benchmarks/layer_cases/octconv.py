"""OctConv (middle layer, Conv_BN_ACT, 3×3) at ResNet shapes: stride 1 at alpha 0.5 and 0.25, stride 2 at alpha
0.5; the yardstick is the plain 3×3 conv (same stride) with the total channels at full resolution. The harness feeds one tensor, so every OctConv
module here (reference and forms alike) takes the full-channel input and splits it: x_h = its first
(1-alpha)·C channels, x_l = the rest avg-pooled 2×2 (a small, equal overhead; no conv FLOPs)."""
from __future__ import annotations

from torch import nn

from polyexport.convert import forms_of, to_deploy
from polyexport.layers.octconv import Conv_BN, Conv_BN_ACT, OctaveConv, split_channels
from polyexport.testing import randomize_

from . import BenchCase

#: (channels, spatial size)
SHAPES = [(64, 56), (128, 28), (256, 14)]


class SplitInput(nn.Module):
    """Feeds an OctConv layer from one full-resolution tensor: (x[:, :C_h], pool(x[:, C_h:]))."""

    def __init__(self, layer: nn.Module, high: int):
        super().__init__()
        self.layer, self.high, self.pool = layer, high, nn.AvgPool2d(2, 2)

    def forward(self, x):
        return self.layer((x[:, :self.high], self.pool(x[:, self.high:])))


def cases() -> list[BenchCase]:
    """Conv_BN_ACT (the ResNet blocks' 3×3) at every shape; OctaveConv and Conv_BN (the same layer without its BN or
    activation) at one."""
    out = []
    for alpha, stride in ((0.5, 1), (0.25, 1), (0.5, 2)):
        for c, hw in SHAPES:
            out.append(case(Conv_BN_ACT, c, hw, alpha, stride))
    return out + [case(OctaveConv, 128, 28, 0.5, 1), case(Conv_BN, 128, 28, 0.5, 1)]


def case(layer: type, c: int, hw: int, alpha: float, stride: int) -> BenchCase:
    ref = randomize_(layer(c, c, 3, alpha, alpha, stride=stride, padding=1))
    high = split_channels(c, alpha)[0]
    notes = {name: form.note for name, form in forms_of(layer).items()}
    return BenchCase(layer=layer.__name__, config=f"c{c} k3 s{stride} a{alpha} @{hw}x{hw}", input_shape=(1, c, hw, hw),
                     reference=SplitInput(ref, high), forms={f: SplitInput(to_deploy(ref, f), high) for f in notes},
                     yardstick=randomize_(nn.Conv2d(c, c, 3, stride, 1, bias=False)), notes=notes)
