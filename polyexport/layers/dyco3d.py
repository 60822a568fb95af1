"""DyCo3D's dynamic convolution head (He et al., CVPR 2021), as aim-uofa/DyCo3D writes it.

`model/pointgroup/pointgroup.py` (`PointGroup.parse_dynamic_params`, `PointGroup.mask_heads_forward`):
a controller (`nn.Conv1d(16, 337, 1)` on each proposal's pooled feature) predicts the weights and biases
of two 1×1 Conv1d layers per instance, in CondInst's layout. Every instance sees every object point:
the shared 16-channel point features, repeated once per instance, with the relative coordinates
(instance centre − point, in the scene's units, not normalised) put in front; the instances are folded
into the channels and each layer is a conv1d with `groups = number of instances`, ReLU between layers.

The head has no parameters or buffers of its own (upstream's hard-coded sizes become arguments), so a
PointGroup checkpoint needs nothing from it; the controller and mask tower that feed it are plain layers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BadInput
from .condinst import check_params, dynamic_param_layout, split_params


class DyCo3DInputChecks:
    """Shape checks shared by the reference and its deploy form (which has the same attributes)."""

    in_channels: int
    channels: int
    num_layers: int
    head_in_channels: int

    def check_inputs(self, mask_features: torch.Tensor, params: torch.Tensor, centres: torch.Tensor, coords: torch.Tensor) -> None:
        name = type(self).__name__
        check_params(params, self.head_in_channels, self.channels, self.num_layers, name)
        if mask_features.dim() != 2 or mask_features.shape[1] != self.in_channels:
            raise BadInput(f"{name}: mask features of shape {tuple(mask_features.shape)}, expected (points, {self.in_channels})")
        if centres.shape != (params.shape[0], 3):
            raise BadInput(f"{name}: centres of shape {tuple(centres.shape)}, expected ({params.shape[0]}, 3): (x, y, z) per instance")
        if coords.shape != (mask_features.shape[0], 3):
            raise BadInput(f"{name}: coords of shape {tuple(coords.shape)}, expected ({mask_features.shape[0]}, 3): (x, y, z) per point")


class DyCo3DMaskHead(DyCo3DInputChecks, nn.Module):
    """forward(mask_features (points, in_channels), params (n, num_gen_params), centres (n, 3), coords (points, 3))
    -> mask logits (n, points), instances folded into conv1d groups as upstream does.

    Upstream holds mask features as (points, channels, 1) and returns `mask_logits.squeeze(dim=0)`;
    here they are (points, channels) and the same (n, points) comes back. With no instances upstream's
    grouped conv cannot run (groups = 0); here an empty (0, points) comes back.
    """

    def __init__(self, in_channels: int = 16, channels: int = 16, num_layers: int = 2, use_coords: bool = True):
        super().__init__()
        self.in_channels, self.channels, self.num_layers, self.use_coords = in_channels, channels, num_layers, use_coords
        self.weight_nums, self.bias_nums = dynamic_param_layout(self.head_in_channels, channels, num_layers)
        self.num_gen_params = sum(self.weight_nums) + sum(self.bias_nums)

    @property
    def head_in_channels(self) -> int:
        """Input channels of the first generated conv: 3 relative coordinates, then the point features."""
        return self.in_channels + (3 if self.use_coords else 0)

    def forward(self, mask_features: torch.Tensor, params: torch.Tensor, centres: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        self.check_inputs(mask_features, params, centres, coords)
        n, points = params.shape[0], mask_features.shape[0]
        if n == 0:
            return mask_features.new_zeros(0, points)
        x = mask_features.t().unsqueeze(0).repeat(n, 1, 1)  # (n, c, points)
        if self.use_coords:
            rel = (centres.reshape(-1, 1, 3) - coords.reshape(1, -1, 3)).permute(0, 2, 1)
            x = torch.cat([rel, x], dim=1)
        x = x.reshape(1, -1, points)
        weights, biases = split_params(params, self.head_in_channels, self.channels, self.num_layers)
        for i, (w, b) in enumerate(zip(weights, biases)):
            x = F.conv1d(x, w.reshape(-1, w.shape[2], 1), b.reshape(-1), groups=n)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return x.squeeze(0)
