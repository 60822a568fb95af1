"""Every way MODEL can be given, and every way it can be wrong (BadInput, exit code 2)."""
from __future__ import annotations

import os

import pytest
import torch
import usernets

from polyexport.errors import BadInput
from polyexport.load import load_model


def test_zoo_and_callable():
    assert type(load_model("zoo:resnet18").model).__name__ == "ResNet"
    from polyexport import zoo  # MODEL zoo:NAME: the seeded random weights and BN statistics the tests prove, not an init
    loaded = load_model("zoo:efficientnet_b0")
    want = zoo.instantiate("efficientnet_b0", seed=0).state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.model.state_dict().items()) and "random" in loaded.source
    loaded = load_model("usernets:build")
    assert isinstance(loaded.model, usernets.TinyNet) and not loaded.model.training


def test_pickled_module_needs_trust(tmp_path):
    path = tmp_path / "m.pt"
    torch.save(usernets.build(), path)
    with pytest.raises(BadInput, match=r"--trust-pickle.*") as e:
        load_model(str(path))
    assert "usernets.TinyNet" in str(e.value)  # names the classes it would import, without importing them
    assert isinstance(load_model(str(path), trust_pickle=True).model, usernets.TinyNet)


def test_training_checkpoint_prefers_ema(tmp_path):
    model, ema = usernets.build(), usernets.build()
    ema.head.bias.data.fill_(7.0)
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "model": model, "ema": ema, "optimizer": None}, path)
    loaded = load_model(str(path), trust_pickle=True)
    assert loaded.model.head.bias[0].item() == 7.0 and "ema" in loaded.source
    torch.save({"model": model, "ema": None}, path)
    assert load_model(str(path), trust_pickle=True).model.head.bias[0].item() == model.head.bias[0].item()


def test_half_precision_checkpoint_becomes_float(tmp_path):
    path = tmp_path / "half.pt"
    torch.save({"model": usernets.build().half()}, path)
    loaded = load_model(str(path), trust_pickle=True)
    assert next(loaded.model.parameters()).dtype == torch.float32 and any("half" in n for n in loaded.notes)


def test_state_dict_with_arch(tmp_path):
    net = usernets.build()
    path = tmp_path / "w.pt"
    torch.save(net.state_dict(), path)
    loaded = load_model(str(path), arch="usernets:TinyNet")
    assert torch.equal(loaded.model.conv1.weight, net.conv1.weight)
    # nested under 'state_dict' and with DataParallel's 'module.' prefix, as training scripts save it
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 1}, path)
    assert torch.equal(load_model(str(path), arch="usernets:TinyNet").model.head.weight, net.head.weight)


def test_state_dict_errors(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(usernets.build().state_dict(), path)
    with pytest.raises(BadInput, match="--arch"):
        load_model(str(path))
    with pytest.raises(BadInput, match="does not match the architecture.*(missing|unexpected)"):
        load_model(str(path), arch="zoo:resnet18")
    torch.save(usernets.TinyNet(classes=5).state_dict(), path)
    with pytest.raises(BadInput, match=r"shape mismatch \(head.weight"):
        load_model(str(path), arch="usernets:TinyNet")


@pytest.mark.parametrize("spec, message", [
    ("missing.pt", "no such file"),
    ("usernets:nope", "has no attribute"),
    ("nosuchpkg.mod:build", "cannot import 'nosuchpkg.mod'"),
    ("usernets:not_a_module", "returned int, not a torch.nn.Module"),
    ("zoo:nope", "unknown zoo model 'nope'; known: .*resnet18"),
])
def test_bad_specs(spec, message):
    with pytest.raises(BadInput, match=message):
        load_model(spec)


def test_corrupt_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 50)
    for content in (b"\x00garbage" * 50, b"", b"garbage"):  # foreign, empty: never advice to load it unsafely
        bad.write_bytes(content)
        with pytest.raises(BadInput, match="is not a PyTorch checkpoint") as caught:
            load_model(str(bad))
        assert "weights_only" not in str(caught.value)
    graph = tmp_path / "model.onnx"
    graph.write_bytes(b"\x08\x07")
    with pytest.raises(BadInput, match="is an ONNX graph.*polyexport check") as caught:
        load_model(str(graph))
    assert f"polyexport check {graph}`" in str(caught.value)
    bad.write_bytes(b"\x80\x02garbage")  # a pickle header, then nonsense: torch's reason, without its advice
    with pytest.raises(BadInput, match="not a readable PyTorch checkpoint") as caught:
        load_model(str(bad))
    assert "weights_only" not in str(caught.value)
    truncated = tmp_path / "trunc.pt"
    torch.save(usernets.build().state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(BadInput):
        load_model(str(truncated), arch="usernets:TinyNet")
    other = tmp_path / "list.pt"
    torch.save([1, 2, 3], other)
    with pytest.raises(BadInput, match="neither an nn.Module nor a state_dict"):
        load_model(str(other))
    with pytest.raises(BadInput, match="is a directory"):
        load_model(str(tmp_path))
    with pytest.raises(BadInput, match="--import nosuchmodule"):
        load_model("zoo:resnet18", imports=["nosuchmodule"])


def test_safetensors_state_dict(tmp_path, monkeypatch):
    """timm's and Hugging Face's weights format: a state_dict read without unpickling (no --trust-pickle asked)."""
    from safetensors.torch import save_file

    from polyexport.errors import RuntimeMissing

    trained = usernets.build()
    with torch.no_grad():
        trained.head.bias.fill_(3.0)
    path = tmp_path / "model.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in trained.state_dict().items()}, str(path))  # a DDP-style prefix too
    loaded = load_model(str(path), arch="usernets:build")
    assert torch.equal(loaded.model.head.bias, trained.head.bias) and "state_dict" in loaded.source
    with pytest.raises(BadInput, match="holds a state_dict .*--arch"):
        load_model(str(path))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[:-40])  # truncated data after an intact header
    with pytest.raises(BadInput, match="not a readable safetensors file"):
        load_model(str(broken), arch="usernets:build")
    monkeypatch.setitem(__import__("sys").modules, "safetensors.torch", None)  # the extra not installed
    with pytest.raises(RuntimeMissing, match=r"safetensors.*polyexport\[safetensors\]"):
        load_model(str(path), arch="usernets:build")


def test_a_timm_training_checkpoint_loads_without_trust(tmp_path):
    """timm's train.py saves {'epoch', 'arch', 'state_dict', 'optimizer', 'version', 'args': argparse.Namespace, ...},
    and many scripts a numpy metric: plain data, so the checkpoint is read safely (it asked for --trust-pickle); any
    other class still asks."""
    import argparse

    trained = usernets.build()
    path = tmp_path / "checkpoint-9.pth.tar"
    import numpy as np

    torch.save({"epoch": 9, "arch": "tinynet", "state_dict": trained.state_dict(), "version": 2,
                "args": argparse.Namespace(lr=0.1, model="tinynet"), "metric": np.float64(71.5), "hist": np.arange(3)}, path)
    loaded = load_model(str(path), arch="usernets:build")
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in loaded.model.state_dict().items())
    torch.save({"state_dict": trained.state_dict(), "args": argparse.Namespace(lr=0.1), "net": usernets.build()}, path)
    with pytest.raises(BadInput, match="--trust-pickle") as caught:
        load_model(str(path), arch="usernets:build")
    assert "TinyNet" in str(caught.value) and "Namespace" not in str(caught.value)


def test_torchscript_archive_is_asked_for_and_loaded(tmp_path):
    """torch.jit.save's archives: their compiled code runs, so they need --trust-pickle like a pickle (torch.load's own
    error sent the user to weights_only=False)."""
    model = usernets.build().eval()
    path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    with pytest.raises(BadInput, match="TorchScript archive.*--trust-pickle") as caught:
        load_model(str(path))
    assert "weights_only" not in str(caught.value)
    loaded = load_model(str(path), trust_pickle=True)
    assert isinstance(loaded.model, torch.jit.ScriptModule) and not loaded.model.training
    broken = tmp_path / "broken.pt"
    broken.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(BadInput):
        load_model(str(broken), trust_pickle=True)


def test_cwd_on_path_and_import_flag(tmp_path, monkeypatch):
    """Classes of a pickled module resolve from the working directory (as a user runs it)."""
    src = os.path.join(os.path.dirname(__file__), "userpkg", "usernets.py")
    pkg = tmp_path / "proj"
    pkg.mkdir()
    (pkg / "mynets_cwd.py").write_text(open(src).read())
    monkeypatch.chdir(pkg)
    import importlib
    import sys

    monkeypatch.syspath_prepend(str(pkg))
    mod = importlib.import_module("mynets_cwd")
    torch.save(mod.TinyNet(), pkg / "m.pt")
    del sys.modules["mynets_cwd"]
    loaded = load_model("m.pt", trust_pickle=True, imports=["mynets_cwd"])
    assert type(loaded.model).__name__ == "TinyNet"
