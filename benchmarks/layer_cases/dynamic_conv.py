"""Dynamic_conv2d (K = 4, 3×3, stride 1) at three realistic shapes; yardstick: the static 3×3 conv."""
from __future__ import annotations

import torch
from torch import nn

from polyexport.deploy_layers.dynamic_conv import to_deploy
from polyexport.layers.dynamic_conv import Dynamic_conv2d
from polyexport.testing import randomize_

from . import BenchCase

NOTES = {
    "bank_grouped": "static batch, computed conv weights (not TensorRT); conv FLOPs + K·|W| mixing",
    "bank_batched": "dynamic batch, constant conv weights; im2col conv + batched MatMul",
    "output_aggregation": "dynamic batch, constant weights; K× conv FLOPs",
}


def cases() -> list[BenchCase]:
    out = []
    for c, hw in ((64, 56), (128, 28), (256, 14)):
        ref = randomize_(Dynamic_conv2d(c, c, 3, padding=1, K=4, temperature=4), seed=0)
        with torch.no_grad():
            ref.attention.fc2.weight.mul_(3)
        out.append(BenchCase(
            layer="Dynamic_conv2d", config=f"c{c} k3 s1 K4 @{hw}x{hw}", input_shape=(1, c, hw, hw), reference=ref,
            forms={f: to_deploy(ref, f) for f in NOTES},
            yardstick=randomize_(nn.Conv2d(c, c, 3, 1, 1)), notes=dict(NOTES),
        ))
    return out
