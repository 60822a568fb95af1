"""CondInst's dynamic mask head (Tian et al., ECCV 2020), as aim-uofa/AdelaiDet writes it.

`adet/modeling/condinst/dynamic_mask_head.py` (`DynamicMaskHead`): a controller elsewhere in the
detector predicts, per instance, the weights and biases of a few 1×1 convolutions. The head
concatenates relative coordinates (instance location − pixel location, divided by the size of interest
of the instance's FPN level) to the shared mask features of the instance's image, folds the instances
into the channels of one image and runs each layer as a conv with `groups = number of instances`;
ReLU between layers, one output channel, then `aligned_bilinear` up to the mask output stride.

The head has no parameters; its state_dict holds two buffers, `sizes_of_interest` (int64, the FCOS
sizes plus twice the last) and `_iter` (BoxInst's warm-up counter), kept here under the same names so
upstream checkpoints load unchanged. The parameter layout helpers are shared with DyCo3D, which uses
the same controller layout on point clouds.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BadInput


def dynamic_param_layout(in_channels: int, channels: int, num_layers: int, out_channels: int = 1) -> tuple[list[int], list[int]]:
    """(weight sizes, bias sizes) per layer of a generated 1×1 conv stack, in upstream's order."""
    if num_layers < 2:  # upstream's layout for one layer is (in·channels) weights reshaped to one output: it does not run
        raise ValueError(f"num_layers={num_layers}: the dynamic head needs at least 2 layers")
    ins = [in_channels] + [channels] * (num_layers - 1)
    outs = [channels] * (num_layers - 1) + [out_channels]
    return [i * o for i, o in zip(ins, outs)], list(outs)


def describe_layout(in_channels: int, channels: int, num_layers: int, out_channels: int = 1) -> str:
    """'169 = weights 80 (8×10) + 64 (8×8) + 8 (1×8), then biases 8 + 8 + 1' for a refusal message."""
    weights, biases = dynamic_param_layout(in_channels, channels, num_layers, out_channels)
    ins = [in_channels] + [channels] * (num_layers - 1)
    w = " + ".join(f"{n} ({o}×{i})" for n, o, i in zip(weights, biases, ins))
    return f"{sum(weights) + sum(biases)} = weights {w}, then biases {' + '.join(map(str, biases))}"


def check_params(params: torch.Tensor, in_channels: int, channels: int, num_layers: int, what: str) -> None:
    """Refuse a parameter tensor that is not (instances, n_params) with upstream's layout."""
    weights, biases = dynamic_param_layout(in_channels, channels, num_layers)
    n = sum(weights) + sum(biases)
    if params.dim() != 2 or params.shape[1] != n:
        raise BadInput(f"{what}: parameters of shape {tuple(params.shape)}, expected (instances, {n}): per instance "
                       f"{describe_layout(in_channels, channels, num_layers)}; every layer's weights (row-major, "
                       f"out × in) first, then every layer's biases")


def split_params(params: torch.Tensor, in_channels: int, channels: int, num_layers: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, weights (instances, out, in) and biases (instances, out), sliced at constant offsets."""
    weights, biases = dynamic_param_layout(in_channels, channels, num_layers)
    ins = [in_channels] + [channels] * (num_layers - 1)
    ws, bs, at = [], [], 0
    for size, o, i in zip(weights, biases, ins):
        ws.append(params[:, at:at + size].unflatten(1, (o, i)))
        at += size
    for o in biases:
        bs.append(params[:, at:at + o])
        at += o
    return ws, bs


def compute_locations(h: int, w: int, stride: int, device=None) -> torch.Tensor:
    """(h·w, 2) pixel centres (x, y) of a stride-`stride` map, row-major: AdelaiDet's `compute_locations`."""
    xs = torch.arange(0, w * stride, step=stride, dtype=torch.float32, device=device)
    ys = torch.arange(0, h * stride, step=stride, dtype=torch.float32, device=device)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((x.reshape(-1), y.reshape(-1)), dim=1) + stride // 2


def aligned_bilinear(x: torch.Tensor, factor: int) -> torch.Tensor:
    """AdelaiDet's upsampling: replicate-pad right/bottom, align-corners bilinear to f·h+1, shift by f//2, crop."""
    if factor == 1:
        return x
    h, w = x.shape[2:]
    x = F.pad(x, (0, 1, 0, 1), mode="replicate")
    x = F.interpolate(x, size=(factor * h + 1, factor * w + 1), mode="bilinear", align_corners=True)
    x = F.pad(x, (factor // 2, 0, factor // 2, 0), mode="replicate")
    return x[:, :, :factor * h, :factor * w]


class CondInstInputChecks:
    """Shape checks shared by the reference and its deploy form (which has the same attributes)."""

    in_channels: int
    channels: int
    num_layers: int
    head_in_channels: int

    def check_inputs(self, mask_feats: torch.Tensor, params: torch.Tensor, locations: torch.Tensor,
                     fpn_levels: torch.Tensor, im_inds: torch.Tensor) -> None:
        name = type(self).__name__
        check_params(params, self.head_in_channels, self.channels, self.num_layers, name)
        n = params.shape[0]
        if mask_feats.dim() != 4 or mask_feats.shape[1] != self.in_channels:
            raise BadInput(f"{name}: mask features of shape {tuple(mask_feats.shape)}, expected (images, {self.in_channels}, H, W)")
        if locations.shape != (n, 2):
            raise BadInput(f"{name}: locations of shape {tuple(locations.shape)}, expected ({n}, 2): (x, y) per instance")
        for what, t in (("fpn_levels", fpn_levels), ("im_inds", im_inds)):
            if t.shape != (n,) or t.is_floating_point():
                raise BadInput(f"{name}: {what} of shape {tuple(t.shape)} and type {t.dtype}, expected ({n},) integers")


class CondInstMaskHead(CondInstInputChecks, nn.Module):
    """The mask head's inference path (`mask_heads_forward_with_coords`), instances folded into conv groups.

    forward(mask_feats (images, in_channels, H, W), mask_head_params (n, num_gen_params),
    locations (n, 2) instance locations in input pixels (x, y), fpn_levels (n,) int64,
    im_inds (n,) int64) -> mask logits (n, 1, H·f, W·f), f = mask_feat_stride / mask_out_stride.
    Upstream's eval `__call__` takes the sigmoid of these as `pred_global_masks`; with no instances it
    skips the head, which here returns an empty (0, 1, H·f, W·f).
    """

    def __init__(self, in_channels: int = 8, channels: int = 8, num_layers: int = 3, disable_rel_coords: bool = False,
                 sizes_of_interest: tuple[int, ...] = (64, 128, 256, 512), mask_feat_stride: int = 8, mask_out_stride: int = 4):
        super().__init__()
        if mask_feat_stride < mask_out_stride or mask_feat_stride % mask_out_stride:
            raise ValueError(f"mask_feat_stride {mask_feat_stride} must be a multiple of mask_out_stride {mask_out_stride}")
        self.in_channels, self.channels, self.num_layers = in_channels, channels, num_layers
        self.disable_rel_coords = disable_rel_coords
        self.mask_feat_stride, self.mask_out_stride = mask_feat_stride, mask_out_stride
        soi = list(sizes_of_interest)
        self.register_buffer("sizes_of_interest", torch.tensor(soi + [soi[-1] * 2]))
        self.register_buffer("_iter", torch.zeros([1]))
        self.weight_nums, self.bias_nums = dynamic_param_layout(self.head_in_channels, channels, num_layers)
        self.num_gen_params = sum(self.weight_nums) + sum(self.bias_nums)

    @property
    def head_in_channels(self) -> int:
        """Input channels of the first generated conv: the mask features plus the 2 relative coordinates."""
        return self.in_channels + (0 if self.disable_rel_coords else 2)

    @property
    def factor(self) -> int:
        return self.mask_feat_stride // self.mask_out_stride

    def forward(self, mask_feats: torch.Tensor, mask_head_params: torch.Tensor, locations: torch.Tensor,
                fpn_levels: torch.Tensor, im_inds: torch.Tensor) -> torch.Tensor:
        self.check_inputs(mask_feats, mask_head_params, locations, fpn_levels, im_inds)
        n = mask_head_params.shape[0]
        _, c, h, w = mask_feats.shape
        if n == 0:
            return mask_feats.new_zeros(0, 1, h * self.factor, w * self.factor)
        feats = mask_feats[im_inds].reshape(n, c, h * w)
        if not self.disable_rel_coords:
            pixels = compute_locations(h, w, self.mask_feat_stride, mask_feats.device)
            rel = (locations.reshape(-1, 1, 2) - pixels.reshape(1, -1, 2)).permute(0, 2, 1).float()
            rel = rel / self.sizes_of_interest.float()[fpn_levels].reshape(-1, 1, 1)
            feats = torch.cat([rel.to(mask_feats.dtype), feats], dim=1)
        x = feats.reshape(1, -1, h, w)
        weights, biases = split_params(mask_head_params, self.head_in_channels, self.channels, self.num_layers)
        for i, (wt, b) in enumerate(zip(weights, biases)):
            x = F.conv2d(x, wt.reshape(-1, wt.shape[2], 1, 1), b.reshape(-1), groups=n)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return aligned_bilinear(x.reshape(-1, 1, h, w), self.factor)
