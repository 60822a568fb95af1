"""Deploy forms of timm's CondConv2d: the kernel-bank forms of `_kernel_bank`, keeping forward(x, routing_weights).

The routing is an input of CondConv2d (computed once per block by `CondConvResidual.routing_fn`), so
the block stays as it is and only its three convs are swapped; a BN after each folds into it (scale
into every expert, shift kept as a constant: sigmoid routing does not sum to 1). There is no "static"
form: with the routing an arbitrary input, no configuration makes the kernel constant.
"""
from __future__ import annotations

from torch import nn

from ..convert import Form, register_layer
from ..layers.condconv import CondConv2d
from ._kernel_bank import FORMS, KernelBank, preference


def kernel_bank(ref: CondConv2d) -> KernelBank:
    w = ref.weight.detach().reshape(ref.num_experts, *ref.weight_shape).clone()
    bias = ref.bias.detach().clone() if ref.bias is not None else w.new_zeros(ref.num_experts, ref.out_channels)
    return KernelBank(w, bias, w.new_zeros(ref.out_channels), tuple(ref.stride), tuple(ref.padding),
                      tuple(ref.dilation), ref.groups, same_pad=ref.dynamic_padding)


def to_deploy(ref: CondConv2d, form: str = "bank_batched") -> nn.Module:
    """m(x, routing_weights) == ref(x, routing_weights); form: "bank_grouped", "bank_batched", "output_aggregation"."""
    return FORMS[form](kernel_bank(ref)).eval()


register_layer(
    CondConv2d,
    forms=[
        Form("bank_grouped", lambda r: to_deploy(r, "bank_grouped"), dynamic_batch=False, constant_weights=False,
             note="per-sample kernels, batch folded into groups; conv FLOPs"),
        Form("bank_batched", lambda r: to_deploy(r, "bank_batched"), dynamic_batch=True, constant_weights=True,
             note="im2col by a constant conv + batched MatMul; conv FLOPs"),
        Form("sample_conv", lambda r: to_deploy(r, "sample_conv"), dynamic_batch=True, constant_weights=False,
             note="per-sample kernels; If batch 1: one Conv with them, else a Loop of that Conv over the samples"),
        Form("sample_loop", lambda r: to_deploy(r, "sample_loop"), dynamic_batch=True, constant_weights=False,
             note="per-sample kernels; a Loop of one Conv over the samples"),
        Form("output_aggregation", lambda r: to_deploy(r, "output_aggregation"), dynamic_batch=True,
             constant_weights=True, note="one conv with K·out outputs mixed by MatMul; K× FLOPs"),
    ],
    prefer=lambda ref, target: preference(ref, target, static=False),
)
