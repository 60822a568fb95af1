"""Re-creation of AdelaiDet's CondInst mask head (aim-uofa/AdelaiDet @ 3672122), inference path only.

Follows `adet/modeling/condinst/dynamic_mask_head.py` (`parse_dynamic_params`, `DynamicMaskHead`:
`__init__`'s weight/bias counts, `mask_heads_forward`, `mask_heads_forward_with_coords`, eval
`__call__`) and `adet/utils/comm.py` (`compute_locations`, `aligned_bilinear`), with the same config
keys, buffers and tensor layouts. The detectron2 `Instances` container is played by `Instances` below
(fields + len); the training losses are left out. Written here, not copied.
"""
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn


def make_cfg(in_channels=8, channels=8, num_layers=3, disable_rel_coords=False, soi=(64, 128, 256, 512), out_stride=4):
    """The config keys the head reads (AdelaiDet's defaults: 8, 8, 3, False, [64, 128, 256, 512], 4)."""
    ns = SimpleNamespace
    return ns(MODEL=ns(
        CONDINST=ns(MASK_OUT_STRIDE=out_stride,
                    MASK_HEAD=ns(NUM_LAYERS=num_layers, CHANNELS=channels, DISABLE_REL_COORDS=disable_rel_coords),
                    MASK_BRANCH=ns(OUT_CHANNELS=in_channels)),
        FCOS=ns(SIZES_OF_INTEREST=list(soi)),
        BOXINST=ns(ENABLED=False, BOTTOM_PIXELS_REMOVED=10, PAIRWISE=ns(SIZE=3, DILATION=2, COLOR_THRESH=0.3, WARMUP_ITERS=10000)),
    ))


class Instances:
    """detectron2's Instances, reduced to what the head reads: named per-instance fields and len()."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def __len__(self):
        return len(self.mask_head_params)


def compute_locations(h, w, stride, device):
    shifts_x = torch.arange(0, w * stride, step=stride, dtype=torch.float32, device=device)
    shifts_y = torch.arange(0, h * stride, step=stride, dtype=torch.float32, device=device)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    return torch.stack((shift_x.reshape(-1), shift_y.reshape(-1)), dim=1) + stride // 2


def aligned_bilinear(tensor, factor):
    assert tensor.dim() == 4 and factor >= 1 and int(factor) == factor
    if factor == 1:
        return tensor
    h, w = tensor.size()[2:]
    tensor = F.pad(tensor, pad=(0, 1, 0, 1), mode="replicate")
    oh, ow = factor * h + 1, factor * w + 1
    tensor = F.interpolate(tensor, size=(oh, ow), mode="bilinear", align_corners=True)
    tensor = F.pad(tensor, pad=(factor // 2, 0, factor // 2, 0), mode="replicate")
    return tensor[:, :, :oh - 1, :ow - 1]


def parse_dynamic_params(params, channels, weight_nums, bias_nums):
    assert params.dim() == 2
    assert len(weight_nums) == len(bias_nums)
    assert params.size(1) == sum(weight_nums) + sum(bias_nums)
    num_insts, num_layers = params.size(0), len(weight_nums)
    splits = list(torch.split_with_sizes(params, weight_nums + bias_nums, dim=1))
    weights, biases = splits[:num_layers], splits[num_layers:]
    for l in range(num_layers):
        out = channels if l < num_layers - 1 else 1
        weights[l] = weights[l].reshape(num_insts * out, -1, 1, 1)
        biases[l] = biases[l].reshape(num_insts * out)
    return weights, biases


class DynamicMaskHead(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.num_layers = cfg.MODEL.CONDINST.MASK_HEAD.NUM_LAYERS
        self.channels = cfg.MODEL.CONDINST.MASK_HEAD.CHANNELS
        self.in_channels = cfg.MODEL.CONDINST.MASK_BRANCH.OUT_CHANNELS
        self.mask_out_stride = cfg.MODEL.CONDINST.MASK_OUT_STRIDE
        self.disable_rel_coords = cfg.MODEL.CONDINST.MASK_HEAD.DISABLE_REL_COORDS
        soi = cfg.MODEL.FCOS.SIZES_OF_INTEREST
        self.register_buffer("sizes_of_interest", torch.tensor(soi + [soi[-1] * 2]))
        self.boxinst_enabled = cfg.MODEL.BOXINST.ENABLED
        weight_nums, bias_nums = [], []
        for l in range(self.num_layers):
            if l == 0:
                weight_nums.append((self.in_channels + (0 if self.disable_rel_coords else 2)) * self.channels)
                bias_nums.append(self.channels)
            elif l == self.num_layers - 1:
                weight_nums.append(self.channels * 1)
                bias_nums.append(1)
            else:
                weight_nums.append(self.channels * self.channels)
                bias_nums.append(self.channels)
        self.weight_nums, self.bias_nums = weight_nums, bias_nums
        self.num_gen_params = sum(weight_nums) + sum(bias_nums)
        self.register_buffer("_iter", torch.zeros([1]))

    def mask_heads_forward(self, features, weights, biases, num_insts):
        assert features.dim() == 4
        x = features
        for i, (w, b) in enumerate(zip(weights, biases)):
            x = F.conv2d(x, w, bias=b, stride=1, padding=0, groups=num_insts)
            if i < len(weights) - 1:
                x = F.relu(x)
        return x

    def mask_heads_forward_with_coords(self, mask_feats, mask_feat_stride, instances):
        locations = compute_locations(mask_feats.size(2), mask_feats.size(3), stride=mask_feat_stride, device=mask_feats.device)
        n_inst = len(instances)
        im_inds, params = instances.im_inds, instances.mask_head_params
        N, _, H, W = mask_feats.size()
        if not self.disable_rel_coords:
            rel = instances.locations.reshape(-1, 1, 2) - locations.reshape(1, -1, 2)
            rel = rel.permute(0, 2, 1).float()
            soi = self.sizes_of_interest.float()[instances.fpn_levels]
            rel = (rel / soi.reshape(-1, 1, 1)).to(dtype=mask_feats.dtype)
            inputs = torch.cat([rel, mask_feats[im_inds].reshape(n_inst, self.in_channels, H * W)], dim=1)
        else:
            inputs = mask_feats[im_inds].reshape(n_inst, self.in_channels, H * W)
        inputs = inputs.reshape(1, -1, H, W)
        weights, biases = parse_dynamic_params(params, self.channels, self.weight_nums, self.bias_nums)
        logits = self.mask_heads_forward(inputs, weights, biases, n_inst).reshape(-1, 1, H, W)
        assert mask_feat_stride >= self.mask_out_stride and mask_feat_stride % self.mask_out_stride == 0
        return aligned_bilinear(logits, int(mask_feat_stride / self.mask_out_stride))

    def __call__(self, mask_feats, mask_feat_stride, pred_instances, gt_instances=None):
        assert not self.training, "the re-creation covers inference only"
        if len(pred_instances) > 0:
            logits = self.mask_heads_forward_with_coords(mask_feats, mask_feat_stride, pred_instances)
            pred_instances.pred_global_masks = logits.sigmoid()
        return pred_instances
