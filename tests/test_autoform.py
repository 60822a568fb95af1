"""Automatic form choice: each exact form timed on the target runtime, the fastest chosen, cached, reported."""
from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from polyexport.autoform import FormTimer, capture_layer_inputs
from polyexport.cli import main
from polyexport.convert import convert, plan
from polyexport.layers.mixconv import MixedConv2d
from polyexport.runtimes import RunnerOptions
from polyexport.modules import set_eval
from polyexport.testing import RTOL, assert_equivalent, max_rel_err, randomize_
from polyexport.zoo import register


@register("test_mixconv_net", input_shape=(1, 16, 20, 20))
def mixconv_net() -> nn.Module:
    return randomize_(nn.Sequential(MixedConv2d(16, 16, [3, 5, 7], depthwise=True), nn.BatchNorm2d(16), nn.ReLU(),
                                    MixedConv2d(16, 16, [3, 5], depthwise=True), nn.BatchNorm2d(16)), seed=4)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_timer_picks_the_measured_fastest_and_caches(runtime, tmp_path):
    pytest.importorskip(runtime)
    model = mixconv_net()
    x = (torch.randn(1, 16, 20, 20),)
    inputs = capture_layer_inputs(model, x)
    assert set(inputs) == {"0", "3"} and inputs["0"][0].shape == (1, 16, 20, 20)
    cache = str(tmp_path / "forms.json")
    timer = FormTimer(runtime, RunnerOptions(threads=1), inputs, cache_path=cache, repeats=1)
    deployed, records = convert(model, target=runtime, ranker=timer)
    assert_equivalent(model, deployed, *x)
    for choice, record in zip(timer.choices, [r for r in records if r.form not in ("folded",)]):
        finite = {k: v for k, v in choice["timings_ms"].items() if v is not None}
        assert len(finite) >= 2 and choice["chosen"] == min(finite, key=finite.get) == record.form
        assert not choice["cached"]
    again = FormTimer(runtime, RunnerOptions(threads=1), inputs, cache_path=cache, repeats=1)
    convert(model, target=runtime, ranker=again)
    assert all(c["cached"] and c["seconds"] == 0.0 for c in again.choices)
    assert [c["chosen"] for c in again.choices] == [c["chosen"] for c in timer.choices]
    assert all(runtime in key for key in json.load(open(cache)))


def test_cli_reports_every_choice_and_honours_forced_forms(tmp_path, monkeypatch):
    import polyexport.autoform as autoform

    monkeypatch.setenv("POLYEXPORT_CACHE", str(tmp_path / "cache.json"))
    # every alternative plausible, so the whole-model check runs whatever this machine's per-layer timings say
    monkeypatch.setattr(autoform, "WHOLE_MODEL_MARGIN", 100.0)
    out = str(tmp_path / "o")
    with pytest.raises(SystemExit) as e:
        main(["zoo:test_mixconv_net", "--target", "openvino", "--out", out, "--no-bench", "--threads", "1"])
    assert e.value.code == 0
    r = json.load(open(os.path.join(out, "report.json")))
    *per_layer, whole = r["form_choices"]
    assert [c["name"] for c in per_layer] == ["0", "3"] and whole["name"] == "(whole model)"
    assert "Form choices" in open(os.path.join(out, "report.md")).read()
    # the per-layer choice was checked against each uniform assignment as whole graphs; the fastest is deployed
    finite = {k: v for k, v in whole["timings_ms"].items() if v is not None}
    assert "per-layer" in finite and len(finite) >= 2 and whole["chosen"] == min(finite, key=finite.get)
    mix = [l["form"] for l in r["layers"] if l["type"] == "MixedConv2d"]
    label = whole["chosen"]  # "per-layer", "preferred", or "MixedConv2d=FORM[, others preferred]"
    if label == "per-layer":
        expected = [c["chosen"] for c in per_layer]
    elif label == "preferred":
        expected = [rec.form for rec in plan(mixconv_net(), "openvino") if rec.type == "MixedConv2d"]
    else:
        expected = [label.split("=")[1].split(",")[0]] * 2
    assert mix == expected
    with pytest.raises(SystemExit) as e:
        main(["zoo:test_mixconv_net", "--target", "openvino", "--out", out, "--force", "--no-bench", "--threads", "1"])
    again = json.load(open(os.path.join(out, "report.json")))["form_choices"][-1]
    assert e.value.code == 0 and again["cached"] and again["timings_ms"] == whole["timings_ms"]
    with pytest.raises(SystemExit) as e:
        main(["zoo:test_mixconv_net", "--target", "openvino", "--out", out, "--force", "--no-bench", "--form", "MixedConv2d=split"])
    r = json.load(open(os.path.join(out, "report.json")))
    assert e.value.code == 0 and r["form_choices"] == [] and [l["form"] for l in r["layers"] if l["type"] == "MixedConv2d"] == ["split", "split"]
    with pytest.raises(SystemExit):
        main(["zoo:test_mixconv_net", "--target", "onnxruntime", "--out", out, "--force", "--no-bench", "--form", "preferred"])
    assert json.load(open(os.path.join(out, "report.json")))["form_choices"] == []


def test_a_form_wrong_on_the_runtime_is_never_chosen(tmp_path):
    """Every candidate's single-layer graph is checked against the reference layer before it may win."""
    from tests.test_explain import Scaled3x3  # registers exact, planted_torch and planted_onnx forms

    model = randomize_(nn.Sequential(Scaled3x3(8, 8)), seed=2)
    inputs = capture_layer_inputs(model, (torch.randn(1, 8, 6, 6),))
    timer = FormTimer("onnxruntime", RunnerOptions(threads=1), inputs, cache_path=str(tmp_path / "c.json"), repeats=1)
    _, records = convert(model, target="onnxruntime", ranker=timer)
    timings = timer.choices[0]["timings_ms"]
    assert timings["planted_torch"] is None and timings["planted_onnx"] is None and timings["exact"] > 0
    assert records[0].form == "exact"


@pytest.mark.parametrize("fixed_ms", [None, {"single": 1.0, "split": 1.1, "aligned": 1.05, "grouped_plus_pointwise": 1.0, "dense": 1.2}],
                         ids=["measured", "fixed-close"])
def test_whole_model_candidates_are_the_plausible_fixed_forms(tmp_path, monkeypatch, fixed_ms):
    """With two layer types, the per-layer choice is checked against every assignment a single forced form
    gives (the other type timed per layer, or in the preferred order) and the preferred order itself, each
    assignment once, as long as its per-layer timings come within WHOLE_MODEL_MARGIN of the choice's (one
    further behind cannot win as a whole graph), and of those only the WHOLE_MODEL_ALTERNATIVES closest
    (that check is the costly part). With the per-layer timings fixed close together, more alternatives come
    within the margin than are timed."""
    from polyexport.autoform import WHOLE_MODEL_ALTERNATIVES, WHOLE_MODEL_MARGIN, _layer_total, whole_model_alternatives
    from polyexport.convert import assignment, registered_layers
    from polyexport.layers.hetconv import ShiftedHetConv
    from polyexport.pipeline import ExportOptions, form_timer

    monkeypatch.setenv("POLYEXPORT_CACHE", str(tmp_path / "cache.json"))
    model = randomize_(nn.Sequential(MixedConv2d(16, 16, [3, 5], depthwise=True), nn.BatchNorm2d(16), nn.ReLU(),
                                     ShiftedHetConv(16, 16, 4, 3), nn.BatchNorm2d(16)), seed=5).eval()
    x = torch.randn(1, 16, 12, 12)
    ranker = form_timer(model, [x.numpy()], ExportOptions(target="onnxruntime", threads=1, form_choice="auto"))
    if fixed_ms is not None:
        monkeypatch.setattr(ranker, "_time", lambda ref, args, forms, tail=None, outs=None: {f.name: fixed_ms[f.name] for f in forms})
    _, records = convert(model, "onnxruntime", ranker=ranker)
    alternatives = whole_model_alternatives(model, records, "onnxruntime", {}, False, False, ranker)
    timed = [assignment(records)] + [assignment(c.records) for c in alternatives.values()]
    assert len(set(timed)) == len(timed), "an assignment timed twice"
    assert len(ranker.choices) == 2  # the alternatives' lookups are not reported as choices
    per_layer = {c["name"]: c["timings_ms"] for c in ranker.choices}
    limit = WHOLE_MODEL_MARGIN * _layer_total(records, per_layer)
    entries = {t.__name__: e for t, e in registered_layers().items()}
    considered = [convert(model, "onnxruntime")[1]]  # the preferred order
    for typ in ("MixedConv2d", "ShiftedHetConv"):
        for form in entries[typ].forms:
            try:
                considered += [convert(model, "onnxruntime", {typ: form})[1], convert(model, "onnxruntime", {typ: form}, ranker=ranker)[1]]
            except Exception:  # noqa: BLE001 - a form that does not apply to this layer
                continue
    ranker.choices[:] = ranker.choices[:2]
    totals = {assignment(recs): _layer_total(recs, per_layer) for recs in considered if assignment(recs) != assignment(records)}
    plausible = {a for a, total in totals.items() if total <= limit}
    chosen = set(timed[1:])
    assert chosen <= plausible, "an assignment beyond the margin was timed"
    assert len(chosen) == min(WHOLE_MODEL_ALTERNATIVES, len(plausible))
    if fixed_ms is not None:
        assert len(plausible) > WHOLE_MODEL_ALTERNATIVES  # the cap is what chose here
        ranker.alternatives = None  # --form thorough: every plausible one
        thorough = whole_model_alternatives(model, records, "onnxruntime", {}, False, False, ranker)
        assert {assignment(c.records) for c in thorough.values()} == plausible
    assert all(totals[a] >= max(totals[c] for c in chosen) for a in plausible - chosen), "a closer alternative was left out"

class _FixedBatchView(nn.Module):
    """Exact at the batch it was exported at, and fails at any other: the reshape bakes that batch into the graph."""

    def forward(self, x):
        return (x * 2).reshape(1, 4, 6, 6)


class _Doubled(nn.Module):
    def forward(self, x):
        return x * 2


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_dynamic_batch_forms_are_timed_at_a_second_batch(runtime):
    """With a dynamic batch a form is also run at DYNAMIC_TIMING_BATCH from its one graph: one that cannot is never
    chosen, and a time is the first batch's latency plus the second's per sample (so it exceeds the first's)."""
    pytest.importorskip(runtime)
    from polyexport.autoform import DYNAMIC_TIMING_BATCH, _time_checked

    x = (torch.randn(1, 4, 6, 6),)
    want = [(x[0] * 2).numpy()]
    builds = {"baked": _FixedBatchView, "dynamic": _Doubled}
    kw = dict(repeats=1, warmup_s=0.0, min_time_s=0.01, simplifier="none")
    once = _time_checked(builds, x, want, runtime, RunnerOptions(threads=1), True, **kw)
    twice = _time_checked(builds, x, want, runtime, RunnerOptions(threads=1), True, second_batch=DYNAMIC_TIMING_BATCH, **kw)
    assert all(v < float("inf") for v in once.values())  # at batch 1 alone the baked graph looks fine
    assert twice["baked"] == float("inf") and 0 < twice["dynamic"] < float("inf")


def test_the_cache_keeps_dynamic_batch_timings_apart(tmp_path):
    """Timings taken at two batches are not those of a static graph, nor of the batch-1-only timing before them."""
    static = FormTimer("onnxruntime", RunnerOptions(threads=1), {}, cache_path=str(tmp_path / "c.json"))
    dynamic = FormTimer("onnxruntime", RunnerOptions(threads=1), {}, cache_path=str(tmp_path / "c.json"), dynamic_batch=True)
    assert static.context != dynamic.context and "and batch 8" in dynamic.context


def test_form_thorough_is_accepted_and_lifts_the_cap(tmp_path, monkeypatch):
    from polyexport.autoform import WHOLE_MODEL_ALTERNATIVES
    from polyexport.pipeline import ExportOptions, form_timer

    monkeypatch.setenv("POLYEXPORT_CACHE", str(tmp_path / "cache.json"))
    model, x = mixconv_net(), [torch.randn(1, 16, 20, 20).numpy()]
    assert form_timer(model, x, ExportOptions(target="openvino", form_choice="thorough")).alternatives is None
    assert form_timer(model, x, ExportOptions(target="openvino")).alternatives == WHOLE_MODEL_ALTERNATIVES
    out = str(tmp_path / "o")
    with pytest.raises(SystemExit) as e:
        main(["zoo:test_mixconv_net", "--target", "openvino", "--form", "thorough", "--out", out, "--no-bench", "--threads", "1"])
    assert e.value.code == 0
    assert [c["name"] for c in json.load(open(os.path.join(out, "report.json")))["form_choices"]][:2] == ["0", "3"]


class _NoExport(torch.autograd.Function):
    """The identity in eager, an op whose export fails (as a conv whose kernel sizes the exporter lost does)."""

    @staticmethod
    def forward(ctx, x):  # noqa: ARG004
        return x.clone()

    @staticmethod
    def symbolic(g, x):  # noqa: ARG004
        raise RuntimeError("Unsupported: ONNX export of this op")


class _Unexportable(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return _NoExport.apply(self.inner(x))


def test_a_timed_mix_that_does_not_export_falls_back_to_the_preferred_order(tmp_path, monkeypatch):
    """Forms that export alone may not export together: the run ships the registered preferred order with a note
    (and proves it like any other) rather than ending without a graph. The timed choice is stood in for by a
    non-preferred form whose deployed model cannot export."""
    import polyexport.pipeline as pipeline
    from polyexport.autoform import Deployment

    model = mixconv_net()
    preferred = [r.form for r in convert(model, target="onnxruntime")[1] if r.type == "MixedConv2d"]
    other = next(f for f in ("single", "split", "aligned") if f != preferred[0])
    deployed, records = convert(model, target="onnxruntime", forms={"MixedConv2d": other})
    deployed[0] = _Unexportable(deployed[0])
    choice = {"name": "0", "type": "MixedConv2d", "runtime": "onnxruntime", "input": [[1, 16, 20, 20]],
              "timings_ms": {other: 1.0, preferred[0]: 1.1}, "chosen": other, "cached": False, "seconds": 0.1}
    timed = Deployment(deployed, records, choices=[choice])
    real = pipeline.deploy_for
    monkeypatch.setattr(pipeline, "deploy_for", lambda model, arrays, opts, *a: real(model, arrays, opts, *a)
                        if opts.form_choice == "preferred" else timed)
    out = str(tmp_path / "o")
    with pytest.raises(SystemExit) as e:
        main(["zoo:test_mixconv_net", "--target", "onnxruntime", "--out", out, "--no-bench", "--threads", "1"])
    assert e.value.code == 0
    report = json.load(open(os.path.join(out, "report.json")))
    assert [r["form"] for r in report["layers"] if r["type"] == "MixedConv2d"] == preferred
    assert any("did not export as one graph" in n and "preferred order" in n for n in report["notes"])
    assert all(p["passed"] for p in report["parity"].values())


def test_a_form_is_timed_framed_by_identity_convs(tmp_path):
    """Framed puts an identity depthwise 1×1 conv on each image input and output of the layer (routing vectors and
    other non-image tensors pass as they are): the numbers are the layer's own, bit for bit, and the frame convs
    are in the exported graph the runtime times."""
    import onnx

    from polyexport.autoform import Framed
    from polyexport.exporter import export_onnx, flatten_outputs
    from polyexport.layers.condconv import CondConv2d

    layer = randomize_(CondConv2d(6, 10, 3, padding=1, num_experts=3), seed=5).eval()
    args = (torch.randn(2, 6, 7, 9), torch.rand(2, 3))
    with torch.no_grad():
        want = flatten_outputs(layer(*args))
        framed = Framed(layer, Framed.channels(args), Framed.channels(want))
        got = framed(*args)
    assert Framed.channels(args) == [6, None] and Framed.channels(want) == [10]
    assert len(got) == 1 and torch.equal(got[0], want[0])
    path = str(tmp_path / "f.onnx")
    export_onnx(framed, args, path, input_names=["input_0", "input_1"], n_outputs=1, simplifier="onnxsim")
    groups = sorted(a.i for n in onnx.load(path).graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group")
    assert groups.count(6) == 1 and groups.count(10) == 1, groups


class _TailedBlock(nn.Module):
    """A CondConv block as EfficientNet-CC writes it: routing, conv, BN, activation called as a function."""

    def __init__(self):
        super().__init__()
        from polyexport.layers.condconv import CondConv2d

        self.route = nn.Linear(16, 4)
        self.conv = CondConv2d(16, 24, 1, num_experts=4)
        self.bn = nn.BatchNorm2d(24)
        self.proj = CondConv2d(24, 16, 1, num_experts=4)
        self.bn2 = nn.BatchNorm2d(16)

    def forward(self, x):
        r = torch.sigmoid(self.route(x.mean((2, 3))))
        y = torch.nn.functional.silu(self.bn(self.conv(x, r)))
        return x + self.bn2(self.proj(y, r))


def test_forms_are_timed_with_what_follows_their_layer(tmp_path):
    """With `tails` (convert.layer_tails, as the pipeline passes them) each form is timed with the BN the converter
    folds into it and the activation after it, under cache entries of their own, and still has to match the
    reference through them."""
    pytest.importorskip("openvino")
    from polyexport.autoform import FormTimer
    from polyexport.convert import forms_of, layer_tails
    from polyexport.layers.condconv import CondConv2d

    model = randomize_(_TailedBlock(), seed=6).eval()
    tails = layer_tails(model)
    assert {k: [type(m).__name__ for m in v] for k, v in tails.items()} == {"conv": ["BatchNorm2d", "SiLU"], "proj": ["BatchNorm2d"]}
    inputs = capture_layer_inputs(model, (torch.randn(1, 16, 7, 7),))
    forms = [f for name, f in forms_of(CondConv2d).items() if name in ("bank_batched", "bank_batched_blocked")]
    alone = FormTimer("openvino", RunnerOptions(threads=1), inputs, cache_path=str(tmp_path / "a.json"))
    tailed = FormTimer("openvino", RunnerOptions(threads=1), inputs, cache_path=str(tmp_path / "b.json"), tails=tails)
    assert alone.context.endswith("|framed") and tailed.context.endswith("framed, with what follows")
    for name in ("conv", "proj"):
        tailed(name, model.get_submodule(name), forms)
        timed = tailed.choices[-1]["timings_ms"]
        assert all(v is not None for v in timed.values()), timed  # both matched the reference through the tail
    keys = list(json.load(open(tmp_path / "b.json")))
    assert [k.rsplit("|", 1)[1] for k in keys] == ["then BatchNorm2d,SiLU", "then BatchNorm2d"]


def test_a_form_followed_by_its_tail_folds_the_bn_as_the_converter_does():
    """followed_by: the BN folded into the form (no BatchNorm2d left), the activation after; equal to the reference
    layer followed by its tail."""
    from polyexport.convert import followed_by, forms_of, layer_tails
    from polyexport.layers.condconv import CondConv2d

    model = randomize_(_TailedBlock(), seed=7).eval()
    tail = layer_tails(model)["conv"]
    x, r = torch.randn(2, 16, 5, 5), torch.rand(2, 4)
    for form in forms_of(CondConv2d).values():
        deployed = followed_by(form.build(model.conv), tail)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules()), form.name
        with torch.no_grad():
            assert max_rel_err(tail(model.conv(x, r)), deployed(x, r)) <= RTOL, form.name
    assert isinstance(tail[0], nn.BatchNorm2d) and tail[0] is not model.bn  # a copy: the model is not changed


def test_layer_tails_stop_where_the_converter_would_not_fold():
    """A tail is a BN the converter folds and/or an activation, or a BN subclass with its activation inside (timm's
    BatchNormAct2d, as it is), each the only user of what comes before it: not a BN someone hooks, nor a value used twice, nor after a layer called
    twice; an untraceable parent is looked into module by module."""
    from polyexport.convert import layer_tails
    from polyexport.layers.mixconv import MixedConv2d

    class ActBN(nn.BatchNorm2d):
        def forward(self, x):
            return torch.relu(super().forward(x))

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = MixedConv2d(8, 8, [3, 5], depthwise=True), nn.BatchNorm2d(8)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Sequential(MixedConv2d(8, 8, [3, 5], depthwise=True), nn.BatchNorm2d(8), nn.Hardswish())

        def forward(self, x):
            return self.inner(x) if x.sum() > 0 else -self.inner(x)  # data-dependent: fx cannot trace it

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = MixedConv2d(8, 8, [3, 5], depthwise=True), nn.BatchNorm2d(8)

        def forward(self, x):
            return self.bn(self.conv(self.conv(x)))  # one layer, two calls: the first call's tail is the second call

    class Method(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = MixedConv2d(8, 8, [3, 5], depthwise=True), nn.BatchNorm2d(8)

        def forward(self, x):
            return self.bn(self.conv(x)).relu()

    hooked = nn.BatchNorm2d(8)
    hooked.register_forward_hook(lambda *a: None)
    model = nn.Sequential(
        nn.Sequential(MixedConv2d(8, 8, [3, 5], depthwise=True), ActBN(8)),
        nn.Sequential(MixedConv2d(8, 8, [3, 5], depthwise=True), hooked),
        nn.Sequential(MixedConv2d(8, 8, [3, 5], depthwise=True), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 1)),
        Twice(), Untraceable(), nn.Sequential(MixedConv2d(8, 8, [3, 5], depthwise=True), nn.ReLU6()), Shared(), Method(),
        nn.Sequential(MixedConv2d(8, 8, [3, 5], depthwise=True), nn.BatchNorm2d(8), nn.LeakyReLU(0.1)))
    tails = layer_tails(model)
    got = {k: [type(m).__name__ for m in v] for k, v in tails.items()}
    assert got == {"0.0": ["ActBN"], "2.0": ["BatchNorm2d"], "4.inner.0": ["BatchNorm2d", "Hardswish"], "5.0": ["ReLU6"],
                   "7.conv": ["BatchNorm2d", "ReLU"], "8.0": ["BatchNorm2d", "LeakyReLU"]}
    assert tails["8.0"][1].negative_slope == 0.1  # a copy of the model's own
    from polyexport.convert import followed_by, forms_of

    x = torch.randn(2, 8, 6, 6)
    layer = set_eval(randomize_(model, seed=3))[0][0]
    tails = layer_tails(model)
    for form in forms_of(MixedConv2d).values():
        if form.exact_for(layer) is None:  # the subclass is not folded: it stays, activation and all
            deployed = followed_by(form.build(layer), tails["0.0"])
            assert sum(isinstance(m, ActBN) for m in deployed.modules()) == 1, form.name
            with torch.no_grad():
                assert max_rel_err(model[0](x), deployed(x)) <= RTOL, form.name


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_the_whole_model_checks_export_is_the_final_graph(runtime, tmp_path, monkeypatch):
    """The whole-model check exports its candidates as the final export will; the winner's graph is then checked
    and shipped rather than exported again. Byte for byte what a fresh export gives (the second run, its verdict
    cached, exports afresh)."""
    pytest.importorskip(runtime)
    import polyexport
    import polyexport.autoform as autoform

    monkeypatch.setenv("POLYEXPORT_CACHE", str(tmp_path / "cache.json"))
    monkeypatch.setattr(autoform, "WHOLE_MODEL_MARGIN", 100.0)  # the check runs whatever the per-layer timings say
    graphs, reports = [], []
    for run in ("cold", "warm"):
        report = polyexport.export(mixconv_net(), [torch.randn(1, 16, 20, 20)], target=runtime, out=str(tmp_path / run),
                                   threads=1, bench=False)
        assert report.passed, report.parity
        graphs.append(open(tmp_path / run / "model.onnx", "rb").read())
        reports.append(json.load(open(tmp_path / run / "report.json")))
    cold, warm = reports
    assert not cold["form_choices"][-1]["cached"] and warm["form_choices"][-1]["cached"]
    assert cold["export"]["source"] == "the whole-model form check" and warm["export"]["source"] == "exported"
    assert cold["export"]["simplifier"] == warm["export"]["simplifier"] and graphs[0] == graphs[1]
    assert "form check exported" in open(tmp_path / "cold" / "report.md").read()
    assert sorted(os.listdir(tmp_path / "cold")) == sorted(os.listdir(tmp_path / "warm"))  # no candidate left behind


def test_form_cache_option_names_the_file_and_refuses_a_folder(tmp_path, monkeypatch, capsys):
    """`--form-cache FILE` keeps the timings there (a CI cache): the next run reads them and times nothing."""
    monkeypatch.setenv("POLYEXPORT_CACHE", str(tmp_path / "not-this.json"))
    cache = tmp_path / "ci" / "forms.json"
    common = ["zoo:test_mixconv_net", "--target", "onnxruntime", "--no-bench", "--threads", "1", "--form-cache", str(cache)]
    for run in ("first", "second"):
        with pytest.raises(SystemExit) as e:
            main([*common, "--out", str(tmp_path / run)])
        assert e.value.code == 0
    assert cache.is_file() and not (tmp_path / "not-this.json").exists()
    first, second = (json.load(open(tmp_path / run / "report.json"))["form_choices"] for run in ("first", "second"))
    assert not any(c["cached"] for c in first) and all(c["cached"] for c in second)
    with pytest.raises(SystemExit) as e:
        main([*common[:-1], str(tmp_path), "--out", str(tmp_path / "third")])
    assert e.value.code == 2 and "a folder" in capsys.readouterr().err and not (tmp_path / "third").exists()


def test_a_tail_that_does_not_run_alone_is_left_out(tmp_path):
    """A user's BN subclass that cannot run on the layer's output alone: the form is timed without it, not failed."""
    from polyexport.convert import layer_tails
    from polyexport.layers.mixconv import MixedConv2d

    class NeedsMore(nn.BatchNorm2d):
        def forward(self, x, scale=None):
            if self.armed and scale is None:
                raise RuntimeError("needs a scale")
            return super().forward(x)

    model = nn.Sequential(MixedConv2d(8, 8, [3, 5], depthwise=True), NeedsMore(8)).eval()
    model[1].armed = False
    tails = layer_tails(model)
    assert [type(m).__name__ for m in tails["0"]] == ["NeedsMore"]
    tails["0"][0].armed = True
    inputs = capture_layer_inputs(model, (torch.randn(1, 8, 9, 9),))
    timer = FormTimer("onnxruntime", RunnerOptions(threads=1), inputs, cache_path=str(tmp_path / "c.json"), repeats=1, tails=tails)
    convert(model, "onnxruntime", ranker=timer)
    assert all(v is not None for v in timer.choices[0]["timings_ms"].values())
    assert not any("|then " in k for k in json.load(open(tmp_path / "c.json")))


def test_timms_condconv_block_is_timed_with_its_batchnormact(tmp_path):
    """timm's CondConv block (tests/foreign: its own CondConv2d, BatchNormAct2d holding the activation): each foreign
    layer's tail is the BatchNormAct2d after it, kept whole, and the forms are timed and judged with it."""
    from polyexport.convert import layer_tails
    from tests.foreign.condconv import CondConvResidual

    model = randomize_(CondConvResidual(16, 16, exp_ratio=2.0, num_experts=4, act_layer=nn.SiLU), seed=2).eval()
    tails = layer_tails(model)
    assert {k: [type(m).__name__ for m in v] for k, v in tails.items()} == {
        name: ["BatchNormAct2d"] for name in ("conv_pw", "conv_dw", "conv_pwl")}
    x = torch.randn(2, 16, 9, 9)
    timer = FormTimer("onnxruntime", RunnerOptions(threads=1), capture_layer_inputs(model, (x,)), cache_path=str(tmp_path / "c.json"),
                      repeats=1, tails=tails)
    deployed, _ = convert(model, "onnxruntime", ranker=timer)
    assert [c["name"] for c in timer.choices] == ["conv_pw", "conv_dw", "conv_pwl"]
    assert all(v is not None for c in timer.choices for v in c["timings_ms"].values())  # every form matched through its tail
    assert sum("|then BatchNormAct2d" in k for k in json.load(open(tmp_path / "c.json"))) == 3
    assert_equivalent(model, deployed, x)


def test_kernel_bank_layers_are_keyed_by_their_kind_of_conv():
    from polyexport.form_prior import prior_key
    from polyexport.layers.condconv import CondConv2d

    assert prior_key(CondConv2d(8, 8, 3, groups=8)) == "CondConv2d/depthwise"
    assert prior_key(CondConv2d(8, 16, 1)) == "CondConv2d/pointwise"
    assert prior_key(CondConv2d(8, 16, 3)) == "CondConv2d/dense"
    assert prior_key(MixedConv2d(16, 16, [3, 5])) == "MixedConv2d"


def test_the_prior_leaves_its_forms_untimed_and_out_of_the_whole_model_check(tmp_path):
    """A form the prior names is not timed, not chosen and not a whole-model candidate; `--form thorough` ({}) times it."""
    from polyexport.autoform import whole_model_alternatives

    model, x = mixconv_net(), (torch.randn(1, 16, 20, 20),)
    inputs = capture_layer_inputs(model, x)
    timer = FormTimer("onnxruntime", RunnerOptions(threads=1), inputs, cache_path=str(tmp_path / "c.json"), repeats=1,
                      prior={"MixedConv2d": ["split"]})
    _, records = convert(model, target="onnxruntime", ranker=timer)
    assert [c["not_timed"] for c in timer.choices] == [["split"], ["split"]]
    assert all("split" not in c["timings_ms"] and len(c["timings_ms"]) >= 2 for c in timer.choices)
    assert {r.form for r in records if r.type == "MixedConv2d"} <= {"single", "aligned"}
    labels = whole_model_alternatives(model, records, "onnxruntime", {}, False, False, timer)
    assert not any("split" in label for label in labels)
    every = FormTimer("onnxruntime", RunnerOptions(threads=1), inputs, cache_path=str(tmp_path / "c.json"), repeats=1, prior={})
    convert(model, target="onnxruntime", ranker=every)
    assert all("split" in c["timings_ms"] and "not_timed" not in c and not c["cached"] for c in every.choices)


def test_a_prior_naming_every_form_or_leaving_only_failing_ones_times_the_rest(tmp_path):
    from tests.test_explain import Scaled3x3  # forms: exact, and planted_torch / planted_onnx, wrong on the runtime

    model = randomize_(nn.Sequential(Scaled3x3(8, 8)), seed=2)
    inputs = capture_layer_inputs(model, (torch.randn(1, 8, 6, 6),))
    for prior in ({"Scaled3x3": ["exact"]}, {"Scaled3x3": ["exact", "planted_torch", "planted_onnx"]}):
        timer = FormTimer("onnxruntime", RunnerOptions(threads=1), inputs, cache_path=str(tmp_path / f"{len(prior['Scaled3x3'])}.json"),
                          repeats=1, prior=prior)
        _, records = convert(model, target="onnxruntime", ranker=timer)
        assert records[0].form == "exact" and "not_timed" not in timer.choices[0]
        assert set(timer.choices[0]["timings_ms"]) == {"exact", "planted_torch", "planted_onnx"}


def test_the_shipped_prior_names_registered_forms_and_applies_on_the_cpu_only(tmp_path, monkeypatch):
    from polyexport.convert import registered_layers
    from polyexport.form_prior import PRIOR_PATH, skip_forms
    from polyexport.pipeline import ExportOptions, form_timer

    entries = {t.__name__: e for t, e in registered_layers().items()}
    shipped = json.load(open(PRIOR_PATH))
    assert shipped["cut"] >= 1.25 and shipped["measured"]  # never tighter than the whole-model margin; says where measured
    for runtime, types in shipped["skip"].items():
        assert runtime in ("onnxruntime", "openvino")
        for key, forms in types.items():  # a layer type, or type/kind of conv (form_prior.prior_key)
            typ, _, kind = key.partition("/")
            assert kind in ("", "depthwise", "pointwise", "dense"), key
            assert set(forms) < set(entries[typ].forms), (key, forms)  # real forms, never all of them
    assert skip_forms("openvino", "cuda") == {} and skip_forms("tensorrt") == {}
    monkeypatch.setenv("POLYEXPORT_CACHE", str(tmp_path / "cache.json"))
    model, x = mixconv_net(), [torch.randn(1, 16, 20, 20).numpy()]
    assert form_timer(model, x, ExportOptions(target="openvino")).prior == skip_forms("openvino")
    assert form_timer(model, x, ExportOptions(target="openvino", form_choice="thorough")).prior == {}
