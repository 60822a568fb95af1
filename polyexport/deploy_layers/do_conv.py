"""Deploy form of DO-Conv (DOConv2d): the composed kernel DoW, computed once, in one nn.Conv2d.

The reference recomposes DoW = D∘W from its parameters at every forward: Einsum and Reshapes before the Conv in
the exported graph, a Conv weight that is constant only where the exporter's constant folding removes them, and no
nn.Conv2d for the converter to fold a following BN into. Composed once, in float64 and cast once to the weights'
dtype, it is an ordinary conv with the reference's stride, dilation, groups and bias:
  - "conv": that nn.Conv2d. Exact for every configuration the reference accepts, so no `exact_for`:
      - padding 'zeros' keeps the reference's numbers; a string padding is written out as numbers
        (`_padding.written_out`: ONNX Runtime refuses a dilated 'same' exported as auto_pad);
      - another padding mode keeps the official axis swap: the reference pads F.pad(x, (ph, ph, pw, pw)), i.e. width
        by ph and height by pw, which is nn.Conv2d's padding (pw, ph) with that padding_mode.
    FLOPs and parameters those of a plain conv of the same shape (the paper's point: DO-Conv costs nothing at
    inference). A following BN is folded by the converter (`conv_bn.fuse_conv_bn`), in any padding mode.
"""
from __future__ import annotations

import torch
from torch import nn

from ..convert import Form, register_layer
from ..layers.do_conv import DOConv2d, composed_kernel
from ._padding import written_out


def composed_weight(ref: DOConv2d) -> torch.Tensor:
    """DoW in float64 (the reference composes it in its own dtype at every forward)."""
    d = ref.D.detach().double() if ref.D is not None else None
    diag = ref.d_diag.detach().double() if ref.d_diag is not None else None
    return composed_kernel(ref.W.detach().double(), d, diag, ref.out_channels, ref.in_channels, ref.groups,
                           ref.kernel_size)


def build_conv(ref: DOConv2d) -> nn.Module:
    """One nn.Conv2d with DoW as its weight (new tensors: the reference's are only read)."""
    padding = ref.padding
    if ref.padding_mode != "zeros":
        padding = (ref.padding[1], ref.padding[0])  # the official F.pad pads width by padding[0], height by padding[1]
    like = ref.W
    conv = nn.Conv2d(ref.in_channels, ref.out_channels, ref.kernel_size, ref.stride, padding, ref.dilation,
                     ref.groups, bias=ref.bias is not None, padding_mode=ref.padding_mode,
                     device=like.device, dtype=like.dtype)
    with torch.no_grad():
        conv.weight.copy_(composed_weight(ref).to(like.dtype))
        if ref.bias is not None:
            conv.bias.copy_(ref.bias.detach())
    return written_out(conv.eval())


#: One form, so no order to choose; its speed against a plain conv of the same shape: `python benchmarks/layers.py
#: --only do_conv` (benchmarks/results/layers.md).
register_layer(
    DOConv2d,
    forms=[
        Form("conv", build_conv, dynamic_batch=True, constant_weights=True,
             note="one plain conv, its kernel composed once from D and W; a plain conv's FLOPs and parameters"),
    ],
    prefer={"*": ["conv"]},
)
