"""timm's CondConv2d (4 experts, 3×3, stride 1) at three realistic shapes, with its routing
(sigmoid(Linear(GAP(x))), as CondConvResidual computes it) so each module takes x alone."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from polyexport.deploy_layers.condconv import to_deploy
from polyexport.layers.condconv import CondConv2d
from polyexport.testing import randomize_

from . import BenchCase

NOTES = {
    "bank_grouped": "static batch, computed conv weights (not TensorRT); conv FLOPs + K·|W| mixing",
    "bank_batched": "dynamic batch, constant conv weights; im2col conv + batched MatMul",
    "output_aggregation": "dynamic batch, constant weights; K× conv FLOPs",
}


class WithRouting(nn.Module):
    """conv(x, sigmoid(routing_fn(GAP(x)))): timm's block routing around one CondConv2d (or its deploy form)."""

    def __init__(self, routing_fn: nn.Linear, conv: nn.Module):
        super().__init__()
        self.routing_fn, self.conv = routing_fn, conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x, torch.sigmoid(self.routing_fn(F.adaptive_avg_pool2d(x, 1).flatten(1))))


def cases() -> list[BenchCase]:
    out = []
    for c, hw in ((64, 56), (128, 28), (256, 14)):
        conv = randomize_(CondConv2d(c, c, 3, padding="", num_experts=4), seed=0)
        routing = randomize_(nn.Linear(c, 4), seed=1)
        out.append(BenchCase(
            layer="CondConv2d", config=f"c{c} k3 s1 E4 @{hw}x{hw}", input_shape=(1, c, hw, hw),
            reference=WithRouting(routing, conv).eval(),
            forms={f: WithRouting(routing, to_deploy(conv, f)).eval() for f in NOTES},
            yardstick=randomize_(nn.Conv2d(c, c, 3, 1, 1)), notes=dict(NOTES),
        ))
    return out
