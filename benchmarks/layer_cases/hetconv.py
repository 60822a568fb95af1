"""HetConv (P=4, as het_resnet50 / het_vgg16 use; and P=in, the paper's extreme) and ShiftedHetConv
(the paper's shifted channel assignment, P=4) at ResNet shapes; the yardstick is the plain 3×3 conv
that HetConv replaces."""
from __future__ import annotations

from torch import nn

from polyexport.deploy_layers.hetconv import to_deploy
from polyexport.layers.hetconv import HetConv, ShiftedHetConv
from polyexport.testing import randomize_

from . import BenchCase

NOTES = {
    "grouped_plus_pointwise": "dynamic batch, constant weights; grouped 3x3 (groups=P) + dense 1x1, one Add; (9/P+1)/9 FLOPs",
    "shuffled": "dynamic batch, constant weights; channel shuffle, grouped 3x3 + dense 1x1, shuffle back; (9/P+1)/9 FLOPs",
    "dense": "dynamic batch, constant weights; one dense 3x3 conv, 1x1 kernels at the centre; 1x FLOPs",
}

#: (layer, channels, spatial size, stride, P)
SHAPES = [(HetConv, 64, 56, 1, 4), (HetConv, 128, 28, 1, 4), (HetConv, 256, 14, 1, 4), (HetConv, 128, 28, 2, 4),
          (HetConv, 128, 28, 1, 128), (ShiftedHetConv, 64, 56, 1, 4), (ShiftedHetConv, 128, 28, 1, 4),
          (ShiftedHetConv, 256, 14, 1, 4)]


def cases() -> list[BenchCase]:
    out = []
    for layer, c, hw, s, p in SHAPES:
        ref = randomize_(layer(c, c, p, 3, s))
        forms = ["grouped_plus_pointwise", "dense"]
        notes = {f: NOTES["shuffled" if layer is ShiftedHetConv and f != "dense" else f] for f in forms}
        out.append(BenchCase(
            layer=layer.__name__, config=f"c{c} k3 s{s} P{p} @{hw}x{hw}", input_shape=(1, c, hw, hw),
            reference=ref, forms={f: to_deploy(ref, f) for f in forms},
            yardstick=randomize_(nn.Conv2d(c, c, 3, s, 1, bias=False)), notes=notes,
        ))
    return out
