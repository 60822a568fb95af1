"""Deploy forms of SPD-Conv's `space_to_depth` (and of the `SPDConv` block: space_to_depth, conv, BN).

Exported as it is, the official slicing becomes four strided Slice ops and a Concat (sixteen for
block size 4). Two exact forms:

- "space_to_depth_op": one ONNX `SpaceToDepth` node. Its channel order (column phase fastest)
  differs from the official one (row phase fastest) by a fixed permutation of the channel blocks;
  when an nn.Conv2d alone consumes the output, the converter calls `fuse_next_conv` and the
  permutation goes into that conv's input channels. Alone, it stays an explicit Reshape/Transpose.
- "strided_conv": space_to_depth(b) followed by a k×k conv (stride s, padding p, groups 1,
  dilation 1) is one conv with kernel b·k, stride b·s, padding b·p on the original input: output
  pixel o reads rows b·(o·s − p + u) + r = b·s·o − b·p + (b·u + r), u < k, r < b. Same FLOPs, one op.
  Alone (no conv after it) it is computed as "space_to_depth_op" is; where the next conv has groups
  or dilation, the pair is fused as "space_to_depth_op" would fuse it.

Both are defined wherever the reference is (H and W multiples of the block size; the reference
raises otherwise, and so does SpaceToDepth). Block size 1 is the identity: nothing in the graph, and
the next conv absorbs it as it is. Only a conv that computes nn.Conv2d's own forward is absorbed: a
subclass with its own forward (timm's Conv2dSame pads from the input size) is declined, and the SPD
layer stays before it. A 'same' padding of the absorbing conv is written out as numbers (_padding.py).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..convert import Form, register_layer
from ..layers.spd_conv import SPDConv, block_order, space_to_depth
from ._padding import plain_conv, split_padding, written_out
from .conv_bn import fuse_conv_bn


class _OnnxSpaceToDepth(torch.autograd.Function):
    """ONNX SpaceToDepth (DCR order: channel (r·b + c)·C + ch); exported as that single node."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: int) -> torch.Tensor:  # noqa: ARG004
        n, ch, h, w = x.shape
        y = x.reshape(n, ch, h // scale, scale, w // scale, scale).permute(0, 3, 5, 1, 2, 4)
        return y.reshape(n, ch * scale * scale, h // scale, w // scale)

    @staticmethod
    def symbolic(g, x, scale: int):
        return g.op("SpaceToDepth", x, blocksize_i=scale)


def onnx_space_to_depth(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Space-to-depth in ONNX's order, exported (TorchScript exporter) as one SpaceToDepth node."""
    return _OnnxSpaceToDepth.apply(x, scale)


def _onnx_to_ref_channels(channels: int, scale: int, order: str) -> torch.Tensor:
    """src[j] = the reference's channel index of ONNX SpaceToDepth's channel j (channels = C·s²)."""
    c = channels // (scale * scale)
    ref_block = {rc: k for k, rc in enumerate(block_order(scale, order))}
    blocks = [ref_block[rc] for rc in block_order(scale, "onnx")]
    return torch.tensor([b * c + i for b in blocks for i in range(c)])


def _permuted_input_conv(conv: nn.Conv2d, scale: int, order: str) -> tuple[nn.Conv2d, tuple[int, int, int, int] | None] | None:
    """A copy of `conv` that reads ONNX-ordered channels, and the zeros to pad its input with first;
    None if the permutation crosses its groups."""
    if conv.in_channels % (scale * scale):
        return None
    src = _onnx_to_ref_channels(conv.in_channels, scale, order)
    gi, go = conv.in_channels // conv.groups, conv.out_channels // conv.groups
    if not torch.equal(src // gi, torch.arange(conv.in_channels) // gi):
        return None
    padding, pad = split_padding(conv)
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding,
                    conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        w = conv.weight.detach()
        for g in range(conv.groups):
            local = src[g * gi:(g + 1) * gi] - g * gi
            new.weight[g * go:(g + 1) * go] = w[g * go:(g + 1) * go][:, local]
        if conv.bias is not None:
            new.bias.copy_(conv.bias.detach())
    return new, pad


def _strided_conv(conv: nn.Conv2d, scale: int, order: str) -> nn.Conv2d | None:
    """The single conv equal to conv(space_to_depth(x)); None where no single dense conv is."""
    padding, pad = split_padding(conv)
    if (conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros"
            or pad is not None or conv.in_channels % (scale * scale)):
        return None
    c = conv.in_channels // (scale * scale)
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, padding
    new = nn.Conv2d(c, conv.out_channels, (scale * kh, scale * kw), (scale * sh, scale * sw),
                    (scale * ph, scale * pw), bias=conv.bias is not None)
    with torch.no_grad():
        w = conv.weight.detach()
        for k, (r, col) in enumerate(block_order(scale, order)):
            new.weight[:, :, r::scale, col::scale] = w[:, k * c:(k + 1) * c]
        if conv.bias is not None:
            new.bias.copy_(conv.bias.detach())
    return new


class SpaceToDepthConv(nn.Module):
    """ONNX SpaceToDepth, zero padding where the conv's own is asymmetric ('same'), then a conv whose
    input channels were permuted to ONNX's order."""

    def __init__(self, scale: int, conv: nn.Conv2d, pad: tuple[int, int, int, int] | None = None):
        super().__init__()
        self.scale = scale
        self.conv = conv
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = onnx_space_to_depth(x, self.scale)
        return self.conv(y if self.pad is None else F.pad(y, self.pad))

    def fuse_bn(self, bn: nn.BatchNorm2d) -> nn.Module:
        return SpaceToDepthConv(self.scale, fuse_conv_bn(self.conv, bn), self.pad)


class SpaceToDepthDeploy(nn.Module):
    """space_to_depth as one SpaceToDepth node plus the reference's block order, until a conv absorbs it.

    `form` decides what `fuse_next_conv` builds: SpaceToDepth + permuted conv, or one strided conv.
    """

    def __init__(self, scale: int, order: str, form: str):
        super().__init__()
        if form not in _NOTES:
            raise ValueError(f"form must be one of {tuple(_NOTES)}, got {form!r}")
        self.scale, self.order, self.form = scale, order, form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale
        if s == 1:  # one block: the identity (and SpaceToDepth with blocksize 1 does not export)
            return x
        y = onnx_space_to_depth(x, s)
        if self.order == "onnx":
            return y
        # ONNX blocks are (row, col) with col fastest; the reference's are (col, row): swap the two.
        return y.unflatten(1, (s, s, -1)).transpose(1, 2).flatten(1, 3)

    def fuse_next_conv(self, conv: nn.Conv2d) -> nn.Module | None:
        """One module equal to conv(self(x)), or None to leave the pair as it is."""
        if self.scale == 1:  # the identity: the conv as it is, whatever its forward (a 'same' padding written out)
            return written_out(copy.deepcopy(conv))
        if not plain_conv(conv):
            return None
        if self.form == "strided_conv":
            single = _strided_conv(conv, self.scale, self.order)
            if single is not None:
                return single
        permuted = _permuted_input_conv(conv, self.scale, self.order)
        return None if permuted is None else SpaceToDepthConv(self.scale, *permuted)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, order={self.order!r}, form={self.form!r}"


def _fuse_bn(module: nn.Module, bn: nn.BatchNorm2d) -> nn.Module:
    return module.fuse_bn(bn) if hasattr(module, "fuse_bn") else fuse_conv_bn(module, bn)


def _build(ref: space_to_depth | SPDConv, form: str) -> nn.Module:
    """Form `form` of a trained `space_to_depth` or `SPDConv` (SPDConv's BN folded)."""
    if isinstance(ref, SPDConv):
        spd = SpaceToDepthDeploy(ref.spd.scale, ref.spd.order, form)
        return _fuse_bn(spd.fuse_next_conv(ref.conv), ref.bn)  # SPDConv's own conv: groups 1, never declined
    return SpaceToDepthDeploy(ref.scale, ref.order, form)


#: the forms of both layers (registered below, in this order) and their notes
_NOTES = {
    "space_to_depth_op": "one SpaceToDepth node; the block reordering folds into the next conv (else Reshape/Transpose)",
    "strided_conv": "with the next conv (groups 1, dilation 1): one conv, kernel b·k, stride b·s; alone as space_to_depth_op",
}


def _forms() -> list[Form]:
    return [Form(name, (lambda ref, n=name: _build(ref, n)), note=note) for name, note in _NOTES.items()]


# Measured (benchmarks/layer_cases/spd_conv.py, 2 shared cores, batch 1, indicative): the conv dominates;
# ONNX Runtime is a little faster with SpaceToDepth + conv (the 6×6 stride-2 conv is 25% slower at
# 14×14×256), OpenVINO a little faster with the single conv. TensorRT not measured: one plain conv first.
_PREFER = {
    "*": ["space_to_depth_op", "strided_conv"],
    "onnxruntime": ["space_to_depth_op", "strided_conv"],
    "openvino": ["strided_conv", "space_to_depth_op"],
    "tensorrt": ["strided_conv", "space_to_depth_op"],
}
register_layer(space_to_depth, _forms(), prefer=_PREFER)
register_layer(SPDConv, _forms(), prefer=_PREFER)
