"""DOConv2d (D_mul = M·N, the paper's default) where the paper puts it: the 3×3 convs of ResNet-50's stages
(DO-Conv), a stride-2 one, and MobileNet's 3×3 depthwise convs (DO-DConv). Yardstick: the plain conv it replaces.

The reference is exported as it is: an Einsum composing the kernel at run time, then the Conv."""
from __future__ import annotations

from torch import nn

from polyexport.convert import forms_of, to_deploy
from polyexport.layers.do_conv import DOConv2d
from polyexport.testing import randomize_

from . import BenchCase

NOTES = {name: form.note for name, form in forms_of(DOConv2d).items()}

#: (channels, spatial size, stride, groups)
SHAPES = [(64, 56, 1, 1), (128, 28, 1, 1), (256, 14, 1, 1), (128, 28, 2, 1), (144, 56, 1, 144), (384, 14, 1, 384)]


def cases() -> list[BenchCase]:
    out = []
    for c, hw, s, g in SHAPES:
        ref = randomize_(DOConv2d(c, c, 3, stride=s, padding=1, groups=g, bias=False))
        out.append(BenchCase(
            layer="DOConv2d", config=f"c{c} k3 s{s}{' dw' if g > 1 else ''} @{hw}x{hw}", input_shape=(1, c, hw, hw),
            reference=ref, forms={f: to_deploy(ref, f) for f in NOTES},
            yardstick=randomize_(nn.Conv2d(c, c, 3, s, 1, groups=g, bias=False)), notes=dict(NOTES),
        ))
    return out
