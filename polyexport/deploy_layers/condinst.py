"""Deploy form of CondInst's dynamic mask head: batched MatMuls over (instances × pixels).

As written, the instances are folded into the channels of one image and every generated layer is a
conv with `groups = instances` and run-time weights: the instance count is frozen into the graph (the
`group` attribute and the reshapes) and TensorRT's parser sees convolution weights that are not
initializers. Here each layer is one batched MatMul, (n, out, in) @ (n, in, H·W), so one graph runs any
number of instances, none included; the pixel grid is a constant of the feature map's size. The biases
ride in the MatMuls (`with_bias_column`): the per-pixel Add passes over (n, channels, H·W) were a
tenth of the time at 100 instances on both runtimes, as memory traffic.

Two forms differ only in the final aligned-bilinear upsampling: "batched_matmul" applies it as two
constant matrices (a linear map per axis; MatMul only, any runtime), "batched_resize" as upstream writes
it (replicate Pad, align-corners Resize, Pad, Slice). Measured (benchmarks/results/heads.md, 10-100
instances on a 100×136 map): OpenVINO runs the whole head 1.8-2.4× faster with the matrices than with its
Resize; ONNX Runtime runs it as fast or up to ~10% faster with its Resize.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..convert import Form, register_layer
from ..layers.condinst import CondInstInputChecks, CondInstMaskHead, aligned_bilinear, split_params


def aligned_bilinear_matrix(size: int, factor: int) -> np.ndarray:
    """(factor·size, size) matrix A with A @ v = AdelaiDet's `aligned_bilinear` of v along one axis.

    Its steps are each linear and act on the two axes separately: replicate-pad one sample at the end,
    align-corners linear interpolation to factor·size + 1 samples (sample k sits at k / factor), replicate-pad
    factor // 2 at the start, keep the first factor·size. Built in float64.
    """
    a = np.zeros((factor * size, size))
    for j in range(factor * size):
        t = max(j - factor // 2, 0) / factor  # position in the padded input, in input samples
        lo = int(np.floor(t))
        frac = t - lo
        a[j, min(lo, size - 1)] += 1 - frac
        if frac:
            a[j, min(lo + 1, size - 1)] += frac
    return a


def with_bias_column(weight: torch.Tensor, bias: torch.Tensor, keep_one: bool) -> torch.Tensor:
    """(n, out, in) weights and (n, out) biases as one (n, out [+ 1], in + 1) matrix for inputs whose last row is ones.

    W·x + b = [W b]·[x; 1]: the bias is added inside the MatMul (rounding only). `keep_one` appends an output
    row that copies the ones row, so the next layer (after a ReLU, which keeps 1) can take its bias the same way.
    """
    a = torch.cat([weight, bias.unsqueeze(2)], 2)
    if keep_one:
        k = a.shape[2]
        one = torch.from_numpy(np.eye(1, k, k - 1, dtype=np.float32)[None]).to(a.dtype)  # (1, 1, in + 1): [0 … 0 1]
        a = torch.cat([a, one.expand_as(a[:, :1])], 1)
    return a


class CondInstBatchedHead(CondInstInputChecks, nn.Module):
    """CondInstMaskHead as batched MatMuls; the same inputs and output, any instance count from one graph.

    upsample: "matmul" (constant interpolation matrices) or "resize" (upstream's aligned_bilinear ops).
    """

    def __init__(self, ref: CondInstMaskHead, upsample: str = "matmul"):
        super().__init__()
        if upsample not in ("matmul", "resize"):
            raise ValueError(f"upsample={upsample!r}: 'matmul' or 'resize'")
        self.upsample = upsample
        self.in_channels, self.channels, self.num_layers = ref.in_channels, ref.channels, ref.num_layers
        self.head_in_channels, self.factor = ref.head_in_channels, ref.factor
        self.disable_rel_coords, self.mask_feat_stride = ref.disable_rel_coords, ref.mask_feat_stride
        self.register_buffer("sizes_of_interest", ref.sizes_of_interest.detach().float().clone())

    def _pixels(self, h: int, w: int) -> torch.Tensor:
        """(2, H·W) pixel centres (x; y) in input pixels, a constant of the map's size."""
        s = self.mask_feat_stride
        y, x = np.meshgrid(np.arange(h) * s + s // 2, np.arange(w) * s + s // 2, indexing="ij")
        return torch.from_numpy(np.stack([x.reshape(-1), y.reshape(-1)]).astype(np.float32))

    def forward(self, mask_feats: torch.Tensor, mask_head_params: torch.Tensor, locations: torch.Tensor,
                fpn_levels: torch.Tensor, im_inds: torch.Tensor) -> torch.Tensor:
        self.check_inputs(mask_feats, mask_head_params, locations, fpn_levels, im_inds)
        h, w = int(mask_feats.shape[2]), int(mask_feats.shape[3])
        x = mask_feats.flatten(2).index_select(0, im_inds)  # (n, C, H·W): each instance's image
        rows = [x, torch.ones((), dtype=x.dtype).expand_as(x[:, :1])]  # the ones row carries the biases (expand_as: n stays dynamic)
        if not self.disable_rel_coords:
            rel = (locations.unsqueeze(2) - self._pixels(h, w)) / self.sizes_of_interest[fpn_levels][:, None, None]
            rows.insert(0, rel.to(x.dtype))
        x = torch.cat(rows, dim=1)  # (n, head_in_channels + 1, H·W)
        weights, biases = split_params(mask_head_params, self.head_in_channels, self.channels, self.num_layers)
        for i, (wt, b) in enumerate(zip(weights, biases)):
            last = i == self.num_layers - 1
            x = torch.matmul(with_bias_column(wt, b, keep_one=not last), x)
            if not last:
                x = torch.relu(x)
        x = x.unflatten(2, (h, w))  # (n, 1, H, W)
        if self.factor == 1 or self.upsample == "resize":
            return aligned_bilinear(x, self.factor)
        up_h = torch.from_numpy(aligned_bilinear_matrix(h, self.factor)).to(x.dtype)
        up_w = torch.from_numpy(aligned_bilinear_matrix(w, self.factor).T.copy()).to(x.dtype)
        return torch.matmul(up_h, torch.matmul(x, up_w))  # width first: one GEMM over n·H rows, fewer FLOPs


register_layer(
    CondInstMaskHead,
    forms=[Form("batched_matmul", lambda r: CondInstBatchedHead(r, "matmul").eval(), dynamic_batch=True, constant_weights=True,
                note="a batched MatMul per generated layer over (instances × pixels), upsampling by two constant matrices; any instance count, 0 included"),
           Form("batched_resize", lambda r: CondInstBatchedHead(r, "resize").eval(), dynamic_batch=True, constant_weights=True,
                note="the same layers, upsampling by upstream's Pad/Resize/Pad/Slice; any instance count, 0 included")],
    prefer={"onnxruntime": ["batched_resize", "batched_matmul"], "*": ["batched_matmul", "batched_resize"]},
)
