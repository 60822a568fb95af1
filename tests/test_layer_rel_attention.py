"""RelPosAttention (CoAtNet's relative attention, timm's Attention2d + RelPosBias): the folded-bias form
is exact, batch-dynamic, leaves no Gather of the table in the graph, and the state_dict keeps timm's names."""
from __future__ import annotations

import onnx
import pytest
import torch
from onnx import numpy_helper

from polyexport.convert import convert, to_deploy
from polyexport.deploy_layers.rel_attention import RelPosAttentionFolded
from polyexport.layers.rel_attention import RelPosAttention, relative_position_index
from polyexport.testing import assert_equivalent, check_on_runtimes, randomize_


def lively(m: RelPosAttention, seed: int = 0) -> RelPosAttention:
    """Random weights, with a table large enough that the bias visibly moves the softmax."""
    randomize_(m, seed)
    with torch.no_grad():
        m.rel_pos.relative_position_bias_table.normal_(0, 1.0)
    return m.eval()


CONFIGS = [  # (dim, dim_out, dim_head, grid)
    (64, 64, 32, (7, 7)),
    (32, 64, 16, (5, 3)),  # expand-first (dim → dim_out), odd non-square grid
    (96, 96, 32, (4, 6)),
]


def test_index_matches_timm_order():
    """(Δh + h − 1)(2w − 1) + (Δw + w − 1) over row-major tokens: the first row is the last table row for Δ = 0."""
    idx = relative_position_index((2, 3))
    assert idx.shape == (6, 6) and idx.min() == 0 and idx.max() == 3 * 5 - 1
    assert idx[0, 0] == idx[5, 5] == (2 - 1) * 5 + (3 - 1)  # Δ = (0, 0): the table's centre


def test_state_dict_names_as_timm():
    keys = set(RelPosAttention(64, 64, window_size=(7, 7)).state_dict())
    assert keys == {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias", "rel_pos.relative_position_bias_table"}


@pytest.mark.parametrize("cfg", CONFIGS)
def test_folded_bias_exact_in_torch(cfg):
    dim, dim_out, dim_head, grid = cfg
    ref = lively(RelPosAttention(dim, dim_out, dim_head, window_size=grid))
    dep = to_deploy(ref, "folded_bias")
    assert isinstance(dep, RelPosAttentionFolded)
    for b in (1, 3):
        assert_equivalent(ref, dep, torch.randn(b, dim, *grid))
    with torch.no_grad():  # the bias matters: without it the output is clearly different
        ref2 = lively(RelPosAttention(dim, dim_out, dim_head, window_size=grid))
        ref2.rel_pos.relative_position_bias_table.zero_()
        x = torch.randn(2, dim, *grid)
        assert (ref(x) - ref2(x)).abs().max() > 1e-3 * ref(x).abs().max()


def test_wrong_grid_rejected():
    with pytest.raises(ValueError, match="token grid"):
        RelPosAttention(32, 32, window_size=(7, 7))(torch.randn(1, 32, 8, 8))


def _no_table_gather(path: str) -> None:
    model = onnx.load(path)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather":
            data = inits.get(node.input[0])
            assert data is None or data.ndim < 2, f"Gather of a constant table left in the graph: {node.name}"


@pytest.mark.parametrize("cfg", CONFIGS[:2])
def test_folded_bias_on_runtimes_dynamic_batch(cfg, tmp_path):
    dim, dim_out, dim_head, grid = cfg
    ref = lively(RelPosAttention(dim, dim_out, dim_head, window_size=grid))
    checks = check_on_runtimes(ref, to_deploy(ref, "folded_bias"), [(2, dim, *grid)], batches=(1, 4), onnx_check=_no_table_gather,
                               workdir=str(tmp_path))
    assert checks, "no runtime installed"


def test_convert_swaps_it():
    model = torch.nn.Sequential(lively(RelPosAttention(32, 32, window_size=(4, 4))))
    deployed, records = convert(model, dynamic_batch=True)
    assert [r.form for r in records if r.type == "RelPosAttention"] == ["folded_bias"]
    assert_equivalent(model, deployed, torch.randn(2, 32, 4, 4))
