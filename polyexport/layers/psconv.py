"""PSConv (Poly-Scale Convolution, Li et al., ECCV 2020): d-li14/PSConv `mmdet/models/utils/psconv.py`.

Three convs on the same input, summed: `gwconv` (grouped, dilation d), `gwconv_shift` (grouped,
dilation 2d, on the input with the two halves of each conv group swapped) and `conv` (dense within
`groups`, dilation 1, the given padding). The official code zeroes the entries of `conv.weight` that
the grouped convs cover and keeps them zero with a gradient hook; the forward does not apply the
mask, so exactness means: the three convs with the weights as they are.

State dict keys are the official ones (`gwconv.*`, `gwconv_shift.*`, `conv.*`): the official mask is
a plain attribute, not a buffer, so here it is a non-persistent buffer (it follows `.to(device)`,
unlike the official `.cuda()`).
"""
from __future__ import annotations

import torch
from torch import nn


class _MaskedConvMixin:
    """The official initialisation: zero `conv.weight` under the mask, keep its gradient zero there."""

    def _apply_mask(self, mask: torch.Tensor) -> None:
        self.register_buffer("mask", mask, persistent=False)
        with torch.no_grad():
            self.conv.weight[self.mask] = 0
        self.conv.weight.register_hook(self._masked_grad)

    def __setstate__(self, state: dict) -> None:
        """Copies and unpickling drop tensor hooks: re-register it (the official layer loses it there)."""
        super().__setstate__(state)
        self.conv.weight.register_hook(self._masked_grad)

    def _masked_grad(self, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        out[self.mask] = 0
        return out


def half_swap(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Swap the two halves (`chunk(2)`, first half the larger) of each of `groups` channel chunks."""
    chunks = (z.chunk(2, dim=1) for z in x.chunk(groups, dim=1))
    return torch.cat(tuple(torch.cat((x2, x1), dim=1) for x1, x2 in chunks), dim=1)


class PSConv2d(_MaskedConvMixin, nn.Module):
    """Poly-scale conv without channel groups (the official constructor has no `groups`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=1, dilation: int = 1,
                 parts: int = 4, bias: bool = False):
        super().__init__()
        self.gwconv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, dilation, dilation, groups=parts, bias=bias)
        self.gwconv_shift = nn.Conv2d(in_channels, out_channels, kernel_size, stride, 2 * dilation, 2 * dilation,
                                      groups=parts, bias=bias)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        mask = torch.zeros(self.conv.weight.shape, dtype=torch.bool)
        ci, co = in_channels // parts, out_channels // parts
        for i in range(parts):
            mask[i * co:(i + 1) * co, i * ci:(i + 1) * ci] = True
            j = (i + parts // 2) % parts
            mask[j * co:(j + 1) * co, i * ci:(i + 1) * ci] = True
        self._apply_mask(mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        x_shift = self.gwconv_shift(torch.cat((x2, x1), dim=1))
        return self.gwconv(x) + self.conv(x) + x_shift


class PSGConv2d(_MaskedConvMixin, nn.Module):
    """Poly-scale group conv: the half swap happens inside each of the `groups` channel chunks."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=1, dilation: int = 1,
                 groups: int = 1, parts: int = 4, bias: bool = False):
        super().__init__()
        self.gwconv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, dilation, dilation,
                                groups=groups * parts, bias=bias)
        self.gwconv_shift = nn.Conv2d(in_channels, out_channels, kernel_size, stride, 2 * dilation, 2 * dilation,
                                      groups=groups * parts, bias=bias)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)
        mask = torch.zeros(self.conv.weight.shape, dtype=torch.bool)
        ci, co = in_channels // (groups * parts), out_channels // (groups * parts)
        for i in range(parts):
            for j in range(groups):
                # the official block index is i + j*groups (not j*parts + i): reproduced as it is
                o = i + j * groups
                mask[o * co:(o + 1) * co, i * ci:(i + 1) * ci] = True
                o = (i + parts // 2) % parts + j * groups
                mask[o * co:(o + 1) * co, i * ci:(i + 1) * ci] = True
        self._apply_mask(mask)
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_shift = self.gwconv_shift(half_swap(x, self.groups))
        return self.gwconv(x) + self.conv(x) + x_shift
