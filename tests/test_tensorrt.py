"""TensorRT runner and `verify --target tensorrt`: run where `tensorrt` imports and a GPU is present; skip with
the reason elsewhere. Without TensorRT, what must hold is tested too: exit 3 with the install hint, nothing written.

The machines polyexport is developed and tested on have neither, so the TensorRT tests have not run here.
"""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from polyexport.exporter import export_onnx
from polyexport.runtimes import RunnerOptions, make_runner

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
requires_trt = pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installed (it needs an NVIDIA GPU; not installable on the CI machines)")


def test_batch_range_is_validated(tmp_path, capsys):
    from polyexport.cli import main

    with pytest.raises(SystemExit) as e:
        main(["usernets:build", "--dynamic-batch", "--batch-range", "4,2,8", "--out", str(tmp_path / "o"), "--no-bench"])
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


def _cli(*argv: str) -> int:
    from polyexport.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(argv))
    return e.value.code


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("b") / "out")
    assert _cli("usernets:build", "--input-shape", "2x3x24x24", "--dynamic-batch", "--bundle", "--no-bench", "--out", out) == 0
    return os.path.join(out, "bundle")


def _listing(folder: str) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folder` with its size and modification time."""
    return {os.path.relpath(os.path.join(d, f), folder): (os.stat(os.path.join(d, f)).st_size, os.stat(os.path.join(d, f)).st_mtime_ns)
            for d, dirs, files in os.walk(folder) for f in [*dirs, *files]}


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here: the missing-TensorRT path cannot be taken")
def test_verify_without_tensorrt_is_exit_3_with_the_hint_and_writes_nothing(bundle, tmp_path, capsys):
    before = _listing(bundle)
    result = tmp_path / "r.json"
    assert _cli("verify", bundle, "--target", "tensorrt", "--json", str(result)) == 3
    err = capsys.readouterr().err
    assert "JetPack provides it" in err and "nvidia-jetpack" in err and err.count("\n") == 1, err
    assert _listing(bundle) == before and not result.exists()


@requires_trt
def test_verify_builds_beside_the_bundle_and_reuses_the_engine(bundle, tmp_path):
    """First verify builds (timing cache and engine in BUNDLE/tensorrt/), the second reuses the engine; both pass."""
    runs = []
    for i in range(2):
        result = tmp_path / f"r{i}.json"
        assert _cli("verify", bundle, "--target", "tensorrt", "--iterations", "3", "--json", str(result)) == 0
        runs.append(json.loads(result.read_text()))
    assert [r["runtime"]["engine"] for r in runs] == ["built", "reused"]
    assert runs[0]["runtime"]["profile"] == {"input": {"min": [1, 3, 24, 24], "opt": [2, 3, 24, 24], "max": [8, 3, 24, 24]}}
    cache = os.path.join(bundle, "tensorrt")
    assert os.path.dirname(runs[1]["runtime"]["engine_path"]) == cache and os.path.isfile(runs[1]["runtime"]["timing_cache"])
    assert runs[1]["parity"]["tensorrt"]["comparisons"] == 6 and runs[1]["latency_ms"]["tensorrt"]["n"] >= 3
    assert _cli("verify", bundle, "--target", "tensorrt", "--no-bench", "--rebuild-engine", "--json", str(tmp_path / "r.json")) == 0
    assert json.loads((tmp_path / "r.json").read_text())["runtime"]["engine"] == "built"


@requires_trt
def test_verify_fp16_builds_an_fp16_engine(bundle, tmp_path):
    result = tmp_path / "r.json"
    code = _cli("verify", bundle, "--target", "tensorrt", "--fp16", "--no-bench", "--json", str(result))
    r = json.loads(result.read_text())
    assert r["precision"] == {"fp16": True, "source": "command line"} and r["runtime"]["precision"] == "fp16"
    assert code == (0 if r["passed"] else 1) and r["parity"]["tensorrt"]["precision"] == "fp16"
