"""TensorRT runner: runs where `tensorrt` imports and a GPU is present; skips with the reason elsewhere.

The machines polyexport is developed and tested on have neither, so these tests have not run here.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from polyexport.export import export_onnx
from polyexport.runtimes import RunnerOptions, make_runner

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
requires_trt = pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installed (it needs an NVIDIA GPU; not installable on the CI machines)")


def test_batch_range_is_validated(tmp_path, capsys):
    from polyexport.cli import main

    with pytest.raises(SystemExit) as e:
        main(["usernets:build", "--batch-range", "4,2,8", "--out", str(tmp_path / "o"), "--no-bench"])
    assert e.value.code == 2 and "MIN,OPT,MAX" in capsys.readouterr().err


@requires_trt
@pytest.mark.parametrize("dynamic", [False, True])
def test_engine_build_parity_and_reload(tmp_path, dynamic):
    from usernets import build

    model = build()
    path = str(tmp_path / "m.onnx")
    export_onnx(model, (torch.randn(2, 3, 32, 32),), path, input_names=["input"], n_outputs=1, dynamic_batch=dynamic)
    runner = make_runner("tensorrt", RunnerOptions(batch_range=(1, 2, 8)))
    artifacts = runner.load(path, str(tmp_path))
    for b in ([1, 2, 8] if dynamic else [2]):
        x = np.random.default_rng(b).standard_normal((b, 3, 32, 32), dtype=np.float32)
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        got = runner.run({"input": x})[0]
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert runner.describe()["precision"].startswith("fp32")
    runner.close()
    again = make_runner("tensorrt")
    again.load_engine(artifacts["tensorrt_engine"])  # the serialized engine reloads
    again.close()


@requires_trt
def test_engine_from_another_version_is_a_clear_error(tmp_path):
    import json

    from polyexport.errors import BadInput

    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00" * 64)
    (tmp_path / "model.engine.json").write_text(json.dumps({"tensorrt": "7.0.0", "gpu": "Some Other GPU"}))
    with pytest.raises(BadInput, match="rebuild it from the ONNX"):
        make_runner("tensorrt").load_engine(str(engine))
