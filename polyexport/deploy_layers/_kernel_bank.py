"""Deploy forms shared by the input-dependent-kernel layers (Dynamic_conv2d, CondConv2d).

Both compute  y = Σ_k a_k(x) · (W_k ∗ x + b_k)  with per-sample mixing weights a (B, K). Exported as
written they fold the batch into a Conv's `group` attribute (static batch) and give the Conv a
computed weight (TensorRT's parser refuses it). Each form below takes (x, a) and computes the same y:

- GroupedBank  ("bank_grouped"): per-sample kernels by one MatMul, batch folded into groups.
  Static batch, computed conv weights; the conv's FLOPs.
- BatchedBank  ("bank_batched"): patches by a constant identity-kernel conv (im2col), then a batched
  MatMul with the per-sample kernels. Any batch, every Conv weight constant; the conv's FLOPs (plus
  the patch copy).
- OutputAggregation ("output_aggregation"): one static conv with K·out outputs, mixed by a batched
  MatMul with a. Any batch, constant weights, K× the conv's FLOPs.

A following BatchNorm (y ↦ s·y + t) folds exactly whatever a is: s scales every W_k and b_k, and t is
kept as a separate constant `shift` added after the mixing (a sigmoid routing does not sum to 1, so t
cannot go into the b_k). No file here registers anything.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.condconv import pad_same
from .conv_bn import bn_scale_shift


def _int_const(g, value) -> "torch._C.Value":
    return g.op("Constant", value_t=torch.tensor(value, dtype=torch.int64))


class _PerSampleConv(torch.autograd.Function):
    """Each sample convolved with its own kernel  coeffs[b] @ flat  and bias  coeffs[b] @ bias_flat + shift.

    Eager: the batch folded into the conv's groups (as the papers' code). Exported (TorchScript exporter) as
    one dynamic-batch graph with no batch in any attribute: `If(batch == 1)` → the kernel by one MatMul and a
    plain Conv with it (groups = the layer's own), else the B kernels by one MatMul and a `Loop` running that
    Conv on each sample (its scan output stacked back into the batch); `switch=False`: the Loop only. The
    aggregation MatMuls sit inside the branches: with them outside (a large run-time tensor read only by the
    subgraphs), OpenVINO 2026.4's CPU plugin returned garbage for two such layers in a row with a Relu
    between them (tests/test_layer_dynamic_conv.py keeps that case).
    """

    @staticmethod
    def forward(ctx, x, coeffs, flat, bias_flat, shift, kernel_shape, stride, padding, dilation, groups, switch):  # noqa: ARG004
        b, c, h, w = x.shape
        kernels = torch.matmul(coeffs, flat).reshape(-1, *kernel_shape[1:])
        bias = torch.addmm(shift, coeffs, bias_flat).reshape(-1)
        out = F.conv2d(x.reshape(1, b * c, h, w), kernels, bias, stride, padding, dilation, groups * b)
        # a copy, not a view: the caller may modify it in place (ReLU(inplace=True)), which autograd forbids on a view
        return out.reshape(b, -1, out.shape[-2], out.shape[-1]).clone()

    @staticmethod
    def symbolic(g, x, coeffs, flat, bias_flat, shift, kernel_shape, stride, padding, dilation, groups, switch):
        from torch.onnx._internal.torchscript_exporter import jit_utils
        from torch.onnx._internal.torchscript_exporter import utils as ts_utils

        attrs = dict(kernel_shape_i=list(kernel_shape[2:]), strides_i=list(stride), pads_i=list(padding) * 2,
                     dilations_i=list(dilation), group_i=groups)

        def kernels(ctx):
            return ctx.op("MatMul", coeffs, flat), ctx.op("Gemm", coeffs, bias_flat, shift)

        def conv(ctx, xs, ws, bs):
            return ctx.op("Conv", xs, ctx.op("Reshape", ws, _int_const(ctx, list(kernel_shape))),
                          ctx.op("Reshape", bs, _int_const(ctx, kernel_shape[:1])), **attrs)

        batch = g.op("Gather", g.op("Shape", x), _int_const(g, 0), axis_i=0)

        def loop(ctx):
            weight, bias = kernels(ctx)
            keep_going = ctx.op("Cast", _int_const(ctx, 1), to_i=9)  # BOOL
            stacked, (body,), _ = jit_utils.add_op_with_blocks(ctx, "Loop", batch, keep_going, n_blocks=1, outputs=1)
            i = ts_utils._add_input_to_block(body.block)
            ts_utils._add_input_to_block(body.block)  # the loop condition, unused
            at = body.op("Unsqueeze", i, _int_const(body, [0]))
            one = conv(body, body.op("Gather", x, at, axis_i=0), body.op("Gather", weight, at, axis_i=0),
                       body.op("Gather", bias, at, axis_i=0))
            ts_utils._add_output_to_block(body.block, body.op("Cast", _int_const(body, 1), to_i=9))
            ts_utils._add_output_to_block(body.block, one)  # scan output: (batch, 1, out, h, w)
            return ctx.op("Squeeze", stacked, _int_const(ctx, [1]))

        if not switch:
            return loop(g)
        out, (single, several), _ = jit_utils.add_op_with_blocks(g, "If", g.op("Equal", batch, _int_const(g, 1)),
                                                                 n_blocks=2, outputs=1)
        ts_utils._add_output_to_block(single.block, conv(single, x, *kernels(single)))
        ts_utils._add_output_to_block(several.block, loop(several))
        return out


def per_sample_conv(x: torch.Tensor, coeffs: torch.Tensor, flat: torch.Tensor, bias_flat: torch.Tensor,
                    shift: torch.Tensor, kernel_shape: tuple[int, int, int, int], stride: tuple[int, int],
                    padding: tuple[int, int], dilation: tuple[int, int], groups: int, switch: bool = True) -> torch.Tensor:
    """y[b] = conv(x[b], (coeffs[b] @ flat).view(kernel_shape)) + coeffs[b] @ bias_flat + shift.

    coeffs (B, K), flat (K, out·in/groups·kh·kw), bias_flat (K, out), shift (1, out). Symmetric padding only
    (pad asymmetric cases before calling). See `_PerSampleConv` for the export. Every size is a plain int
    known when the module is built (sizes read while tracing would be traced values).
    """
    return _PerSampleConv.apply(x, coeffs, flat, bias_flat, shift, tuple(int(v) for v in kernel_shape), tuple(stride),
                                tuple(padding), tuple(dilation), groups, switch)


@dataclass(frozen=True)
class KernelBank:
    """The trained experts and conv geometry, independent of the layer that held them."""

    weight: torch.Tensor  # (K, out, in/groups, kh, kw)
    bias: torch.Tensor  # (K, out): zeros where the layer has no bias
    shift: torch.Tensor  # (out,): added after the mixing (a folded BN's shift)
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    same_pad: bool = False  # timm's dynamic 'same' padding, computed from the input size

    @property
    def experts(self) -> int:
        return self.weight.shape[0]

    @property
    def out_channels(self) -> int:
        return self.weight.shape[1]

    def fused(self, bn: nn.BatchNorm2d) -> "KernelBank":
        """The bank of bn(layer(x)): scale every expert's weight and bias, shift the constant term."""
        if bn.running_mean is None:
            raise ValueError("BatchNorm without running statistics cannot be folded")
        with torch.no_grad():
            s, t = bn_scale_shift(bn)
        dt = self.weight.dtype
        return replace(
            self,
            weight=(self.weight.double() * s.view(1, -1, 1, 1, 1)).to(dt),
            bias=(self.bias.double() * s).to(dt),
            shift=(self.shift.double() * s + t).to(dt),
        )

    def conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int) -> torch.Tensor:
        if self.same_pad:
            x = pad_same(x, self.weight.shape[-2:], self.stride, self.dilation)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)


class _BankForm(nn.Module):
    """A deploy form of a kernel bank: forward(x, a) with a the (B, K) mixing weights."""

    def __init__(self, bank: KernelBank):
        super().__init__()
        self.bank = bank  # plain attribute: rebuilt forms read it, the export never sees it
        self.register_buffer("shift", bank.shift.view(1, -1, 1, 1).clone())

    def fuse_bn(self, bn: nn.BatchNorm2d) -> "_BankForm":
        """The same form, equal to bn(self(x, a)) for any a."""
        return type(self)(self.bank.fused(bn))

    def mixed_bias(self, a: torch.Tensor) -> torch.Tensor:
        """(B, out, 1, 1): Σ_k a_k b_k + shift (for the forms that mix kernels, not outputs)."""
        return torch.matmul(a, self.bank_bias).unsqueeze(-1).unsqueeze(-1) + self.shift


class GroupedBank(_BankForm):
    """Per-sample kernels, batch folded into the conv's groups (as the papers' code): static batch."""

    def __init__(self, bank: KernelBank):
        super().__init__(bank)
        self.register_buffer("flat", bank.weight.reshape(bank.experts, -1).clone())
        self.register_buffer("bank_bias", bank.bias.clone())

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        kshape = self.bank.weight.shape[2:]
        weight = torch.matmul(a, self.flat).reshape(-1, *kshape)
        out = self.bank.conv(x.reshape(1, b * c, h, w), weight, None, self.bank.groups * b)
        return out.reshape(b, self.bank.out_channels, out.shape[-2], out.shape[-1]) + self.mixed_bias(a)


class BatchedBank(_BankForm):
    """im2col by a constant conv, then (B, g, out/g, in/g·k²) @ (B, g, in/g·k², L): any batch, constant conv weights."""

    def __init__(self, bank: KernelBank):
        super().__init__(bank)
        k_count, out, cin_g, kh, kw = bank.weight.shape
        g = bank.groups
        self.pointwise = (kh, kw) == (1, 1) and bank.padding == (0, 0) and not bank.same_pad
        # identity kernels: patch channel c·kh·kw + (i·kw + j) holds input channel c at offset (i, j)
        eye = torch.eye(kh * kw, dtype=bank.weight.dtype).reshape(kh * kw, 1, kh, kw)
        self.register_buffer("patch_kernel", eye.repeat(cin_g * g, 1, 1, 1))
        w = bank.weight.reshape(k_count, g, out // g, cin_g * kh * kw)
        self.register_buffer("flat", w.reshape(k_count, -1).clone())
        self.register_buffer("bank_bias", bank.bias.clone())
        self.inner = (g, out // g, cin_g * kh * kw)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        if self.pointwise:
            patches = x[:, :, :: self.bank.stride[0], :: self.bank.stride[1]]
        else:
            patches = self.bank.conv(x, self.patch_kernel, None, x.shape[1])
        h, w = patches.shape[-2:]
        g, out_g, depth = self.inner
        kernels = torch.matmul(a, self.flat).reshape(-1, g, out_g, depth)
        out = torch.matmul(kernels, patches.reshape(-1, g, depth, h * w))
        return out.reshape(-1, g * out_g, h, w) + self.mixed_bias(a)


class SampleConv(_BankForm):
    """Per-sample kernels by one MatMul, each sample convolved with its own (If batch == 1: one Conv; else a Loop)."""

    switch = True

    def __init__(self, bank: KernelBank):
        super().__init__(bank)
        self.register_buffer("flat", bank.weight.reshape(bank.experts, -1).clone())
        self.register_buffer("bank_bias", bank.bias.clone())
        self.kernel_shape = tuple(int(k) for k in bank.weight.shape[1:])  # plain ints: sizes read while tracing are traced

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        bank = self.bank
        if bank.same_pad:
            x = pad_same(x, self.kernel_shape[2:], bank.stride, bank.dilation)
        return per_sample_conv(x, a, self.flat, self.bank_bias, self.shift.reshape(1, -1), self.kernel_shape,
                               bank.stride, bank.padding, bank.dilation, bank.groups, self.switch)


class SampleLoop(SampleConv):
    """SampleConv without the batch-1 branch: always the Loop over samples."""

    switch = False


class OutputAggregation(_BankForm):
    """One static conv computing every expert's output, mixed by a batched MatMul: K× FLOPs, any batch."""

    def __init__(self, bank: KernelBank):
        super().__init__(bank)
        k_count, out, cin_g, kh, kw = bank.weight.shape
        g = bank.groups
        # a grouped conv's outputs come in g contiguous blocks, one per input group: order them (g, K, out/g)
        w = bank.weight.reshape(k_count, g, out // g, cin_g, kh, kw).transpose(0, 1).reshape(-1, cin_g, kh, kw)
        b = bank.bias.reshape(k_count, g, out // g).transpose(0, 1).reshape(-1)
        self.register_buffer("weight", w.clone())
        self.register_buffer("bias", b.clone())
        self.inner = (g, k_count, out // g)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        y = self.bank.conv(x, self.weight, self.bias, self.bank.groups)
        h, w = y.shape[-2:]
        g, k_count, out_g = self.inner
        mixed = torch.matmul(a.reshape(-1, 1, 1, k_count), y.reshape(-1, g, k_count, out_g * h * w))
        return mixed.reshape(-1, g * out_g, h, w) + self.shift


class Routed(nn.Module):
    """forward(x) = form(x, router(x)): a bank form with its own attention branch (Dynamic_conv2d)."""

    def __init__(self, router: nn.Module, form: _BankForm):
        super().__init__()
        self.router = router
        self.form = form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.form(x, self.router(x))

    def fuse_bn(self, bn: nn.BatchNorm2d) -> "Routed":
        return Routed(self.router, self.form.fuse_bn(bn))


FORMS: dict[str, type[_BankForm]] = {
    "bank_grouped": GroupedBank,
    "bank_batched": BatchedBank,
    "output_aggregation": OutputAggregation,
    "sample_conv": SampleConv,
    "sample_loop": SampleLoop,
}


def preference(ref: nn.Module | None, target: str | None, static: bool = False) -> list[str]:
    """Form order for a kernel-bank layer, by measurement (benchmarks/layers.py, batch 1, 1 thread).

    bank_grouped (conv FLOPs) is fastest at batch 1 but bakes the batch in; among the dynamic-batch
    forms, bank_batched (im2col + batched MatMul) wins for dense and 1×1 convs, while for depthwise
    convs output_aggregation beat it 1.2–10× (c96@56 k3, c144@28 k5, c480@14 k3; OpenVINO worst):
    a batched MatMul with one input channel per group does almost no work per call. TensorRT never
    gets bank_grouped (computed conv weights) unless forced.
    """
    in_ch = getattr(ref, "in_channels", getattr(ref, "in_planes", 0))
    depthwise = ref is not None and ref.groups > 1 and ref.groups == in_ch
    dynamic = ["output_aggregation", "bank_batched"] if depthwise else ["bank_batched", "output_aggregation"]
    order = ([] if target == "tensorrt" else ["bank_grouped"]) + dynamic
    return (["static"] if static else []) + order
