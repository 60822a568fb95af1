"""Zoo architectures match the papers, and every zoo model deploys and holds parity on the runtimes."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import polyexport
from polyexport import zoo
from polyexport.convert import registered_layers

#: default allowed relative difference to the paper's figures: parameters must match closely (same
#: architecture); FLOPs conventions differ (papers count multiply-adds, often without the classifier,
#: BN or the attention branches), hence the looser bound. An entry may widen either with a reason.
PARAM_TOL, FLOP_TOL = 0.01, 0.05
MODELS = [n for n in zoo.names() if not n.startswith("test_")]


@pytest.mark.parametrize("name", [n for n in MODELS if zoo.get(n).paper])
def test_matches_paper(name):
    entry = zoo.get(name)
    paper = entry.paper
    model = entry.build().eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(torch.randn(*entry.input_shape))
    gmacs = counter.get_total_flops() / 2e9
    print(f"{name}: {params:.2f} M params (paper {paper['params_m']}), {gmacs:.3f} GMACs (paper {paper['gflops']})")
    assert out.shape[0] == entry.input_shape[0]
    assert abs(params / paper["params_m"] - 1) <= paper.get("params_tol", PARAM_TOL), f"{params:.3f} M params"
    assert abs(gmacs / paper["gflops"] - 1) <= paper.get("flops_tol", FLOP_TOL), f"{gmacs:.3f} GMACs"
    if "params_tol" in paper or "flops_tol" in paper:
        assert paper.get("why"), "a widened tolerance needs its reason"


@pytest.mark.parametrize("name", MODELS)
def test_deploys_with_dynamic_batch_parity(name, tmp_path):
    """Every known layer is swapped for a deploy form, and one dynamic-batch graph holds parity on each runtime."""
    entry = zoo.get(name)
    model = zoo.instantiate(name, seed=1)
    shape = entry.test_shape or entry.input_shape
    report = polyexport.export(model, [torch.randn(*shape)], target="openvino", out=str(tmp_path / "o"), bench=False,
                               dynamic_batch=True, extra_runtimes=["onnxruntime"], parity_seeds=1,
                               form_choice="preferred")  # timing every form is tests/test_autoform.py's job
    assert report.passed, {k: (p["max_rel_err"], p.get("error")) for k, p in report.parity.items()}
    known = {t.__name__ for t in registered_layers()}
    kept = [l for l in report.layers if l["form"] == "reference" and l["type"] in known]
    assert not kept, f"layers kept as reference: {kept}"
