"""Deploy form of DyCo3D's dynamic head: batched MatMuls over (instances × points).

As written, the point features are repeated once per instance, the instances are folded into the
channels and each generated layer is a conv1d with `groups = instances` and run-time weights: the
instance count is frozen into the graph and TensorRT's parser sees non-initializer conv weights. Here the
first layer's weights are split in two: the feature part multiplies the shared (C, points) features once
for all instances, (n, out, C) @ (C, points), with no repeat; the coordinate part multiplies each
instance's relative coordinates, (n, out, 3) @ (n, 3, points). Later layers are batched MatMuls. Nothing
depends on the number of instances or points, so one graph runs any count of either, 0 instances included.

Two forms differ in where the biases are added. "batched_matmul" adds them after each MatMul, which
OpenVINO fuses into the MatMul; "bias_in_matmul" carries them inside the MatMuls (a ones row under the
relative coordinates, condinst.with_bias_column), which saves ONNX Runtime the Add passes over
(n, channels, points) but costs OpenVINO the extra row. Measured at 50 000 points and 10-100 instances
(benchmarks/results/heads.md): ONNX Runtime 0.8-0.96× the time with the biases inside, OpenVINO 1.05-1.15×.
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
    """DyCo3DMaskHead as batched MatMuls; the same inputs and (instances, points) logits.

    bias_in_matmul: add the biases inside the MatMuls (a ones row) rather than after them.
    """

    def __init__(self, ref: DyCo3DMaskHead, bias_in_matmul: bool = False):
        super().__init__()
        self.bias_in_matmul = bias_in_matmul
        self.in_channels, self.channels, self.num_layers = ref.in_channels, ref.channels, ref.num_layers
        self.use_coords, self.head_in_channels = ref.use_coords, ref.head_in_channels

    def forward(self, mask_features: torch.Tensor, params: torch.Tensor, centres: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        self.check_inputs(mask_features, params, centres, coords)
        weights, biases = split_params(params, self.head_in_channels, self.channels, self.num_layers)
        if not self.bias_in_matmul:
            return self._biases_added(mask_features, weights, biases, centres, coords)
        first = weights[0]
        if self.use_coords:  # the bias rides with the coordinates: the shared features stay as they are
            rel = centres.unsqueeze(2) - coords.t()  # (n, 3, points): centre − point, as upstream
            rel = torch.cat([rel, ONE.to(rel.dtype).expand_as(rel[:, :1])], 1)
            x = torch.matmul(with_bias_column(first[:, :, :3], biases[0], keep_one=True), rel)
            feature_part = first[:, :, 3:]
            feature_part = torch.cat([feature_part, ZERO.to(rel.dtype).expand_as(feature_part[:, :1])], 1)  # adds 0 to the ones row
            x = x + torch.matmul(feature_part, mask_features.t())  # (n, out + 1, C) @ (C, points): features shared
        else:
            feats = mask_features.t()
            feats = torch.cat([feats, ONE.to(feats.dtype).expand_as(feats[:1])])  # (C + 1, points), shared
            x = torch.matmul(with_bias_column(first, biases[0], keep_one=True), feats)
        for i in range(1, self.num_layers):
            x = torch.matmul(with_bias_column(weights[i], biases[i], keep_one=i < self.num_layers - 1), torch.relu(x))
        return x.squeeze(1)

    def _biases_added(self, mask_features: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor],
                      centres: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        first = weights[0]
        x = torch.matmul(first[:, :, -self.in_channels:], mask_features.t())  # (n, out, points), features shared
        if self.use_coords:
            rel = centres.unsqueeze(2) - coords.t()  # (n, 3, points): centre − point, as upstream
            x = x + torch.matmul(first[:, :, :3], rel)
        for i in range(self.num_layers):
            if i:
                x = torch.matmul(weights[i], torch.relu(x))
            x = x + biases[i].unsqueeze(2)
        return x.squeeze(1)


register_layer(
    DyCo3DMaskHead,
    forms=[Form("batched_matmul", lambda r: DyCo3DBatchedHead(r).eval(), dynamic_batch=True, constant_weights=True,
                note="shared point features multiplied once for all instances, then batched MatMuls, biases added; any instance and point count"),
           Form("bias_in_matmul", lambda r: DyCo3DBatchedHead(r, bias_in_matmul=True).eval(), dynamic_batch=True, constant_weights=True,
                note="the same with the biases inside the MatMuls (a ones row): fewer passes over (instances × points)")],
    prefer={"onnxruntime": ["bias_in_matmul", "batched_matmul"], "*": ["batched_matmul", "bias_in_matmul"]},
)
