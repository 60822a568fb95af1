"""Dynamic Region-Aware Convolution (Chen et al., CVPR 2021): the reference layer.

The authors released no code. This follows the most used unofficial PyTorch implementation,
shallowtoil/DRConv-PyTorch (`DRConv2d`, copied by most later repos), name for name:
  conv_kernel: AdaptiveAvgPool2d(k) → 1×1 conv in→m² → sigmoid → grouped 1×1 conv (groups m)
               m²→m·out·in, i.e. m per-sample k×k kernels (out, in, k, k);
  candidates:  each sample convolved with its own m kernels (the batch-folded grouped conv "xcorr");
  conv_guide:  k×k conv in→m; each output pixel takes the candidate of its argmax region.
Training uses a straight-through gradient (softmax of the guide) for the hard argmax, as upstream.
`**kwargs` (stride, padding, dilation) go to both conv_guide and the candidate conv, as upstream.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def xcorr(x: torch.Tensor, kernel: torch.Tensor, **kwargs) -> torch.Tensor:
    """Convolve sample b with its own kernels kernel[b] (B, n·in, k, k) via one grouped conv."""
    b, c, h, w = x.shape
    out = F.conv2d(x.reshape(1, b * c, h, w), kernel.reshape(-1, c, kernel.shape[2], kernel.shape[3]), groups=b, **kwargs)
    return out.reshape(b, -1, out.shape[2], out.shape[3])


class asign_index(torch.autograd.Function):  # noqa: N801 - upstream name
    """Forward: the candidate of the argmax region (first index on ties); backward: softmax surrogate."""

    @staticmethod
    def forward(ctx, kernel: torch.Tensor, guide_feature: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(kernel, guide_feature)
        mask = torch.zeros_like(guide_feature).scatter_(1, guide_feature.argmax(dim=1, keepdim=True), 1).unsqueeze(2)
        return torch.sum(kernel * mask, dim=1)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kernel, guide_feature = ctx.saved_tensors
        mask = torch.zeros_like(guide_feature).scatter_(1, guide_feature.argmax(dim=1, keepdim=True), 1).unsqueeze(2)
        grad_kernel = grad_output.unsqueeze(1) * mask
        grad_guide = (grad_output.unsqueeze(1) * kernel).sum(dim=2)
        soft = F.softmax(guide_feature, 1)
        return grad_kernel, soft * (grad_guide - (soft * grad_guide).sum(dim=1, keepdim=True))


class DRConv2d(nn.Module):
    """Region-aware conv with m = region_num per-sample kernels selected per pixel by a guide."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, region_num: int = 8, **kwargs) -> None:
        super().__init__()
        self.region_num = region_num
        self.conv_kernel = nn.Sequential(
            nn.AdaptiveAvgPool2d((kernel_size, kernel_size)),
            nn.Conv2d(in_channels, region_num * region_num, kernel_size=1),
            nn.Sigmoid(),
            nn.Conv2d(region_num * region_num, region_num * in_channels * out_channels, kernel_size=1, groups=region_num),
        )
        self.conv_guide = nn.Conv2d(in_channels, region_num, kernel_size=kernel_size, **kwargs)
        self.kwargs = kwargs

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - upstream signature
        kernel = self.conv_kernel(input)
        output = xcorr(input, kernel, **self.kwargs)
        output = output.view(output.size(0), self.region_num, -1, output.size(2), output.size(3))
        return asign_index.apply(output, self.conv_guide(input))
