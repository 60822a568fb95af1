"""DCD conv_dy (3×3, ResNet bottleneck style) and conv_basic_dy at ResNet shapes, and dcd_mobilenetv2's 1×1
DYModules (the expanding 24→144 at 56×56, the projecting 576→96 at 14×14); yardstick: the plain conv."""
from __future__ import annotations

from torch import nn

from polyexport.convert import forms_of, to_deploy
from polyexport.layers.dcd import DYModule, conv_basic_dy, conv_dy
from polyexport.testing import randomize_

from . import BenchCase

NOTES = {name: form.note for name, form in forms_of(DYModule).items()}  # every DCD type registers the same two


def cases() -> list[BenchCase]:
    out = []
    for c, hw in [(64, 56), (128, 28), (256, 14)]:
        for name, ref in [("conv_dy", conv_dy(c, c, 3, 1, 1)), ("conv_basic_dy", conv_basic_dy(c, c, 1))]:
            ref = randomize_(ref)
            out.append(BenchCase(
                layer=name, config=f"c{c} k3 s1 dim{ref.dim} @{hw}x{hw}", input_shape=(1, c, hw, hw), reference=ref,
                forms={"decomposed": to_deploy(ref, "decomposed")}, yardstick=randomize_(nn.Conv2d(c, c, 3, 1, 1, bias=False)),
                notes=dict(NOTES),
            ))
    for cin, cout, hw in [(24, 144, 56), (576, 96, 14)]:
        ref = randomize_(DYModule(cin, cout, 16))
        out.append(BenchCase(
            layer="DYModule", config=f"c{cin}-{cout} k1 dim{ref.dim} @{hw}x{hw}", input_shape=(1, cin, hw, hw), reference=ref,
            forms={f: to_deploy(ref, f) for f in NOTES}, yardstick=randomize_(nn.Conv2d(cin, cout, 1, bias=False)),
            notes=dict(NOTES),
        ))
    return out
