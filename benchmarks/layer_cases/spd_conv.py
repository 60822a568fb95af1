"""SPD-Conv blocks (space_to_depth(2), then a stride-1 k×k conv and BN) at ResNet shapes; the yardstick
is the stride-2 k×k conv that SPD-Conv replaces (same input, output and kernel size). Both forms
cost 4× its FLOPs, as the reference does: the conv sees 4× the channels (or a 2k×2k kernel)."""
from __future__ import annotations

from torch import nn

from polyexport.convert import forms_of, to_deploy
from polyexport.layers.spd_conv import SPDConv, space_to_depth
from polyexport.testing import randomize_

from . import BenchCase

NOTES = {name: form.note for name, form in forms_of(SPDConv).items()}
ALONE_NOTES = {name: form.note for name, form in forms_of(space_to_depth).items()}

#: (channels, spatial size, kernel)
SHAPES = [(64, 56, 3), (128, 28, 3), (256, 14, 3)]


def cases() -> list[BenchCase]:
    out = []
    for c, hw, k in SHAPES:
        ref = randomize_(SPDConv(c, c, k, scale=2))
        out.append(BenchCase(
            layer="SPDConv", config=f"c{c} k{k} s2 @{hw}x{hw}", input_shape=(1, c, hw, hw),
            reference=ref, forms={f: to_deploy(ref, f) for f in NOTES},
            yardstick=randomize_(nn.Conv2d(c, c, k, 2, k // 2, bias=False)), notes=dict(NOTES),
        ))
    # space_to_depth alone (as in ResNet18-SPD, where a BN follows it); yardstick: the 2×2 stride-2 conv
    # with the same input and output shape
    ref = space_to_depth()
    out.append(BenchCase(
        layer="space_to_depth", config="c64 alone @56x56", input_shape=(1, 64, 56, 56), reference=ref,
        forms={f: to_deploy(ref, f) for f in ALONE_NOTES},
        yardstick=randomize_(nn.Conv2d(64, 256, 2, 2, 0, bias=False)), notes=dict(ALONE_NOTES),
    ))
    return out
