"""HetConv (Singh et al., "HetConv: Heterogeneous Kernel-Based Convolutions", CVPR 2019).

There is no official code. The layout copied most widely is the "efficient" one of
irvinxav/Efficient-HetConv-Heterogeneous-Kernel-Based-Convolutions (`hetconv.py`, class `HetConv`):
a grouped K×K conv `gwc` (groups = P) plus a dense 1×1 conv `pwc`, summed. Output filter o of group
g = o // (out/P) thus has K×K kernels on the contiguous input block g (in/P channels) and 1×1 kernels
on every channel; irvinxav zeroes (and masks the gradient of) pwc's entries on that block during
training, which gives the paper's exact kernel count, but the function computed is gwc(x) + pwc(x)
either way, and that is what this module computes. The paper's "shifted" assignment (K×K on input
channels j ≡ o mod P) is the same layer up to a permutation of input and output channels.

The state_dict is irvinxav's (`gwc.weight`, `pwc.weight`; with bias=True also `gwc.bias`,
`pwc.bias`). The constructor adds what het_resnet50 / het_vgg16 need: kernel size, stride,
dilation, padding (only the "same" padding d·(K−1)/2, the one for which the two branches line up),
bias.
"""
from __future__ import annotations

import torch
from torch import nn


class HetConv(nn.Module):
    """K×K kernels on 1/P of each filter's input channels, 1×1 on the rest (as gwc + pwc)."""

    def __init__(self, in_channels: int, out_channels: int, p: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, dilation: int = 1, bias: bool = False):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"HetConv needs an odd kernel size (its 1x1 kernels sit at the centre), got {kernel_size}")
        if in_channels % p or out_channels % p:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by p ({p})")
        same = dilation * (kernel_size - 1) // 2
        if padding is None:
            padding = same
        if padding != same:
            raise ValueError(f"padding must be {same} (dilation*(kernel_size-1)/2) so that the KxK and 1x1 branches line up, got {padding}")
        self.in_channels, self.out_channels, self.p = in_channels, out_channels, p
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.gwc = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups=p, bias=bias)
        self.pwc = nn.Conv2d(in_channels, out_channels, 1, stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gwc(x) + self.pwc(x)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ShiftedHetConv(nn.Module):
    """The paper's exact assignment: filter c has K×K kernels on input channels j ≡ c (mod P), 1×1 on the rest.

    Layout (and state_dict: `filters.{i}.0.weight`, `filters.{i}.1.weight`) of the per-branch
    `HetConv(input_channels, output_channels, stride, p)` copied into many Ultralytics-YOLO plugin
    files (first source not identified): branch i holds a K×K conv over channels i::P and a 1×1 conv
    over the others (ascending), both giving out/P channels, which land at c = q·P + i. Also the
    target of sxpro/HetConvolution2d_pytorch `HetConv2d_v2` (one branch per filter; see the adapters).
    Odd K and "same" padding only, as for HetConv; bias (off in the YOLO code) is added to both convs.
    """

    def __init__(self, in_channels: int, out_channels: int, p: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, dilation: int = 1, bias: bool = False):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"ShiftedHetConv needs an odd kernel size, got {kernel_size}")
        if p < 2:
            raise ValueError(f"ShiftedHetConv needs p >= 2 (p=1 leaves no 1x1 kernels: use nn.Conv2d), got {p}")
        if in_channels % p or out_channels % p:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by p ({p})")
        same = dilation * (kernel_size - 1) // 2
        padding = same if padding is None else padding
        if padding != same:
            raise ValueError(f"padding must be {same} (dilation*(kernel_size-1)/2) so that the KxK and 1x1 kernels line up, got {padding}")
        self.in_channels, self.out_channels, self.p = in_channels, out_channels, p
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        n_kxk = in_channels // p
        self.filters = nn.ModuleList(
            nn.ModuleList([nn.Conv2d(n_kxk, out_channels // p, kernel_size, stride, padding, dilation, bias=bias),
                           nn.Conv2d(in_channels - n_kxk, out_channels // p, 1, stride, bias=bias)])
            for _ in range(p))
        for i in range(p):  # not in the state_dict: a function of (in_channels, p), as in the YOLO code
            self.register_buffer(f"index_1x1_{i}", torch.tensor(self.channels_1x1(i), dtype=torch.long), persistent=False)

    def channels_kxk(self, i: int) -> list[int]:
        """Input channels with K×K kernels in branch i (filters c ≡ i mod P)."""
        return list(range(i, self.in_channels, self.p))

    def channels_1x1(self, i: int) -> list[int]:
        """Input channels with 1×1 kernels in branch i, ascending."""
        return [j for j in range(self.in_channels) if j % self.p != i]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [kxk(x[:, i::self.p]) + one(x.index_select(1, getattr(self, f"index_1x1_{i}")))
                for i, (kxk, one) in enumerate(self.filters)]
        return torch.stack(outs, 2).flatten(1, 2)  # (N, out/P, P, H, W): channel q·P + i

    def extra_repr(self) -> str:
        return f"p={self.p}"
