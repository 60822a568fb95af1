"""The portable bundle (round trip, torch-free verify, tampering) and the static TensorRT check."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from polyexport.cli import main
from polyexport.exporter import export_onnx
from polyexport.runtimes.tensorrt_lint import lint_tensorrt


def cli(*argv: str) -> int:
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    return e.value.code


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("b") / "out")
    assert cli("usernets:build", "--input-shape", "2x3x24x24", "--dynamic-batch", "--bundle", "--no-bench", "--out", out) == 0
    return os.path.join(out, "bundle")


VERIFY_WITHOUT_TORCH = """
import sys
sys.modules['torch'] = None   # any `import torch` now raises ImportError
from polyexport.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
def test_bundle_verifies_without_torch(bundle, target, tmp_path):
    pytest.importorskip(target)
    result = tmp_path / "r.json"
    done = subprocess.run([sys.executable, "-c", VERIFY_WITHOUT_TORCH, "verify", bundle, "--target", target, "--iterations", "3", "--json", str(result)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr + done.stdout
    r = json.loads(result.read_text())
    assert r["passed"] and r["parity"][target]["comparisons"] == 6 and r["latency_ms"][target]["n"] >= 3  # 3 seeds at batch 2, then batches 1, 3, 8
    manifest = json.load(open(os.path.join(bundle, "manifest.json")))
    assert manifest["dynamic_batch"] and manifest["inputs"][0]["shape"] == [2, 3, 24, 24]


def test_a_stricter_tolerance_from_the_command_line_is_applied_and_said(bundle, tmp_path):
    """rtol 0 leaves only the model's own noise floor (parity.NOISE_MULTIPLE) as the allowance."""
    result = tmp_path / "r.json"
    cli("verify", bundle, "--target", "onnxruntime", "--no-bench", "--rtol", "0", "--atol", "0", "--json", str(result))
    r = json.loads(result.read_text())
    p = r["parity"]["onnxruntime"]
    assert r["tolerance"]["source"] == "command line" and p["rtol"] == 0 and p["atol"] == 0
    assert p["effective_rtol"] == p["noise_multiple"] * p["noise_floor"] and r["passed"] == (p["max_rel_err"] <= p["effective_rtol"])


@pytest.mark.parametrize("damage", ["missing", "altered", "manifest"])
def test_damaged_bundle_exit_2(bundle, tmp_path, damage, capsys):
    copy = str(tmp_path / "copy")
    shutil.copytree(bundle, copy)
    if damage == "missing":
        os.remove(os.path.join(copy, "reference.npz"))
    elif damage == "altered":
        ref = dict(np.load(os.path.join(copy, "reference.npz")))
        ref["seed0/0"] = ref["seed0/0"] + 1.0  # someone "fixed" the reference
        np.savez(os.path.join(copy, "reference.npz"), **ref)
    else:
        open(os.path.join(copy, "manifest.json"), "w").write("{not json")
    assert cli("verify", copy, "--target", "onnxruntime", "--no-bench") == 2
    assert {"missing": "reference.npz is missing", "altered": "does not match its checksum", "manifest": "unreadable"}[damage] in capsys.readouterr().err


class PerSampleKernels(nn.Module):
    """A dynamic conv as research code writes it: per-sample kernels, batch folded into groups."""

    def __init__(self):
        super().__init__()
        self.bank = nn.Parameter(torch.randn(3, 8, 4, 3, 3) * 0.1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        b, c, h, w = x.shape
        att = torch.softmax(self.fc(x.mean((2, 3))), 1)
        k = (att @ self.bank.view(3, -1)).view(b * 8, c, 3, 3)
        return F.conv2d(x.reshape(1, b * c, h, w), k, padding=1, groups=b).view(b, 8, h, w)


def test_lint_flags_reference_dynamic_conv_and_passes_static_graphs(tmp_path, capsys):
    bad, good = str(tmp_path / "bad.onnx"), str(tmp_path / "good.onnx")
    export_onnx(PerSampleKernels().eval(), (torch.randn(2, 4, 8, 8),), bad, input_names=["input"], n_outputs=1)
    rules = {(f.severity, f.rule) for f in lint_tensorrt(bad, "8.6")}
    assert ("error", "batch-in-group") in rules and ("warning", "dynamic-conv-weights") in rules
    from usernets import build

    export_onnx(build(), (torch.randn(1, 3, 16, 16),), good, input_names=["input"], n_outputs=1, dynamic_batch=True)
    assert [f for f in lint_tensorrt(good, "10") if f.severity == "error"] == []
    assert cli("check", good) == 0
    assert cli("check", bad, "--trt-version", "10") == 1
    assert "batch folded into group" in capsys.readouterr().out


def test_lint_version_rules(tmp_path):
    class Ops(nn.Module):
        def forward(self, x):
            return F.interpolate(x, scale_factor=2, mode="bicubic")

    path = str(tmp_path / "ops.onnx")
    export_onnx(Ops(), (torch.randn(1, 2, 4, 4),), path, input_names=["input"], n_outputs=1, opset=18)
    for version in ("8.6", "10"):
        rules = {f.rule for f in lint_tensorrt(path, version)}
        assert "resize-mode" in rules
        assert ("opset" in rules) == (version == "8.6")  # opset 18 is past 8.6's 17, within 10's 20
    assert cli("check", str(tmp_path / "nope.onnx")) == 2


def _lint_layer(module: nn.Module, shape, tmp_path, target: str | None):
    from polyexport.convert import convert

    model = module.eval() if target is None else convert(module, target=target, dynamic_batch=True)[0]
    path = str(tmp_path / f"{type(module).__name__}-{target}.onnx")
    export_onnx(model, (torch.randn(*shape),), path, input_names=["input"], n_outputs=1, dynamic_batch=target is not None)
    return {(f.severity, f.rule) for v in ("8.6", "10") for f in lint_tensorrt(path, v)}


@pytest.mark.parametrize("make", ["dynamic_conv", "drconv"])
def test_reference_layers_are_flagged_and_tensorrt_forms_pass(make, tmp_path):
    """The research layers as written give TensorRT computed conv weights; their TensorRT deploy forms do not."""
    from polyexport.testing import randomize_

    if make == "dynamic_conv":
        from polyexport.layers.dynamic_conv import Dynamic_conv2d

        layer = randomize_(Dynamic_conv2d(8, 8, 3, padding=1, K=4), seed=1)
    else:
        from polyexport.layers.drconv import DRConv2d

        layer = randomize_(DRConv2d(8, 8, 3, region_num=4, padding=1), seed=1)
    shape = (2, 8, 12, 12)
    as_written = _lint_layer(layer, shape, tmp_path, None)
    assert ("warning", "dynamic-conv-weights") in as_written and ("error", "batch-in-group") in as_written
    deployed = _lint_layer(layer, shape, tmp_path, "tensorrt")
    assert not {r for s, r in deployed if s == "error"} and ("warning", "dynamic-conv-weights") not in deployed


def _tamper(bundle: str, tmp_path, edit) -> str:
    copy = str(tmp_path / "copy")
    shutil.copytree(bundle, copy)
    path = os.path.join(copy, "manifest.json")
    manifest = json.load(open(path))
    edit(manifest, copy)
    json.dump(manifest, open(path, "w"))
    return copy


@pytest.mark.parametrize("field, value, message", [
    ("inputs", [{"name": "input", "shape": [2, -3]}], "field 'inputs' is malformed"),
    ("outputs", "output", "field 'outputs' is malformed"),
    ("parity_sets", [], "field 'parity_sets' is malformed"),
    ("dynamic_batch", "yes", "field 'dynamic_batch' is malformed"),
    ("sha256", {"model.onnx": "0" * 64}, "field 'sha256' is malformed"),
    ("format", 1, "field 'format' is malformed"),
    ("model", None, "field 'model' is malformed"),
])
def test_malformed_manifest_fields_are_one_line_exit_2(bundle, tmp_path, capsys, field, value, message):
    copy = _tamper(bundle, tmp_path, lambda m, _: m.__setitem__(field, value))
    assert cli("verify", copy, "--target", "onnxruntime", "--no-bench") == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_a_loosened_tolerance_in_the_bundle_is_caught(bundle, tmp_path, capsys):
    """The tolerance lives in the checksummed tolerance.json: loosening it there is tampering, like editing the reference."""
    def loosen(_manifest, copy):
        path = os.path.join(copy, "tolerance.json")
        tol = json.load(open(path))
        tol["rtol"] = 0.5
        json.dump(tol, open(path, "w"))

    copy = _tamper(bundle, tmp_path, loosen)
    assert cli("verify", copy, "--target", "onnxruntime", "--no-bench") == 2
    assert "tolerance.json does not match its checksum" in capsys.readouterr().err


def test_a_looser_tolerance_comes_only_from_the_command_line_and_is_said(bundle, tmp_path, capsys):
    """A bundle whose model is off (weights ×1.5 in the graph) fails by its own tolerance; the command line may
    loosen it, and verify says so."""
    import onnx
    from onnx import numpy_helper

    def scale_weights(manifest, copy):
        path = os.path.join(copy, "model.onnx")
        model = onnx.load(path)
        for t in model.graph.initializer:
            if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 4:
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 1.5, t.name))
        onnx.save(model, path)
        manifest["sha256"]["model.onnx"] = __import__("polyexport.bundle", fromlist=["_sha256"])._sha256(path)

    copy = _tamper(bundle, tmp_path, scale_weights)
    assert cli("verify", copy, "--target", "onnxruntime", "--no-bench") == 1
    capsys.readouterr()
    assert cli("verify", copy, "--target", "onnxruntime", "--no-bench", "--rtol", "10") == 0
    assert "from the command line (looser than the bundle's)" in capsys.readouterr().err
    assert cli("verify", copy, "--target", "onnxruntime", "--no-bench", "--atol", "inf") == 2


# --- the device's engine build: manifest fields, command lines (issue 14) ---------------------------------
from polyexport.trtexec import device_commands, trtexec_command  # noqa: E402


@pytest.fixture(scope="module")
def static_bundle(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("s") / "out")
    assert cli("usernets:build", "--input-shape", "1x3x24x24", "--bundle", "--no-bench", "--out", out) == 0
    return os.path.join(out, "bundle")


def test_dynamic_bundle_carries_its_profile_and_commands(bundle):
    """Parity ran at batches 1-8 around the export's 2: the profile covers every input set, opt is the export's."""
    manifest = json.load(open(os.path.join(bundle, "manifest.json")))
    assert manifest["profile"] == {"input": {"min": [1, 3, 24, 24], "opt": [2, 3, 24, 24], "max": [8, 3, 24, 24]}}
    assert manifest["fp16"] is False and manifest["workspace_mb"] == 1024
    for version in ("8.5", "8.6", "10", "10.3"):
        c = device_commands(bundle, version)
        assert c["verify"] == f"polyexport verify {bundle} --target tensorrt"
        assert c["trtexec"] == (f"trtexec --onnx={bundle}/model.onnx --minShapes=input:1x3x24x24 --optShapes=input:2x3x24x24 "
                                f"--maxShapes=input:8x3x24x24 --memPoolSize=workspace:1024 --noTF32 "
                                f"--timingCacheFile={bundle}/trtexec-timing.cache --saveEngine={bundle}/model-fp32-trtexec.engine")
    readme = open(os.path.join(bundle, "README.txt")).read()
    assert "polyexport verify . --target tensorrt\n" in readme and "--onnx=model.onnx --minShapes=input:1x3x24x24" in readme
    assert "README.txt" not in manifest["sha256"]  # instructions only: see bundle.py


def test_static_bundle_has_no_shape_flags(static_bundle):
    """trtexec refuses shape flags on a graph with fixed shapes ("Static model does not take explicit shapes")."""
    manifest = json.load(open(os.path.join(static_bundle, "manifest.json")))
    assert manifest["profile"] is None and not manifest["dynamic_batch"]
    c = device_commands(static_bundle, "8.6", bundle_dir="b")
    assert c == {"verify": "polyexport verify b --target tensorrt",
                 "trtexec": "trtexec --onnx=b/model.onnx --memPoolSize=workspace:1024 --noTF32 --timingCacheFile=b/trtexec-timing.cache "
                            "--saveEngine=b/model-fp32-trtexec.engine"}


def test_fp16_commands_pin_the_kept_modules_per_version():
    """10.x takes one wildcard per layer name (the module's scope as the graph writes it); 8.x matches whole names,
    so the kept module's nodes are listed. Both need the graph's node names: a module's scope depends on which
    of its ancestors were called (scopes.py), so without them nothing is pinned, and a note says so."""
    manifest = {"inputs": [{"name": "x:0", "shape": [1, 3, 8, 8]}], "fp16": True, "fp16_keep_fp32": ["head.conv"], "workspace_mb": 512,
                "profile": {"x:0": {"min": [1, 3, 8, 8], "opt": [4, 3, 8, 8], "max": [16, 3, 8, 8]}}}
    nodes = ["/stem/Conv", "/head/conv/Conv", "/head/conv/Relu", "/head/Add"]  # as the exporter names head.conv's nodes
    ten = trtexec_command(manifest, "10.3", "bundle", nodes)
    assert ten == ("trtexec --onnx=bundle/model.onnx \"--minShapes='x:0':1x3x8x8\" \"--optShapes='x:0':4x3x8x8\" \"--maxShapes='x:0':16x3x8x8\" "
                   "--memPoolSize=workspace:512 --fp16 --precisionConstraints=obey '--layerPrecisions=/head/conv/*:fp32' "
                   "'--layerOutputTypes=/head/conv/*:fp32' --timingCacheFile=bundle/trtexec-timing.cache "
                   "--saveEngine=bundle/model-fp16-trtexec.engine")
    assert shlex.split(ten)[2] == "--minShapes='x:0':1x3x8x8"  # what trtexec receives: the name quoted, as its parser wants
    eight = trtexec_command(manifest, "8.6", ".", nodes)
    assert "--layerPrecisions=/head/conv/Conv:fp32,/head/conv/Relu:fp32 " in eight and "--noTF32" not in eight
    for version in ("8.5", "10"):
        assert "--precisionConstraints" not in trtexec_command(manifest, version, ".")  # no node names: nothing to pin
        note = device_commands(manifest, version)["note"]
        assert "head.conv" in note and "not pinned" in note
    assert device_commands(manifest, "10")["verify"] == "polyexport verify bundle --target tensorrt --fp16"
    with pytest.raises(ValueError, match="8.5, 8.6 and 10"):
        trtexec_command(manifest, "7.1")


def test_fp16_bundle_runs_fp16_by_its_own_tolerance(bundle, tmp_path):
    """A bundle written for fp16 records it in the manifest and in the checksummed tolerance.json; verify runs it in
    fp16 without being told, and flipping the manifest's field alone is caught."""
    from polyexport.bundle import Bundle, read_bundle, write_bundle

    b: Bundle = read_bundle(bundle)
    sets = [(label, [feeds[s["name"]] for s in b.manifest["inputs"]]) for label, feeds in b.input_sets()]
    folder = write_bundle(str(tmp_path / "fp16"), b.onnx, b.manifest["inputs"], b.manifest["outputs"], sets, b.references(), None, None,
                          "{}", True, "m", [], b.tolerance["noise_floor"], fp16=True, batch_range=(1, 4, 16), workspace_mb=256)
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    assert manifest["fp16"] and manifest["workspace_mb"] == 256
    assert manifest["profile"]["input"] == {"min": [1, 3, 24, 24], "opt": [4, 3, 24, 24], "max": [16, 3, 24, 24]}
    assert json.load(open(os.path.join(folder, "tolerance.json")))["precision"] == "fp16"
    result = tmp_path / "r.json"
    assert cli("verify", folder, "--target", "onnxruntime", "--no-bench", "--json", str(result)) == 0
    r = json.loads(result.read_text())
    assert r["precision"] == {"fp16": True, "source": "bundle"} and r["parity"]["onnxruntime"]["precision"] == "fp16"
    assert "--fp16 --timingCacheFile" in open(os.path.join(folder, "README.txt")).read()
    manifest["fp16"] = False
    json.dump(manifest, open(os.path.join(folder, "manifest.json"), "w"))
    assert cli("verify", folder, "--target", "onnxruntime", "--no-bench") == 2


@pytest.mark.parametrize("field, value, message", [
    ("fp16", "yes", "field 'fp16' is malformed"),
    ("workspace_mb", 0, "field 'workspace_mb' is malformed"),
    ("profile", {"input": {"min": [8, 3, 24, 24], "opt": [2, 3, 24, 24], "max": [8, 3, 24, 24]}}, "field 'profile' is malformed"),
    ("profile", {"input": {"min": [1, 3], "opt": [2, 3, 24, 24], "max": [8, 3, 24, 24]}}, "field 'profile' is malformed"),
    ("profile", {"other": {"min": [1], "opt": [1], "max": [1]}}, "names 'other', which is not one of the inputs"),
])
def test_malformed_engine_fields_are_one_line_exit_2(bundle, tmp_path, capsys, field, value, message):
    copy = _tamper(bundle, tmp_path, lambda m, _: m.__setitem__(field, value))
    assert cli("verify", copy, "--target", "onnxruntime", "--no-bench") == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_a_bundle_from_before_the_engine_fields_still_verifies(bundle, tmp_path):
    """fp16, profile and workspace_mb are optional: a bundle without them is fp32, and its profile is computed from
    its graph and input sets, as verify computes it."""
    copy = _tamper(bundle, tmp_path, lambda m, _: [m.pop(k) for k in ("fp16", "profile", "workspace_mb")])
    assert cli("verify", copy, "--target", "onnxruntime", "--no-bench") == 0
    assert "--minShapes=input:1x3x24x24 --optShapes=input:2x3x24x24 --maxShapes=input:8x3x24x24" in device_commands(copy)["trtexec"]


class Wrapped(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = PerSampleKernels()

    def forward(self, x):
        return self.head(x)


def test_lint_findings_name_the_module(tmp_path, capsys):
    path = str(tmp_path / "wrapped.onnx")
    export_onnx(Wrapped().eval(), (torch.randn(2, 4, 8, 8),), path, input_names=["input"], n_outputs=1)
    findings = [f for f in lint_tensorrt(path, "10.3") if f.rule == "batch-in-group"]
    assert findings and {f.module for f in findings} == {"head"} and findings[0].as_dict()["module"] == "head"
    assert cli("check", path, "--trt-version", "8.5") == 1
    assert "module head): per-sample weights" in capsys.readouterr().out


def test_lint_versions_map_to_their_rules(tmp_path, capsys):
    """TensorRT 8.5's parser has no LayerNormalization (what nn.LayerNorm exports as from opset 17); 8.6 and 10 do."""
    from polyexport.runtimes.tensorrt_lint import rules_for

    assert [rules_for(v) for v in ("8.5", "8.5.2", "8.6", "8.6.2.3", "10", "10.3", "10.3.0", "v10.7")] == ["8.5", "8.5", "8.6", "8.6", "10", "10", "10", "10"]
    for bad in ("8.4", "9.3", "7", "11", "ten", ""):
        with pytest.raises(ValueError):
            rules_for(bad)
    path = str(tmp_path / "ln.onnx")
    export_onnx(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(2), nn.LayerNorm(16)).eval(), (torch.randn(1, 3, 4, 4),), path,
                input_names=["input"], n_outputs=1, opset=17)
    import onnx

    if "LayerNormalization" not in {n.op_type for n in onnx.load(path).graph.node}:
        pytest.skip("this exporter decomposed LayerNorm")
    by_version = {v: {f.op for f in lint_tensorrt(path, v) if f.rule == "unsupported-op"} for v in ("8.5", "8.6", "10.3")}
    assert by_version == {"8.5": {"LayerNormalization"}, "8.6": set(), "10.3": set()}
    assert cli("check", path, "--trt-version", "8.6", "--trt-version", "10.3") == 0
    assert cli("check", path, "--trt-version", "9.1") == 2
    assert "8.5, 8.6 and 10.x" in capsys.readouterr().err
