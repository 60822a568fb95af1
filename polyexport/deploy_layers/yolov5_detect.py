"""YOLOv5 Detect's deploy form: the decode without in-place slice assignment, shapes read at run time.

"concat_decode": the same expressions as the reference on the same sigmoid values, so bit for bit the
same outputs; the box part is concatenated instead of assigned into slices (no ScatterND with
indices frozen to the traced shape), reshapes keep the batch as -1, and each level's grid is built from
its height and width at run time (Range), so one graph serves every batch size and every input size the
network accepts. The anchor grid broadcasts (1, na, 1, 1, 2) instead of being expanded to a constant.
"""
from __future__ import annotations

import torch
from torch import nn

from ..convert import Form, register_layer
from ..layers.yolov5_detect import YOLOv5Detect


class DetectConcatDecode(nn.Module):
    def __init__(self, ref: YOLOv5Detect):
        super().__init__()
        self.na, self.no, self.nl = ref.na, ref.no, ref.nl
        self.m = ref.m
        with torch.no_grad():  # anchor sizes in pixels, per level (the reference's anchor_grid before its expand)
            self.register_buffer("anchor_px", (ref.anchors * ref.stride.view(-1, 1, 1)).view(ref.nl, 1, ref.na, 1, 1, 2).clone())
        self.stride = [float(s) for s in ref.stride]

    def forward(self, x: list[torch.Tensor]):
        x, z = list(x), []
        for i in range(self.nl):
            p = self.m[i](x[i])
            ny, nx = p.shape[2], p.shape[3]
            p = p.view(-1, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            x[i] = p
            yv, xv = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
            grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2).float()
            y = p.sigmoid()
            xy = (y[..., 0:2] * 2.0 - 0.5 + grid) * self.stride[i]
            wh = (y[..., 2:4] * 2) ** 2 * self.anchor_px[i]
            z.append(torch.cat((xy, wh, y[..., 4:]), -1).flatten(1, 3))  # (N, na·H·W, no), no batch in a shape
        return torch.cat(z, 1), x


register_layer(YOLOv5Detect, [Form("concat_decode", DetectConcatDecode,
                                   note="decode by concatenation, grids from the run-time size: one graph for any batch and input size")])
