"""The authors' DRConv (megvii-research) at the shapes of the paper's DR ShuffleNetV2-0.5× at 224×224 (1×1,
8 regions, 8 bases), plus one 3×3 layer; yardstick: the plain conv of the same shape.

Each module is the layer in its context: a 1×1 masknet → softmax → argmax feeding it the mask, as in the
paper's unit (the masknet costs 8/out of the conv). The reference is exported as it is (our PyTorch
re-creation of the CUDA op: a per-pixel kernel gather + einsum).

Also "region_sorted" (1×1, batch 1), not a registered form: the one-conv-FLOPs alternative to evaluating
every basis, written to show why none is registered. Per region g: the pixels NonZero(mask == g), their
columns gathered, one MatMul with that region's kernel, scattered back. It does 1× the conv's
multiply-adds but ≈ 6 data-dependent-shape ops per region (48 for 8 regions) and a batch loop beyond batch 1.

    python benchmarks/layers.py --only drconv_megvii
"""
from __future__ import annotations

import torch
from torch import nn

from polyexport.convert import forms_of, to_deploy
from polyexport.deploy_layers.drconv_megvii import DRConvCandidates
from polyexport.layers.drconv_megvii import DRConv
from polyexport.testing import randomize_

from . import BenchCase

NOTES = {
    **{name: form.note for name, form in forms_of(DRConv).items()},
    "region_sorted": "not registered (benchmark only): 1× conv FLOPs, per region NonZero → Gather → MatMul → scatter; batch 1",
}


class RegionSorted(DRConvCandidates):
    """1×1, batch 1: each region's pixels gathered, multiplied by that region's kernel, scattered back (exact)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor, Alpha: torch.Tensor | None = None) -> torch.Tensor:  # noqa: N803
        g, o, c = self.groups_num, self.out_channels, self.in_channels
        kernels = torch.matmul(self.coefficients(x), self.bank_t).reshape(g, o, c)  # batch 1
        cols, regions = x.flatten(2)[0], mask.flatten()
        out = torch.zeros(o, cols.shape[1], dtype=x.dtype)
        for r in range(g):
            at = (regions == r).nonzero().squeeze(1)
            out = out.scatter(1, at.unsqueeze(0).expand(o, -1), torch.matmul(kernels[r], cols.index_select(1, at)))
        return self.with_bias(out.reshape(1, o, x.shape[2], x.shape[3]))

#: (in, out, k, stride, hw): the model's DRConv shapes at 224 (strided units' conva_right at the unit's input size)
SHAPES = [(24, 24, 1, 1, 56), (24, 24, 1, 1, 28), (48, 48, 1, 1, 28), (48, 48, 1, 1, 14), (96, 96, 1, 1, 14),
          (96, 96, 1, 1, 7), (64, 64, 3, 1, 28)]


class Guided(nn.Module):
    """masknet → softmax → argmax, then the layer (reference or a deploy form) with that mask."""

    def __init__(self, masknet: nn.Conv2d, layer: nn.Module) -> None:
        super().__init__()
        self.masknet, self.layer = masknet, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = torch.softmax(self.masknet(x), 1)
        return self.layer(x, alpha.argmax(1), alpha)


def cases() -> list[BenchCase]:
    out = []
    for cin, cout, k, s, hw in SHAPES:
        ref = randomize_(DRConv(cin, cout, k, s, k // 2, bias=False))
        with torch.no_grad():
            ref.routing_fc.weight.mul_(5.0)
        masknet = randomize_(nn.Conv2d(cin, ref.groups_num, 1, bias=False))
        exact = [f for f, form in forms_of(DRConv).items() if form.exact_for(ref) is None]  # prescaled: 1×1 only
        forms = {f: Guided(masknet, to_deploy(ref, f)) for f in exact}
        if "prescaled" in exact:
            forms["region_sorted"] = Guided(masknet, RegionSorted(ref).eval())
        out.append(BenchCase(
            layer="DRConv", config=f"c{cin}→{cout} k{k} s{s} G8 W8 @{hw}x{hw}", input_shape=(1, cin, hw, hw),
            reference=Guided(masknet, ref).eval(), forms=forms,
            yardstick=randomize_(nn.Conv2d(cin, cout, k, s, k // 2, bias=False)), notes=dict(NOTES),
        ))
    return out
