"""CondInst's dynamic mask head: the reference equals AdelaiDet's head, the deploy form equals the
reference in PyTorch and, from one ONNX graph, on ONNX Runtime and OpenVINO at 0, 1, 7 and 100 instances.

Facts verified in aim-uofa/AdelaiDet @ 3672122 (re-created in tests/foreign/condinst.py):
- `adet/config/defaults.py`: MODEL.CONDINST.MASK_BRANCH.OUT_CHANNELS = 8, MASK_HEAD.CHANNELS = 8,
  MASK_HEAD.NUM_LAYERS = 3, MASK_HEAD.DISABLE_REL_COORDS = False, MASK_OUT_STRIDE = 4,
  MODEL.FCOS.SIZES_OF_INTEREST = [64, 128, 256, 512].
- `adet/modeling/condinst/dynamic_mask_head.py`, `DynamicMaskHead.__init__`: weight counts per layer
  (8 + 2)·8, 8·8, 8·1 (without the 2 when DISABLE_REL_COORDS), bias counts 8, 8, 1: num_gen_params = 169.
  Buffers `sizes_of_interest` = tensor(soi + [2·soi[-1]]) (int64: [64, 128, 256, 512, 1024]) and `_iter`
  (zeros(1)); no parameters.
- `parse_dynamic_params`: `split_with_sizes(params, weight_nums + bias_nums, dim=1)`, so each row holds
  every layer's weights first, then every layer's biases; weight l reshaped to (n·out, in, 1, 1)
  (row-major out × in), bias to (n·out).
- `mask_heads_forward_with_coords`: pixel locations from `adet/utils/comm.py::compute_locations(H, W,
  stride=mask_feat_stride)`: (x, y) = index·stride + stride // 2, row-major over (y, x); relative coords
  = instance location − pixel location, permuted to (n, 2, H·W) and divided by
  sizes_of_interest[fpn_levels]; concatenated in front of mask_feats[im_inds] (n, 8, H·W); reshaped to
  (1, n·10, H, W); `mask_heads_forward` runs F.conv2d(groups=n) per layer with ReLU between layers;
  logits reshaped (n, 1, H, W), then `comm.py::aligned_bilinear` by mask_feat_stride / mask_out_stride
  (replicate pad right/bottom, bilinear align_corners to f·h + 1, replicate pad f // 2 left/top, crop).
- `adet/modeling/condinst/condinst.py`: mask_feat_stride is `mask_branch.out_stride` (p3: 8); the
  controller is Conv2d(in, 169, 3, padding=1) on the FCOS tower; eval `__call__` runs the head only
  when there are instances and stores sigmoid(logits) as `pred_global_masks`.
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
from polyexport.deploy_layers.condinst import aligned_bilinear_matrix
from polyexport.errors import BadInput
from polyexport.exporter import export_onnx
from polyexport.layers.condinst import CondInstMaskHead, aligned_bilinear
from polyexport.runtimes.tensorrt_lint import lint_tensorrt
from polyexport.testing import assert_equivalent, check_instance_counts
from tests.foreign import condinst as upstream

FORMS = tuple(forms_of(CondInstMaskHead))
NAMES = ["mask_feats", "mask_head_params", "locations", "fpn_levels", "im_inds"]
INSTANCE_AXES = {**{n: {0: "instances"} for n in NAMES[1:]}, "output": {0: "instances"}}

# (in_channels, channels, num_layers, disable_rel_coords, mask_feat_stride, mask_out_stride, images, H, W)
CONFIGS = [
    (8, 8, 3, False, 8, 4, 1, 13, 18),  # AdelaiDet's defaults, a small non-square map
    (8, 8, 3, False, 8, 4, 3, 9, 7),  # three images, odd sizes
    (8, 8, 3, True, 8, 4, 2, 11, 6),  # no relative coordinates
    (16, 12, 4, False, 16, 4, 2, 7, 10),  # wider, deeper, ×4 upsampling (odd factor//2 shift)
    (8, 8, 2, False, 8, 8, 1, 5, 12),  # two layers, no upsampling
    (8, 4, 3, False, 24, 8, 2, 6, 5),  # ×3 upsampling
]


def head(cfg) -> CondInstMaskHead:
    cin, ch, layers, no_coords, feat_stride, out_stride = cfg[:6]
    return CondInstMaskHead(cin, ch, layers, no_coords, mask_feat_stride=feat_stride, mask_out_stride=out_stride).eval()


def make_inputs(ref: CondInstMaskHead, images: int, h: int, w: int):
    """`make_inputs(n, rng)`: features, generated parameters and instance locations spread over the image."""
    def make(n: int, rng: np.random.Generator) -> list[np.ndarray]:
        stride = ref.mask_feat_stride
        return [rng.standard_normal((images, ref.in_channels, h, w), dtype=np.float32),
                rng.standard_normal((n, ref.num_gen_params), dtype=np.float32),
                (rng.random((n, 2)) * [w * stride, h * stride]).astype(np.float32),
                rng.integers(0, 5, n), rng.integers(0, images, n)]
    return make


def torch_inputs(make, n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(a) for a in make(n, np.random.default_rng(seed)))


def instances(x: tuple[torch.Tensor, ...]) -> upstream.Instances:
    return upstream.Instances(mask_head_params=x[1], locations=x[2], fpn_levels=x[3], im_inds=x[4])


def upstream_head(cfg) -> upstream.DynamicMaskHead:
    cin, ch, layers, no_coords, _, out_stride = cfg[:6]
    return upstream.DynamicMaskHead(upstream.make_cfg(cin, ch, layers, no_coords, out_stride=out_stride)).eval()


cfg_id = lambda c: "in{}ch{}L{}{}_s{}to{}_b{}_{}x{}".format(c[0], c[1], c[2], "nocoords" if c[3] else "", *c[4:])  # noqa: E731


@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
def test_reference_equals_upstream(cfg):
    ours, theirs = head(cfg), upstream_head(cfg)
    assert (ours.weight_nums, ours.bias_nums, ours.num_gen_params) == (theirs.weight_nums, theirs.bias_nums, theirs.num_gen_params)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    make = make_inputs(ours, *cfg[6:])
    for n in (1, 5):
        x = torch_inputs(make, n, seed=n)
        got = ours(*x)
        want = theirs.mask_heads_forward_with_coords(x[0], cfg[4], instances(x))
        assert got.shape == (n, 1, cfg[7] * cfg[4] // cfg[5], cfg[8] * cfg[4] // cfg[5])
        assert torch.equal(got, want)  # the same ops in the same order
        assert torch.equal(got.sigmoid(), theirs(x[0], cfg[4], instances(x)).pred_global_masks)


def test_paper_sizes_and_state_dict():
    """169 = 80 + 64 + 8 weights, 8 + 8 + 1 biases; upstream's two buffers, same names and values."""
    ours, theirs = CondInstMaskHead(), upstream.DynamicMaskHead(upstream.make_cfg())
    assert ours.num_gen_params == theirs.num_gen_params == 169
    assert ours.weight_nums == [80, 64, 8] and ours.bias_nums == [8, 8, 1]
    assert set(ours.state_dict()) == set(theirs.state_dict()) == {"sizes_of_interest", "_iter"}
    assert torch.equal(ours.sizes_of_interest, theirs.sizes_of_interest) and ours.sizes_of_interest.dtype == torch.int64
    theirs._iter += 3
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert ours._iter.item() == 3 and not list(ours.parameters())
    with pytest.raises(ValueError, match="at least 2 layers"):  # upstream's one-layer layout cannot run either
        CondInstMaskHead(num_layers=1)


def test_inputs_reach_the_output():
    """The test inputs exercise every input: other image indices, levels or locations change the masks."""
    ref = head(CONFIGS[1])
    x = torch_inputs(make_inputs(ref, 3, 9, 7), 6)
    base = ref(*x)
    for i, other in ((4, (x[4] + 1) % 3), (3, (x[3] + 1) % 5), (2, x[2] + 8.0)):
        changed = list(x)
        changed[i] = other
        assert (ref(*changed) - base).abs().max() > 1e-3 * base.abs().max(), NAMES[i]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
def test_deploy_equals_reference(cfg, form):
    ref = head(cfg)
    deployed = to_deploy(ref, form)
    make = make_inputs(ref, *cfg[6:])
    for n in (0, 1, 2, 7, 33):
        x = torch_inputs(make, n, seed=n)
        assert_equivalent(ref, deployed, *x)
        assert deployed(*x).shape == ref(*x).shape


@pytest.mark.parametrize("size", [1, 2, 5, 12])
@pytest.mark.parametrize("factor", [1, 2, 3, 4])
def test_upsampling_matrix_is_aligned_bilinear(size, factor):
    """aligned_bilinear is separable: along each axis of a map whose other axis has length 1, it is A @ v."""
    a = torch.from_numpy(aligned_bilinear_matrix(size, factor))
    v = torch.randn(3, 1, size, 1, dtype=torch.float64)
    assert torch.allclose((a @ v)[..., 0], aligned_bilinear(v, factor)[..., 0], rtol=0, atol=1e-12)
    v = v.transpose(2, 3)
    assert torch.allclose((v @ a.T)[..., 0, :], aligned_bilinear(v, factor)[..., 0, :], rtol=0, atol=1e-12)


def _no_conv_no_loop(path: str) -> None:
    ops = collections.Counter(n.op_type for n in onnx.load(path).graph.node)
    assert not {"Conv", "Loop", "Scan", "If"} & set(ops), ops
    assert ops["MatMul"] >= 2


RUNTIME_CASES = [(CONFIGS[0], "batched_matmul"), (CONFIGS[2], "batched_matmul"), (CONFIGS[3], "batched_matmul"),
                 (CONFIGS[3], "batched_resize")]


@pytest.mark.parametrize("cfg,form", RUNTIME_CASES, ids=[f"{cfg_id(c)}-{f}" for c, f in RUNTIME_CASES])
def test_one_graph_every_instance_count_on_runtimes(cfg, form):
    ref = head(cfg)
    checks = check_instance_counts(ref, to_deploy(ref, form), make_inputs(ref, *cfg[6:]), NAMES, INSTANCE_AXES,
                                   counts=(0, 1, 7, 100), onnx_check=_no_conv_no_loop)
    assert {c.batch for c in checks} == {0, 1, 7, 100}
    assert {c.runtime for c in checks} >= {"onnxruntime", "openvino"}
    assert all(c.diffs[0].scale > 0 for c in checks if c.batch)  # outputs that are not all zero


def _rules(path: str, version: str) -> set[tuple[str, str]]:
    return {(f.severity, f.rule) for f in lint_tensorrt(path, version)}


def test_tensorrt_lint_deploy_passes_as_written_flagged(tmp_path):
    ref = head(CONFIGS[0])
    x = torch_inputs(make_inputs(ref, 1, 13, 18), 7)
    written_path = str(tmp_path / "as_written.onnx")
    export_onnx(ref, x, written_path, input_names=NAMES, n_outputs=1)  # a fixed count: upstream's loop-free form
    for form in FORMS:
        deployed_path = str(tmp_path / f"{form}.onnx")
        export_onnx(to_deploy(ref, form), x, deployed_path, input_names=NAMES, n_outputs=1, dynamic_axes=INSTANCE_AXES)
        for version in ("8.6", "10"):
            assert not {r for r in _rules(deployed_path, version) if r[0] != "info"}, (form, version)
    for version in ("8.6", "10"):
        written = _rules(written_path, version)
        assert {("warning", "dynamic-conv-weights"), ("error", "batch-in-group")} <= written, written
    group = {a.i for n in onnx.load(written_path).graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"}
    assert group == {7}  # the instance count, frozen


def test_wrong_parameter_length_refused():
    layout = "169 = weights 80 (8×10) + 64 (8×8) + 8 (1×8), then biases 8 + 8 + 1"
    ref = CondInstMaskHead()
    x = list(torch_inputs(make_inputs(ref, 1, 5, 6), 4))
    for module in (ref, *(to_deploy(ref, f) for f in FORMS)):
        for bad in (x[1][:, :168], torch.cat([x[1], x[1][:, :8]], 1), x[1].reshape(-1)):
            with pytest.raises(BadInput, match=r"expected \(instances, 169\).*" + re.escape(layout)):
                module(x[0], bad, *x[2:])
    without = CondInstMaskHead(disable_rel_coords=True)
    with pytest.raises(BadInput, match=r"153 = weights 64 \(8×8\) \+ 64 \(8×8\) \+ 8 \(1×8\), then biases 8 \+ 8 \+ 1"):
        without(x[0], x[1], *x[2:])
    with pytest.raises(BadInput, match=r"locations of shape \(4, 3\), expected \(4, 2\)"):
        ref(x[0], x[1], torch.zeros(4, 3), *x[3:])


def test_converter_picks_the_batched_form():
    """ONNX Runtime gets the Resize upsampling (its Resize is faster than the matrices), every other target the matrices."""
    ref = head(CONFIGS[0])
    x = torch_inputs(make_inputs(ref, 1, 13, 18), 7)
    for kwargs, want in (({}, "batched_matmul"), ({"dynamic_batch": True}, "batched_matmul"), ({"target": "tensorrt"}, "batched_matmul"),
                         ({"target": "openvino"}, "batched_matmul"), ({"target": "onnxruntime"}, "batched_resize")):
        deployed, records = convert(ref, **kwargs)
        assert [(r.type, r.form) for r in records] == [("CondInstMaskHead", want)], kwargs
        assert_equivalent(ref, deployed, *x)


def test_zoo_entry_deploys_and_holds_at_instance_counts():
    entry = zoo.get("condinst_mask_head")
    assert [i.name for i in entry.inputs] == NAMES and zoo.dynamic_axes(entry) == INSTANCE_AXES
    model = zoo.instantiate("condinst_mask_head")
    assert model.num_gen_params == 169 and entry.input_shape == (1, 8, 100, 136)
    full = zoo.example_inputs(entry, sizes={"instances": 2})
    with torch.no_grad():
        assert model(*(torch.from_numpy(a) for a in full)).shape == (2, 1, 200, 272)
    deployed, _ = convert(model, dynamic_batch=True)
    make = lambda n, rng: zoo.example_inputs(entry, seed=int(rng.integers(1 << 31)), sizes={"instances": n}, test=True)  # noqa: E731
    checks = check_instance_counts(model, deployed, make, NAMES, zoo.dynamic_axes(entry), counts=(0, 1, 7, 100))
    assert len(checks) >= 8
