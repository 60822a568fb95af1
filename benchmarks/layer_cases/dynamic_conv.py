"""Dynamic_conv2d (K = 4) at DY-ResNet-18's 3×3 shapes (56, 28, 14, 7) and DY-MobileNetV3-Small's (1×1 96→576
and 5×5 depthwise 576 at 7×7); yardstick: the static conv of the same shape."""
from __future__ import annotations

import torch
from torch import nn

from polyexport.convert import forms_of, to_deploy
from polyexport.layers.dynamic_conv import Dynamic_conv2d
from polyexport.testing import randomize_

from . import BenchCase

#: the kernel-bank forms ("static" is exact only for an input-independent attention, not these layers)
NOTES = {name: form.note for name, form in forms_of(Dynamic_conv2d).items() if name != "static"}

#: (in, out, kernel, groups, size)
SHAPES = [(64, 64, 3, 1, 56), (128, 128, 3, 1, 28), (256, 256, 3, 1, 14), (512, 512, 3, 1, 7),
          (96, 576, 1, 1, 7), (576, 576, 5, 576, 7)]


def cases() -> list[BenchCase]:
    out = []
    for cin, cout, k, g, hw in SHAPES:
        ref = randomize_(Dynamic_conv2d(cin, cout, k, padding=k // 2, groups=g, bias=False, K=4, temperature=1), seed=0)
        with torch.no_grad():
            ref.attention.fc2.weight.mul_(3)
        kind = "dw" if g > 1 else ""
        out.append(BenchCase(
            layer="Dynamic_conv2d", config=f"c{cin}-{cout} k{k}{kind} K4 @{hw}x{hw}", input_shape=(1, cin, hw, hw), reference=ref,
            forms={f: to_deploy(ref, f) for f in NOTES},
            yardstick=randomize_(nn.Conv2d(cin, cout, k, 1, k // 2, groups=g, bias=False)), notes=dict(NOTES),
        ))
    return out
