"""YOLOv5's detection head (`Detect`, ultralytics/yolov5 v6.0 models/yolo.py, also in the SPD-Conv, PSConv
and HetConv YOLO variants): per level a 1×1 conv to na·(nc+5) channels, reshaped to (N, na, H, W, no);
in eval mode decoded: sigmoid, box centres `(2s − 0.5 + grid)·stride`, sizes `(2s)²·anchor` (pixels).

As written, the decode assigns into slices in place (`inplace=True`, the default), which the TorchScript
exporter turns into ScatterND with index tensors expanded to the traced shape: the batch is frozen into
the graph (another batch fails to run). YOLOv5's own export.py sets `inplace=False` for that reason.

`anchors` (nl, na, 2) is in grid units (the official Model divides by the stride after building);
`stride` (nl,) is a plain tensor attribute, not a buffer, as upstream. The grids are cached per level.
"""
from __future__ import annotations

import torch
from torch import nn


class YOLOv5Detect(nn.Module):
    """The official Detect's eval-mode function, constructed from its parts."""

    def __init__(self, convs: nn.ModuleList, anchors: torch.Tensor, stride: torch.Tensor, nc: int, inplace: bool = True):
        super().__init__()
        self.nc, self.no, self.nl, self.na = nc, nc + 5, anchors.shape[0], anchors.shape[1]
        self.m = convs
        self.register_buffer("anchors", anchors.detach().clone().float())
        self.stride = stride.detach().clone().float()
        self.inplace = inplace
        self.grid = [torch.zeros(1)] * self.nl
        self.anchor_grid = [torch.zeros(1)] * self.nl

    def forward(self, x: list[torch.Tensor]):
        x = list(x)
        z = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if self.grid[i].shape[2:4] != x[i].shape[2:4]:
                self.grid[i], self.anchor_grid[i] = self._make_grid(nx, ny, i)
            y = x[i].sigmoid()
            if self.inplace:
                y[..., 0:2] = (y[..., 0:2] * 2.0 - 0.5 + self.grid[i]) * self.stride[i]
                y[..., 2:4] = (y[..., 2:4] * 2) ** 2 * self.anchor_grid[i]
            else:
                xy = (y[..., 0:2] * 2.0 - 0.5 + self.grid[i]) * self.stride[i]
                wh = (y[..., 2:4] * 2) ** 2 * self.anchor_grid[i]
                y = torch.cat((xy, wh, y[..., 4:]), -1)
            z.append(y.view(bs, -1, self.no))
        return torch.cat(z, 1), x

    def _make_grid(self, nx: int, ny: int, i: int):
        yv, xv = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
        grid = torch.stack((xv, yv), 2).expand((1, self.na, ny, nx, 2)).float()
        anchor_grid = (self.anchors[i].clone() * self.stride[i]).view((1, self.na, 1, 1, 2)).expand((1, self.na, ny, nx, 2)).float()
        return grid, anchor_grid
