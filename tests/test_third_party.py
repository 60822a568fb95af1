"""Models written elsewhere: the ways third-party code breaks a converter, each reproduced on a model
written here (issue 18): train() returning None (mmdet), attributes read in forward (YOLOv5's `f`, `i`),
an instance-level `forward` (YOLOv5's fused Conv), hooks, and a module reachable under two names."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import polyexport
from polyexport import zoo
from polyexport.convert import convert
from polyexport.layers.psconv import PSConv2d
from polyexport.testing import assert_equivalent, randomize_
from polyexport.zoo.yolo_model import Model, yolov5_config
from tests.foreign.hetconv import YoloHetConv

YOLO_ATTRS = ("i", "f", "type", "np")


class NoneTrainNet(nn.Module):
    """mmdet's backbones override train() (norm_eval, frozen stages) and return nothing."""

    def __init__(self):
        super().__init__()
        self.conv = PSConv2d(8, 8, parts=4)
        self.bn = nn.BatchNorm2d(8)
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)

    def train(self, mode: bool = True):  # noqa: D102 - as mmdet writes it
        super().train(mode)

    def forward(self, x):
        return self.bn(self.conv(self.stem(x)))


def test_train_returning_none_is_exported(tmp_path):
    model = randomize_(NoneTrainNet(), seed=1)
    assert model.eval() is None  # the pattern itself
    report = polyexport.export(model, [torch.randn(2, 3, 12, 12)], target="onnxruntime", out=str(tmp_path / "o"), bench=False)
    assert report.passed, report.parity
    assert [l["form"] for l in report.layers if l["type"] == "PSConv2d"] != ["reference"]
    assert_equivalent(model, polyexport.deploy(model), torch.randn(3, 3, 9, 11))


class NormalisesItsInputInPlace(nn.Module):
    """Writes into its input, as preprocessing written in forward often does (`x -= mean; x /= std`)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.conv = PSConv2d(8, 8, parts=4)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        x.sub_(0.5).div_(0.25)
        return self.bn(self.conv(self.stem(x)))


def test_a_model_that_writes_into_its_input_is_run_on_the_same_input_every_time(tmp_path):
    """Every PyTorch run, export and form timing gets its own copy of the input: parity failed at the deployed
    PyTorch model ("its own code, outside any submodule"), which had run on the input its reference run had rewritten."""
    model = randomize_(NormalisesItsInputInPlace(), seed=2)
    given = torch.randn(2, 3, 12, 12)
    kept = given.clone()
    report = polyexport.export(model, [given], target="onnxruntime", out=str(tmp_path / "o"), bench=False, dynamic_batch=True)
    assert report.passed, (report.parity, report.explain)
    assert [l["form"] for l in report.layers if l["type"] == "PSConv2d"] != ["reference"]
    assert torch.equal(given, kept), "the caller's input was written into"


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class WithScriptedParts(nn.Module):
    """Compiled submodules inside a Python model, as codebases script their activations (torch.jit.script)."""

    def __init__(self, tail: nn.Module | None = None):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.conv = PSConv2d(8, 8, parts=4)
        self.bn = nn.BatchNorm2d(8)
        self.act = torch.jit.script(Swish())
        self.head = torch.jit.script(nn.Sequential(nn.Conv2d(8, 4, 1), nn.ReLU()))
        self.tail = tail or nn.Identity()

    def forward(self, x):
        return self.tail(self.head(self.act(self.bn(self.conv(self.stem(x))))))


class CumMax(nn.Module):
    def forward(self, x):
        return torch.cummax(x, 1)[0]  # no ONNX symbolic in the TorchScript exporter


def test_compiled_submodules_export(tmp_path):
    """The TorchScript exporter cannot call a compiled submodule inside its trace ("... is not part of the active
    trace"): such a model is traced by torch.jit.trace first, whose result exports; parity on both runtimes and batches."""
    model = randomize_(WithScriptedParts(), seed=3)
    for target in ("onnxruntime", "openvino"):
        report = polyexport.export(model, [torch.randn(2, 3, 12, 12)], target=target, out=str(tmp_path / target), bench=False,
                                   dynamic_batch=True)
        assert report.passed, (target, report.parity, report.explain)
        assert [l["form"] for l in report.layers if l["type"] == "PSConv2d"] != ["reference"]


def test_an_export_failure_beside_compiled_submodules_names_its_module(tmp_path):
    """Finding the module that failed hooks every submodule: a compiled one takes no hooks (it crashed with
    "register_forward_pre_hook is not supported on ScriptModules")."""
    from polyexport.errors import ExportFailed
    from polyexport.exporter.torch_onnx import export_with_attribution

    model = WithScriptedParts(tail=CumMax()).eval()
    with pytest.raises(ExportFailed, match="module 'tail' \\(CumMax\\).*cummax"):
        export_with_attribution(model, (torch.randn(1, 3, 8, 8),), str(tmp_path / "m.onnx"), input_names=["x"], n_outputs=1)


def test_the_divergence_search_leaves_compiled_submodules_unhooked():
    """explain hooks the blocks it watches to find the first diverging one: never a compiled one (no hooks there)."""
    from polyexport.explain import watched_modules

    model = WithScriptedParts()
    watched = watched_modules(model, [], depth=2)
    assert {"stem", "conv", "bn"} <= set(watched)
    assert not [n for n in watched if n.split(".")[0] in ("act", "head")]


def test_compiled_research_layers_are_kept_and_reported(tmp_path):
    """A TorchScript model (torch.jit.trace or script, e.g. from a .pt archive): its layers are compiled and cannot be
    swapped; each registered type inside it, known by the class it was compiled from, is recorded as kept with the
    reason (it was converted silently as nothing), --strict refuses it, and the model still exports and matches."""
    from polyexport.errors import BadInput

    model = randomize_(NoneTrainNet(), seed=4)
    model.eval()  # returns None, as mmdet's does
    x = torch.randn(2, 3, 12, 12)
    compiled = torch.jit.trace(model, (x,))
    deployed, records = convert(compiled, "onnxruntime")
    assert [(r.name, r.type, r.form) for r in records] == [("conv", "PSConv2d", "reference")]
    assert "TorchScript" in records[0].note and "--arch" in records[0].note
    with pytest.raises(BadInput, match="'conv' \\(PSConv2d\\) is compiled.*--strict"):
        convert(compiled, "onnxruntime", strict=True)
    report = polyexport.export(compiled, [x], target="onnxruntime", out=str(tmp_path / "o"), bench=False)
    assert report.passed, report.parity
    inside = nn.Sequential(nn.Identity(), torch.jit.trace(model, (x,)))  # compiled inside a Python model
    assert [(r.name, r.form) for r in convert(inside, "onnxruntime")[1]] == [("1.conv", "reference")]


def test_dataparallel_and_torch_compile_wrappers_are_looked_through(tmp_path):
    """A checkpoint pickled with its DataParallel wrapper, a model handed over after torch.compile, a block compiled
    inside it: neither exporter takes them (DataParallel refused, "FX to torch.jit.trace a dynamo-optimized
    function"); the modules they hold are deployed and exported, the report says so, the caller's model is left as
    it was (never run compiled)."""
    from polyexport.modules import unwrapped

    plain = randomize_(NoneTrainNet(), seed=5)
    plain.eval()
    x = torch.randn(2, 3, 12, 12)
    inner_compiled = nn.Sequential(torch.compile(plain), nn.ReLU())
    for label, wrapped in [("DataParallel", nn.DataParallel(plain)), ("torch.compile", torch.compile(plain)),
                           ("inside", inner_compiled)]:
        report = polyexport.export(wrapped, [x], target="onnxruntime", out=str(tmp_path / label), bench=False, dynamic_batch=True)
        assert report.passed, (label, report.parity)
        assert [l["form"] for l in report.layers if l["type"] == "PSConv2d"] != ["reference"], label
        assert any("wrapped by" in n for n in report.notes), (label, report.notes)
    assert type(inner_compiled[0]).__name__ == "OptimizedModule"  # the caller's model: untouched
    assert unwrapped(inner_compiled)[0][0] is not inner_compiled[0]


def _swapped(original: nn.Module, deployed: nn.Module, records) -> list[tuple[nn.Module, nn.Module]]:
    converted = {r.name for r in records if r.form not in ("reference", "folded", "absorbed")}
    assert converted, "nothing was converted: the test would prove nothing"
    return [(original.get_submodule(n), deployed.get_submodule(n)) for n in converted]


def test_yolov5_spd_detector_keeps_the_attributes_its_forward_reads(tmp_path):
    """The SPD paper's YOLOv5 (space_depth_n.yaml through YOLOv5's own Model): `_forward_once` reads m.f and m.i."""
    model = zoo.instantiate("spd_yolov5n_ultralytics")
    deployed, records = convert(model)
    for old, new in _swapped(model, deployed, records):
        assert type(new) is not type(old)
        assert all(getattr(new, a) == getattr(old, a) for a in YOLO_ATTRS), type(new).__name__
    assert_equivalent(model, deployed, torch.randn(2, 3, 64, 96), rtol=1e-5)
    report = polyexport.export(model, [torch.randn(1, 3, 128, 128)], target="onnxruntime", out=str(tmp_path / "o"), bench=False,
                               dynamic_batch=True)  # Detect's in-place decode as written freezes the batch: its deploy form does not
    assert report.passed, (report.parity, report.explain)
    assert [l["form"] for l in report.layers if l["type"] == "Detect"] == ["concat_decode"]


def test_a_fused_yolov5_checkpoint_with_an_instance_forward_converts():
    """YOLOv5's Model.fuse() assigns `m.forward = m.forward_fuse` on each Conv instance: that bound method is
    the old module's and must not be carried to another one."""
    model = zoo.instantiate("spd_yolov5n_ultralytics").fuse()
    assert "forward" in vars(model.model[1])
    deployed, records = convert(model)
    _swapped(model, deployed, records)
    assert_equivalent(model, deployed, torch.randn(2, 3, 64, 64))


def test_yolo_plugin_hetconv_rows_are_adapted_and_keep_their_attributes():
    """A YOLO plugin repository's HetConv (the `filters` layout) named in the config, as such repos add rows."""
    cfg = yolov5_config(spd=True, nc=3)
    for row in cfg["backbone"]:
        if row[2] == "Conv" and row[3][1:] == [3, 1]:
            row[2], row[3] = "HetConv", [row[3][0], 1, 4]
    model = randomize_(Model(cfg, modules={"HetConv": YoloHetConv}), seed=2)
    deployed, records = convert(model)
    het = [r for r in records if r.type == "HetConv"]
    assert len(het) == 4 and all(r.form != "reference" and "adapter" in r.note for r in het), het
    for old, new in _swapped(model, deployed, records):
        assert all(getattr(new, a) == getattr(old, a) for a in YOLO_ATTRS)
    assert_equivalent(model, deployed, torch.randn(2, 3, 64, 64))


class Tapped(nn.Module):
    """A feature tap: a hook on a converted layer stores its output, and the forward reads it."""

    def __init__(self):
        super().__init__()
        self.conv = PSConv2d(8, 8, parts=4)
        self.head = nn.Conv2d(8, 4, 1)
        self.features: dict[str, torch.Tensor] = {}
        self.conv.register_forward_hook(lambda m, a, out: self.features.__setitem__("conv", out))

    def forward(self, x):
        y = self.head(self.conv(x))
        return y, self.features["conv"].mean((2, 3))


def test_hooks_on_a_converted_layer_still_fire():
    model = randomize_(Tapped(), seed=3)
    deployed, records = convert(model)
    ((old, new),) = _swapped(model, deployed, records)
    assert len(new._forward_hooks) == 1
    assert_equivalent(model, deployed, torch.randn(2, 8, 10, 10))


class Shared(nn.Module):
    """One layer under two names (weight sharing between two branches)."""

    def __init__(self):
        super().__init__()
        self.a = PSConv2d(8, 8, parts=4)
        self.b = self.a

    def forward(self, x):
        return self.b(self.a(x))


def test_a_shared_layer_is_replaced_under_every_name():
    model = randomize_(Shared(), seed=4)
    deployed, records = convert(model)
    assert deployed.a is deployed.b and type(deployed.a) is not PSConv2d
    assert_equivalent(model, deployed, torch.randn(2, 8, 9, 9))


class ObservedBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6)
        self.seen: list[torch.Tensor] = []
        self.bn.register_forward_pre_hook(lambda m, a: self.seen.append(a[0]))

    def forward(self, x):
        self.seen.clear()
        return self.bn(self.conv(x)) + self.seen[0].mean()


def test_a_batchnorm_someone_observes_is_not_folded():
    """Folding would change what the pre-hook sees (the conv's raw output): the pair is left as it is."""
    model = randomize_(ObservedBN(), seed=5)
    deployed, records = convert(model)
    assert not [r for r in records if r.form == "folded"] and isinstance(deployed.bn, nn.BatchNorm2d)
    assert_equivalent(model, deployed, torch.randn(2, 3, 8, 8))


class FlattenHead(nn.Module):
    """Freezes the batch as many classifiers do: the size read through `.data` is a constant in the trace."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(x.view(x.data.size(0), -1))


class FrozenBatchNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.head = FlattenHead()

    def forward(self, x):
        return self.head(self.features(x))


def frozen_batch_net() -> nn.Module:
    return randomize_(FrozenBatchNet(), seed=6)


def test_a_runtime_error_is_reported_as_such_and_the_module_that_froze_the_batch_is_named(tmp_path, capsys):
    from polyexport.cli import run

    code = run(["tests.test_third_party:frozen_batch_net", "--target", "onnxruntime", "--input-shape", "2x3x16x16", "--dynamic-batch",
                "--out", str(tmp_path / "o"), "--no-bench"])
    assert code == 1
    report = __import__("json").loads((tmp_path / "o" / "report.json").read_text())
    stage = report["first_failing_stage"]
    assert stage == "onnx-exported" and "failed running input batch1" in report["parity"][stage]["error"], report["parity"][stage]
    explain = report["explain"]
    assert explain["module"] == "head" and explain["type"] == "FlattenHead", explain
    assert [f["op"] for f in explain["frozen_batch"]] == ["Reshape"] and explain["frozen_batch"][0]["shape"][0] == 2
    err = capsys.readouterr().err
    assert "did not run" in err and "outputs differ" not in err, err
    assert "did not run in module `head`" in (tmp_path / "o" / "report.md").read_text()
