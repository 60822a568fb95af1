"""Recognise space-to-depth layers of other codebases and rebuild them as our `space_to_depth`.

- LabSAINT/SPD-Conv `space_to_depth(dimension)`: official slicing (scale 2, row phase fastest).
- timm `SpaceToDepth(block_size=4)` (TResNet stem) and older timm `SpaceToDepthModule`, whose `op` is
  `SpaceToDepth` or the scripted `SpaceToDepthJit` (block size 4 hard-coded): view/permute/view in
  ONNX SpaceToDepth's order (column phase fastest).

All are parameter-free, so the structure check is the class name, the attribute carrying the block
size, and the absence of parameters and buffers (a same-named layer with weights is something else).
"""
from __future__ import annotations

from torch import nn

from ..convert import register_adapter
from ..layers.spd_conv import space_to_depth


def _weightless(m: nn.Module, name: str) -> bool:
    return type(m).__name__ == name and not any(True for _ in m.parameters()) and not any(True for _ in m.buffers())


def _is_official(m: nn.Module) -> bool:
    return _weightless(m, "space_to_depth") and not isinstance(m, space_to_depth) and isinstance(getattr(m, "d", None), int)


def _is_timm(m: nn.Module) -> bool:
    return _weightless(m, "SpaceToDepth") and isinstance(getattr(m, "bs", None), int)


def _timm_module_block(m: nn.Module) -> int | None:
    """Block size of an old-timm SpaceToDepthModule, or None if `m` is not one."""
    if not _weightless(m, "SpaceToDepthModule"):
        return None
    op = getattr(m, "op", None)
    if type(op).__name__ == "SpaceToDepthJit":
        return 4
    return op.bs if isinstance(op, nn.Module) and _is_timm(op) else None


register_adapter("spd-conv/space_to_depth", _is_official, lambda m: space_to_depth(dimension=m.d))
register_adapter("timm/SpaceToDepth", _is_timm, lambda m: space_to_depth(scale=m.bs, order="onnx"))
register_adapter("timm/SpaceToDepthModule", lambda m: _timm_module_block(m) is not None,
                 lambda m: space_to_depth(scale=_timm_module_block(m), order="onnx"))
