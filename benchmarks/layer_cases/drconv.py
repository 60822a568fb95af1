"""DRConv2d (3×3, 8 regions as in the paper) at ResNet shapes; yardstick: the plain 3×3 conv.

The reference is exported as it is: a batch-folded grouped conv with run-time weights (batch 1 only)."""
from __future__ import annotations

from torch import nn

from polyexport.convert import forms_of, to_deploy
from polyexport.layers.drconv import DRConv2d
from polyexport.testing import randomize_

from . import BenchCase

NOTES = {name: form.note for name, form in forms_of(DRConv2d).items()}


def cases() -> list[BenchCase]:
    out = []
    for c, hw in [(64, 56), (128, 28), (256, 14)]:
        ref = randomize_(DRConv2d(c, c, 3, 8, padding=1))
        out.append(BenchCase(
            layer="DRConv2d", config=f"c{c} k3 m8 @{hw}x{hw}", input_shape=(1, c, hw, hw), reference=ref,
            forms={f: to_deploy(ref, f) for f in NOTES}, yardstick=randomize_(nn.Conv2d(c, c, 3, 1, 1, bias=False)),
            notes=dict(NOTES),
        ))
    return out
