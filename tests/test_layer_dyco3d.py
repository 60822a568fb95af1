"""DyCo3D's dynamic convolution head: the reference equals the official head, the deploy form equals the
reference in PyTorch and, from one ONNX graph, on ONNX Runtime and OpenVINO at 0, 1, 7 and 100 instances
and at several point counts.

Facts verified in aim-uofa/DyCo3D @ 06ca40c, `model/pointgroup/pointgroup.py` (re-created in
tests/foreign/dyco3d.py):
- `PointGroup.__init__`: `output_dim = 16`; `mask_tower` = 3 × (1×1 Conv1d m → m, BN, ReLU) then
  `nn.Conv1d(m, 16, 1)`; `before_embedding_tower` = one (1×1 Conv1d m → 16, BN, ReLU); `USE_COORDS = True`;
  `embedding_conv_num = 2`: weight counts [(16 + 3)·16 = 304, 16], bias counts [16, 1], num_gen_params
  = 337; `controller = nn.Conv1d(16, 337, kernel_size=1)` (weight N(0, 0.01²), bias 0). The published
  config (config/dyco3d_multigpu_scannet.yaml) has m = 16.
- `parse_dynamic_params(params, out_channels)`: `split_with_sizes(params, weight_nums + bias_nums, dim=1)`,
  every layer's weights first, then every layer's biases; weights of all but the last layer reshaped to
  (n·16, -1, 1), biases to (n·16); the last layer's to (n, -1, 1) and (n).
- `mask_heads_forward`: the number of instances is `inst_batch_id.size(0)` and the batch ids are not
  otherwise read (each instance is decoded on every object point of the batch); mask features
  (points, 16, 1) permuted to (1, 16, points) and `repeat`ed per instance; relative coordinates =
  `clusters_coords_mean.reshape(-1, 1, 3) - coords_.reshape(1, -1, 3)` permuted to (n, 3, points), not
  normalised, concatenated in front: (n, 19, points) reshaped to (1, n·19, points); F.conv1d(groups=n) per
  layer with ReLU between; (1, n, points) comes back and `forward` stores `.squeeze(dim=0)` as
  `ret['mask_logits']` (at test time thresholded after a sigmoid in `generate_proposal`).
- `forward`: the head's points are the object points (semantic prediction > 1), `coords_` their
  coordinates; the proposals (at most `ins_sample_num = 70` by default) give the parameters through
  `roipool` → `before_embedding_tower` → `controller`.
"""
from __future__ import annotations

import collections
import re

import numpy as np
import onnx
import pytest
import torch

from polyexport import zoo
from polyexport.convert import convert, forms_of, to_deploy
from polyexport.errors import BadInput
from polyexport.exporter import export_onnx
from polyexport.layers.dyco3d import DyCo3DMaskHead
from polyexport.runtimes.tensorrt_lint import lint_tensorrt
from polyexport.testing import assert_equivalent, check_instance_counts, randomize_
from tests.foreign import dyco3d as upstream

FORMS = tuple(forms_of(DyCo3DMaskHead))
NAMES = ["mask_features", "params", "centres", "coords"]
AXES = {"mask_features": {0: "points"}, "coords": {0: "points"}, "params": {0: "instances"}, "centres": {0: "instances"},
        "output": {0: "instances", 1: "points"}}
#: one graph, each instance count at another point count
POINTS_AT = {0: 513, 1: 1, 7: 2048, 100: 333}

# (in_channels, channels, num_layers, use_coords)
CONFIGS = [(16, 16, 2, True), (16, 16, 2, False), (8, 12, 3, True), (32, 8, 4, True)]


def make_inputs(ref: DyCo3DMaskHead, points: int | dict[int, int] = 1000):
    """`make_inputs(n, rng)`: point features, parameters, and a scene of a few metres whose instance centres lie in it."""
    def make(n: int, rng: np.random.Generator) -> list[np.ndarray]:
        p = points if isinstance(points, int) else points.get(n, 50)
        coords = (rng.random((p, 3)) * [6.0, 5.0, 2.5]).astype(np.float32)
        centres = (rng.random((n, 3)) * [6.0, 5.0, 2.5]).astype(np.float32)
        return [rng.standard_normal((p, ref.in_channels), dtype=np.float32),
                rng.standard_normal((n, ref.num_gen_params), dtype=np.float32), centres, coords]
    return make


def torch_inputs(make, n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(a) for a in make(n, np.random.default_rng(seed)))


cfg_id = lambda c: "in{}ch{}L{}{}".format(c[0], c[1], c[2], "" if c[3] else "nocoords")  # noqa: E731


@pytest.mark.parametrize("points", [1, 37, 1000])
def test_reference_equals_upstream(points):
    theirs = randomize_(upstream.PointGroupDynamicHead(), seed=2)
    ours = DyCo3DMaskHead()
    assert (ours.weight_nums, ours.bias_nums) == (theirs.weight_nums, theirs.bias_nums)
    make = make_inputs(ours, points)
    for n in (1, 5):
        x = torch_inputs(make, n, seed=n)
        with torch.no_grad():
            generated = theirs.generate(torch.randn(n, 16)) * 30  # the controller's own layout, at a trained-like scale
            for params in (x[1], generated):
                got = ours(x[0], params, x[2], x[3])
                assert got.shape == (n, points)
                assert torch.equal(got, theirs.logits(x[0].unsqueeze(2), params, x[2], x[3]))  # the same ops in order


def test_paper_sizes():
    """337 = 304 + 16 weights, 16 + 1 biases; the head itself holds nothing to load."""
    ours, theirs = DyCo3DMaskHead(), upstream.PointGroupDynamicHead()
    assert ours.num_gen_params == theirs.num_gen_params == theirs.controller.out_channels == 337
    assert ours.weight_nums == [304, 16] and ours.bias_nums == [16, 1]
    assert ours.state_dict() == {} and not list(ours.parameters())


def test_inputs_reach_the_output():
    """Moving an instance's centre or the points changes its mask: the coordinates are exercised."""
    ref = DyCo3DMaskHead()
    x = torch_inputs(make_inputs(ref, 200), 6)
    base = ref(*x)
    for i, other in ((2, x[2] + 0.5), (3, x[3] - 0.5), (0, -x[0])):
        changed = list(x)
        changed[i] = other
        assert (ref(*changed) - base).abs().max() > 1e-3 * base.abs().max(), NAMES[i]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
def test_deploy_equals_reference(cfg, form):
    ref = DyCo3DMaskHead(*cfg)
    deployed = to_deploy(ref, form)
    for points in (1, 7, 999):
        make = make_inputs(ref, points)
        for n in (0, 1, 2, 7, 33):
            x = torch_inputs(make, n, seed=n)
            assert deployed(*x).shape == ref(*x).shape == (n, points)
            assert_equivalent(ref, deployed, *x)


def _no_conv_no_loop(path: str) -> None:
    graph = onnx.load(path).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    assert not {"Conv", "Loop", "Scan", "If", "Tile"} & set(ops), ops  # as written, the features are Tiled per instance
    small = {i.name for i in graph.initializer if np.prod(i.dims) <= 64}
    small |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    assert all(n.input[0] in small for n in graph.node if n.op_type == "Expand"), "an Expand of a run-time tensor"
    assert ops["MatMul"] >= 2


RUNTIME_CASES = [(CONFIGS[0], "batched_matmul"), (CONFIGS[0], "bias_in_matmul"), (CONFIGS[1], "bias_in_matmul"),
                 (CONFIGS[2], "bias_in_matmul")]


@pytest.mark.parametrize("cfg,form", RUNTIME_CASES, ids=[f"{cfg_id(c)}-{f}" for c, f in RUNTIME_CASES])
def test_one_graph_every_instance_and_point_count_on_runtimes(cfg, form):
    ref = DyCo3DMaskHead(*cfg)
    checks = check_instance_counts(ref, to_deploy(ref, form), make_inputs(ref, POINTS_AT), NAMES, AXES,
                                   counts=tuple(POINTS_AT), onnx_check=_no_conv_no_loop)
    assert {c.batch for c in checks} == set(POINTS_AT)
    assert {c.runtime for c in checks} >= {"onnxruntime", "openvino"}
    assert all(c.diffs[0].scale > 0 for c in checks if c.batch)


def _rules(path: str, version: str) -> set[tuple[str, str]]:
    return {(f.severity, f.rule) for f in lint_tensorrt(path, version)}


def test_tensorrt_lint_deploy_passes_as_written_flagged(tmp_path):
    ref = DyCo3DMaskHead()
    x = torch_inputs(make_inputs(ref, 300), 7)
    written_path = str(tmp_path / "as_written.onnx")
    export_onnx(ref, x, written_path, input_names=NAMES, n_outputs=1)
    for form in FORMS:
        deployed_path = str(tmp_path / f"{form}.onnx")
        export_onnx(to_deploy(ref, form), x, deployed_path, input_names=NAMES, n_outputs=1, dynamic_axes=AXES)
        for version in ("8.6", "10"):
            assert not {r for r in _rules(deployed_path, version) if r[0] != "info"}, (form, version)
    for version in ("8.6", "10"):
        written = _rules(written_path, version)
        assert {("warning", "dynamic-conv-weights"), ("error", "batch-in-group")} <= written, written
    group = {a.i for n in onnx.load(written_path).graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"}
    assert group == {7}


def test_wrong_parameter_length_refused():
    layout = "337 = weights 304 (16×19) + 16 (1×16), then biases 16 + 1"
    ref = DyCo3DMaskHead()
    x = list(torch_inputs(make_inputs(ref, 20), 4))
    for module in (ref, *(to_deploy(ref, f) for f in FORMS)):
        for bad in (x[1][:, :336], torch.cat([x[1], x[1][:, :1]], 1), x[1].reshape(-1)):
            with pytest.raises(BadInput, match=r"expected \(instances, 337\).*" + re.escape(layout)):
                module(x[0], bad, *x[2:])
    with pytest.raises(BadInput, match=re.escape("289 = weights 256 (16×16) + 16 (1×16), then biases 16 + 1")):
        DyCo3DMaskHead(use_coords=False)(*x)
    with pytest.raises(BadInput, match=r"coords of shape \(19, 3\), expected \(20, 3\)"):
        ref(x[0], x[1], x[2], x[3][:19])


def test_converter_picks_the_batched_form():
    """ONNX Runtime gets the biases inside the MatMuls (it runs the Adds as separate passes), every other target after."""
    ref = DyCo3DMaskHead()
    x = torch_inputs(make_inputs(ref, 100), 7)
    for kwargs, want in (({}, "batched_matmul"), ({"dynamic_batch": True}, "batched_matmul"), ({"target": "tensorrt"}, "batched_matmul"),
                         ({"target": "openvino"}, "batched_matmul"), ({"target": "onnxruntime"}, "bias_in_matmul")):
        deployed, records = convert(ref, **kwargs)
        assert [(r.type, r.form) for r in records] == [("DyCo3DMaskHead", want)], kwargs
        assert_equivalent(ref, deployed, *x)


def test_zoo_entry_deploys_and_holds_at_instance_counts():
    entry = zoo.get("dyco3d_mask_head")
    assert [i.name for i in entry.inputs] == NAMES and zoo.dynamic_axes(entry) == AXES
    model = zoo.instantiate("dyco3d_mask_head")
    assert model.num_gen_params == 337
    full = zoo.example_inputs(entry, sizes={"instances": 2})
    with torch.no_grad():
        assert model(*(torch.from_numpy(a) for a in full)).shape == (2, 50000)
    deployed, _ = convert(model, dynamic_batch=True)
    make = lambda n, rng: zoo.example_inputs(entry, seed=int(rng.integers(1 << 31)), sizes={"instances": n}, test=True)  # noqa: E731
    checks = check_instance_counts(model, deployed, make, NAMES, zoo.dynamic_axes(entry), counts=(0, 1, 7, 100))
    assert len(checks) >= 8
