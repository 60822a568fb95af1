"""Even-sized kernels with symmetric padding (C2sp, C4sp) — Wu et al., NeurIPS 2019.

An even k×k kernel has no centre, so "same" padding shifts every feature map by half a pixel toward
one corner, and the shifts pile up layer after layer. The paper splits the input channels into four
groups and pads each toward a different corner, so the shifts cancel across groups; then a k×k conv
without padding.

The official code is TensorFlow (boluoweifenda/CNN, `source/nets/resnet50_c2sp.py`,
`ResNet.symmetric_padding` + `conv_sp`, NCHW). What it does, and what this module reproduces:
  - channel groups: `tf.split` with sizes `mod*[c//4 + 1] + (4 - mod)*[c//4]` — the remainder of
    c / 4 goes one channel each to the *first* groups (a warning, not an error, when c % 4 != 0);
  - paddings, as [top, bottom, left, right] rows of its `zeros` table, in group order:
    [0,1,0,1] bottom-right, [1,0,1,0] top-left, [0,1,1,0] bottom-left, [1,0,0,1] top-right;
  - then `conv(x, ksize, stride, padding='VALID')`, no bias by default.
The official code only has k = 2 (it asserts `ksize in [2]`). For k = 4 (C4sp) we pad k/2 − 1 on
every side plus one more toward the group's corner (so k − 1 in all per axis, as for k = 2); this
is our generalisation, not the authors' code. `groups` (depthwise) is ours too: the channel split
is over all input channels, as in the official function, and the conv is then grouped.

Parameters are named like nn.Conv2d (`weight` [out, in/groups, k, k], `bias` [out]) so a plain
conv's state_dict loads unchanged; TF's HWIO kernel maps to it by `permute(3, 2, 0, 1)`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: corner -> (top, bottom, left, right) bit: which sides get the extra row/column of zeros
CORNER_BITS = {"tl": (1, 0, 1, 0), "tr": (1, 0, 0, 1), "bl": (0, 1, 1, 0), "br": (0, 1, 0, 1)}
#: the official group order (resnet50_c2sp.py's `zeros` table)
OFFICIAL_CORNERS = ("br", "tl", "bl", "tr")


def group_sizes(channels: int, n: int = 4) -> list[int]:
    """Channels per padding group as the official tf.split has them: the remainder to the first groups."""
    base, mod = divmod(channels, n)
    return [base + 1] * mod + [base] * (n - mod)


class SymmetricPadConv2d(nn.Module):
    """k×k conv (k even) after padding each quarter of the channels toward a different corner."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 2, stride: int = 1,
                 groups: int = 1, bias: bool = False, corners: tuple[str, ...] = OFFICIAL_CORNERS):
        super().__init__()
        if kernel_size < 2 or kernel_size % 2:
            raise ValueError(f"kernel_size must be even and >= 2, got {kernel_size}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels {in_channels} and out_channels {out_channels} must be divisible by groups {groups}")
        if len(corners) != 4 or any(c not in CORNER_BITS for c in corners):
            raise ValueError(f"corners must be four of {sorted(CORNER_BITS)}, got {corners}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.groups = kernel_size, stride, groups
        self.corners = tuple(corners)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As nn.Conv2d, so a freshly built layer trains like a plain conv."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)

    def group_pads(self) -> list[tuple[int, int, int, int]]:
        """Per channel group, F.pad's (left, right, top, bottom): k/2 − 1 everywhere, +1 toward the corner."""
        base = self.kernel_size // 2 - 1
        out = []
        for corner in self.corners:
            top, bottom, left, right = CORNER_BITS[corner]
            out.append((base + left, base + right, base + top, base + bottom))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, group_sizes(self.in_channels), dim=1)
        x = torch.cat([F.pad(p, pad) for p, pad in zip(parts, self.group_pads())], dim=1)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.corners != OFFICIAL_CORNERS:
            s += f", corners={self.corners}"
        return s


def C2sp(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1, bias: bool = False) -> SymmetricPadConv2d:
    """2×2 conv with symmetric padding (the paper's C2sp)."""
    return SymmetricPadConv2d(in_channels, out_channels, 2, stride, groups, bias)


def C4sp(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1, bias: bool = False) -> SymmetricPadConv2d:
    """4×4 conv with symmetric padding (the paper's C4sp; our generalisation of the official padding)."""
    return SymmetricPadConv2d(in_channels, out_channels, 4, stride, groups, bias)
