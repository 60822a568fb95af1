"""PSConv2d as in the official PS-ResNet bottleneck 3×3 (parts 4, dilation 2, padding 1: `gwconv` at
dilation 2, `gwconv_shift` at 4, `conv` at 1) at ResNet shapes, stride 1 and stride 2, plus dilation 1
at one shape (where `conv` and `gwconv` merge). The yardstick is the plain 3×3 conv it replaces.
The paper's "no computational overhead" is in parameters: the reference runs three convs (1.5× FLOPs);
`conv`'s weights are masked as official training leaves them, which the "masked" form exploits."""
from __future__ import annotations

from torch import nn

from polyexport.deploy_layers.psconv import FORMS, to_deploy
from polyexport.layers.psconv import PSConv2d
from polyexport.testing import randomize_

from . import BenchCase

NOTES = {  # dilation 2 / dilation 1
    "masked": "dynamic batch, constant weights; exact for masked weights (as trained): 2-group dense 3×3 + grouped "
              "d2 + grouped d4, 3 Gathers; 1.0× FLOPs",
    "regrouped": "dynamic batch, constant weights; d2: 3 convs (dense 3×3, grouped d2, grouped d4) + Gather, 1.5× FLOPs; "
                 "d1: conv+gwconv merged, 2 convs + Gather, 1.25× FLOPs",
    "shift_dense": "dynamic batch, constant weights; the shift conv dense with block-sparse weights, no Gather; "
                   "d2: 2.25× FLOPs, d1: 2× FLOPs",
    "dense": "dynamic batch, constant weights; one conv covering all taps: d2 9×9 (9× FLOPs), d1 5×5 (2.78×)",
}

#: (channels, spatial size, stride, dilation)
SHAPES = [(64, 56, 1, 2), (128, 28, 1, 2), (256, 14, 1, 2), (128, 56, 2, 2), (128, 28, 1, 1)]


def cases() -> list[BenchCase]:
    out = []
    for c, hw, s, d in SHAPES:
        ref = randomize_(PSConv2d(c, c, 3, s, 1, dilation=d, parts=4))
        ref.conv.weight.data[ref.mask] = 0  # as the official training leaves it
        forms = FORMS if d == 1 else ("masked", "regrouped", "shift_dense")  # a 9×9 conv is not worth timing
        out.append(BenchCase(
            layer="PSConv2d", config=f"c{c} s{s} d{d} parts4 @{hw}x{hw}", input_shape=(1, c, hw, hw),
            reference=ref, forms={f: to_deploy(ref, f) for f in forms},
            yardstick=randomize_(nn.Conv2d(c, c, 3, s, 1, bias=False)), notes=dict(NOTES),
        ))
    return out
