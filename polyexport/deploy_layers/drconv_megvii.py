"""Deploy forms of the authors' DRConv (megvii-research/DRConv; reference in layers/drconv_megvii.py).

Upstream runs the per-pixel kernel selection in a CUDA op (`Deformable_MatMul3`) that no exporter
knows (and whose CPU path returns zeros). Per sample n, region g has the kernel
K[n, g] = Σ_w a[n, g, w]·bank_w (bank_w: the w-th column of `weight`, an (out, in, k, k) conv
kernel; a = 2·sigmoid(routing_fc(mean(x)))/num_W), and pixel p takes region mask[n, p]. With the
one-hot S[n, g, p] = [mask[n, p] = g], every form computes
    out[n, :, p] = Σ_g S[n, g, p]·(K[n, g] ⊛ x)[:, p] + bias = Σ_w A[n, w, p]·(bank_w ⊛ x)[:, p] + bias,
    A[n, w, p] = Σ_g S[n, g, p]·a[n, g, w]   (one batched MatMul, (n, W, G) @ (n, G, P)),
exactly (one pixel, one region, one kernel: only the summation order changes). Three forms, all
with a dynamic batch and constant Conv weights (run-time tensors feed only MatMul/Mul/ReduceSum):

- "basis": one constant conv with num_W·out outputs, the bank as its weights (native stride,
  padding, dilation: no im2col), then Σ_w A_w ⊙ Y_w. ≈ num_W × the conv's FLOPs.
- "candidates": the per-sample kernels K = a @ bank (MatMul), im2col by static shifted slices (for
  1×1 / stride 1 just a flatten), the G candidates as one batched MatMul, then the one-hot selection
  (as deploy_layers/drconv.py does). ≈ groups_num × the conv's FLOPs, plus the kernel generation.
- "prescaled" (1×1 kernels only): scale the input per basis, concat: (A_w ⊙ x)_w, then one constant
  1×1 conv with the bank laid out (out, num_W·in). ≈ num_W × the conv's FLOPs.

The mask: (n, h, w) integer region indices (the caller's argmax). Where its size is not the output
size, upstream resizes it with F.interpolate(mode='nearest'); here the rows and columns that call
picks are computed once, at trace time, by running F.interpolate on an index map, and taken with a
strided slice (or a Gather with constant indices): no Resize in the graph. `Alpha` (the softmax the
mask is the argmax of) only shapes upstream's gradients: accepted and ignored (so an exported
single-layer graph has no Alpha input: the exporter drops unused inputs).

Cost: with groups_num = num_W = 8 every form does ≈ 8× the multiply-adds of the plain conv (upstream's
CUDA kernel does 1×, reading each pixel's kernel by its region index). The 1× alternative in ONNX, a
per-pixel kernel gather (GatherElements, or one-hot @ kernels) and a batched mat-vec, measured
1.3–9× slower than the best form here at the paper model's shapes (ORT and OpenVINO, 1 thread, dynamic batch).
"""
from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..convert import Form, register_layer
from ..layers.drconv_megvii import DRConv
from .conv_bn import ScaleThenBias
from .drconv import shifted


def exact_for(ref: DRConv) -> str | None:
    """Configurations the forms rebuild: square kernels, and upstream's own (first-axis) unfold test consistent."""
    kh, kw = ref.kernel_size
    if kh != kw:
        return f"non-square kernel {ref.kernel_size} is not supported"
    pointwise_both = kh == 1 and ref.stride == (1, 1) and ref.padding == (0, 0) and ref.dilation == (1, 1)
    if not ref.use_unflod and not pointwise_both:
        # upstream tests only the first axis: such a layer skips im2col where it needs it (not a working config)
        return "upstream's use_unflod test (first axis only) disagrees with the second axis' geometry"
    return None


def exact_for_prescaled(ref: DRConv) -> str | None:
    why = exact_for(ref)
    if why:
        return why
    if ref.kernel_size != (1, 1):
        return f"'prescaled' scales the input per output pixel: 1×1 kernels only (this one is {ref.kernel_size[0]}×{ref.kernel_size[1]})"
    return None


@functools.lru_cache(maxsize=256)
def nearest_indices(src: tuple[int, int], dst: tuple[int, int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The rows and columns F.interpolate(mode='nearest') reads to resize a src-sized map to dst.

    Found by running that very call on a map of pixel indices (float32, exact below 2²⁴ pixels), so
    whatever rounding PyTorch's nearest kernel does, these are its picks.
    """
    (sh, sw), (dh, dw) = src, dst
    if sh * sw >= 1 << 24:
        raise ValueError(f"mask of {sh}×{sw} pixels: too large for the float32 index map")
    index = torch.arange(sh * sw, dtype=torch.float32).reshape(1, 1, sh, sw)
    picked = F.interpolate(index, (dh, dw)).reshape(dh, dw).long()
    rows, cols = picked[:, 0] // sw, picked[0, :] % sw
    if not torch.equal(picked, rows[:, None] * sw + cols[None, :]):
        raise AssertionError("nearest resize is not separable")  # it is, per axis; a guard, not a branch
    return tuple(rows.tolist()), tuple(cols.tolist())


def _take(t: torch.Tensor, dim: int, idx: tuple[int, ...]) -> torch.Tensor:
    """t's entries idx along dim: a strided slice where idx is an arithmetic progression, else a constant Gather."""
    if idx == tuple(range(t.shape[dim])):
        return t
    step = idx[1] - idx[0] if len(idx) > 1 else 1
    if step >= 1 and idx == tuple(range(idx[0], idx[0] + step * len(idx), step)):
        return t[(slice(None),) * dim + (slice(idx[0], idx[-1] + 1, step),)]
    return t.index_select(dim, torch.tensor(idx, dtype=torch.long, device=t.device))


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """mask (n, h, w) resized to size as F.interpolate(mask.float().unsqueeze(1), size) does, without a Resize."""
    src = (int(mask.shape[-2]), int(mask.shape[-1]))
    if src == tuple(size):
        return mask
    rows, cols = nearest_indices(src, tuple(size))
    return _take(_take(mask, 1, rows), 2, cols)


class _DRConvDeploy(ScaleThenBias, nn.Module):
    """Shared parts: geometry, routing coefficients, the (resized) one-hot mask and the bias."""

    def __init__(self, ref: DRConv) -> None:
        super().__init__()
        self.in_channels, self.out_channels = ref.in_channels, ref.out_channels
        self.k = ref.kernel_size[0]
        self.stride, self.padding, self.dilation = ref.stride, ref.padding, ref.dilation
        self.groups_num, self.num_W = ref.groups_num, ref.num_W  # noqa: N815 - upstream name
        self.routing = copy.deepcopy(ref.routing_fc)
        self.register_buffer("regions", torch.arange(self.groups_num).reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("bias", None if ref.bias is None else ref.bias.detach().clone())

    def bank(self, ref: DRConv) -> torch.Tensor:
        """The bank as (num_W, out, in, k, k): bank[w] is the w-th basis kernel."""
        k = self.k
        return ref.weight.detach().reshape(self.out_channels, self.in_channels, k, k, self.num_W).permute(4, 0, 1, 2, 3)

    def coefficients(self, x: torch.Tensor) -> torch.Tensor:
        """a (n, G, W), exactly as the reference computes it."""
        a = 2.0 * torch.sigmoid(self.routing(x.mean((2, 3)))) / self.num_W
        return a.reshape(-1, self.groups_num, self.num_W)

    def output_size(self, x: torch.Tensor) -> tuple[int, int]:
        h, w = int(x.shape[2]), int(x.shape[3])  # static in the graph; the batch stays dynamic
        k, (sh, sw), (ph, pw), (dh, dw) = self.k, self.stride, self.padding, self.dilation
        return (h + 2 * ph - dh * (k - 1) - 1) // sh + 1, (w + 2 * pw - dw * (k - 1) - 1) // sw + 1

    def selection(self, mask: torch.Tensor, size: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """S (n, G, oh·ow): the one-hot of the mask at the output size."""
        onehot = (resize_mask(mask, size).unsqueeze(1) == self.regions).to(dtype)
        return onehot.flatten(2)

    def mixing(self, x: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """A (n, W, oh·ow) = aᵀ @ S: each pixel's coefficients of the bank's kernels."""
        return torch.matmul(self.coefficients(x).transpose(1, 2), self.selection(mask, size, x.dtype))

    def with_bias(self, out: torch.Tensor) -> torch.Tensor:
        return out if self.bias is None else out + self.bias.reshape(1, -1, 1, 1)

    def _scale_out(self, s: torch.Tensor) -> None:
        """Scale every kernel's output channel o by s[o] (in place, on a copy)."""
        raise NotImplementedError


class DRConvBasis(_DRConvDeploy):
    """One constant conv computing every basis kernel's output; per-pixel coefficients mix them."""

    def __init__(self, ref: DRConv) -> None:
        super().__init__(ref)
        k = self.k
        self.conv = nn.Conv2d(self.in_channels, self.num_W * self.out_channels, k, self.stride, self.padding,
                              self.dilation, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(self.bank(ref).reshape(-1, self.in_channels, k, k))  # rows (w, o)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, Alpha: torch.Tensor | None = None,  # noqa: N803
                use_alpha: bool = False, beta: float = 1.0) -> torch.Tensor:
        y = self.conv(x)
        oh, ow = int(y.shape[2]), int(y.shape[3])
        mix = self.mixing(x, mask, (oh, ow))  # (n, W, P)
        out = (y.reshape(-1, self.num_W, self.out_channels, oh * ow) * mix.unsqueeze(2)).sum(1)
        return self.with_bias(out.reshape(-1, self.out_channels, oh, ow))

    def _scale_out(self, s: torch.Tensor) -> None:
        rows = s.repeat(self.num_W)
        with torch.no_grad():
            self.conv.weight.copy_(self.conv.weight.double() * rows[:, None, None, None])


class DRConvCandidates(_DRConvDeploy):
    """Per-sample kernels (MatMul with the bank), the G candidates by im2col + batched MatMul, one-hot selection."""

    def __init__(self, ref: DRConv) -> None:
        super().__init__(ref)
        # (W, out·in·k·k): the bank transposed, so that a (n, G, W) @ bank_t is each region's kernel, rows (o, c, u, v)
        self.register_buffer("bank_t", ref.weight.detach().t().contiguous())

    def columns(self, x: torch.Tensor) -> torch.Tensor:
        """(n, in·k², oh·ow) in F.unfold's (c, u, v) order."""
        pointwise = self.k == 1 and self.stride == (1, 1) and self.padding == (0, 0)
        if pointwise:
            return x.flatten(2)
        taps = shifted(x, self.k, self.stride, self.padding, self.dilation)
        return torch.stack(taps, 2).flatten(1, 2).flatten(2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, Alpha: torch.Tensor | None = None,  # noqa: N803
                use_alpha: bool = False, beta: float = 1.0) -> torch.Tensor:
        oh, ow = self.output_size(x)
        g, o = self.groups_num, self.out_channels
        kernels = torch.matmul(self.coefficients(x), self.bank_t)  # (n, G, out·in·k²)
        kernels = kernels.reshape(-1, g * o, self.in_channels * self.k * self.k)
        cand = torch.matmul(kernels, self.columns(x)).reshape(-1, g, o, oh * ow)
        sel = self.selection(mask, (oh, ow), x.dtype).unsqueeze(2)  # (n, G, 1, P)
        return self.with_bias((cand * sel).sum(1).reshape(-1, o, oh, ow))

    def _scale_out(self, s: torch.Tensor) -> None:
        cols = s.repeat_interleave(self.in_channels * self.k * self.k)
        with torch.no_grad():
            self.bank_t.copy_(self.bank_t.double() * cols[None, :])


class DRConvPrescaled(_DRConvDeploy):
    """1×1 only: the input scaled by each basis' per-pixel coefficient, then one constant 1×1 conv over num_W·in."""

    def __init__(self, ref: DRConv) -> None:
        super().__init__(ref)
        why = exact_for_prescaled(ref)
        if why:
            raise ValueError(why)
        self.conv = nn.Conv2d(self.num_W * self.in_channels, self.out_channels, 1, bias=False)
        with torch.no_grad():  # weight[o, w·in + c] = bank[o·in + c, w]
            self.conv.weight.copy_(self.bank(ref).permute(1, 0, 2, 3, 4).reshape(self.out_channels, -1, 1, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, Alpha: torch.Tensor | None = None,  # noqa: N803
                use_alpha: bool = False, beta: float = 1.0) -> torch.Tensor:
        xs = x
        if not (self.stride == (1, 1) and self.padding == (0, 0)):
            xs = shifted(x, 1, self.stride, self.padding, self.dilation)[0]  # the pixels a 1×1 conv reads (zeros in the padding)
        oh, ow = int(xs.shape[2]), int(xs.shape[3])
        mix = self.mixing(x, mask, (oh, ow))  # routing from the whole input, as the reference
        z = (mix.reshape(-1, self.num_W, 1, oh, ow) * xs.unsqueeze(1)).reshape(-1, self.num_W * self.in_channels, oh, ow)
        return self.with_bias(self.conv(z))

    def _scale_out(self, s: torch.Tensor) -> None:
        with torch.no_grad():
            self.conv.weight.copy_(self.conv.weight.double() * s[:, None, None, None])


def prefer(ref: DRConv | None, target: str | None) -> list[str]:
    """The measured order (benchmarks/layer_cases/drconv_megvii.py, the paper model's shapes; the numbers are in
    benchmarks/results/layers.md, DRConv rows, and models.md for the whole dr_shufflenetv2_0_5x):
    - ONNX Runtime: prescaled is fastest on every 1×1 shape, then candidates ≈ basis; for 3×3 (which
      prescaled declines) basis beats candidates.
    - OpenVINO: candidates leads for small 1×1 convs (up to 48→48), basis from 96→96 and for 3×3; prescaled
      stays within 1.3× of the best.
    - elsewhere (TensorRT, unmeasured; no target): prescaled, best on ONNX Runtime and close on OpenVINO.
    The pipeline's form timer re-measures per layer at export time where it can."""
    if target == "openvino":
        small = ref is not None and ref.in_channels * ref.out_channels * ref.kernel_size[0] * ref.kernel_size[1] <= 48 * 48
        return ["candidates", "basis", "prescaled"] if small else ["basis", "candidates", "prescaled"]
    return ["prescaled", "basis", "candidates"]  # prescaled declines k×k (exact_for): basis is next


register_layer(
    DRConv,
    forms=[
        Form("basis", DRConvBasis, dynamic_batch=True, constant_weights=True, exact_for=exact_for,
             note="constant conv with num_W·out outputs (the bank) + per-pixel coefficients (one-hot @ routing) via Mul/ReduceSum"),
        Form("candidates", DRConvCandidates, dynamic_batch=True, constant_weights=True, exact_for=exact_for,
             note="per-sample kernels (routing @ bank), im2col + batched MatMul for the G candidates, one-hot selection"),
        Form("prescaled", DRConvPrescaled, dynamic_batch=True, constant_weights=True,
             exact_for=exact_for_prescaled, note="1×1 only: input scaled per basis coefficient, one constant 1×1 conv over num_W·in"),
    ],
    prefer=prefer,
)
