"""The CLI end to end on the real runtimes: every documented way to call it, and every exit code."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import onnx
import pytest
import torch
import usernets

from polyexport.cli import main

FAST = ["--no-bench"]


def cli(*argv: str) -> int:
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    return e.value.code


def report(out: str) -> dict:
    with open(os.path.join(out, "report.json")) as f:
        return json.load(f)


def test_zoo_model_on_onnxruntime_with_latency(out, capsys):
    assert cli("zoo:resnet18", "--target", "onnxruntime", "--input-shape", "1x3x64x64", "--out", out, "--iterations", "3", "--threads", "1",
               "--bench-torch") == 0
    r = report(out)
    assert r["parity"]["onnxruntime"]["passed"] and r["parity"]["onnxruntime"]["max_rel_err"] < 1e-5
    assert set(r["latency_ms"]) == {"torch", "onnxruntime"} and r["latency_ms"]["onnxruntime"]["n"] >= 3
    assert {"reference", "export", "parity", "runtimes", "latency"} <= set(r["timings"]) and r["peak_rss_mb"] > 0
    assert r["runtimes"]["onnxruntime"]["threads"] == 1 and r["runtimes"]["onnxruntime"]["providers"] == ["CPUExecutionProvider"]
    assert sum(l["form"] == "folded" for l in r["layers"]) == 20  # every BN of ResNet-18 folded
    assert {"torch", "onnx", "onnxruntime"} <= set(r["versions"])
    assert os.path.exists(os.path.join(out, "model.onnx")) and os.path.exists(os.path.join(out, "report.md"))
    text = capsys.readouterr().out
    assert "parity with PyTorch" in text and "latency" in text and "model.onnx" in text
    assert not [n for n in os.listdir(os.path.dirname(out)) if n.startswith(".polyexport-")]  # temp folder moved, not left


def test_pickled_module_to_openvino_writes_ir(tmp_path, out):
    path = tmp_path / "model.pt"
    torch.save(usernets.build(), path)
    assert cli(str(path), "--target", "openvino", "--out", out, *FAST) == 2  # not without --trust-pickle
    assert not os.path.exists(out)
    assert cli(str(path), "--trust-pickle", "--target", "openvino", "--input-shape", "2x3x33x47", "--out", out, *FAST) == 0
    r = report(out)
    assert r["parity"]["openvino"]["passed"] and r["runtimes"]["openvino"]["precision"] == "f32"
    assert r["runtimes"]["openvino"]["performance_hint"] == "LATENCY"
    xml, bin_ = os.path.join(out, "model.xml"), os.path.join(out, "model.bin")
    assert os.path.exists(xml)
    n_params = sum(p.numel() for p in usernets.build().parameters())
    assert os.path.getsize(bin_) >= 4 * (n_params - 64)  # fp32 weights: the IR was not compressed to fp16


def test_state_dict_with_arch_to_onnx(tmp_path, out):
    path = tmp_path / "weights.pt"
    torch.save(usernets.build().state_dict(), path)
    assert cli(str(path), "--arch", "usernets:TinyNet", "--target", "onnx", "--input-shape", "1x3x32x32", "--out", out, *FAST) == 0
    r = report(out)
    assert r["target"] == "onnx" and r["parity"]["onnxruntime"]["passed"]


def test_callable_with_dynamic_batch_infers_shape(out, capsys):
    assert cli("usernets:build", "--target", "onnxruntime", "--dynamic-batch", "--out", out, *FAST) == 0
    assert "inferred from conv1" in capsys.readouterr().out
    model = onnx.load(os.path.join(out, "model.onnx"))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    r = report(out)
    assert r["inputs"][0]["shape"] == [1, 3, 224, 224]
    assert r["parity"]["onnxruntime"]["comparisons"] == 5  # 3 seeds at batch 1, then the range: batches 3 and 8


def test_two_inputs_two_outputs(out):
    assert cli("usernets:two_heads", "--input-shape", "1x3x16x16", "--input-shape", "1x5", "--out", out, "--runtime", "openvino", *FAST) == 0
    r = report(out)
    assert [i["name"] for i in r["inputs"]] == ["input_0", "input_1"]
    assert r["parity"]["onnxruntime"]["comparisons"] == 6 and r["parity"]["openvino"]["passed"]


def test_no_deploy_keeps_batchnorm(out):
    assert cli("usernets:build", "--no-deploy", "--input-shape", "1x3x32x32", "--out", out, *FAST) == 0
    r = report(out)
    assert r["deploy"] is False and r["layers"] == [] and "torch-deployed" not in r["parity"]


def test_parity_failure_exits_1_and_keeps_artifacts(out, capsys):
    assert cli("usernets:exports_differently", "--input-shape", "1x3x32x32", "--out", out, "--runtime", "openvino", *FAST) == 1
    r = report(out)
    assert r["passed"] is False and not r["parity"]["onnxruntime"]["passed"] and not r["parity"]["openvino"]["passed"]
    assert r["parity"]["torch-deployed"]["passed"]  # the deploy stage was fine: the export changed the numbers
    assert r["first_failing_stage"] == "onnx-exported"
    assert os.path.exists(os.path.join(out, "model.onnx"))
    assert "parity failed first at onnx-exported (and after it: onnx-simplified, onnxruntime, openvino)" in capsys.readouterr().err
    assert "parity FAILED" in open(os.path.join(out, "report.md")).read()


def test_loose_tolerance_is_honoured(out):
    assert cli("usernets:exports_differently", "--input-shape", "1x3x32x32", "--out", out, "--rtol", "0.2", *FAST) == 0


@pytest.mark.parametrize("args, message", [
    (["--input-shape", "1x3xbanana"], "malformed --input-shape '1x3xbanana'"),
    (["--input-shape", "1x0x32x32"], "every dimension must be positive"),
    (["--input-shape", "1x5x32x32"], "the model rejects input shape 1x5x32x32"),
    (["--target", "coreml"], "invalid choice: 'coreml'"),
    (["--form", "Nope=fast"], "unknown layer type 'Nope'"),
])
def test_bad_input_exit_2_nothing_written(args, message, out, capsys):
    assert cli("usernets:build", "--out", out, *FAST, *args) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(out)


def test_unexportable_op_names_the_module(out, capsys):
    assert cli("usernets:unexportable", "--input-shape", "1x3x32x32", "--out", out, *FAST) == 2
    err = capsys.readouterr().err
    assert "module 'conv2.1' (Cummax)" in err and "aten::cummax" in err
    assert not os.path.exists(out) and not [n for n in os.listdir(os.path.dirname(out)) if n.startswith(".polyexport-")]


def test_existing_out_needs_force(out):
    os.makedirs(out)
    marker = os.path.join(out, "keep.txt")
    open(marker, "w").write("mine")
    assert cli("usernets:build", "--input-shape", "1x3x32x32", "--out", out, *FAST) == 2
    assert open(marker).read() == "mine"
    assert cli("usernets:build", "--input-shape", "1x3x32x32", "--out", out, "--force", *FAST) == 2  # not polyexport's: kept
    assert open(marker).read() == "mine"
    os.remove(marker)
    assert cli("usernets:build", "--input-shape", "1x3x32x32", "--out", out, *FAST) == 2  # empty, but there: needs --force
    assert cli("usernets:build", "--input-shape", "1x3x32x32", "--out", out, "--force", *FAST) == 0
    assert cli("usernets:build", "--input-shape", "1x3x32x32", "--out", out, "--force", *FAST) == 0  # polyexport's own: replaced
    assert os.path.exists(os.path.join(out, "report.json"))


def test_missing_runtime_exit_3(out, capsys):
    pytest.importorskip("onnxruntime")
    if __import__("importlib").util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    assert cli("usernets:build", "--target", "tensorrt", "--runtime", "tensorrt", "--out", out, *FAST) == 3  # the engine, here
    captured = capsys.readouterr()
    assert "JetPack provides it" in captured.err
    assert "load" not in captured.out  # checked before any work
    assert not os.path.exists(out)


def test_dynamo_exporter_without_onnxscript_exit_3(out, capsys):
    """The dynamo exporter writes with onnxscript, which polyexport does not install: said before any work (it failed
    only at the export, after the form choice), with how to get it."""
    if __import__("importlib").util.find_spec("onnxscript") is not None:
        pytest.skip("onnxscript is installed here")
    assert cli("usernets:build", "--exporter", "dynamo", "--out", out, *FAST) == 3
    captured = capsys.readouterr()
    assert "pip install onnxscript" in captured.err and "load" not in captured.out
    assert not os.path.exists(out)


def test_onnxslim_asked_but_absent_exit_3(out, capsys, monkeypatch):
    """An asked simplifier that is not installed: exit 3 with the extra to install, not a graph left unsimplified with a
    note (onnxslim is installed here, so its absence is simulated where polyexport looks for it)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxslim" else real(name, *a))
    assert cli("usernets:build", "--simplifier", "onnxslim", "--out", out, *FAST) == 3
    assert "polyexport[slim]" in capsys.readouterr().err and not os.path.exists(out)


def test_console_script_and_pickle_from_cwd(tmp_path):
    """The installed entry point, in a fresh process, in the user's project folder."""
    proj = tmp_path / "proj"
    proj.mkdir()
    src = os.path.join(os.path.dirname(__file__), "userpkg", "usernets.py")
    (proj / "mynets.py").write_text(open(src).read())
    code = "import torch, mynets; torch.save(mynets.TinyNet(), 'model.pt')"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", code], cwd=proj, check=True, env=env)
    cmd = [sys.executable, "-m", "polyexport", "model.pt", "--trust-pickle", "--input-shape", "1x3x32x32", "--no-bench", "--out", "o"]
    done = subprocess.run(cmd, cwd=proj, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "saved in training mode" in done.stdout
    elsewhere = subprocess.run([*cmd[:3], str(proj / "model.pt"), *cmd[4:-1], str(tmp_path / "o2")], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert elsewhere.returncode == 2 and "not importable here" in elsewhere.stderr


def test_layers_lists_every_registered_form(capsys):
    from polyexport.convert import registered_layers

    with pytest.raises(SystemExit) as e:
        main(["layers", "--markdown"])
    assert e.value.code == 0
    table = capsys.readouterr().out
    for ref_type, entry in registered_layers().items():
        for form in entry.forms:
            assert f"| {ref_type.__name__} | {form} |" in table


def test_gpu_device_without_gpu_provider_exit_3(out, capsys):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    assert cli("usernets:build", "--device", "cuda", "--out", out, *FAST) == 3
    assert "CUDAExecutionProvider" in capsys.readouterr().err and not os.path.exists(out)
