"""YOLOv5's Detect (v6.0, as in the SPD-Conv/PSConv/HetConv YOLO variants): the adapter recognises the official
class, the deploy form decodes bit for bit as it does, and one exported graph runs any batch (the official
in-place decode freezes the batch into ScatterND indices: see polyexport/layers/yolov5_detect.py)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from polyexport.convert import convert, is_known_layer
from polyexport.deploy_layers.yolov5_detect import DetectConcatDecode
from polyexport.layers.yolov5_detect import YOLOv5Detect
from polyexport.testing import check_on_runtimes, randomize_
from polyexport.zoo.yolo_model import Detect as OfficialDetect  # written from the official code
from polyexport.zoo.spdnets import YOLOV5_ANCHORS


def official(nc: int = 7, ch=(8, 16, 12), inplace: bool = True) -> OfficialDetect:
    d = OfficialDetect(nc, [list(a) for a in YOLOV5_ANCHORS], ch, inplace)
    d.stride = torch.tensor([8.0, 16.0, 32.0])
    d.anchors /= d.stride.view(-1, 1, 1)  # as the official Model does once the strides are known
    return randomize_(d, seed=3)


class Levels(nn.Module):
    """Detect takes a list: three tensors in, (decoded, [raw maps]) out, so it can be exported on its own."""

    def __init__(self, detect: nn.Module):
        super().__init__()
        self.detect = detect

    def forward(self, p3, p4, p5):
        return self.detect([p3, p4, p5])


def levels(batch: int, h: int, w: int, ch=(8, 16, 12)) -> list[torch.Tensor]:
    return [torch.randn(batch, c, h // s, w // s) for c, s in zip(ch, (8, 16, 32))]


@pytest.mark.parametrize("inplace", [True, False])
@pytest.mark.parametrize("batch,h,w", [(1, 64, 64), (3, 96, 160), (2, 256, 32)])
def test_deploy_form_is_bit_exact(inplace, batch, h, w):
    ref = official(inplace=inplace)
    assert is_known_layer(ref)
    deployed, records = convert(Levels(ref))
    assert [(r.type, r.form) for r in records] == [("Detect", "concat_decode")] and isinstance(deployed.detect, DetectConcatDecode)
    xs = levels(batch, h, w)
    with torch.no_grad():
        (za, xa), (zb, xb) = ref([x.clone() for x in xs]), deployed.detect(xs)
    assert torch.equal(za, zb) and all(torch.equal(a, b) for a, b in zip(xa, xb))


def test_reference_equals_the_official_class():
    off = official()
    ours = YOLOv5Detect(off.m, off.anchors, off.stride, off.nc, off.inplace)
    xs = levels(2, 64, 96)
    with torch.no_grad():
        (za, xa), (zb, xb) = off([x.clone() for x in xs]), ours(xs)
    assert torch.equal(za, zb) and all(torch.equal(a, b) for a, b in zip(xa, xb))


def test_one_graph_for_any_batch_on_the_runtimes():
    ref = Levels(official())
    deployed, _ = convert(ref)
    check_on_runtimes(ref, deployed, [(2, 8, 8, 12), (2, 16, 4, 6), (2, 12, 2, 3)], batches=(1, 5))


def test_v7_style_and_training_heads_are_not_matched():
    d = official()
    d.export = False  # v7.0's Detect: another rounding order and an output switch
    assert not is_known_layer(d)
