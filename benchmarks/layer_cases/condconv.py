"""timm's CondConv2d (4 experts) at cc_efficientnet_b0's own shapes (stage 4 at 14×14: 1×1 112→672, 5×5
depthwise 672, 1×1 672→112; stage 5 at 7×7: 1×1 192→1152, 5×5 depthwise 1152) and a dense 3×3, with its
routing (sigmoid(Linear(GAP(x))), as CondConvResidual computes it) so each module takes x alone."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from polyexport.convert import forms_of, to_deploy
from polyexport.layers.condconv import CondConv2d
from polyexport.testing import randomize_

from . import BenchCase

NOTES = {name: form.note for name, form in forms_of(CondConv2d).items()}

#: (in, out, kernel, groups, size): cc_efficientnet_b0's CondConv layers, and a dense 3×3
SHAPES = [(112, 672, 1, 1, 14), (672, 672, 5, 672, 14), (672, 112, 1, 1, 14), (192, 1152, 1, 1, 7),
          (1152, 1152, 5, 1152, 7), (128, 128, 3, 1, 28)]


class WithRouting(nn.Module):
    """conv(x, sigmoid(routing_fn(GAP(x)))): timm's block routing around one CondConv2d (or its deploy form)."""

    def __init__(self, routing_fn: nn.Linear, conv: nn.Module):
        super().__init__()
        self.routing_fn, self.conv = routing_fn, conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x, torch.sigmoid(self.routing_fn(F.adaptive_avg_pool2d(x, 1).flatten(1))))


def cases() -> list[BenchCase]:
    out = []
    for cin, cout, k, g, hw in SHAPES:
        conv = randomize_(CondConv2d(cin, cout, k, padding="", groups=g, num_experts=4), seed=0)
        routing = randomize_(nn.Linear(cin, 4), seed=1)
        kind = "dw" if g > 1 else ""
        out.append(BenchCase(
            layer="CondConv2d", config=f"c{cin}-{cout} k{k}{kind} E4 @{hw}x{hw}", input_shape=(1, cin, hw, hw),
            reference=WithRouting(routing, conv).eval(),
            forms={f: WithRouting(routing, to_deploy(conv, f)).eval() for f in NOTES},
            yardstick=randomize_(nn.Conv2d(cin, cout, k, 1, k // 2, groups=g)), notes=dict(NOTES),
        ))
    return out
