"""CoAtNet-0's relative-position attention at its two stages (stage 3: 384 channels on 14×14 tokens; stage 4:
768 on 7×7), as timm builds it (dim_head 32). The yardstick is a plain 1×1 conv with the same input and
output (the qkv projection alone would be 3× that): the ratios say what attention costs on top."""
from __future__ import annotations

from torch import nn

from polyexport.convert import forms_of, to_deploy
from polyexport.layers.rel_attention import RelPosAttention
from polyexport.testing import randomize_

from . import BenchCase


def cases() -> list[BenchCase]:
    notes = {name: form.note for name, form in forms_of(RelPosAttention).items()}
    out = []
    for dim, hw in ((384, 14), (768, 7)):
        ref = randomize_(RelPosAttention(dim, dim, dim_head=32, window_size=(hw, hw)))
        out.append(BenchCase(layer="RelPosAttention", config=f"c{dim} heads{dim // 32} @{hw}x{hw}", input_shape=(1, dim, hw, hw),
                             reference=ref, forms={f: to_deploy(ref, f) for f in notes},
                             yardstick=randomize_(nn.Conv2d(dim, dim, 1)), notes=notes))
    return out
