"""Deploy forms of Dynamic_conv2d (DY-Conv): the kernel-bank forms of `_kernel_bank`, plus "static".

The attention branch becomes `SoftmaxRouter` (GlobalAveragePool → Gemm → Relu → Gemm → [Div(T)] → Softmax);
the temperature stays a plain attribute. "static" is a plain nn.Conv2d, exact only when the attention
cannot depend on the input (K = 1, or fc1 or fc2 weights all zero).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..convert import Form, register_layer
from ..layers.dynamic_conv import Dynamic_conv2d
from ._kernel_bank import KernelBank, Routed, bank_forms, build_form, preference

_pair = nn.modules.utils._pair


class SoftmaxRouter(nn.Module):
    """attention2d with the 1×1 convs as Linear layers: softmax(fc2(relu(fc1(mean(x)))) / T) over K."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        w1, w2 = attention.fc1.weight.detach(), attention.fc2.weight.detach()
        # a zero bias (exact: x·W + 0): exported as Gemm, which ONNX Runtime fuses with the Relu (one node, not two)
        self.fc1 = nn.Linear(w1.shape[1], w1.shape[0], bias=True)
        nn.init.zeros_(self.fc1.bias)
        self.fc2 = nn.Linear(w2.shape[1], w2.shape[0], bias=attention.fc2.bias is not None)
        self.fc1.weight.data.copy_(w1.flatten(1))
        self.fc2.weight.data.copy_(w2.flatten(1))
        if attention.fc2.bias is not None:
            self.fc2.bias.data.copy_(attention.fc2.bias.detach())
        self.temperature = attention.temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GlobalAveragePool, not ReduceMean: ONNX Runtime runs it in its blocked (NCHWc) layout, so reading the
        # attention's input costs no layout reorder of the feature map
        z = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1).flatten(1))))
        return F.softmax(z if self.temperature == 1 else z / self.temperature, 1)


def kernel_bank(ref: Dynamic_conv2d) -> KernelBank:
    w = ref.weight.detach().clone()
    bias = ref.bias.detach().clone() if ref.bias is not None else w.new_zeros(ref.K, ref.out_planes)
    return KernelBank(w, bias, w.new_zeros(ref.out_planes), _pair(ref.stride), _pair(ref.padding),
                      _pair(ref.dilation), ref.groups)


def _constant_attention(ref: Dynamic_conv2d) -> torch.Tensor | None:
    """The (1, K) attention when it provably ignores the input, else None."""
    att = ref.attention
    if ref.K != 1 and bool(att.fc1.weight.any()) and bool(att.fc2.weight.any()):
        return None
    z = att.fc2.bias.detach().view(1, -1) if att.fc2.bias is not None else ref.weight.new_zeros(1, ref.K)
    return F.softmax(z / att.temperature, 1)


def _geometry_ok(ref: Dynamic_conv2d) -> str | None:
    if isinstance(ref.padding, str):
        return f"padding='{ref.padding}' (a string) is not supported by the deploy forms"
    return None


def _static_exact(ref: Dynamic_conv2d) -> str | None:
    if _constant_attention(ref) is None:
        return "the attention depends on the input (K > 1 and fc1, fc2 weights not all zero)"
    return _geometry_ok(ref)


def _static(ref: Dynamic_conv2d) -> nn.Conv2d:
    """The single kernel Σ_k π_k W_k with the input-independent π, as one nn.Conv2d."""
    pi = _constant_attention(ref)
    conv = nn.Conv2d(ref.in_planes, ref.out_planes, ref.kernel_size, ref.stride, ref.padding, ref.dilation,
                     ref.groups, bias=ref.bias is not None)
    conv.weight.data.copy_(torch.mm(pi, ref.weight.detach().view(ref.K, -1)).view_as(conv.weight))
    if ref.bias is not None:
        conv.bias.data.copy_(torch.mm(pi, ref.bias.detach()).view(-1))
    return conv.eval()


def _build(ref: Dynamic_conv2d, form: str) -> nn.Module:
    """A kernel-bank form (a name of _kernel_bank's forms, bank_forms) with the attention as its router;
    exact where `_geometry_ok` is (registered as its exact_for, which convert.to_deploy checks first)."""
    return Routed(SoftmaxRouter(ref.attention), build_form(kernel_bank(ref), form)).eval()


register_layer(
    Dynamic_conv2d,
    forms=[Form("static", _static, dynamic_batch=True, constant_weights=True,
                exact_for=_static_exact, note="plain conv; only where the attention is input-independent"),
           *bank_forms(_build, _geometry_ok)],
    prefer=lambda ref, target: preference(ref, target, static=True),
)
