"""Deploy forms of timm's CondConv2d: the kernel-bank forms of `_kernel_bank`, keeping forward(x, routing_weights).

The routing is an input of CondConv2d (computed once per block by `CondConvResidual.routing_fn`), so
the block stays as it is and only its three convs are swapped; a BN after each folds into it (scale
into every expert, shift kept as a constant: sigmoid routing does not sum to 1). There is no "static"
form: with the routing an arbitrary input, no configuration makes the kernel constant.
"""
from __future__ import annotations

from torch import nn

from ..convert import register_layer
from ..layers.condconv import CondConv2d
from ._kernel_bank import KernelBank, bank_forms, build_form, preference


def kernel_bank(ref: CondConv2d) -> KernelBank:
    w = ref.weight.detach().reshape(ref.num_experts, *ref.weight_shape).clone()
    bias = ref.bias.detach().clone() if ref.bias is not None else w.new_zeros(ref.num_experts, ref.out_channels)
    return KernelBank(w, bias, w.new_zeros(ref.out_channels), tuple(ref.stride), tuple(ref.padding),
                      tuple(ref.dilation), ref.groups, same_pad=ref.dynamic_padding)


def _build(ref: CondConv2d, form: str) -> nn.Module:
    """m(x, routing_weights) == ref(x, routing_weights); form: a name of _kernel_bank's forms (bank_forms)."""
    return build_form(kernel_bank(ref), form).eval()


register_layer(CondConv2d, forms=bank_forms(_build), prefer=lambda ref, target: preference(ref, target, static=False))
