"""C2sp (and one C4sp) at ResNet shapes; the yardstick is the 3×3 conv that C2sp replaces
(a 3×3 depthwise conv for the depthwise case, as in the paper's MobileNet-style use)."""
from __future__ import annotations

from torch import nn

from polyexport.convert import forms_of, to_deploy
from polyexport.layers.even_conv import SymmetricPadConv2d
from polyexport.testing import randomize_

from . import BenchCase

NOTES = {name: form.note for name, form in forms_of(SymmetricPadConv2d).items()}

#: (channels, spatial size, kernel, stride, groups)
SHAPES = [(64, 56, 2, 1, 1), (128, 28, 2, 1, 1), (256, 14, 2, 1, 1), (128, 28, 4, 1, 1), (128, 28, 2, 2, 1), (128, 28, 2, 1, 128)]


def cases() -> list[BenchCase]:
    out = []
    for c, hw, k, s, g in SHAPES:
        ref = randomize_(SymmetricPadConv2d(c, c, k, s, g))
        out.append(BenchCase(
            layer="SymmetricPadConv2d", config=f"c{c} k{k} s{s}{' dw' if g > 1 else ''} @{hw}x{hw}", input_shape=(1, c, hw, hw),
            reference=ref, forms={f: to_deploy(ref, f) for f in NOTES},
            yardstick=randomize_(nn.Conv2d(c, c, 3, s, 1, groups=g, bias=False)), notes=dict(NOTES),
        ))
    return out
