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
- ExpertConvs ("expert_convs"): K static convs of the layer's own shape (a depthwise layer stays
  depthwise), mixed by Mul/Add with a. Any batch, constant weights, K× the conv's FLOPs.
- SampleConv ("sample_conv"): per-sample kernels by one MatMul, then If(batch == 1) one Conv with
  them, else a Loop of that Conv over the samples. Any batch from one graph, computed conv weights; the
  conv's FLOPs. SampleLoop ("sample_loop"): the Loop alone.

A following BatchNorm (y ↦ s·y + t) folds exactly whatever a is: s scales every W_k and b_k, and t is
kept as a separate constant `shift` added after the mixing (a sigmoid routing does not sum to 1, so t
cannot go into the b_k). No file here registers anything: condconv.py and dynamic_conv.py register
`bank_forms(...)` with `preference`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..convert import Form
from ..layers.condconv import pad_same
from .conv_bn import bn_scale_shift


def _int_const(g, value) -> "torch._C.Value":
    return g.op("Constant", value_t=torch.tensor(value, dtype=torch.int64))


class _PerSampleConv(torch.autograd.Function):
    """Each sample convolved with its own kernel  coeffs[b] @ flat, plus the bias  coeffs[b] @ bias_flat + shift.

    Eager: the batch folded into the conv's groups (as the papers' code). Exported (TorchScript exporter) as
    one dynamic-batch graph with no batch in any attribute: `If(batch == 1)` → the kernel by one MatMul and a
    plain Conv with it (groups = the layer's own), else the B kernels by one MatMul and a `Loop` running that
    Conv on each sample (its scan output stacked back into the batch). Two details keep OpenVINO 2026.4 right:
    the kernel MatMuls sit inside the branches (with one outside, a large run-time tensor read only by the
    subgraphs, its CPU plugin returned garbage for two such layers in a row with a Relu between them), and
    the batch-1 branch takes the first row of coeffs, so its static-shaped Reshape passes shape inference at
    any batch (a model reshaped to batch 8 visits both branches).
    """

    @staticmethod
    def forward(ctx, x, coeffs, flat, bias_flat, shift, kernel_shape, stride, padding, dilation, groups):  # noqa: ARG004
        b, c, h, w = x.shape
        kernels = torch.matmul(coeffs, flat).reshape(-1, *kernel_shape[1:])
        bias = None
        if bias_flat is not None:
            bias = (torch.matmul(coeffs, bias_flat) if shift is None else torch.addmm(shift, coeffs, bias_flat)).reshape(-1)
        out = F.conv2d(x.reshape(1, b * c, h, w), kernels, bias, stride, padding, dilation, groups * b)
        # a copy, not a view: the caller may modify it in place (ReLU(inplace=True)), which autograd forbids on a view
        return out.reshape(b, -1, out.shape[-2], out.shape[-1]).clone()

    @staticmethod
    def symbolic(g, x, coeffs, flat, bias_flat, shift, kernel_shape, stride, padding, dilation, groups):
        from torch.onnx._internal.torchscript_exporter import jit_utils
        from torch.onnx._internal.torchscript_exporter import symbolic_helper as sh
        from torch.onnx._internal.torchscript_exporter import utils as ts_utils

        has_bias = bias_flat is not None and not sh._is_none(bias_flat)
        has_shift = shift is not None and not sh._is_none(shift)
        attrs = dict(kernel_shape_i=list(kernel_shape[2:]), strides_i=list(stride), pads_i=list(padding) * 2,
                     dilations_i=list(dilation), group_i=groups)

        def kernels(ctx, rows):
            if not has_bias:
                return ctx.op("MatMul", rows, flat), None
            bias = ctx.op("Gemm", rows, bias_flat, shift) if has_shift else ctx.op("MatMul", rows, bias_flat)
            return ctx.op("MatMul", rows, flat), bias

        def conv(ctx, xs, ws, bs):
            args = [xs, ctx.op("Reshape", ws, _int_const(ctx, list(kernel_shape)))]
            if bs is not None:
                args.append(ctx.op("Reshape", bs, _int_const(ctx, kernel_shape[:1])))
            return ctx.op("Conv", *args, **attrs)

        batch = g.op("Gather", g.op("Shape", x), _int_const(g, 0), axis_i=0)
        out, (single, several), _ = jit_utils.add_op_with_blocks(g, "If", g.op("Equal", batch, _int_const(g, 1)),
                                                                 n_blocks=2, outputs=1)
        first = single.op("Slice", coeffs, _int_const(single, [0]), _int_const(single, [1]), _int_const(single, [0]))
        ts_utils._add_output_to_block(single.block, conv(single, x, *kernels(single, first)))

        weight, bias = kernels(several, coeffs)
        keep_going = several.op("Cast", _int_const(several, 1), to_i=9)  # BOOL
        stacked, (body,), _ = jit_utils.add_op_with_blocks(several, "Loop", batch, keep_going, n_blocks=1, outputs=1)
        i = ts_utils._add_input_to_block(body.block)
        ts_utils._add_input_to_block(body.block)  # the loop condition, unused
        at = body.op("Unsqueeze", i, _int_const(body, [0]))
        one = conv(body, body.op("Gather", x, at, axis_i=0), body.op("Gather", weight, at, axis_i=0),
                   None if bias is None else body.op("Gather", bias, at, axis_i=0))
        ts_utils._add_output_to_block(body.block, body.op("Cast", _int_const(body, 1), to_i=9))
        ts_utils._add_output_to_block(body.block, one)  # scan output: (batch, 1, out, h, w)
        ts_utils._add_output_to_block(several.block, several.op("Squeeze", stacked, _int_const(several, [1])))
        # the If's output type, as far as x's is known: without it, every size after this layer is unknown to the
        # exporter, and a later conv whose kernel is computed at run time (GroupedBank) cannot be exported
        sizes = sh._get_tensor_sizes(x) or [None] * 4
        spatial = [None if n is None else (n + 2 * p - d * (k - 1) - 1) // st + 1
                   for n, p, d, k, st in zip(sizes[2:], padding, dilation, kernel_shape[2:], stride)]
        out.setType(x.type().with_sizes([sizes[0], kernel_shape[0], *spatial]))
        return out


def per_sample_conv(x: torch.Tensor, coeffs: torch.Tensor, flat: torch.Tensor, bias_flat: torch.Tensor | None,
                    shift: torch.Tensor | None, kernel_shape: tuple[int, int, int, int], stride: tuple[int, int],
                    padding: tuple[int, int], dilation: tuple[int, int], groups: int) -> torch.Tensor:
    """y[b] = conv(x[b], (coeffs[b] @ flat).view(kernel_shape)) + coeffs[b] @ bias_flat + shift.

    coeffs (B, K), flat (K, out·in/groups·kh·kw), bias_flat (K, out) or None (no bias; shift then ignored),
    shift (1, out) or None. Symmetric padding only (pad asymmetric cases before calling). See `_PerSampleConv`
    for the export. Every size is a plain int known when the module is built (sizes read while tracing are
    traced values, which the exporter cannot take as attributes).
    """
    return _PerSampleConv.apply(x, coeffs, flat, bias_flat, shift, tuple(int(v) for v in kernel_shape), tuple(stride),
                                tuple(padding), tuple(dilation), groups)


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
    """A deploy form of a kernel bank: forward(x, a) with a the (B, K) mixing weights.

    `blocked=True` (the forms whose output leaves a MatMul or an If): the constant shift is added by a
    depthwise 1×1 Conv with unit weights at the end instead of an Add, so the output leaves a Conv. OpenVINO
    then keeps its blocked layout and fuses the next activation into it; after a MatMul's planar output with
    a dynamic batch it ran a following shift and SiLU 1.8-4.2× slower than this ending does
    (benchmarks/results/dynamic_eltwise.md). Exact: 1·y + shift is y + shift.
    """

    def __init__(self, bank: KernelBank, blocked: bool = False):
        super().__init__()
        self.bank = bank  # plain attribute: rebuilt forms read it, the export never sees it
        self.blocked = blocked
        self.has_bias = bool(bank.bias.any())  # without one, the per-sample bias is the shift alone
        self.register_buffer("shift", bank.shift.view(1, -1, 1, 1).clone())
        if blocked:
            c = bank.out_channels
            self.tail = nn.Conv2d(c, c, 1, groups=c)
            with torch.no_grad():
                self.tail.weight.fill_(1.0)
                self.tail.bias.copy_(bank.shift)

    def fuse_bn(self, bn: nn.BatchNorm2d) -> "_BankForm":
        """The same form, equal to bn(self(x, a)) for any a."""
        bank = self.bank.fused(bn)
        return type(self)(bank, blocked=True) if self.blocked else type(self)(bank)

    def mixed_bias(self, a: torch.Tensor) -> torch.Tensor | None:
        """(B, out, 1, 1): Σ_k a_k b_k (+ shift unless the tail adds it); None where that is nothing to add."""
        if not self.has_bias:
            return None if self.blocked else self.shift
        mixed = torch.matmul(a, self.bank_bias).unsqueeze(-1).unsqueeze(-1)
        return mixed if self.blocked else mixed + self.shift

    def finish(self, y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """y + bias, then the tail (which adds the shift) where the form has one."""
        if bias is not None:
            y = y + bias
        return self.tail(y) if self.blocked else y


class GroupedBank(_BankForm):
    """Per-sample kernels, batch folded into the conv's groups (as the papers' code): static batch."""

    def __init__(self, bank: KernelBank):
        super().__init__(bank)
        self.register_buffer("flat", bank.weight.reshape(bank.experts, -1).clone())
        self.register_buffer("bank_bias", bank.bias.clone())
        # plain ints: a size read from a tensor while tracing is traced, and a kernel reshaped by traced sizes has an
        # unknown shape wherever the input's shape is unknown (after a layer whose output the exporter cannot size),
        # which the ONNX exporter refuses for a Conv's weight
        self.kernel_shape = tuple(int(k) for k in bank.weight.shape[2:])
        self.out_channels = int(bank.weight.shape[1])

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        b, c, h, w = (int(s) for s in x.shape)  # a static-batch form: plain ints keep every shape known to the exporter
        weight = torch.matmul(a, self.flat).reshape(b * self.out_channels, *self.kernel_shape)
        out = self.bank.conv(x.reshape(1, b * c, h, w), weight, None, self.bank.groups * b)
        return out.reshape(b, self.out_channels, out.shape[-2], out.shape[-1]) + self.mixed_bias(a)


class BatchedBank(_BankForm):
    """im2col by a constant conv, then (B, g, out/g, in/g·k²) @ (B, g, in/g·k², L): any batch, constant conv weights.

    The blocked variant takes the patches by k² strided slices instead (square kernels): OpenVINO ran them
    0.3-0.64× the identity-kernel conv's time (ONNX Runtime 1.1-1.7×: its variant keeps the conv).
    """

    def __init__(self, bank: KernelBank, blocked: bool = False):
        super().__init__(bank, blocked)
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

    def patches_by_slices(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in·k², Ho, Wo), channel c·k² + (i·k + j) as the identity-kernel conv orders them."""
        from .drconv import shifted

        bank = self.bank
        k = bank.weight.shape[-1]
        padding = bank.padding
        if bank.same_pad:
            x, padding = pad_same(x, (k, k), bank.stride, bank.dilation), (0, 0)
        taps = shifted(x, k, bank.stride, padding, bank.dilation)
        return torch.stack(taps, 2).flatten(1, 2)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        if self.pointwise:
            patches = x[:, :, :: self.bank.stride[0], :: self.bank.stride[1]]
        elif self.blocked and self.bank.weight.shape[-1] == self.bank.weight.shape[-2]:
            patches = self.patches_by_slices(x)
        else:
            patches = self.bank.conv(x, self.patch_kernel, None, x.shape[1])
        h, w = patches.shape[-2:]
        g, out_g, depth = self.inner
        kernels = torch.matmul(a, self.flat).reshape(-1, g, out_g, depth)
        out = torch.matmul(kernels, patches.reshape(-1, g, depth, h * w))
        return self.finish(out.reshape(-1, g * out_g, h, w), self.mixed_bias(a))


class SampleConv(_BankForm):
    """Per-sample kernels by one MatMul, each sample convolved with its own (If batch == 1: one Conv; else a Loop)."""

    def __init__(self, bank: KernelBank, blocked: bool = False):
        super().__init__(bank, blocked)
        self.register_buffer("flat", bank.weight.reshape(bank.experts, -1).clone())
        self.register_buffer("bank_bias", bank.bias.clone())
        self.kernel_shape = tuple(int(k) for k in bank.weight.shape[1:])  # plain ints: sizes read while tracing are traced

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        bank = self.bank
        if bank.same_pad:
            x = pad_same(x, self.kernel_shape[2:], bank.stride, bank.dilation)
        # the conv adds the mixed bias (and the shift unless the tail does); no bias at all where both are nothing
        bias_flat = self.bank_bias if self.has_bias else None
        shift = None if self.blocked else self.shift.reshape(1, -1)
        if bias_flat is None and shift is not None:
            bias_flat = torch.zeros_like(self.bank_bias)
        y = per_sample_conv(x, a, self.flat, bias_flat, shift, self.kernel_shape, bank.stride, bank.padding,
                            bank.dilation, bank.groups)
        return self.finish(y, None)


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


class ExpertConvs(_BankForm):
    """One static conv per expert (the layer's own groups), each output scaled by its sample's a_k, summed: K× FLOPs.

    Unlike OutputAggregation's single conv with K outputs per group, each conv keeps the layer's shape, so a
    depthwise layer stays depthwise (the runtimes' fast depthwise kernels and layouts apply), and the mixing
    is elementwise with a (B, 1, 1, 1) scale per expert. Any batch, constant weights.
    """

    def __init__(self, bank: KernelBank):
        super().__init__(bank)
        self.register_buffer("weights", bank.weight.clone())  # (K, out, in/groups, kh, kw)
        self.register_buffer("biases", bank.bias.clone())  # (K, out)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        experts = self.bank.experts
        scales = a.reshape(-1, experts, 1, 1).split(1, dim=1)  # K tensors (B, 1, 1, 1): one Split
        y = self.shift
        for k in range(experts):
            y = y + self.bank.conv(x, self.weights[k], self.biases[k], self.bank.groups) * scales[k]
        return y


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


#: the builder of each form (registered by bank_forms, with the _blocked variants): internal, not a list of forms
_CLASSES: dict[str, type[_BankForm]] = {
    "bank_grouped": GroupedBank,
    "bank_batched": BatchedBank,
    "output_aggregation": OutputAggregation,
    "expert_convs": ExpertConvs,
    "sample_conv": SampleConv,
}
#: forms with a `blocked` variant (see _BankForm), registered as "<name>_blocked"
BLOCKED = ("bank_batched", "sample_conv")


def build_form(bank: KernelBank, form: str) -> _BankForm:
    """_CLASSES[form], or a BLOCKED one's "<name>_blocked" variant."""
    base = form.removesuffix("_blocked")
    if base != form and base in BLOCKED:
        return _CLASSES[base](bank, blocked=True)
    return _CLASSES[form](bank)


_NOTES = {
    "bank_grouped": (False, False, "per-sample kernels, batch folded into groups; conv FLOPs"),
    "bank_batched": (True, True, "im2col by a constant conv + batched MatMul; conv FLOPs"),
    "bank_batched_blocked": (True, True, "bank_batched with im2col by slices, ending in a unit depthwise 1×1 conv (the shift as its bias)"),
    "expert_convs": (True, True, "one static conv per expert (depthwise stays depthwise), mixed by Mul/Add; K× FLOPs"),
    "sample_conv": (True, False, "per-sample kernels; If batch 1: one Conv with them, else a Loop of that Conv over the samples"),
    "sample_conv_blocked": (True, False, "sample_conv ending in a unit depthwise 1×1 conv (the shift as its bias)"),
    "output_aggregation": (True, True, "one conv with K·out outputs mixed by MatMul; K× FLOPs"),
}


def bank_forms(build: Callable[[nn.Module, str], nn.Module],
               exact_for: Callable[[nn.Module], str | None] = lambda ref: None) -> list[Form]:
    """The Form entries of a kernel-bank layer (Dynamic_conv2d, CondConv2d), in registration order: the one
    list of the bank forms; build(ref, name) makes form `name` of the layer."""
    return [Form(name, (lambda r, n=name: build(r, n)), dynamic_batch=dyn, constant_weights=const,
                 exact_for=exact_for, note=note) for name, (dyn, const, note) in _NOTES.items()]


def conv_kind(ref: nn.Module | None) -> str:
    """"depthwise", "pointwise" or "dense": what decides a kernel-bank layer's fastest form."""
    if ref is None:
        return "dense"
    in_ch = getattr(ref, "in_channels", getattr(ref, "in_planes", 0))
    k = getattr(ref, "kernel_size", 1)
    k = tuple(k) if isinstance(k, (tuple, list)) else (k, k)
    if ref.groups > 1 and ref.groups == in_ch:
        return "depthwise"
    return "pointwise" if k == (1, 1) else "dense"


#: measured orders of the dynamic-batch forms (whole models and the models' own layer shapes, batch 1 and 8, 1 thread, in
#: an early session whose table is not kept): per runtime and kind of conv. They rank the forms where nothing is timed
#: (`--form preferred`, TensorRT) and break ties; benchmarks/results/forms.md times this order beside the automatic choice
_DYNAMIC_ORDER = {
    ("onnxruntime", "depthwise"): ["expert_convs", "sample_conv", "bank_batched"],
    ("onnxruntime", "pointwise"): ["bank_batched", "sample_conv", "expert_convs"],
    ("onnxruntime", "dense"): ["sample_conv", "bank_batched", "expert_convs"],
    ("openvino", "depthwise"): ["expert_convs", "sample_conv_blocked", "bank_batched_blocked"],
    ("openvino", "pointwise"): ["bank_batched_blocked", "sample_conv_blocked", "expert_convs"],
    ("openvino", "dense"): ["sample_conv_blocked", "bank_batched_blocked", "expert_convs"],
    # TensorRT: constant conv weights only (its parser refuses computed ones); unmeasured here
    ("tensorrt", "depthwise"): ["expert_convs", "bank_batched", "output_aggregation"],
    ("tensorrt", "pointwise"): ["bank_batched", "expert_convs", "output_aggregation"],
    ("tensorrt", "dense"): ["bank_batched", "expert_convs", "output_aggregation"],
}


def preference(ref: nn.Module | None, target: str | None, static: bool = False) -> list[str]:
    """Form order for a kernel-bank layer: "static" first where the layer has it (exact only for an
    input-independent attention), bank_grouped (conv FLOPs, the batch folded in: static graphs only), then
    the dynamic-batch forms as measured for the runtime and the kind of conv (_DYNAMIC_ORDER; no target:
    ONNX Runtime's). Why, in short: a depthwise conv with run-time weights or as a batched MatMul is slow on
    both runtimes, while its experts as K constant depthwise convs keep the runtimes' depthwise kernels;
    1×1 convs are a MatMul anyway; dense k×k ones pay an im2col copy in bank_batched that sample_conv's
    plain Conv avoids. OpenVINO gets the `_blocked` variants (an activation after a MatMul or If output is
    slow there). TensorRT never gets bank_grouped or sample_conv (computed conv weights) unless forced."""
    kind = conv_kind(ref)
    order = _DYNAMIC_ORDER.get((target, kind)) or _DYNAMIC_ORDER[("onnxruntime", kind)]
    return (["static"] if static else []) + ([] if target == "tensorrt" else ["bank_grouped"]) + order
