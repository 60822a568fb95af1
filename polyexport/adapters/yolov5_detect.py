"""Recognise YOLOv5 v6.0's `Detect` (ultralytics/yolov5 and the papers' YOLO copies) by structure.

Matched: a class named `Detect` in eval use with `m` a ModuleList of `nl` 1×1 Conv2d to na·(nc+5)
channels, an `anchors` buffer (nl, na, 2), a `stride` of nl values set (the Model sets it after building)
and v6.0's flag `onnx_dynamic`. Not matched: v7.0's Detect (`dynamic`/`export` flags: its decode rounds
in another order and `export` changes its outputs) and Ultralytics 8's anchor-free heads.
"""
from __future__ import annotations

import torch
from torch import nn

from ..convert import register_adapter
from ..layers.yolov5_detect import YOLOv5Detect


def matches(m: nn.Module) -> bool:
    if type(m).__name__ != "Detect" or isinstance(m, YOLOv5Detect) or hasattr(m, "export") or hasattr(m, "dynamic"):
        return False
    convs, anchors, stride = getattr(m, "m", None), getattr(m, "anchors", None), getattr(m, "stride", None)
    if not (isinstance(convs, nn.ModuleList) and isinstance(anchors, torch.Tensor) and isinstance(stride, torch.Tensor)
            and hasattr(m, "onnx_dynamic") and anchors.dim() == 3 and anchors.shape[-1] == 2):
        return False
    nl, na = anchors.shape[:2]
    no = getattr(m, "no", None)
    return (len(convs) == nl == stride.numel() and m.na == na and no == m.nc + 5 and not getattr(m, "onnx_dynamic")
            and all(isinstance(c, nn.Conv2d) and c.kernel_size == (1, 1) and c.out_channels == na * no for c in convs))


def to_reference(m: nn.Module) -> YOLOv5Detect:
    return YOLOv5Detect(m.m, m.anchors, m.stride, m.nc, bool(getattr(m, "inplace", True)))


register_adapter("yolov5/Detect", matches, to_reference)
