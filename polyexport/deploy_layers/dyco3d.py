"""Deploy form of DyCo3D's dynamic head: batched MatMuls over (instances × points).

As written, the point features are repeated once per instance, the instances are folded into the
channels and each generated layer is a conv1d with `groups = instances` and run-time weights: the
instance count is frozen into the graph and TensorRT's parser sees non-initializer conv weights. Here the
first layer's weights are split in two: the feature part multiplies the shared (C, points) features once
for all instances, (n, out, C) @ (C, points), with no repeat; the coordinate part multiplies each
instance's relative coordinates, (n, out, 3) @ (n, 3, points). Later layers are batched MatMuls, and the
biases ride in them (a ones row under the shared features; condinst.with_bias_column). Nothing depends
on the number of instances or points, so one graph runs any count of either, 0 instances included.
"""
from __future__ import annotations

import torch
from torch import nn

from ..convert import Form, register_layer
from ..layers.condinst import split_params
from ..layers.dyco3d import DyCo3DInputChecks, DyCo3DMaskHead
from .condinst import with_bias_column


#: constants expanded to a run-time shape (expand_as keeps the instance and point axes dynamic in the export,
#: where ones_like/zeros_like of a reshaped tensor were exported with the traced size)
ONE, ZERO = torch.ones(()), torch.zeros(())


class DyCo3DBatchedHead(DyCo3DInputChecks, nn.Module):
    """DyCo3DMaskHead as batched MatMuls; the same inputs and (instances, points) logits."""

    def __init__(self, ref: DyCo3DMaskHead):
        super().__init__()
        self.in_channels, self.channels, self.num_layers = ref.in_channels, ref.channels, ref.num_layers
        self.use_coords, self.head_in_channels = ref.use_coords, ref.head_in_channels

    def forward(self, mask_features: torch.Tensor, params: torch.Tensor, centres: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        self.check_inputs(mask_features, params, centres, coords)
        weights, biases = split_params(params, self.head_in_channels, self.channels, self.num_layers)
        first = weights[0]
        feats = mask_features.t()
        feats = torch.cat([feats, ONE.expand_as(feats[:1])])  # (C + 1, points): shared, the ones row carries the bias
        x = torch.matmul(with_bias_column(first[:, :, -self.in_channels:], biases[0], keep_one=True), feats)
        if self.use_coords:
            rel = centres.unsqueeze(2) - coords.t()  # (n, 3, points): centre − point, as upstream
            coord_part = first[:, :, :3]
            x = x + torch.matmul(torch.cat([coord_part, ZERO.expand_as(coord_part[:, :1])], 1), rel)  # no bias: a zero row
        for i in range(1, self.num_layers):
            x = torch.matmul(with_bias_column(weights[i], biases[i], keep_one=i < self.num_layers - 1), torch.relu(x))
        return x.squeeze(1)


def to_deploy(ref: DyCo3DMaskHead, form: str = "batched_matmul") -> nn.Module:
    """The deploy module for `ref`: "batched_matmul" (the only form)."""
    if form != "batched_matmul":
        raise ValueError(f"DyCo3DMaskHead has no form {form!r}; it has: batched_matmul")
    return DyCo3DBatchedHead(ref).eval()


register_layer(
    DyCo3DMaskHead,
    forms=[Form("batched_matmul", to_deploy, dynamic_batch=True, constant_weights=True,
                note="shared point features multiplied once for all instances, then batched MatMuls; any instance and point count")],
)
