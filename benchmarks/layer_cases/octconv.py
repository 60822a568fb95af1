"""OctConv (middle layer, Conv_BN_ACT, 3×3) at ResNet shapes: stride 1 at alpha 0.5 and 0.25, stride 2 at alpha
0.5; the yardstick is the plain 3×3 conv (same stride) with the total channels at full resolution. The harness feeds one tensor, so every OctConv
module here (reference and forms alike) takes the full-channel input and splits it: x_h = its first
(1-alpha)·C channels, x_l = the rest avg-pooled 2×2 (a small, equal overhead; no conv FLOPs)."""
from __future__ import annotations

from torch import nn

from polyexport.deploy_layers.octconv import to_deploy
from polyexport.layers.octconv import Conv_BN_ACT, split_channels
from polyexport.testing import randomize_

from . import BenchCase

NOTES = {
    "merged": "dynamic batch and size, constant weights; BN folded, l2l+l2h one conv, Resize nearest ×2",
    "merged_deconv": "dynamic batch and size, constant weights; as merged, upsampling as ConvTranspose2d (ones)",
    "concat": "dynamic batch and size, constant weights; y_l one conv over cat(pool(x_h), x_l); stride 2: 2 convs",
    "separate": "dynamic batch and size, constant weights; official four convs, BN folded, Resize",
}

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
    out = []
    for alpha, stride in ((0.5, 1), (0.25, 1), (0.5, 2)):
        for c, hw in SHAPES:
            ref = randomize_(Conv_BN_ACT(c, c, 3, alpha, alpha, stride=stride, padding=1))
            high = split_channels(c, alpha)[0]
            out.append(BenchCase(
                layer="OctConv", config=f"c{c} k3 s{stride} a{alpha} @{hw}x{hw}", input_shape=(1, c, hw, hw),
                reference=SplitInput(ref, high),
                forms={f: SplitInput(to_deploy(ref, f), high) for f in NOTES},
                yardstick=randomize_(nn.Conv2d(c, c, 3, stride, 1, bias=False)), notes=dict(NOTES),
            ))
    return out
