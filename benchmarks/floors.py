"""Floors for the input-dependent kernels (issue 15): what any exact form of a dynamic conv computes at least.

- KernelBankFloor: every expert bank read once per batch (W = a @ bank), timed without any conv — the
  weight-read floor.
- attention_floor_model: the model (or one layer) with its plain convs and every attention branch and
  aggregation computed but unused — what any kernel-aggregating form adds at least. With `depthwise`, each
  depthwise dynamic conv's plain conv becomes the core every exact form of it runs at least
  (benchmarks/dynamic_depthwise.py): K constant convs summed ("k_static_convs") or one conv whose kernel
  arrives at run time ("run_time_kernel"); the depthwise floor of a model is the cheaper of the two graphs.

Used by benchmarks/models.py (whole models) and benchmarks/layers.py (single layers).
"""
from __future__ import annotations

import torch


class KernelBankFloor(torch.nn.Module):
    """Every kernel bank of a model read once, as the deploy forms must: W_l = a @ bank_l for each dynamic layer l,
    each reduced to a scalar so nothing is dead code (the reduction reads W_l back, as a conv reading its kernel does).
    a is (B, K) from the input (a slice: no work). Times the unavoidable aggregation without any conv."""

    def __init__(self, banks: list[torch.Tensor]):
        super().__init__()
        self.banks = torch.nn.ParameterList([torch.nn.Parameter(b, requires_grad=False) for b in banks])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for bank in self.banks:
            a = x.flatten(1)[:, : bank.shape[0]]
            w = torch.matmul(a, bank).sum(1, keepdim=True)
            total = w if total is None else total + w
        return total


def kernel_banks(model: torch.nn.Module) -> list[torch.Tensor]:
    """(K, N) expert banks of the model's CondConv2d and Dynamic_conv2d layers (none for other layers)."""
    from polyexport.layers.condconv import CondConv2d
    from polyexport.layers.dynamic_conv import Dynamic_conv2d

    banks = []
    for m in model.modules():
        if isinstance(m, CondConv2d):
            banks.append(m.weight.detach().reshape(m.num_experts, -1).clone())
        elif isinstance(m, Dynamic_conv2d):
            banks.append(m.weight.detach().reshape(m.K, -1).clone())
    return banks


def constant_convs(kernels: torch.Tensor, biases: torch.Tensor | None, stride, padding, dilation, groups: int) -> list[torch.nn.Conv2d]:
    """One plain conv per kernel of `kernels` (n, out, in/groups, kh, kw), with its row of `biases` (n, out) if given:
    a dynamic conv's experts as static convs, the pieces every floor here is built from."""
    n, out, per_group, *size = kernels.shape
    convs = []
    for i in range(n):
        conv = torch.nn.Conv2d(per_group * groups, out, tuple(size), stride, padding, dilation, groups, bias=biases is not None)
        with torch.no_grad():
            conv.weight.copy_(kernels[i])
            if biases is not None:
                conv.bias.copy_(biases[i])
        convs.append(conv.eval())
    return convs


class _KStaticConvs(torch.nn.Module):
    """A depthwise dynamic conv's core with constant weights: its K experts as K static convs, summed (no mixing).
    Every constant-weight exact form runs at least min(K, kh·kw) static convs' worth of work: the per-sample
    kernel ranges over the experts' span."""

    def __init__(self, convs: list[torch.nn.Conv2d]):
        super().__init__()
        self.convs = torch.nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.convs[0](x)
        for conv in self.convs[1:]:
            y = y + conv(x)
        return y

    def fuse_bn(self, bn: torch.nn.BatchNorm2d) -> "_KStaticConvs":
        from polyexport.deploy_layers.conv_bn import fuse_conv_bn

        first, rest = fuse_conv_bn(self.convs[0], bn), []
        for conv in self.convs[1:]:  # the BN's scale in every expert, its shift once
            fused = fuse_conv_bn(conv, bn)
            fused.bias = None
            rest.append(fused)
        return _KStaticConvs([first, *rest])


class _RunTimeKernelConv(torch.nn.Module):
    """A depthwise dynamic conv's core with its kernel computed at run time: the plain conv with its kernel times a
    run-time scalar (a slice of x), so it is not an initializer. One kernel for the whole batch: no per-sample
    work, a lower bound of every form that convolves with a per-sample kernel."""

    def __init__(self, conv: torch.nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        scale = 1.0 + 0.0 * x[:1, :1, :1, :1]
        return torch.nn.functional.conv2d(x, c.weight * scale, c.bias, c.stride, c.padding, c.dilation, c.groups)

    def fuse_bn(self, bn: torch.nn.BatchNorm2d) -> "_RunTimeKernelConv":
        from polyexport.deploy_layers.conv_bn import fuse_conv_bn

        return _RunTimeKernelConv(fuse_conv_bn(self.conv, bn))


DEPTHWISE_CORES = {"k_static_convs": _KStaticConvs, "run_time_kernel": _RunTimeKernelConv}


class _KernelsComputedUnused(torch.nn.Module):
    """A dynamic conv's floor: its plain conv (expert 0, constant weights: fast everywhere), plus everything that
    makes its kernel input-dependent, computed and not used: the attention branch (DY-Conv: its own; CondConv:
    the block's routing, passed in) and the aggregation a @ bank, reduced to a scalar put in `sink` (added,
    zero-weighted, to the model's output by AttentionFloor: no pass over a feature map). Every form that
    aggregates kernels does at least this much; BN folds into the conv."""

    def __init__(self, conv: torch.nn.Module, bank: torch.Tensor, router: torch.nn.Module | None, sink: list):
        super().__init__()
        self.conv, self.router, self.sink = conv, router, sink
        self.register_buffer("bank", bank)

    def forward(self, x: torch.Tensor, routing: torch.Tensor | None = None) -> torch.Tensor:
        a = self.router(x) if routing is None else routing
        self.sink.append(torch.matmul(a, self.bank).sum(1, keepdim=True))
        return self.conv(x)

    def fuse_bn(self, bn: torch.nn.BatchNorm2d) -> "_KernelsComputedUnused":
        from polyexport.deploy_layers.conv_bn import fuse_conv_bn

        conv = self.conv.fuse_bn(bn) if hasattr(self.conv, "fuse_bn") else fuse_conv_bn(self.conv, bn)
        return _KernelsComputedUnused(conv, self.bank, self.router, self.sink)


class AttentionFloor(torch.nn.Module):
    """The model with its dynamic convs as _KernelsComputedUnused; their scalars added ×0 to the output (kept live)."""

    def __init__(self, model: torch.nn.Module, sink: list):
        super().__init__()
        self.model, self.sink = model, sink

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sink.clear()
        y = self.model(x)
        live = torch.cat(self.sink, 1).sum(1)  # one scalar per sample, broadcast over the output (logits or a feature map)
        return y + 0.0 * live.reshape(-1, *[1] * (y.dim() - 1))


class _DCDKernelComputedUnused(torch.nn.Module):
    """A 1×1 DCD layer's floor: its static conv W0 (constant) plus the per-sample kernel and bias of the
    "aggregated" form computed and put in `sink`: what that form adds at least (it then applies them)."""

    def __init__(self, conv: torch.nn.Conv2d, aggregated: torch.nn.Module, sink: list):
        super().__init__()
        self.conv, self.aggregated, self.sink = conv, aggregated, sink

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel, bias = self.aggregated.kernel_and_bias(x)
        self.sink.append(kernel.sum((1, 2)).unsqueeze(1) + bias.sum((1, 2)).unsqueeze(1))
        return self.conv(x)

    def fuse_bn(self, bn: torch.nn.BatchNorm2d) -> "_DCDKernelComputedUnused":
        from polyexport.deploy_layers.conv_bn import fuse_conv_bn

        return _DCDKernelComputedUnused(fuse_conv_bn(self.conv, bn), self.aggregated, self.sink)


def attention_floor_model(model: torch.nn.Module, depthwise: str | None = None) -> torch.nn.Module | None:
    """AttentionFloor of the model (each CondConv2d / Dynamic_conv2d / 1×1 DCD layer replaced, BN folded); None without any.
    The model may be such a layer itself (benchmarks/layers.py): it is wrapped so that every layer has a parent.
    `depthwise` (a DEPTHWISE_CORES key): each depthwise dynamic conv computed by that core instead of its plain conv;
    None where the model has no depthwise dynamic conv."""
    import copy

    from polyexport.convert import fold_batchnorm
    from polyexport.deploy_layers.dynamic_conv import SoftmaxRouter
    from polyexport.layers.condconv import CondConv2d
    from polyexport.layers.dynamic_conv import Dynamic_conv2d

    from polyexport.deploy_layers._kernel_bank import conv_kind
    from polyexport.deploy_layers.dcd import DCDAggregated, aggregated_exact_for
    from polyexport.layers.dcd import DCD_TYPES

    floor, sink = torch.nn.Sequential(copy.deepcopy(model)).eval(), []
    for name, m in list(floor.named_modules()):
        if isinstance(m, DCD_TYPES) and aggregated_exact_for(m) is None:
            parent, _, child = name.rpartition(".")
            conv = copy.deepcopy(m.parts()[0])
            setattr(floor.get_submodule(parent) if parent else floor, child, _DCDKernelComputedUnused(conv, DCDAggregated(m), sink).eval())
        elif isinstance(m, (CondConv2d, Dynamic_conv2d)):
            k = m.num_experts if isinstance(m, CondConv2d) else m.K
            bank = m.weight.detach().reshape(k, -1)
            shape = (m.out_channels, m.in_channels // m.groups, *m.kernel_size) if isinstance(m, CondConv2d) else \
                (m.out_planes, m.in_planes // m.groups, m.kernel_size, m.kernel_size)
            core = DEPTHWISE_CORES.get(depthwise) if conv_kind(m) == "depthwise" else None
            kernels = bank.reshape(k, *shape)
            if core is _KStaticConvs:
                conv = core(constant_convs(kernels, None, m.stride, m.padding, m.dilation, m.groups))
            else:  # the plain conv (expert 0), or the run-time-kernel core around it
                conv = constant_convs(kernels[:1], None, m.stride, m.padding, m.dilation, m.groups)[0]
                conv = core(conv) if core else conv
            router = SoftmaxRouter(m.attention) if isinstance(m, Dynamic_conv2d) else None
            parent, _, child = name.rpartition(".")
            setattr(floor.get_submodule(parent) if parent else floor, child, _KernelsComputedUnused(conv, bank.clone(), router, sink).eval())
    if not any(isinstance(m, (_KernelsComputedUnused, _DCDKernelComputedUnused)) for m in floor.modules()):
        return None
    if depthwise and not any(isinstance(m, tuple(DEPTHWISE_CORES.values())) for m in floor.modules()):
        return None
    fold_batchnorm(floor)
    return AttentionFloor(floor, sink).eval()
