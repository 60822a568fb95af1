"""Every registered layer is benchmarked: a layer case (benchmarks/layer_cases/, timed by benchmarks/layers.py), or,
for a layer that case harness cannot hold, the script named here that times its forms."""
from __future__ import annotations

import os
import sys

from polyexport.convert import registered_layers

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks")
#: layer type -> the benchmark that times its forms instead of a layer case (several inputs with named axes)
ELSEWHERE = {"CondInstMaskHead": "heads.py", "DyCo3DMaskHead": "heads.py"}


def test_every_registered_layer_has_a_benchmark():
    sys.path.insert(0, BENCHMARKS)
    try:
        from layer_cases import all_cases
    finally:
        sys.path.remove(BENCHMARKS)
    benchmarked = {case.layer for case in all_cases()}
    ours = {t.__name__ for t in registered_layers() if t.__module__.startswith("polyexport.")}
    missing = sorted(ours - benchmarked - set(ELSEWHERE))
    assert not missing, f"registered layers without a benchmark case: {missing}"
    assert all(os.path.isfile(os.path.join(BENCHMARKS, script)) for script in ELSEWHERE.values())


def test_cases_take_their_notes_from_the_registry():
    """A case's notes are its forms' own (registry), never retyped: they cannot drift."""
    sys.path.insert(0, BENCHMARKS)
    try:
        from layer_cases import all_cases
    finally:
        sys.path.remove(BENCHMARKS)
    notes = {(t.__name__, name): form.note for t, e in registered_layers().items() for name, form in e.forms.items()}
    for case in all_cases():
        for form, note in case.notes.items():
            if (case.layer, form) in notes:
                assert note == notes[(case.layer, form)], (case.layer, form)


def test_layer_floors_run_at_any_batch():
    """benchmarks/layers.py times issue 15's floors beside each input-dependent layer: the attention floor gives the
    layer's output shape at a batch above 1 (its live-keeping scalar broadcast per sample over a feature map, not only
    over logits), and the bank floor one scalar per sample."""
    import torch

    sys.path.insert(0, BENCHMARKS)
    try:
        from layer_cases import all_cases
        from layers import floor_modules
    finally:
        sys.path.remove(BENCHMARKS)
    kinds = set()
    for case in all_cases(["condconv", "dynamic_conv", "dcd"]):
        floors = floor_modules(case.reference)
        x = torch.randn(3, *case.input_shape[1:])
        with torch.no_grad():
            if "floor:attention" in floors:
                assert floors["floor:attention"](x).shape == case.reference(x).shape, case.config
                kinds.add(case.layer)
            if "floor:aggregation" in floors:
                assert floors["floor:aggregation"](x).shape == (3, 1), case.config
    assert kinds == {"CondConv2d", "Dynamic_conv2d", "DYModule"}
