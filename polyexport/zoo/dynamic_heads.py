"""Instance-conditioned heads as standalone models: their inputs are the shared features and, per
instance, the generated parameters and the position, with a dynamic instance axis.

- `condinst_mask_head`: CondInst's mask head at AdelaiDet's defaults (8 mask-branch channels + 2
  relative coordinates, 3 layers of 8 channels, 169 parameters per instance, FCOS sizes of interest
  64–512, mask features at stride 8 upsampled ×2 to stride 4), on the stride-8 map of an 800×1088 input
  (a 4:3 COCO image resized to a short side of 800 and padded to a multiple of 32); one image.
- `dyco3d_mask_head`: DyCo3D's head as its code has it (16-channel point features + 3 relative
  coordinates, 2 layers of 16 channels, 337 parameters per instance); 50 000 points in the example,
  the point axis being dynamic too.
"""
from __future__ import annotations

from ..layers.condinst import CondInstMaskHead
from ..layers.dyco3d import DyCo3DMaskHead
from . import ZooInput, register

INSTANCES = {0: "instances"}
POINTS = {0: "points"}


@register("condinst_mask_head", output_axes=INSTANCES, inputs=(
    ZooInput("mask_feats", (1, 8, 100, 136), test_shape=(1, 8, 13, 18)),
    ZooInput("mask_head_params", (10, 169), axes=INSTANCES),
    ZooInput("locations", (10, 2), axes=INSTANCES),
    ZooInput("fpn_levels", (10,), "int64", high=5, axes=INSTANCES),
    ZooInput("im_inds", (10,), "int64", high=1, axes=INSTANCES),
))
def condinst_mask_head() -> CondInstMaskHead:
    return CondInstMaskHead(in_channels=8, channels=8, num_layers=3)


@register("dyco3d_mask_head", output_axes={0: "instances", 1: "points"}, inputs=(
    ZooInput("mask_features", (50000, 16), axes=POINTS, test_shape=(2000, 16)),
    ZooInput("params", (20, 337), axes=INSTANCES),
    ZooInput("centres", (20, 3), axes=INSTANCES),
    ZooInput("coords", (50000, 3), axes=POINTS, test_shape=(2000, 3)),
))
def dyco3d_mask_head() -> DyCo3DMaskHead:
    return DyCo3DMaskHead(in_channels=16, channels=16, num_layers=2)
