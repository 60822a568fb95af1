"""YOLOv5's Detect at YOLOv5n's three levels for a 640×640 image (P3 80×80×64, P4 40×40×128, P5 20×20×256, 80
classes): the official in-place decode vs the deploy form's concatenated one; the yardstick is the three
1×1 convs alone (no decode), so the ratios are what decoding costs on top of them."""
from __future__ import annotations

import torch
from torch import nn

from polyexport.convert import forms_of, to_deploy
from polyexport.layers.yolov5_detect import YOLOv5Detect
from polyexport.testing import randomize_
from polyexport.zoo.spdnets import YOLOV5_ANCHORS
from polyexport.zoo.yolo_model import Detect

from . import BenchCase

CHANNELS = (64, 128, 256)


class Levels(nn.Module):
    """Three feature maps in, what the head returns out (Detect takes a list)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, p3, p4, p5):
        return self.head([p3, p4, p5])


class ConvsOnly(nn.Module):
    def __init__(self, convs: nn.ModuleList):
        super().__init__()
        self.convs = convs

    def forward(self, p3, p4, p5):
        return tuple(c(x) for c, x in zip(self.convs, (p3, p4, p5)))


def cases() -> list[BenchCase]:
    official = Detect(80, [list(a) for a in YOLOV5_ANCHORS], CHANNELS)
    official.stride = torch.tensor([8.0, 16.0, 32.0])
    official.anchors /= official.stride.view(-1, 1, 1)
    official = randomize_(official, seed=0)
    notes = {name: form.note for name, form in forms_of(YOLOv5Detect).items()}
    return [BenchCase(layer="YOLOv5Detect", config="yolov5n P3-P5 @640", input_shape=[(1, c, 640 // s, 640 // s) for c, s in zip(CHANNELS, (8, 16, 32))],
                      reference=Levels(official).eval(), forms={f: Levels(to_deploy(official, f)).eval() for f in notes},
                      yardstick=ConvsOnly(official.m).eval(), notes=notes)]
