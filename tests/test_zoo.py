"""Zoo architectures match the papers: parameter count and FLOPs beside the paper's figures."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from polyexport import zoo

#: allowed relative difference to the paper's figures. Parameters must match closely (same
#: architecture); FLOPs conventions differ (papers count multiply-adds, often without the
#: classifier or BN), hence the looser bound.
PARAM_TOL, FLOP_TOL = 0.01, 0.05


@pytest.mark.parametrize("name", [n for n in zoo.names() if zoo.get(n).paper])
def test_matches_paper(name):
    entry = zoo.get(name)
    model = entry.build().eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    x = torch.randn(*entry.input_shape)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(x)
    gmacs = counter.get_total_flops() / 2e9
    print(f"{name}: {params:.2f} M params (paper {entry.paper['params_m']}), {gmacs:.2f} GMACs (paper {entry.paper['gflops']})")
    assert out.shape[0] == entry.input_shape[0]
    assert abs(params / entry.paper["params_m"] - 1) <= PARAM_TOL
    assert abs(gmacs / entry.paper["gflops"] - 1) <= FLOP_TOL
