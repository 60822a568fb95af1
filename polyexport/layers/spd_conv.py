"""SPD-Conv (Sunkara & Luo, ECML-PKDD 2022): space-to-depth instead of strided convs and pooling.

Official code (LabSAINT/SPD-Conv, YOLOv5-SPD/models/common.py and ResNet*-SPD/models/*.py):

    class space_to_depth(nn.Module):
        def __init__(self, dimension=1): self.d = dimension        # stored, never used
        def forward(self, x):
            return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)

The channel blocks are ordered (row 0, col 0), (row 1, col 0), (row 0, col 1), (row 1, col 1): the
row phase varies fastest. That is *not* ONNX SpaceToDepth's order (column phase fastest), which is
the order timm's `SpaceToDepth` (TResNet stem, block size 4) uses. Both are kept here, selected by
`order`, so that either codebase's layer is reproduced exactly. The slices only concatenate when H
and W are multiples of the block size: the reference raises otherwise, and so do the deploy forms.
"""
from __future__ import annotations

import torch
from torch import nn

ORDERS = ("spd", "onnx")


def block_order(scale: int, order: str) -> list[tuple[int, int]]:
    """(row phase, col phase) of each channel block, in output order."""
    if order == "spd":  # the official slicing: row phase fastest
        return [(r, c) for c in range(scale) for r in range(scale)]
    if order == "onnx":  # ONNX SpaceToDepth / timm SpaceToDepth: column phase fastest
        return [(r, c) for r in range(scale) for c in range(scale)]
    raise ValueError(f"order must be one of {ORDERS}, got {order!r}")


class space_to_depth(nn.Module):  # noqa: N801 - the official class name, kept so checkpoints and configs match
    """(N, C, H, W) -> (N, C·s², H/s, W/s) by strided slicing, blocks concatenated on channels.

    `dimension` is the official (unused) argument; `scale` and `order` extend it to block size 4
    and to timm's order. No parameters or buffers, so any official state_dict (empty) loads.
    """

    def __init__(self, dimension: int = 1, scale: int = 2, order: str = "spd"):
        super().__init__()
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        block_order(scale, order)  # validates `order`
        self.d = dimension
        self.scale = scale
        self.order = order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale
        return torch.cat([x[..., r::s, c::s] for r, c in block_order(s, self.order)], 1)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, order={self.order!r}"


class SPDConv(nn.Module):
    """SPD-Conv building block as the paper draws it: space_to_depth(scale), then a stride-1 conv and BN.

    A convenience for the zoo (SPD ResNet/YOLO stems): `spd`, `conv` (bias-free, padding k//2) and `bn`.
    """

    def __init__(self, in_channels: int, out_channels: int, k: int = 3, scale: int = 2):
        super().__init__()
        self.spd = space_to_depth(scale=scale)
        self.conv = nn.Conv2d(in_channels * scale * scale, out_channels, k, 1, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.spd(x)))
