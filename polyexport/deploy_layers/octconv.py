"""Deploy forms of OctaveConv, Conv_BN and Conv_BN_ACT (d-li14/octconv.pytorch).

Every form keeps the official dataflow (AvgPool2d(2, 2) down, nearest ×2 up, the same tuple in/out
conventions) and folds the norm layers into the convs: y_h = s_h·(h2h + up(l2h)) + t_h, and nearest
upsampling copies values, so s_h scales both conv_h2h and conv_l2h and t_h goes into conv_h2h's bias
alone (likewise s_l into h2l and l2l, t_l into h2l, or l2l where a depthwise layer has no h2l).
Only an exact nn.BatchNorm2d with running statistics is folded: any other norm layer (a subclass that
adds work to its forward, as timm's BatchNormAct2d adds its activation; GroupNorm; …) is kept as it
is, a module applied to the conv output. The activation of Conv_BN_ACT stays a separate op on each
output. A string padding is written out as numbers ('same' with dilation exports as an auto_pad that
ONNX Runtime refuses; see _padding.py).

- "merged": conv_l2l and conv_l2h read the same tensor x_l at stride 1, with the same kernel,
  padding and dilation: one conv over x_l, its output split (when both have groups 1; otherwise
  they stay two convs). conv_h2l is *not* merged with conv_h2h: it reads pool(x_h), and a conv on a
  pooled input equals a 2k-kernel stride-2 conv on x_h only for even sizes and at 4× its FLOPs.
  Upsampling is an ONNX Resize (nearest, scale 2), which keeps batch and spatial size dynamic.
- "merged_deconv": as "merged", with the upsampling as a depthwise ConvTranspose2d (kernel 2,
  stride 2, weights 1): exact (each output is one input times 1.0) and dynamic.
- "concat": y_l = h2l(pool(x_h)) + l2l(x_l) is one conv over cat(pool(x_h), x_l) (the reference only
  adds the two when both inputs have the same size), which also removes an Add. At stride 2,
  x_h is pooled first and then has x_l's size, so y_h = h2h(x_h) + l2h(x_l) is one conv over
  cat(x_h, x_l) and y_l one conv over its pooling (pooling is per channel): two convs instead of four.
  Groups 1 only; otherwise those parts stay separate convs. h2h and h2l are kept as well, for a
  lone-tensor input (the official forward accepts one in any layer); the exported graph of a tuple
  input holds only the convs it uses.
- "separate": the official four convs (BN folded), for comparison.

All forms are exact for every configuration the reference runs, whatever its norm layer; layers with
alpha_in = 1 or alpha_out = 1 have no conv_h2h and cannot run, so no form is offered for them.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..convert import Form, register_layer
from ..layers.octconv import (
    Conv_BN,
    Conv_BN_ACT,
    OctaveConv,
    OctInput,
    OctOutput,
    split_input,
)
from ._padding import split_padding, written_out
from .conv_bn import bn_scale_shift


def _scaled(conv: nn.Conv2d | None, s: torch.Tensor | None, t: torch.Tensor | None) -> nn.Conv2d | None:
    """A copy of `conv` computing s·conv(x) + t per output channel (float64 arithmetic); None stays None.

    A 'same' padding that is symmetric becomes numbers here (so such convs can still merge)."""
    if conv is None:
        return None
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64)
    if s is not None:
        w, b = w * s.reshape(-1, 1, 1, 1), b * s
    if t is not None:
        b = b + t
    padding, pad = split_padding(conv)
    padding = conv.padding if pad is not None else padding  # asymmetric: written out once built (written_out)
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding,
                    conv.dilation, conv.groups, bias=conv.bias is not None or s is not None or t is not None,
                    padding_mode=conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(w.to(conv.weight.dtype))
        if new.bias is not None:
            new.bias.copy_(b.to(conv.weight.dtype))
    return new


def foldable(norm: nn.Module | None) -> bool:
    """Exactly nn.BatchNorm2d with running statistics: a subclass may add work to its forward (timm's
    BatchNormAct2d adds its activation), and without statistics eval mode normalises by the batch's own."""
    return type(norm) is nn.BatchNorm2d and norm.track_running_stats and norm.running_mean is not None


def _same_geometry(a: nn.Conv2d, b: nn.Conv2d) -> bool:
    keys = ("kernel_size", "stride", "padding", "dilation", "padding_mode")
    return (all(getattr(a, k) == getattr(b, k) for k in keys) and a.groups == b.groups == 1
            and a.padding_mode == "zeros" and not isinstance(a.padding, str))


def _bias(c: nn.Conv2d) -> torch.Tensor:
    return c.bias.detach() if c.bias is not None else torch.zeros(c.out_channels, dtype=c.weight.dtype)


def _merge_out(a: nn.Conv2d, b: nn.Conv2d) -> nn.Conv2d | None:
    """One conv whose output is cat(a(x), b(x)) (same input); None where not exact with groups 1."""
    if not _same_geometry(a, b) or a.in_channels != b.in_channels:
        return None
    merged = nn.Conv2d(a.in_channels, a.out_channels + b.out_channels, a.kernel_size, a.stride, a.padding, a.dilation)
    with torch.no_grad():
        merged.weight.copy_(torch.cat([a.weight, b.weight]))
        merged.bias.copy_(torch.cat([_bias(a), _bias(b)]))
    return merged


def _merge_in(a: nn.Conv2d, b: nn.Conv2d) -> nn.Conv2d | None:
    """One conv equal to a(u) + b(v) on cat(u, v) (zero padding commutes with concatenation); groups 1 only."""
    if not _same_geometry(a, b) or a.out_channels != b.out_channels:
        return None
    merged = nn.Conv2d(a.in_channels + b.in_channels, a.out_channels, a.kernel_size, a.stride, a.padding, a.dilation)
    with torch.no_grad():
        merged.weight.copy_(torch.cat([a.weight, b.weight], 1))
        merged.bias.copy_(_bias(a) + _bias(b))
    return merged


def nearest_up_deconv(channels: int) -> nn.ConvTranspose2d:
    """Nearest ×2 upsampling as a depthwise ConvTranspose2d (kernel 2, stride 2, weights 1): exact copies."""
    up = nn.ConvTranspose2d(channels, channels, 2, stride=2, groups=channels, bias=False)
    nn.init.ones_(up.weight)
    return up.requires_grad_(False)


class OctaveConvDeploy(nn.Module):
    """The OctaveConv dataflow with BatchNorms folded into the convs (other norms kept), l2l+l2h merged where exact.

    Python branches depend only on the layer's configuration and on the input's structure (tuple or
    tensor), as the official forward's do, never on tensor values.
    """

    def __init__(self, ref: OctaveConv, bn_h: nn.Module | None, bn_l: nn.Module | None,
                 act: nn.Module | None, form: str):
        super().__init__()
        if form not in _NOTES:
            raise ValueError(f"form must be one of {tuple(_NOTES)}, got {form!r}")
        self.form, self.stride, self.is_dw = form, ref.stride, ref.is_dw
        self.pool = nn.AvgPool2d(2, 2)
        s_h, t_h = bn_scale_shift(bn_h) if foldable(bn_h) else (None, None)
        s_l, t_l = bn_scale_shift(bn_l) if foldable(bn_l) else (None, None)
        # a norm that cannot be folded is applied as it is, after the convs and before the activation
        self.norm_h = copy.deepcopy(bn_h) if bn_h is not None and not foldable(bn_h) else nn.Identity()
        self.norm_l = copy.deepcopy(bn_l) if bn_l is not None and not foldable(bn_l) else nn.Identity()
        use_h2l = ref.alpha_out > 0 and not ref.is_dw
        self.h2h = _scaled(ref.conv_h2h, s_h, t_h)
        self.h2l = _scaled(ref.conv_h2l, s_l, t_l) if use_h2l else None
        self.l2h = _scaled(ref.conv_l2h, s_h, None)
        self.l2l = _scaled(ref.conv_l2l, s_l, None if use_h2l else t_l) if ref.alpha_out > 0 else None
        self.low = None  # "merged": l2l and l2h as one conv over x_l (stride 1)
        self.cat_h = self.cat_l = None  # "concat": one conv over cat(high, low) per output (same resolution)
        if form in ("merged", "merged_deconv") and self.stride == 1 and self.l2l is not None and self.l2h is not None:
            self.low = _merge_out(self.l2l, self.l2h)
            if self.low is not None:
                self.split = [self.l2l.out_channels, self.l2h.out_channels]
        if form == "concat" and self.h2l is not None and self.l2l is not None:
            self.cat_l = _merge_in(self.h2l, self.l2l)
        if form == "concat" and self.stride == 2 and self.l2h is not None:
            self.cat_h = _merge_in(self.h2h, self.l2h)
        if self.l2h is None or self.stride == 2:
            self.up = None
        elif form == "merged_deconv":
            self.up = nearest_up_deconv(self.l2h.out_channels)
        else:
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
        # drop what a merged conv replaced (h2h and h2l stay: a lone tensor input still needs them)
        if self.low is not None or self.cat_l is not None:
            self.l2l = None
        if self.low is not None or self.cat_h is not None:
            self.l2h = None
        self.act = copy.deepcopy(act) if act is not None else nn.Identity()
        for name in ("h2h", "h2l", "l2h", "l2l", "low", "cat_h", "cat_l"):  # a 'same' padding left: ZeroPad2d + conv
            conv = getattr(self, name)
            if conv is not None:
                setattr(self, name, written_out(conv))

    def _out(self, y_h: torch.Tensor, y_l: torch.Tensor | None) -> OctOutput:
        return self.act(self.norm_h(y_h)), (None if y_l is None else self.act(self.norm_l(y_l)))

    def forward(self, x: OctInput) -> OctOutput:
        x_h, x_l = split_input(x)
        s2 = self.stride == 2
        if s2:
            x_h = self.pool(x_h)
        if x_l is None:  # first layer (or a lone tensor): h2h and h2l only
            return self._out(self.h2h(x_h), self.h2l(self.pool(x_h)) if self.h2l is not None else None)
        x_l_s = self.pool(x_l) if s2 else x_l  # what conv_l2l reads
        if self.is_dw:
            return self._out(self.h2h(x_h), self.l2l(x_l_s) if self.l2l is not None else None)
        l2l = l2h = None
        if self.low is not None:
            l2l, l2h = torch.split(self.low(x_l), self.split, dim=1)
        both = torch.cat([x_h, x_l], 1) if s2 and (self.cat_h is not None or self.cat_l is not None) else None
        if self.cat_h is not None:
            y_h = self.cat_h(both)
        else:
            l2h = self.l2h(x_l) if l2h is None else l2h
            y_h = self.h2h(x_h) + (l2h if s2 else self.up(l2h))
        if self.cat_l is not None:
            y_l = self.cat_l(self.pool(both) if s2 else torch.cat([self.pool(x_h), x_l], 1))
        elif self.h2l is not None:
            y_l = self.h2l(self.pool(x_h)) + (self.l2l(x_l_s) if l2l is None else l2l)
        else:  # alpha_out = 0
            y_l = None
        return self._out(y_h, y_l)

    def fuse_bn(self, bn: nn.BatchNorm2d) -> None:
        """Declines: the output is a tuple, so no BN can take it directly (bn_h/bn_l are folded already).

        Defining it makes the converter's tracer keep this module whole (a leaf), so the model around
        it stays traceable and its other conv+BN pairs still fold.
        """

    def extra_repr(self) -> str:
        return f"form={self.form!r}, stride={self.stride}"


def unsupported(ref: nn.Module) -> str | None:
    """Why no form represents this layer, or None: the reference cannot run (a norm that cannot be
    folded is no reason: it is kept as a module)."""
    wrapped = isinstance(ref, (Conv_BN, Conv_BN_ACT))
    if (ref.conv if wrapped else ref).conv_h2h is None:
        return "alpha_in = 1 or alpha_out = 1: the layer has no conv_h2h and its forward fails (official code too)"
    return None


def _build(ref: OctaveConv | Conv_BN | Conv_BN_ACT, form: str) -> OctaveConvDeploy:
    """Form `form` of a trained OctaveConv / Conv_BN / Conv_BN_ACT (norms folded); `unsupported` is its exact_for."""
    if isinstance(ref, OctaveConv):
        return OctaveConvDeploy(ref, None, None, None, form)
    return OctaveConvDeploy(ref.conv, ref.bn_h, ref.bn_l, getattr(ref, "act", None), form)


#: the forms (registered below, in this order) and their notes
_NOTES = {
    "merged": "BN folded; l2l+l2h one conv at stride 1 (groups 1); Resize nearest ×2; dynamic batch and size",
    "merged_deconv": "as merged, nearest ×2 as a depthwise ConvTranspose2d of ones; dynamic batch and size",
    "concat": "BN folded; y_l one conv over cat(pool(x_h), x_l); at stride 2 y_h one conv over cat(x_h, x_l) and "
              "y_l over its pooling (groups 1); Resize nearest ×2",
    "separate": "the official four convs, BN folded; Resize nearest ×2",
}

_FORMS = [Form(name, (lambda ref, n=name: _build(ref, n)), dynamic_batch=True, constant_weights=True,
               exact_for=unsupported, note=note) for name, note in _NOTES.items()]
# Indicative timings (2 shared cores, batch 1, c64@56 … c256@14, alpha 0.5/0.25, stride 1/2): every form is
# within ±5% of the others on ONNX Runtime (concat at or near the front, merged_deconv last); on OpenVINO
# merged was most often ahead, with large noise. TensorRT not measured: concat has the fewest kernels.
_PREFER = {
    "*": ["concat", "merged", "separate", "merged_deconv"],
    "onnxruntime": ["concat", "separate", "merged", "merged_deconv"],
    "openvino": ["merged", "concat", "separate", "merged_deconv"],
    "tensorrt": ["concat", "merged", "separate", "merged_deconv"],
}
for _cls in (OctaveConv, Conv_BN, Conv_BN_ACT):
    register_layer(_cls, _FORMS, prefer=_PREFER)
