"""MixConv (MixedConv2d) at MixNet shapes. For the depthwise layers the yardstick is one depthwise
conv at the largest kernel size (what "single" computes, zero taps included); for the dense
[1, 1] pointwise MixConv of MixNet it is a plain 1×1 conv ("aligned" is depthwise only)."""
from __future__ import annotations

from torch import nn

from polyexport.convert import forms_of, to_deploy
from polyexport.layers.mixconv import MixedConv2d
from polyexport.testing import randomize_

from . import BenchCase

NOTES = {name: form.note for name, form in forms_of(MixedConv2d).items()}

#: (channels, spatial size, kernel sizes, stride, padding, depthwise)
SHAPES = [
    (64, 56, [3, 5, 7], 1, "", True),  # splits 22/21/21: not multiples of 4
    (64, 56, [3, 5], 1, "", True),  # splits 32/32
    (128, 28, [3, 5, 7, 9], 1, "", True),
    (256, 14, [3, 5, 7, 9], 1, "", True),
    (128, 28, [3, 5, 7], 2, "same", True),
    (128, 28, [1, 1], 1, "", False),
]


def cases() -> list[BenchCase]:
    out = []
    for c, hw, ks, s, pad, dw in SHAPES:
        ref = randomize_(MixedConv2d(c, c, ks, s, pad, depthwise=dw))
        k = max(ks)
        out.append(BenchCase(
            layer="MixedConv2d", config=f"c{c} k{''.join(map(str, ks))} s{s}{' same' if pad else ''}{' dw' if dw else ''} @{hw}x{hw}",
            input_shape=(1, c, hw, hw), reference=ref, forms={f: to_deploy(ref, f) for f in NOTES if f != "aligned" or dw},
            yardstick=randomize_(nn.Conv2d(c, c, k, s, k // 2, groups=c if dw else 1, bias=False)), notes=dict(NOTES),
        ))
    return out
