"""Pick the fastest exact deploy form per layer, by timing each on the target runtime.

Several forms are exact; which is fastest depends on the runtime, its version, the device, the
thread count and the layer's shape (measured: MixConv's split form is 5× slower than its single
form in ONNX Runtime at 22-channel splits and on par in OpenVINO). So for each converted layer the
usable exact forms are exported as single-layer graphs at the layer's real input (captured in one
forward pass of the model), timed in turns on the runtime, and the fastest chosen. Timings are
cached in a JSON file keyed by (runtime, version, device, threads, layer signature), so a second
export of the same model, or of another with the same layer shapes, is instant.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from typing import Callable

import onnx
import torch
from torch import nn

from .bench import interleaved
from .convert import Form, is_known_layer
from .export import export_onnx, flatten_outputs
from .parity import DEFAULT_ATOL, DEFAULT_RTOL, compare
from .runtimes import RunnerOptions, make_runner

CACHE_ENV = "POLYEXPORT_CACHE"


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


class FormTimer:
    """A converter ranker (convert.Ranker) that times forms on one runtime."""

    def __init__(self, runtime: str, options: RunnerOptions, inputs: dict[str, tuple[torch.Tensor, ...]],
                 cache_path: str | None = None, repeats: int = 3, min_time_s: float = 0.05, dynamic_batch: bool = False):
        self.runtime, self.options, self.inputs = runtime, options, inputs
        self.dynamic_batch = dynamic_batch  # time each form as the final graph will run it: runtimes compile dynamic shapes differently
        self.cache_path: str | None = cache_path or default_cache_path()
        self.repeats, self.min_time_s = repeats, min_time_s
        self.context = f"{runtime}|{_version(runtime)}|{options.device}|threads={options.resolved_threads()}|dynamic={dynamic_batch}"
        self.notes: list[str] = []  # what went wrong with the cache (reported, never fatal)
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
        key = f"{self.context}|{signature(ref, args)}"
        timings: dict[str, float] = dict(self.cache.get(key, {}))
        missing = [f for f in forms if f.name not in timings]
        cached = not missing
        if missing:
            t0 = time.perf_counter()
            timings.update(self._time(ref, args, missing))
            self.cache[key] = timings
            self._save()
            spent = time.perf_counter() - t0
        else:
            spent = 0.0
        ranked = sorted(forms, key=lambda f: timings.get(f.name, float("inf")))
        self.choices.append({"name": name, "type": type(ref).__name__, "runtime": self.runtime, "input": [list(a.shape) for a in args],
                             "timings_ms": {f.name: _finite(timings.get(f.name)) for f in forms}, "chosen": ranked[0].name,
                             "cached": cached, "seconds": round(spent, 2)})
        return ranked

    def _time(self, ref: nn.Module, args: tuple[torch.Tensor, ...], forms: list[Form]) -> dict[str, float]:
        """Each form's latency; inf for a form that fails to export, to run, or to match the reference
        layer on this runtime at this input (so a form that is wrong here is never chosen)."""
        with torch.no_grad():
            want = [t.numpy() for t in flatten_outputs(ref(*args))]
        builds = {f.name: (lambda f: lambda: f.build(ref).eval())(f) for f in forms}
        return _time_checked(builds, args, want, self.runtime, self.options, self.dynamic_batch,
                             repeats=self.repeats, warmup_s=0.02, min_time_s=self.min_time_s)

    def whole_models(self, candidates: dict[str, tuple[nn.Module, list]], args: tuple[torch.Tensor, ...]) -> tuple[dict[str, float | None], bool]:
        """p50 latency (ms, None where it failed) of each whole deployed model, candidates given as
        (model, layer records), and whether it came from the cache (keyed by every candidate's
        (module, form) list and the input shapes). Per-layer timing misses what only the whole graph
        shows (fusions across layers, layout changes between them), so the pipeline checks the per-layer
        choice against each single forced form and the preferred order this way. Every candidate is
        exact; one whose graph still disagrees with the first's PyTorch output on this runtime is never
        chosen."""
        sig = json.dumps({k: [(r.name, r.form) for r in recs] for k, (_, recs) in candidates.items()}
                         | {"inputs": [list(a.shape) for a in args]}, sort_keys=True)
        key = f"{self.context}|whole-model:{hashlib.sha256(sig.encode()).hexdigest()[:16]}"
        if key in self.cache:
            return dict(self.cache[key]), True
        with torch.no_grad():
            want = [t.numpy() for t in flatten_outputs(next(iter(candidates.values()))[0](*args))]
        builds = {k: (lambda m: lambda: m)(m) for k, (m, _) in candidates.items()}
        timings = _time_checked(builds, args, want, self.runtime, self.options, self.dynamic_batch,
                                repeats=5, warmup_s=0.05, min_time_s=0.2)
        self.cache[key] = {k: _finite(v) for k, v in timings.items()}
        self._save()
        return dict(self.cache[key]), False


def _time_checked(builds: dict[str, Callable[[], nn.Module]], args: tuple[torch.Tensor, ...], want: list,
                  runtime: str, options: RunnerOptions, dynamic_batch: bool, repeats: int, warmup_s: float,
                  min_time_s: float) -> dict[str, float]:
    """Export each built module as the pipeline exports it, run it on `runtime`, check it against `want`,
    and time those that match in turns: p50 ms each, inf where building, exporting, running or matching
    failed."""
    names = [f"input_{i}" for i in range(len(args))]
    feeds = {n: a.numpy() for n, a in zip(names, args)}
    fns, out, runners = {}, {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, build) in enumerate(builds.items()):
            try:
                with torch.no_grad():
                    module = build()
                path = os.path.join(tmp, f"candidate{i}.onnx")
                export_onnx(module, args, path, input_names=names, n_outputs=len(want), dynamic_batch=dynamic_batch)
                runner = make_runner(runtime, options)
                runner.load(path, tmp)
                runners.append(runner)
                # an input the module does not use (DRConv's Alpha, only there for gradients) is dropped by the exporter
                graph_inputs = {x.name for x in onnx.load(path, load_external_data=False).graph.input}
                these = {k: v for k, v in feeds.items() if k in graph_inputs}
                got = runner.run(these)
                if len(got) != len(want) or not all(compare("o", w, g, DEFAULT_ATOL, DEFAULT_RTOL).passed for w, g in zip(want, got)):
                    raise ValueError("does not match the reference on this runtime")
                fns[label] = (lambda r, f: lambda: r.run(f))(runner, these)
            except Exception:  # noqa: BLE001 - a candidate that fails here is never the fastest
                out[label] = float("inf")
        if fns:
            stats = interleaved(fns, repeats=repeats, warmup=2, warmup_s=warmup_s, min_iters=5, min_time_s=min_time_s)
            out.update({k: s.p50 for k, s in stats.items()})
        for r in runners:
            r.close()
    return out


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

