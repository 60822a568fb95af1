"""YOLOv5's own `Model`, as Ultralytics' code (and the SPD paper's copy of it) builds and runs it.

The structured YOLOv5 in spdnets.py computes the same function with plain module nesting. This one keeps
what third-party YOLO code does and a converter must survive (written here from YOLOv5 v6.0's
models/yolo.py and LabSAINT/SPD-Conv's YOLOv5-SPD/models/yolo.py, common.py):

- `parse_model` builds one flat nn.Sequential from a yaml-like dict and tags every layer with
  `i` (index), `f` (where its input comes from), `type` and `np` (parameter count);
  `Model._forward_once` *reads* `m.f` and `m.i` at run time, so a swapped layer without them breaks;
- `Detect` decodes in eval mode (sigmoid, grid, anchors, in-place slice assignment) and caches its
  grids in plain list attributes; `stride` is a tensor attribute, not a buffer;
- `Conv` has `forward_fuse`, and `Model.fuse()` folds BN and *assigns* `m.forward = m.forward_fuse`
  on the instance, as checkpoints saved after fusing carry it;
- `train()`/`eval()` are nn.Module's, the model starts in training mode, BN eps 1e-3, momentum 0.03.

Zoo entry: `spd_yolov5n_ultralytics`, the paper's space_depth_n.yaml through this Model; its raw maps equal
`spd_yolov5n`'s for the same tensors. Outputs (eval): the decoded (N, anchors·cells, 85) tensor and the
three raw per-level maps (N, 3, H, W, 85), each compared on its own scale.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..deploy_layers.conv_bn import fuse_conv_bn
from ..layers.spd_conv import space_to_depth
from . import register
from .spdnets import C3, SPPF, YOLOV5_ANCHORS, yolo_width


class Conv(nn.Module):
    """YOLOv5's Conv: conv (padding k//2), BN, SiLU; `forward_fuse` once `Model.fuse()` has folded the BN."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2 if p is None else p, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act is True else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))

    def forward_fuse(self, x):
        return self.act(self.conv(x))


class Focus(nn.Module):
    """YOLOv5's Focus: the official slicing written inline (no space_to_depth module), then Conv on 4× the channels."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1, act: bool = True):
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act)

    def forward(self, x):
        return self.conv(torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1))


class Concat(nn.Module):
    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x):
        return torch.cat(x, self.d)


class Detect(nn.Module):
    """YOLOv5 v6.0's Detect: per level a 1×1 conv, reshaped to (N, na, H, W, no); in eval mode also decoded."""

    stride = None  # set by Model from a forward pass, as the official code does
    onnx_dynamic = False

    def __init__(self, nc: int = 80, anchors=(), ch=(), inplace: bool = True):
        super().__init__()
        self.nc, self.no, self.nl, self.na = nc, nc + 5, len(anchors), len(anchors[0]) // 2
        self.grid = [torch.zeros(1)] * self.nl
        self.anchor_grid = [torch.zeros(1)] * self.nl
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.inplace = inplace

    def forward(self, x):
        z = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if not self.training:
                if self.grid[i].shape[2:4] != x[i].shape[2:4] or self.onnx_dynamic:
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
        return x if self.training else (torch.cat(z, 1), x)

    def _make_grid(self, nx: int = 20, ny: int = 20, i: int = 0):
        yv, xv = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
        grid = torch.stack((xv, yv), 2).expand((1, self.na, ny, nx, 2)).float()
        anchor_grid = (self.anchors[i].clone() * self.stride[i]).view((1, self.na, 1, 1, 2)).expand((1, self.na, ny, nx, 2)).float()
        return grid, anchor_grid


#: modules a config may name, as the official parse_model resolves them with eval()
MODULES: dict[str, type] = {"Conv": Conv, "C3": C3, "SPPF": SPPF, "Focus": Focus, "Concat": Concat, "Detect": Detect,
                            "nn.Upsample": nn.Upsample, "space_to_depth": space_to_depth}
_CHANNEL_MODULES = (Conv, C3, SPPF, Focus)


def parse_model(d: dict, ch: list[int], modules: dict[str, type] | None = None) -> tuple[nn.Sequential, list[int]]:
    """YOLOv5's parse_model: the layers of `d` (yaml-like) in one nn.Sequential, each tagged with i, f, type
    and np, and the save list of layer indices whose outputs later layers read. `modules` adds classes a
    config may name, as a YOLO plugin repository adds its own; one taking (c1, c2, *args) is scaled like Conv."""
    known = {**MODULES, **(modules or {})}
    nc, gd, gw = d["nc"], d["depth_multiple"], d["width_multiple"]
    layers, save, c2 = [], [], ch[-1]
    for i, (f, n, name, args) in enumerate(d["backbone"] + d["head"]):
        m, args = known[name], [nc if a == "nc" else d["anchors"] if a == "anchors" else a for a in args]
        n = max(round(n * gd), 1) if n > 1 else n
        if m in _CHANNEL_MODULES or name in (modules or {}):
            c1, c2 = ch[f], yolo_width(args[0], gw)
            args = [c1, c2, *args[1:]]
            if m is C3:
                args.insert(2, n)
                n = 1
        elif m is Concat:
            c2 = sum(ch[x] for x in f)
        elif m is Detect:
            args.append([ch[x] for x in f])
        elif m is space_to_depth:
            c2 = 4 * ch[f]
        else:
            c2 = ch[f]
        m_ = nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)
        m_.i, m_.f, m_.type, m_.np = i, f, f"{m.__module__}.{m.__qualname__}", sum(x.numel() for x in m_.parameters())
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(m_)
        if i == 0:
            ch = []
        ch.append(c2)
    return nn.Sequential(*layers), sorted(save)


class Model(nn.Module):
    """YOLOv5's Model: `parse_model`, strides from a forward pass, Detect's biases as the official init sets them."""

    def __init__(self, cfg: dict, ch: int = 3, modules: dict[str, type] | None = None):
        super().__init__()
        self.yaml = copy.deepcopy(cfg)
        self.model, self.save = parse_model(copy.deepcopy(self.yaml), ch=[ch], modules=modules)
        self.names = [str(i) for i in range(self.yaml["nc"])]
        m = self.model[-1]
        s = 256
        m.inplace = True
        m.stride = torch.tensor([s / x.shape[-2] for x in self.forward(torch.zeros(1, ch, s, s))])
        m.anchors /= m.stride.view(-1, 1, 1)
        self.stride = m.stride
        for mi, st in zip(m.m, m.stride):  # _initialize_biases
            b = mi.bias.view(m.na, -1)
            b.data[:, 4] += math.log(8 / (640 / st) ** 2)
            b.data[:, 5:] += math.log(0.6 / (m.nc - 0.99))
            mi.bias = nn.Parameter(b.view(-1), requires_grad=True)
        for mod in self.modules():  # initialize_weights
            if type(mod) is nn.BatchNorm2d:
                mod.eps, mod.momentum = 1e-3, 0.03

    def forward(self, x):
        return self._forward_once(x)

    def _forward_once(self, x):
        y = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    def fuse(self) -> "Model":
        """Fold each Conv's BN into its conv and switch its forward, as YOLOv5's Model.fuse() does."""
        for m in self.model.modules():
            if isinstance(m, Conv) and hasattr(m, "bn"):
                m.conv = fuse_conv_bn(m.conv, m.bn)
                delattr(m, "bn")
                m.forward = m.forward_fuse
        return self


def _head(spd: bool) -> list:
    """YOLOv5 v6.0's head rows; with SPD each stride-2 Conv is Conv(s1) + space_to_depth (space_depth_n.yaml)."""
    def down(c: int) -> list:
        return [[-1, 1, "Conv", [c, 3, 1]], [-1, 1, "space_to_depth", [1]]] if spd else [[-1, 1, "Conv", [c, 3, 2]]]

    # rows whose outputs are concatenated (backbone P4, P3; head P4, P5) and the three Detect inputs
    p4, p3, h4, h5, outs = (9, 6, 18, 14, [21, 25, 29]) if spd else (6, 4, 14, 10, [17, 20, 23])
    rows = [[-1, 1, "Conv", [512, 1, 1]], [-1, 1, "nn.Upsample", [None, 2, "nearest"]], [[-1, p4], 1, "Concat", [1]],
            [-1, 3, "C3", [512, False]], [-1, 1, "Conv", [256, 1, 1]], [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
            [[-1, p3], 1, "Concat", [1]], [-1, 3, "C3", [256, False]], *down(256), [[-1, h4], 1, "Concat", [1]],
            [-1, 3, "C3", [512, False]], *down(512), [[-1, h5], 1, "Concat", [1]], [-1, 3, "C3", [1024, False]]]
    return [*rows, [outs, 1, "Detect", ["nc", "anchors"]]]


def yolov5_config(spd: bool, nc: int = 80) -> dict:
    """yolov5n.yaml (v6.0), or with `spd` the SPD paper's space_depth_n.yaml, as a dict."""
    if spd:
        backbone = [[-1, 1, "Focus", [64, 3]]]
        for c, n in ((128, 3), (256, 6), (512, 9), (1024, 3)):
            backbone += [[-1, 1, "Conv", [c, 3, 1]], [-1, 1, "space_to_depth", [1]], [-1, n, "C3", [c]]]
    else:
        backbone = [[-1, 1, "Conv", [64, 6, 2, 2]]]
        for c, n in ((128, 3), (256, 6), (512, 9), (1024, 3)):
            backbone += [[-1, 1, "Conv", [c, 3, 2]], [-1, n, "C3", [c]]]
    backbone.append([-1, 1, "SPPF", [1024, 5]])
    return {"nc": nc, "depth_multiple": 0.33, "width_multiple": 0.25, "anchors": [list(a) for a in YOLOV5_ANCHORS],
            "backbone": backbone, "head": _head(spd)}


@register("spd_yolov5n_ultralytics", input_shape=(1, 3, 640, 640), baseline="yolov5n", test_shape=(1, 3, 128, 128), paper={
    "params_m": 2.2, "source": "LabSAINT/SPD-Conv README table, YOLOv5-spd-n: Params (M) 2.2 (see spd_yolov5n)",
    "params_tol": 0.045, "why": "as for spd_yolov5n: the README truncates to 0.1 M; the same tensors as spd_yolov5n"})
def spd_yolov5n_ultralytics() -> Model:
    return Model(yolov5_config(spd=True))
