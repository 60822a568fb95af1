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


def test_depthwise_floor_cores_compute_what_they_claim(tmp_path):
    """benchmarks/models.py's depthwise floor: in one floor graph each depthwise dynamic conv is its K experts as K
    constant convs summed, in the other its plain conv with a kernel that is not an initializer once exported (else
    the runtime would prepack it and the floor would be the static conv's); both fold a following BN exactly."""
    import onnx
    import torch

    sys.path.insert(0, BENCHMARKS)
    try:
        from floors import DEPTHWISE_CORES, attention_floor_model
        from layer_cases import all_cases
    finally:
        sys.path.remove(BENCHMARKS)
    from polyexport.deploy_layers._kernel_bank import conv_kind
    from polyexport.exporter import export_onnx
    from polyexport.layers.condconv import CondConv2d
    from polyexport.layers.dynamic_conv import Dynamic_conv2d

    def dynamic_conv(case):
        return next(m for m in case.reference.modules() if isinstance(m, (CondConv2d, Dynamic_conv2d)))

    cases = [c for c in all_cases(["condconv", "dynamic_conv"]) if conv_kind(dynamic_conv(c)) == "depthwise"]
    assert {type(dynamic_conv(c)) for c in cases} == {CondConv2d, Dynamic_conv2d}
    for case in cases:
        ref, dyn = case.reference.eval(), dynamic_conv(case)
        x = torch.randn(2, *case.input_shape[1:])
        floors = {core: attention_floor_model(ref, depthwise=core) for core in DEPTHWISE_CORES}
        (summed,) = [m for m in floors["k_static_convs"].modules() if isinstance(m, DEPTHWISE_CORES["k_static_convs"])]
        (run_time,) = [m for m in floors["run_time_kernel"].modules() if isinstance(m, DEPTHWISE_CORES["run_time_kernel"])]
        first = summed.convs[0]
        experts = dyn.weight.detach().reshape(-1, *first.weight.shape)
        assert len(summed.convs) == len(experts) > 1, case.config
        bn = torch.nn.BatchNorm2d(first.out_channels).eval()
        with torch.no_grad():
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2), bn.bias.uniform_(-1, 1)
            want = sum(torch.nn.functional.conv2d(x, w, None, first.stride, first.padding, first.dilation, first.groups)
                       for w in experts)
            torch.testing.assert_close(summed(x), want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(run_time(x), torch.nn.functional.conv2d(
                x, experts[0], None, first.stride, first.padding, first.dilation, first.groups), rtol=1e-5, atol=1e-5)
            for core in (summed, run_time):
                torch.testing.assert_close(core.fuse_bn(bn)(x), bn(core(x)), rtol=1e-5, atol=1e-5)
        path = str(tmp_path / "floor.onnx")
        export_onnx(floors["run_time_kernel"], (x,), path, input_names=["input"], n_outputs=1, dynamic_batch=True)
        graph = onnx.load(path).graph
        constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
        assert any(n.op_type == "Conv" and n.input[1] not in constants for n in graph.node), case.config


def test_issue15_table_takes_the_cheaper_core_as_each_floor():
    """The issue-15 table's depthwise floors, dynamic and static: the cheaper core by the paired per-repeat ratios (not
    by the ratio of medians), the static one against the static baseline, the attention floor where no core was timed."""
    sys.path.insert(0, BENCHMARKS)
    try:
        from models import dynamic_kernels_markdown
    finally:
        sys.path.remove(BENCHMARKS)
    rt = "onnxruntime"
    per = {f"baseline/{rt}": [10, 10, 30], f"deploy/{rt}": [20, 20, 60],
           # paired: K static convs 1.5 every repeat, the run-time kernel 1.2, 3.6, 1.2 (median 1.2); by the medians of
           # their times (15 and 36 against 10) the K static convs would be the cheaper
           f"floor-depthwise-k_static_convs/{rt}": [15, 15, 45], f"floor-depthwise-run_time_kernel/{rt}": [12, 36, 36],
           f"baseline-static/{rt}": [5, 5, 5], f"deploy-static/{rt}": [9, 9, 9],
           f"floor-depthwise-k_static_convs-static/{rt}": [8, 8, 8], f"floor-depthwise-run_time_kernel-static/{rt}": [7, 7, 7]}
    row = {"model": "cc_efficientnet_b0", "batch": 1, "ms": {k: sorted(v)[1] for k, v in per.items()}, "repeats_ms": per}

    def cells() -> list[str]:
        return dynamic_kernels_markdown([row], [rt]).splitlines()[-1].split(" | ")
    assert cells()[8] == "1.20× (1.20–3.60)"  # the run-time kernel, under the bound (1.3×): not bold
    assert cells()[9] == "**1.40×** (1.40–1.40)"  # static: the run-time kernel, 7 / 5 against the static baseline
    for core in ("k_static_convs", "run_time_kernel"):
        del row["ms"][f"floor-depthwise-{core}-static/{rt}"]
    row["ms"][f"floor-attention-static/{rt}"] = 6
    per[f"floor-attention-static/{rt}"] = [6, 6, 6]
    assert cells()[9] == "1.20× (1.20–1.20)"
