"""HetConv (P=4, as het_resnet50 / het_vgg16 use; and P=in, the paper's extreme) and ShiftedHetConv
(the paper's shifted channel assignment, P=4) at ResNet shapes; the yardstick is the plain 3×3 conv
that HetConv replaces."""
from __future__ import annotations

from torch import nn

from polyexport.convert import forms_of, to_deploy
from polyexport.layers.hetconv import HetConv, ShiftedHetConv
from polyexport.testing import randomize_

from . import BenchCase

#: (layer, channels, spatial size, stride, P)
SHAPES = [(HetConv, 64, 56, 1, 4), (HetConv, 128, 28, 1, 4), (HetConv, 256, 14, 1, 4), (HetConv, 128, 28, 2, 4),
          (HetConv, 128, 28, 1, 128), (ShiftedHetConv, 64, 56, 1, 4), (ShiftedHetConv, 128, 28, 1, 4),
          (ShiftedHetConv, 256, 14, 1, 4)]


def cases() -> list[BenchCase]:
    out = []
    for layer, c, hw, s, p in SHAPES:
        ref = randomize_(layer(c, c, p, 3, s))
        forms = ["grouped_plus_pointwise", "dense"]
        notes = {f: forms_of(layer)[f].note for f in forms}
        out.append(BenchCase(
            layer=layer.__name__, config=f"c{c} k3 s{s} P{p} @{hw}x{hw}", input_shape=(1, c, hw, hw),
            reference=ref, forms={f: to_deploy(ref, f) for f in forms},
            yardstick=randomize_(nn.Conv2d(c, c, 3, s, 1, bias=False)), notes=notes,
        ))
    return out
