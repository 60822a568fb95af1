"""Pick the fastest exact deploy form per layer, by timing each on the target runtime.

Several forms are exact; which is fastest depends on the runtime, its version, the device, the
thread count and the layer's shape (measured: MixConv's split form is 5× slower than its single
form in ONNX Runtime at 22-channel splits and on par in OpenVINO). So for each converted layer the
usable exact forms are exported as single-layer graphs at the layer's real input (captured in one
forward pass of the model), followed by what follows the layer in the model (the BN the converter folds into it,
the activation after: its tail, convert.layer_tails), framed by identity convs as a network frames them (`Framed`),
timed in turns on the runtime, and the fastest chosen; forms measured far behind the fastest on every shape of their
kind on a CPU runtime are not timed (form_prior.py; `--form thorough` times them). Timings are
cached in a JSON file keyed by (runtime, version, device, threads, precision, layer signature, tail), so a
second export of the same model, or of another with the same layer shapes, is instant; within one run,
layers with the same signature are timed once.

Then the per-layer choice is checked as a whole graph against the single forced forms and the preferred
order (`choose_deployment`): what a layer alone shows is not always what the whole graph does. That
check is the costly part, so it runs only for the alternatives whose per-layer timings come within
WHOLE_MODEL_MARGIN of the choice's, and for the closest WHOLE_MODEL_ALTERNATIVES of those (`--form
thorough`: all): the whole-graph effects measured (fusions, layout changes between layers) moved a model
by at most 1.16×, so an alternative already slower than that layer by layer cannot win as a whole graph
(benchmarks/forms.py checks the result against every fixed form).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from .bench import race
from .errors import BadInput
from .convert import Form, LayerRecord, assignment, convert, followed_by, is_known_layer, plan, registered_layers
from .exporter import ExportInfo, export_onnx, flatten_outputs
from .exporter.fp16 import graph_for
from .form_prior import prior_key, skip_forms
from .modules import set_eval
from .parity import Tolerance, judge
from .runs import run_graph
from .runtimes import RunnerOptions, make_runner

CACHE_ENV = "POLYEXPORT_CACHE"
#: an alternative assignment is timed as a whole graph only if its per-layer timings sum to at most this
#: multiple of the per-layer choice's (see the module docstring)
WHOLE_MODEL_MARGIN = 1.25
#: and only the closest few of those (by that sum): each costs a conversion, an export, a session and its
#: repeats (OctResNet-50 had 10 within the margin: 75 s of a 93 s run and 2.6 GB of sessions held at once).
#: The price, measured (benchmarks/results/forms.md): OctResNet-50 on OpenVINO ran 1.06× the best fixed form;
#: `--form thorough` times every plausible alternative, as the check did before this cap.
WHOLE_MODEL_ALTERNATIVES = 2
#: with a dynamic batch, a form is also timed at this batch (the captured inputs repeated), and its time is its
#: latency at the captured batch plus its latency per sample here. Timed at batch 1 alone, ONNX Runtime chose the
#: per-sample loop for all 19 of dy_resnet18's dynamic convs, which ran at 3.2× resnet18 at batch 8 (1.9× for the
#: batch-folded static graph); and a form that cannot run at another batch from its graph is caught here.
DYNAMIC_TIMING_BATCH = 8
#: a race ends once every form left is within this factor of the fastest: which of them wins then costs at most
#: this much, and timing them further costs a repeat of each (OctConv's four forms run within noise of each other)
TIE = 1.02


def default_cache_path() -> str:
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "polyexport", "forms.json")


def capture_layer_inputs(model: nn.Module, args: tuple[torch.Tensor, ...]) -> dict[str, tuple[torch.Tensor, ...]]:
    """The tensors each known layer receives (first call), by module name, from one forward pass."""
    seen: dict[str, tuple[torch.Tensor, ...]] = {}
    hooks = []
    for name, module in model.named_modules():
        if is_known_layer(module):
            def pre(m, a, name=name):
                if name not in seen and a and all(isinstance(t, torch.Tensor) for t in a):
                    seen[name] = tuple(t.detach().clone() for t in a)
            hooks.append(module.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            model(*args)
    finally:
        for h in hooks:
            h.remove()
    return seen


def signature(ref: nn.Module, args: tuple[torch.Tensor, ...]) -> str:
    """What determines a form's speed: the layer's type, configuration, parameter shapes and input shapes."""
    parts = [type(ref).__name__, ref.extra_repr(), repr(sorted((n, tuple(p.shape)) for n, p in ref.named_parameters())),
             repr([tuple(a.shape) for a in args]), repr([(n, m.extra_repr()) for n, m in ref.named_modules() if n])]
    return type(ref).__name__ + ":" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class FinalExport:
    """How the pipeline will export the deployed model. The whole-model check exports its candidates exactly so, into
    `folder`, and the winner's graph becomes the final export: a model is not exported twice (a second export of
    OctResNet-50 cost 1.3 s, and onnxsim of a CondConv model's `If`s on OpenVINO 2.3 s)."""

    folder: str
    input_names: list[str]
    kw: dict  # export_onnx's opset, exporter and dynamic_axes, as the final export passes them


@dataclass(frozen=True)
class CheckedGraph:
    """A whole-model candidate as the check exported it (FinalExport): the graph it timed, the simplifier that made
    it from the exporter's raw graph (kept beside it)."""

    info: ExportInfo
    raw: str
    simplifier: str


class FormTimer:
    """A converter ranker (convert.Ranker) that times forms on one runtime."""

    def __init__(self, runtime: str, options: RunnerOptions, inputs: dict[str, tuple[torch.Tensor, ...]],
                 cache_path: str | None = None, repeats: int = 3, min_time_s: float = 0.03, warmup_s: float = 0.02,
                 dynamic_batch: bool = False,
                 alternatives: int | None = WHOLE_MODEL_ALTERNATIVES, final: FinalExport | None = None,
                 tails: dict[str, nn.Sequential] | None = None, prior: dict[str, list[str]] | None = None):
        self.runtime, self.options, self.inputs = runtime, options, inputs
        #: layer key (form_prior.prior_key) -> forms not timed (measured far behind on every shape); None: the measured prior,
        #: {}: every form timed (`--form thorough`)
        self.prior: dict[str, list[str]] = skip_forms(runtime, options.device) if prior is None else prior
        self.final = final  # where and how whole-model candidates are exported (None: a temporary folder, generic names)
        self.exported: dict[str, CheckedGraph] = {}  # the last whole-model check's exports, by candidate
        self.dynamic_batch = dynamic_batch  # time each form as the final graph will run it: runtimes compile dynamic shapes differently
        self.cache_path: str | None = cache_path or default_cache_path()
        #: a form's race: at most `repeats` rounds of `min_time_s` each, the first after `warmup_s` of warm-up (bench.race)
        self.repeats, self.min_time_s, self.warmup_s = repeats, min_time_s, warmup_s
        #: on ONNX Runtime a form alone is timed as exported, not simplified: ORT folds its constants and shape
        #: arithmetic when it loads it, onnxsim took a fifth of the form choice, and the choices agree within noise
        #: (benchmarks/results/form_timing_simplified.md: 2 of 35 layers differ). On OpenVINO they did not (MixNet-S:
        #: 11 of 21 differ, up to 1.53×), so there forms are timed simplified, as they will ship. The whole-model
        #: check follows the same rule.
        self.layer_simplifier = "none" if runtime == "onnxruntime" else "onnxsim"
        precision = "fp16" if options.fp16 else "fp32"  # forms are timed as the final graph will run: in its precision
        self.alternatives = alternatives  # whole-model alternatives timed at most (None: every plausible one)
        self.second_batch = DYNAMIC_TIMING_BATCH if dynamic_batch else None
        #: what follows each layer in the model (convert.layer_tails), timed with its forms: None times each form alone
        self.tails = tails
        self.context = (f"{runtime}|{_version(runtime)}|{options.device}|threads={options.resolved_threads()}|dynamic={dynamic_batch}"
                        f"|{precision}" + (f"|and batch {self.second_batch}" if dynamic_batch else "")
                        + ("|framed" if tails is None else "|framed, with what follows"))
        self.notes: list[str] = []  # what went wrong with the cache (reported, never fatal)
        self.tell: Callable[[str], object] = lambda msg: None  # progress within the deploy phase (set by choose_deployment)
        self._asked = 0
        self.cache = self._load()
        self.choices: list[dict] = []

    def _load(self) -> dict:
        """The cache file's entries; anything malformed (not JSON, another shape, timings that are not numbers)
        is ignored with a note: a cache is an optimisation, never a reason to fail."""
        try:
            with open(self.cache_path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, UnicodeDecodeError) as e:
            self.notes.append(f"form cache {self.cache_path} is unreadable ({type(e).__name__}): ignored, timing afresh")
            return {}
        if not isinstance(data, dict):
            self.notes.append(f"form cache {self.cache_path} holds a {type(data).__name__}, not a table: ignored, timing afresh")
            return {}
        good = {k: v for k, v in data.items() if _valid_entry(v)}
        if len(good) < len(data):
            self.notes.append(f"form cache {self.cache_path}: {len(data) - len(good)} malformed entr(y/ies) ignored")
        return good

    def _save(self) -> None:
        """Merge this run's entries into the file under a lock (runs sharing a cache lose nothing), written
        atomically; an unwritable cache location leaves the run without a cache, with a note."""
        if self.cache_path is None:
            return
        from filelock import FileLock, Timeout

        folder = os.path.dirname(os.path.abspath(self.cache_path))
        tmp = None
        try:
            os.makedirs(folder, exist_ok=True)
            with FileLock(self.cache_path + ".lock", timeout=30):
                merged = {**self._load(), **self.cache}
                with tempfile.NamedTemporaryFile("w", dir=folder, prefix=".forms-", suffix=".tmp", delete=False) as f:
                    tmp = f.name
                    json.dump(merged, f, indent=1)
                os.replace(tmp, self.cache_path)
                tmp = None
                self.cache = merged
        except (OSError, Timeout) as e:
            self.notes.append(f"form cache {self.cache_path} cannot be written ({getattr(e, 'strerror', None) or type(e).__name__}): "
                              "this run goes on without a cache")
            self.cache_path = None
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def __call__(self, name: str, ref: nn.Module, forms: list[Form]) -> list[Form]:
        args = self.inputs.get(name)
        if args is None:  # not reached in the sample forward: keep the measured preference order
            return forms
        tail, outs = self._tail(name, ref, args)
        key = f"{self.context}|{signature(ref, args)}" + (f"|then {_describe(tail)}" if tail is not None else "")
        timings: dict[str, float] = dict(self.cache.get(key, {}))
        skip = set(self.prior.get(prior_key(ref), ()))

        def to_time() -> list[Form]:
            """The forms the prior keeps that have no timing yet; once none is left and none timed works here (or the
            prior names every form), the prior's own: it narrows a choice, never leaves a layer without a working form."""
            kept = [f for f in forms if f.name not in timings and f.name not in skip]
            if kept or any(_finite(timings.get(f.name)) is not None for f in forms):
                return kept
            return [f for f in forms if f.name not in timings]
        missing = to_time()
        cached = not missing
        self._asked += 1
        t0 = time.perf_counter()
        while missing:
            self.tell(f"layer {self._asked} of {len(self.inputs)}, {name} ({type(ref).__name__}): timing {', '.join(f.name for f in missing)}")
            timings.update(self._time(ref, args, missing, tail, outs))
            self.cache[key] = timings
            self._save()
            missing = to_time()
        spent = time.perf_counter() - t0 if not cached else 0.0
        ranked = sorted(forms, key=lambda f: timings.get(f.name, float("inf")))
        skipped = [f.name for f in forms if f.name not in timings]  # the prior's: never timed, so never chosen
        self.choices.append({"name": name, "type": type(ref).__name__, "runtime": self.runtime, "input": [list(a.shape) for a in args],
                             "timings_ms": {f.name: _finite(timings.get(f.name)) for f in forms if f.name not in skipped},
                             "chosen": ranked[0].name, "cached": cached, "seconds": round(spent, 2),
                             **({"not_timed": skipped} if skipped else {})})
        return ranked

    def _tail(self, name: str, ref: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[nn.Sequential | None, tuple[torch.Tensor, ...] | None]:
        """What follows this layer and is timed with it: its tail (convert.layer_tails) where the layer gives one image
        and the tail runs on it (a user's BN subclass may not, alone: then the form is timed without it); with what
        the forms must then give (the layer's outputs, through the tail where there is one; None where no tail was
        asked for and the layer did not run)."""
        tail = (self.tails or {}).get(name)
        if tail is None:
            return None, None
        with torch.no_grad():
            outs = flatten_outputs(ref(*_fresh(args)))
            if len(outs) != 1 or outs[0].dim() != 4:
                return None, outs
            try:
                return tail, (tail(outs[0]),)
            except Exception:  # noqa: BLE001 - timed as the layer alone
                return None, outs

    def _time(self, ref: nn.Module, args: tuple[torch.Tensor, ...], forms: list[Form], tail: nn.Sequential | None = None,
              outs: tuple[torch.Tensor, ...] | None = None) -> dict[str, float]:
        """Each form's latency, framed (Framed), followed by `tail` as the converter deploys them (convert.followed_by);
        inf for a form that fails to export, to run, or to match `outs` (the reference layer's outputs, through its
        tail: _tail; computed here where not given) on this runtime at this input (so a form that is wrong here is
        never chosen)."""
        with torch.no_grad():
            if outs is None:
                outs = flatten_outputs(ref(*_fresh(args)))
            frame = Framed.channels(args), Framed.channels(outs)
            want = [t.numpy() for t in outs]

        def build(form: Form) -> nn.Module:
            deployed = set_eval(form.build(ref))
            return Framed(deployed if tail is None else followed_by(deployed, tail), *frame)
        builds = {f.name: (lambda f: lambda: build(f))(f) for f in forms}
        return _time_checked(builds, args, want, self.runtime, self.options, self.dynamic_batch,
                             repeats=self.repeats, warmup_s=self.warmup_s, min_time_s=self.min_time_s, simplifier=self.layer_simplifier,
                             second_batch=self.second_batch, tie=TIE)

    def whole_models(self, candidates: dict, args: tuple[torch.Tensor, ...]) -> tuple[dict[str, float | None], bool]:
        """p50 latency (ms, None where it failed) of each whole deployed model, candidates given as
        autoform.Candidate (built here only on a cache miss), and whether it came from the cache (keyed by every
        candidate's (module, form) assignment and the input shapes). Per-layer timing misses what only the whole graph
        shows (fusions across layers, layout changes between them), so the pipeline checks the per-layer
        choice against each single forced form and the preferred order this way. Every candidate is
        exact; one whose graph still disagrees with the first's PyTorch output on this runtime is never
        chosen."""
        sig = json.dumps({k: assignment(c.records) for k, c in candidates.items()}
                         | {"inputs": [list(a.shape) for a in args]}, sort_keys=True)
        key = f"{self.context}|whole-model:{hashlib.sha256(sig.encode()).hexdigest()[:16]}"
        if key in self.cache:
            return dict(self.cache[key]), True
        first = next(iter(candidates.values())).build()[0]
        with torch.no_grad():
            want = [t.numpy() for t in flatten_outputs(first(*_fresh(args)))]
        builds = {k: (lambda c: lambda: c.build()[0])(c) for k, c in candidates.items()}
        self.exported = {}
        timings = _time_checked(builds, args, want, self.runtime, self.options, self.dynamic_batch,
                                repeats=5, warmup_s=0.05, min_time_s=0.1, simplifier=self.layer_simplifier,
                                second_batch=self.second_batch, min_rounds=3, tie=TIE, final=self.final, files=self.exported)
        self.cache[key] = {k: _finite(v) for k, v in timings.items()}
        self._save()
        return dict(self.cache[key]), False


class Framed(nn.Module):
    """A layer timed alone, between identity depthwise 1×1 convs on each image input and output (exactly the layer's
    numbers). Alone, a layer's graph starts and ends in the plain layout, so a runtime that computes convs in its
    own blocked layout (OpenVINO) pays reorders at both edges that it does not pay between layers of a network:
    that favoured forms without convs (MatMuls) on single layers (DCD, CondConv: benchmarks/form_timing_framed.py)
    whose whole models then ran 1.2× to 3.7× slower (benchmarks/results/forms.md). Framed, the edges are convs,
    as in a network. What follows the layer in the model (its tail: the BN the converter folds into it, the activation
    after) is inside the frame, with the form (FormTimer's `tails`)."""

    def __init__(self, inner: nn.Module, in_channels: list[int | None], out_channels: list[int | None]):
        super().__init__()
        self.inner = inner
        self.pre = nn.ModuleList([self._identity(c) for c in in_channels])
        self.post = nn.ModuleList([self._identity(c) for c in out_channels])

    @staticmethod
    def channels(tensors) -> list[int | None]:
        """The channel count of each 4-D (image) tensor, None for any other (routing weights, boxes): left as it is."""
        return [t.shape[1] if len(getattr(t, "shape", ())) == 4 and t.shape[1] > 0 else None for t in tensors]

    @staticmethod
    def _identity(channels: int | None) -> nn.Module:
        """An identity depthwise 1×1 conv."""
        if channels is None:
            return nn.Identity()
        conv = nn.Conv2d(channels, channels, 1, groups=channels)
        with torch.no_grad():
            conv.weight.fill_(1.0)
            conv.bias.zero_()
        return conv.eval()

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = flatten_outputs(self.inner(*(pre(a) for pre, a in zip(self.pre, args))))
        return tuple(post(o) for post, o in zip(self.post, out))


def _time_checked(builds: dict[str, Callable[[], nn.Module]], args: tuple[torch.Tensor, ...], want: list,
                  runtime: str, options: RunnerOptions, dynamic_batch: bool, repeats: int, warmup_s: float,
                  min_time_s: float, simplifier: str = "onnxsim", second_batch: int | None = None, min_rounds: int = 2,
                  tie: float | None = None, final: FinalExport | None = None,
                  files: dict[str, CheckedGraph] | None = None) -> dict[str, float]:
    """Export each built module as the pipeline exports it, run it on `runtime` (in the precision asked:
    options.fp16), judge it against `want` by that precision's tolerance, and race those that match
    (bench.race: interleaved repeats, a clearly slower one leaves early and frees its session): p50 ms each,
    inf where building, exporting, running or matching failed. With `second_batch` (dynamic-batch graphs) a
    second race runs at that batch, and each time is the first's plus the second's per sample. With `final`, each
    is exported as the final export will be (its input names, opset, exporter, named axes) into final.folder, its raw
    graph kept beside it, and `files` gets label -> CheckedGraph of each that exported."""
    names = final.input_names if final else [f"input_{i}" for i in range(len(args))]
    feeds = [("check", {n: a.numpy().copy() for n, a in zip(names, args)})]
    bigger = _at_batch(feeds[0][1], second_batch) if second_batch else None
    bigger_batch = len(next(iter(bigger.values()))) if bigger else 0
    reference = {"check": want}
    fns, out, loaded = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, build) in enumerate(builds.items()):
            try:
                with torch.no_grad():
                    module = build()
                folder = final.folder if final else tmp
                path = os.path.join(folder, f"candidate{i}.onnx")
                raw = os.path.join(folder, f"candidate{i}-exported.onnx") if final and simplifier != "none" else path  # no copy
                info = export_onnx(module, _fresh(args), path, input_names=names, n_outputs=len(want), dynamic_batch=dynamic_batch,
                                   simplifier=simplifier, validate=False, raw_path=raw if raw != path else None, **(final.kw if final else {}))
                if files is not None and final:
                    files[label] = CheckedGraph(info, raw, simplifier)
                graph, _ = graph_for(runtime, path, tmp, options.fp16)
                result = run_graph(runtime, make_runner(runtime, options, keep_artifacts=False), graph, tmp, feeds)
                loaded[label] = result.runner
                if not judge(result, reference, Tolerance(None, None)).passed:  # by the precision it ran
                    raise ValueError(f"does not match the reference on this runtime: {result.error or 'outputs differ'}")
                if bigger is not None and result.runner.run(bigger)[0].shape[0] != bigger_batch:
                    raise ValueError("does not run at another batch from its dynamic-batch graph")
                fns[label] = (lambda r, f: lambda: r.run(f))(result.runner, feeds[0][1])
            except Exception:  # noqa: BLE001 - a candidate that fails here is never the fastest
                out[label] = float("inf")
        timing = dict(repeats=repeats, warmup=2, warmup_s=warmup_s, min_iters=5, min_time_s=min_time_s, min_rounds=min_rounds, tie=tie)
        if fns and bigger is None:
            out.update(race(fns, on_drop=lambda k: loaded.pop(k).close(), **timing))
        elif fns:  # both races see every form: one slow at the first batch may be the fastest at the second
            first = race(fns, **timing)
            per_sample = bigger_batch / len(args[0])
            second = race({k: (lambda r: lambda: r.run(bigger))(loaded[k]) for k in fns}, on_drop=lambda k: loaded.pop(k).close(), **timing)
            out.update({k: first[k] + second[k] / per_sample for k in fns})
        for r in loaded.values():
            r.close()
    return out


def _describe(tail: nn.Sequential) -> str:
    """A tail as far as a form's speed goes: its modules' kinds (a BN's statistics and an activation's slope aside)."""
    return ",".join(type(m).__name__ for m in tail)


def _fresh(args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Copies for one run or export of a whole model: a model may write into its input (pipeline: inputs.to_torch)."""
    return tuple(a.clone() for a in args)


def _at_batch(feeds: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """The feeds repeated along the batch axis to `batch` (at least twice their own): timing needs the shape, not new data."""
    have = len(next(iter(feeds.values())))
    batch = max(batch, 2 * have)
    return {n: np.concatenate([a] * -(-batch // have))[:batch] for n, a in feeds.items()}


def _valid_entry(value: object) -> bool:
    """A cache entry: form (or candidate) name -> latency in ms, or null for one that failed."""
    return isinstance(value, dict) and all(
        isinstance(k, str) and (v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0)) for k, v in value.items())


def _finite(ms: float | None) -> float | None:
    """None (JSON null) for a form that failed here: report.json stays strict JSON."""
    return None if ms is None or ms == float("inf") else ms


def _version(runtime: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(runtime)
    except md.PackageNotFoundError:
        return "?"


@dataclass
class Deployment:
    """The deployed model, what each layer became, the timed choices behind it, and notes (the form cache's troubles)."""

    model: nn.Module
    records: list[LayerRecord]
    choices: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: this very model as the whole-model check exported it, as the final export would (FinalExport); None where it
    #: was not (no check, a cached verdict)
    exported: CheckedGraph | None = None


@dataclass
class Candidate:
    """A whole-model assignment to compare: the forms it gives each layer (planned, nothing built yet) and how to
    build it. Building is the costly part, so only candidates that must be timed are built, and with a cached
    verdict only the winner."""

    records: list[LayerRecord]
    build: Callable[[], tuple[nn.Module, list[LayerRecord]]]


def choose_deployment(model: nn.Module, args: tuple[torch.Tensor, ...], target: str, forms: dict[str, str], dynamic_batch: bool,
                      strict: bool, timer: FormTimer | None, progress: Callable[[str], object]) -> Deployment:
    """Convert `model` for `target`: with a `timer`, each layer's exact forms timed on the runtime, then the
    per-layer choice checked as a whole graph against the plausible alternatives (whole_model_alternatives)."""
    label = f"deploy: time each exact form on {target}, swap layers, fold BatchNorm" if timer else "deploy: swap layers, fold BatchNorm"
    with progress(label) as tell:
        if timer is not None:
            timer.tell = tell or timer.tell
        deployed, records = convert(model, target, forms, dynamic_batch, strict, ranker=timer)
    if timer is None:
        return Deployment(deployed, records)
    choices = list(timer.choices)
    alternatives = whole_model_alternatives(model, records, target, forms, dynamic_batch, strict, timer)
    if alternatives:
        candidates = {"per-layer": Candidate(records, lambda: (deployed, records)), **alternatives}
        with progress(f"whole model on {target}: per-layer choice vs {len(alternatives)} other assignment(s)"):
            timings, cached = timer.whole_models(candidates, args)
        best = min(timings, key=lambda k: float("inf") if timings[k] is None else timings[k])
        if best != "per-layer":
            deployed, records = candidates[best].build()
        choices.append({"name": "(whole model)", "type": "whole model", "runtime": timer.runtime, "input": [list(a.shape) for a in args],
                        "timings_ms": timings, "chosen": best, "cached": cached})
        exported = None if cached or timings[best] is None else timer.exported.get(best)
        for label, graph in timer.exported.items():  # the losers' graphs: not kept on disk until the run ends
            if label != best or exported is None:
                for path in {graph.info.path, graph.raw}:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
        return Deployment(deployed, records, choices, list(dict.fromkeys(timer.notes)), exported)
    return Deployment(deployed, records, choices, list(dict.fromkeys(timer.notes)))


def _layer_total(records: list[LayerRecord], timed: dict[str, dict[str, float | None]]) -> float:
    """The sum of the per-layer timings of an assignment (inf where a layer's form was not timed or failed)."""
    total = 0.0
    for r in records:
        if r.name in timed:
            t = timed[r.name].get(r.form)
            total += float("inf") if t is None else t
    return total


def whole_model_alternatives(model: nn.Module, records: list[LayerRecord], target: str, forms: dict[str, str], dynamic_batch: bool,
                             strict: bool, timer: FormTimer) -> dict[str, Candidate]:
    """What the per-layer choice is checked against as whole graphs: for each layer type and form (none the user
    forced), that form for every layer of the type with the other types (a) as timed per layer and (b) in the
    preferred order, and (c) the preferred order for all. (b) and (c) are what a forced form or `--form
    preferred` would ship. Kept only where the per-layer timings come within WHOLE_MODEL_MARGIN of the choice's,
    a form that failed on this runtime for some layer never, and no assignment twice; of those, the
    timer.alternatives closest by per-layer timings (all of them with `--form thorough`). Planned, not built."""
    entries = {t.__name__: e for t, e in registered_layers().items()}
    snapshot = list(timer.choices)
    timed = {c["name"]: c["timings_ms"] for c in snapshot}
    chosen = {r.type for r in records if r.form not in ("folded", "absorbed", "reference") and r.type in entries}
    limit = WHOLE_MODEL_MARGIN * _layer_total(records, timed)
    seen, out, totals = {assignment(records)}, {}, {}

    def add(label: str, forced: dict[str, str], timed_per_layer: bool) -> None:
        ranker = timer if timed_per_layer else None
        try:
            recs = plan(model, target, forced, dynamic_batch, strict, ranker)
        except BadInput:  # the form is not exact (or not usable) for some layer of this model
            return
        key = assignment(recs)
        total = _layer_total(recs, timed)
        if key not in seen and total <= limit:
            seen.add(key)
            totals[label] = total

            def build() -> tuple[nn.Module, list[LayerRecord]]:
                deployed, built = convert(model, target, forced, dynamic_batch, strict, ranker=_Replay(recs))
                if assignment(built) != key:  # the plan and the build disagree: never time the wrong graph
                    raise RuntimeError(f"candidate {label!r} built differently from its plan")
                return deployed, built
            out[label] = Candidate(recs, build)

    try:
        for typ in sorted(chosen - set(forms)):
            per_layer = [c["timings_ms"] for c in snapshot if c["type"] == typ]
            for form in entries[typ].forms:
                if not per_layer or any(t.get(form) is None for t in per_layer):
                    continue  # failed (or was not timed) on this runtime for some layer: never a candidate
                add(f"{typ}={form}", {**forms, typ: form}, True)
                if len(chosen) > 1:
                    add(f"{typ}={form}, others preferred", {**forms, typ: form}, False)
        add("preferred", dict(forms), False)
    finally:
        timer.choices[:] = snapshot  # the alternatives' lookups are not choices
    closest = sorted(out, key=lambda label: totals[label])[:timer.alternatives]  # stable: ties keep their order
    return {label: out[label] for label in out if label in closest}


class _Replay:
    """A ranker that repeats a plan's choices (building a planned candidate times nothing again)."""

    def __init__(self, records: list[LayerRecord]):
        self.forms = {r.name: r.form for r in records}

    def __call__(self, name: str, ref: nn.Module, forms: list[Form]) -> list[Form]:
        want = self.forms.get(name)
        return sorted(forms, key=lambda f: f.name != want)
