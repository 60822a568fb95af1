"""PSConv2d as in the official PS-ResNet bottleneck 3×3 (parts 4, dilation 2, padding 1: `gwconv` at
dilation 2, `gwconv_shift` at 4, `conv` at 1) at ResNet shapes, stride 1 and stride 2, plus dilation 1
at one shape (where `conv` and `gwconv` merge). The yardstick is the plain 3×3 conv it replaces.
The paper's "no computational overhead" is in parameters: the reference runs three convs (1.5× FLOPs);
`conv`'s weights are masked as official training leaves them, which the "masked" form exploits."""
from __future__ import annotations

from torch import nn

from polyexport.convert import forms_of, to_deploy
from polyexport.layers.psconv import PSConv2d, PSGConv2d
from polyexport.testing import randomize_

from . import BenchCase

#: (channels, spatial size, stride, dilation)
SHAPES = [(64, 56, 1, 2), (128, 28, 1, 2), (256, 14, 1, 2), (128, 56, 2, 2), (128, 28, 1, 1)]


def cases() -> list[BenchCase]:
    out = []
    for c, hw, s, d in SHAPES:
        ref = randomize_(PSConv2d(c, c, 3, s, 1, dilation=d, parts=4))
        ref.conv.weight.data[ref.mask] = 0  # as the official training leaves it
        forms = [f for f in forms_of(PSConv2d) if d == 1 or f != "dense"]  # a 9×9 conv is not worth timing
        out.append(BenchCase(
            layer="PSConv2d", config=f"c{c} s{s} d{d} parts4 @{hw}x{hw}", input_shape=(1, c, hw, hw),
            reference=ref, forms={f: to_deploy(ref, f) for f in forms},
            yardstick=randomize_(nn.Conv2d(c, c, 3, s, 1, bias=False)), notes=notes(PSConv2d, forms),
        ))
    # PSGConv2d (PS-ResNeXt's grouped 3×3: groups 32, parts 4) at one shape; the yardstick is its grouped conv
    ref = randomize_(PSGConv2d(256, 256, 3, 1, 2, dilation=2, groups=32, parts=4))
    forms = [f for f in forms_of(PSGConv2d) if f != "dense"]
    out.append(BenchCase(layer="PSGConv2d", config="c256 g32 d2 parts4 @14x14", input_shape=(1, 256, 14, 14), reference=ref,
                         forms={f: to_deploy(ref, f) for f in forms if forms_of(PSGConv2d)[f].exact_for(ref) is None},
                         yardstick=randomize_(nn.Conv2d(256, 256, 3, 1, 1, groups=32, bias=False)), notes=notes(PSGConv2d, forms)))
    return out


def notes(layer: type, forms) -> dict[str, str]:
    return {f: forms_of(layer)[f].note for f in forms}
