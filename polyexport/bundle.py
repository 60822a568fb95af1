"""The portable bundle: what a device without PyTorch needs to prove and time the export.

`polyexport MODEL --bundle` writes DIR/bundle/: model.onnx, inputs.npz (the seeded parity inputs),
reference.npz (PyTorch's outputs for them), tolerance.json (the tolerance the export was judged by,
the precision it was set for, the model's noise floor per output), report.json, and manifest.json (input
specs, output names, the engine build the device is to make: precision, optimization profile, workspace;
and a SHA-256 of every other file: the tolerance is covered, so editing it is caught like editing the
reference). The manifest is schema-checked field by field. `polyexport verify BUNDLE --target …`
checks the files, runs the inputs on the target runtime, compares with the reference by the bundle's
tolerance (a looser one only from its own command line, and it says so) and times it — importing only
numpy, onnx and the runtime (never torch), on Python 3.8 and later (JetPack 5 ships 3.8).

README.txt holds the device's command lines (trtexec.py). It is instructions only and not checksummed:
verify never reads it, and the commands are regenerated from the checksummed manifest by
`trtexec.device_commands(BUNDLE)`, so a stale or edited README cannot change a verdict.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import numpy as np

from .bench import measure
from .errors import BadInput
from .exporter.fp16 import graph_for
from .parity import check_runner
from .runtimes import RunnerOptions, make_runner

FORMAT = 2  # 2: the tolerance moved out of the manifest into the hashed tolerance.json
FILES = ("model.onnx", "inputs.npz", "reference.npz", "tolerance.json", "report.json")
README = "README.txt"  # instructions only, not checksummed (see the module docstring)
TENSORRT_CACHE = "tensorrt"  # verify --target tensorrt keeps its timing cache and engines in BUNDLE/tensorrt/
DEFAULT_WORKSPACE_MB = 1024


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dynamic_axes(onnx_path: str) -> dict[str, list[int]]:
    """The axes of each graph input that are not fixed numbers (a named or unknown dimension)."""
    import onnx

    graph = onnx.load(onnx_path, load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    out = {}
    for inp in graph.input:
        if inp.name in weights:
            continue
        axes = [i for i, d in enumerate(inp.type.tensor_type.shape.dim) if d.dim_param or not d.HasField("dim_value")]
        if axes:
            out[inp.name] = axes
    return out


def tensorrt_profile(onnx_path: str, input_specs: list[dict], input_sets: list[dict[str, np.ndarray]],
                     batch_range: tuple[int, int, int] | None = None) -> dict | None:
    """The optimization profile an engine needs to run every input set: for each input with dynamic axes,
    min/max over the sets (and `batch_range` on axis 0, where given), opt the export's own shape (or the
    batch range's opt). None for a graph with fixed shapes."""
    profile = {}
    for name, axes in dynamic_axes(onnx_path).items():
        spec = next((s for s in input_specs if s["name"] == name), None)
        if spec is None:
            continue
        opt = [int(d) for d in spec["shape"]]
        lo, hi = list(opt), list(opt)
        for feeds in input_sets:
            a = feeds.get(name)
            if a is None or a.ndim != len(opt):
                continue
            for ax in axes:
                lo[ax], hi[ax] = min(lo[ax], int(a.shape[ax])), max(hi[ax], int(a.shape[ax]))
        if batch_range and 0 in axes:
            opt[0] = int(batch_range[1])
            lo[0], hi[0] = min(lo[0], int(batch_range[0]), opt[0]), max(hi[0], int(batch_range[2]), opt[0])
        profile[name] = {"min": lo, "opt": opt, "max": hi}
    return profile or None


def write_bundle(folder: str, onnx_path: str, input_specs: list[dict], output_names: list[str],
                 parity_sets: list[tuple[str, list[np.ndarray]]], refs: dict[str, list[np.ndarray]],
                 atol: float | None, rtol: float | None, report_json: str, dynamic_batch: bool, model: str,
                 keep_fp32: list[str] | None = None, noise: list[float] | None = None, *,
                 fp16: bool = False, batch_range: tuple[int, int, int] | None = None,
                 workspace_mb: int = DEFAULT_WORKSPACE_MB, trt_versions: tuple[str, ...] = ("8.6", "10")) -> str:
    """Tolerances of None mean "by the precision the device runs" (precision.TOLERANCES); `keep_fp32`:
    the modules the export had to keep in fp32 under fp16, applied again by `verify --fp16`; `noise`: the
    model's own fp32 noise floor per output (parity.NOISE_MULTIPLE). For the device's engine: `fp16`, the
    precision the export asked for (verify builds it so; the tolerance is recorded as set for it),
    `batch_range` (min, opt, max) for a dynamic batch (else the parity sets' batches), `workspace_mb`;
    README.txt gets the verify and trtexec command lines for `trt_versions`."""
    from .parity import NOISE_MULTIPLE
    from .trtexec import readme

    os.makedirs(folder, exist_ok=True)
    shutil.copyfile(onnx_path, os.path.join(folder, "model.onnx"))
    names = [s["name"] for s in input_specs]
    np.savez(os.path.join(folder, "inputs.npz"), **{f"{label}/{n}": a for label, arrays in parity_sets for n, a in zip(names, arrays)})
    np.savez(os.path.join(folder, "reference.npz"), **{f"{label}/{i}": o for label, outs in refs.items() for i, o in enumerate(outs)})
    with open(os.path.join(folder, "tolerance.json"), "w") as f:
        json.dump({"atol": atol, "rtol": rtol, "noise_floor": list(noise or []), "noise_multiple": NOISE_MULTIPLE,
                   "precision": "fp16" if fp16 else "fp32"}, f, indent=2)
    with open(os.path.join(folder, "report.json"), "w") as f:
        f.write(report_json)
    sets = [dict(zip(names, arrays)) for _, arrays in parity_sets]
    manifest = {
        "format": FORMAT, "model": model, "inputs": input_specs, "outputs": output_names, "dynamic_batch": dynamic_batch,
        "parity_sets": [label for label, _ in parity_sets], "fp16_keep_fp32": list(keep_fp32 or []),
        "fp16": bool(fp16), "profile": tensorrt_profile(onnx_path, input_specs, sets, batch_range), "workspace_mb": int(workspace_mb),
        "sha256": {name: _sha256(os.path.join(folder, name)) for name in FILES},
    }
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    with open(os.path.join(folder, README), "w") as f:
        f.write(readme(manifest, folder, trt_versions))
    return folder


def _is_str_list(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) and x for x in v)


def _is_int(v: object, least: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= least


def _is_profile(v: object) -> bool:
    """None, or {input name: {"min", "opt", "max": shapes of one rank, min <= opt <= max on every axis}}."""
    if v is None:
        return True
    if not isinstance(v, dict) or not v:
        return False
    for name, p in v.items():
        if not (isinstance(name, str) and name and isinstance(p, dict)):
            return False
        shapes = [p.get(k) for k in ("min", "opt", "max")]
        if not all(isinstance(s, list) and s and all(_is_int(d, 0) for d in s) for s in shapes):
            return False
        lo, opt, hi = shapes
        if not len(lo) == len(opt) == len(hi) or not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
            return False
    return True


def _is_input_spec(v: object) -> bool:
    return (isinstance(v, dict) and isinstance(v.get("name"), str) and v["name"] != ""
            and isinstance(v.get("shape"), list) and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v["shape"])
            and v.get("dtype", "float32") in ("float32", "int64"))


#: manifest field -> (check, what it must be)
_SCHEMA = {
    "format": (lambda v: v == FORMAT, f"the number {FORMAT} (a bundle written by another polyexport version: re-export it)"),
    "model": (lambda v: isinstance(v, str), "a string"),
    "inputs": (lambda v: isinstance(v, list) and len(v) > 0 and all(_is_input_spec(i) for i in v),
               "a non-empty list of {name, shape of positive integers, dtype}"),
    "outputs": (lambda v: _is_str_list(v) and len(v) > 0, "a non-empty list of output names"),
    "dynamic_batch": (lambda v: isinstance(v, bool), "true or false"),
    "parity_sets": (lambda v: _is_str_list(v) and len(v) > 0, "a non-empty list of input set labels"),
    "fp16_keep_fp32": (_is_str_list, "a list of module names"),
    "sha256": (lambda v: isinstance(v, dict) and all(isinstance(v.get(n), str) and len(v[n]) == 64 for n in FILES),
               f"a SHA-256 for each of {', '.join(FILES)}"),
}


#: fields a bundle written before them lacks: checked when present; absent means the default (a profile absent is
#: computed from the graph and the input sets at verify time)
_OPTIONAL = {
    "fp16": (lambda v: isinstance(v, bool), "true or false", False),
    "profile": (_is_profile, "null or {input: {min, opt, max}}: shapes of one rank with min <= opt <= max", None),
    "workspace_mb": (lambda v: _is_int(v, 1), "a whole number of MiB >= 1", DEFAULT_WORKSPACE_MB),
}


def _check_tolerance(t: object, where: str) -> dict:
    def number_or_none(v: object) -> bool:
        return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0)

    ok = (isinstance(t, dict) and number_or_none(t.get("atol")) and number_or_none(t.get("rtol"))
          and isinstance(t.get("noise_floor"), list) and all(number_or_none(x) and x is not None for x in t["noise_floor"])
          and number_or_none(t.get("noise_multiple")) and t.get("noise_multiple") is not None
          and t.get("precision", "fp32") in ("fp32", "fp16"))
    if not ok:
        raise BadInput(f"{where}: malformed (atol, rtol: finite numbers >= 0 or null; noise_floor: a list of them; noise_multiple: a number; "
                       "precision: fp32 or fp16)")
    return t


@dataclass
class Bundle:
    folder: str
    manifest: dict
    tolerance: dict = field(default_factory=dict)  # tolerance.json: what the export was judged by

    @property
    def onnx(self) -> str:
        return os.path.join(self.folder, "model.onnx")

    def input_sets(self) -> list[tuple[str, dict[str, np.ndarray]]]:
        names = [s["name"] for s in self.manifest["inputs"]]
        return self._arrays("inputs.npz", lambda label: {n: f"{label}/{n}" for n in names})

    def references(self) -> dict[str, list[np.ndarray]]:
        n_out = len(self.manifest["outputs"])
        return dict(self._arrays("reference.npz", lambda label: {i: f"{label}/{i}" for i in range(n_out)}, as_list=True))

    def _arrays(self, file: str, keys, as_list: bool = False) -> list:
        """Each parity set's arrays from `file`, refusing (exit 2) a file that lacks one the manifest names."""
        try:
            with np.load(os.path.join(self.folder, file), allow_pickle=False) as z:
                out = []
                for label in self.manifest["parity_sets"]:
                    wanted = keys(label)
                    missing = [k for k in wanted.values() if k not in z.files]
                    if missing:
                        raise BadInput(f"{self.folder}: {file} has no array {missing[0]} that manifest.json names")
                    arrays = {k: z[v] for k, v in wanted.items()}
                    out.append((label, list(arrays.values()) if as_list else arrays))
                return out
        except (OSError, ValueError) as e:
            raise BadInput(f"{self.folder}: {file} is unreadable: {e}") from e


def read_bundle(folder: str) -> Bundle:
    """Open and check a bundle; BadInput (exit 2) for anything missing, unreadable, malformed or altered."""
    path = os.path.join(folder, "manifest.json")
    if not os.path.isfile(path):
        raise BadInput(f"{folder} is not a polyexport bundle: no manifest.json")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise BadInput(f"{path} is unreadable: {type(e).__name__}: {e}") from e
    if not isinstance(manifest, dict):
        raise BadInput(f"{path}: not a JSON object")
    for field, (check, what) in _SCHEMA.items():
        if field not in manifest:
            raise BadInput(f"{path}: field '{field}' is missing (it must be {what})")
        if not check(manifest[field]):
            raise BadInput(f"{path}: field '{field}' is malformed: it must be {what}")
    for field, (check, what, default) in _OPTIONAL.items():
        if field in manifest and not check(manifest[field]):
            raise BadInput(f"{path}: field '{field}' is malformed: it must be {what}")
    profile = manifest.get("profile")
    unknown = sorted(set(profile or {}) - {s["name"] for s in manifest["inputs"]})
    if unknown:
        raise BadInput(f"{path}: field 'profile' names '{unknown[0]}', which is not one of the inputs")
    for name in FILES:
        file = os.path.join(folder, name)
        if not os.path.isfile(file):
            raise BadInput(f"{folder}: {name} is missing")
        if _sha256(file) != manifest["sha256"][name]:
            raise BadInput(f"{folder}: {name} does not match its checksum in manifest.json (altered or corrupt)")
    bundle = Bundle(folder, manifest)
    try:
        with open(os.path.join(folder, "tolerance.json")) as f:
            bundle.tolerance = _check_tolerance(json.load(f), os.path.join(folder, "tolerance.json"))
    except ValueError as e:
        raise BadInput(f"{folder}: tolerance.json is unreadable: {e}") from e
    set_for = bundle.tolerance.get("precision")
    if "fp16" in manifest and set_for is not None and manifest["fp16"] != (set_for == "fp16"):
        raise BadInput(f"{path}: field 'fp16' is {str(manifest['fp16']).lower()}, but the checksummed tolerance.json was set for {set_for}: "
                       "the manifest was edited (re-export, or verify with --fp16 from the command line)")
    return bundle


def _tensorrt_cache_dir(folder: str) -> tuple[str, str | None]:
    """BUNDLE/tensorrt/, so that a second verify reuses the timing cache and the engine; a temporary folder
    (and a note saying so) where the bundle cannot be written."""
    path = os.path.join(folder, TENSORRT_CACHE)
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
        return path, None
    except OSError as e:
        tmp = tempfile.mkdtemp(prefix="polyexport-tensorrt-")
        return tmp, f"{path} is not writable ({e.strerror}): the engine and timing cache go to {tmp}, and are not reused"


def _make_runner(bundle: Bundle, target: str, options: RunnerOptions, sets: list, rebuild: bool) -> tuple:
    """(runner, note or None, a temporary folder to remove afterwards or None). TensorRT builds by the bundle's
    own profile and workspace, caching beside the bundle; TensorRT or CUDA access missing is exit 3 before
    anything is written."""
    if target != "tensorrt":
        return make_runner(target, options), None, None
    from .runtimes.tensorrt import TensorRTRunner, require_cuda, require_tensorrt

    require_tensorrt()
    require_cuda()
    m = bundle.manifest
    profile = m["profile"] if "profile" in m else tensorrt_profile(bundle.onnx, m["inputs"], [feeds for _, feeds in sets])
    options.workspace_mb = m.get("workspace_mb", DEFAULT_WORKSPACE_MB)
    cache_dir, note = _tensorrt_cache_dir(bundle.folder)
    runner = TensorRTRunner(options, profile=profile, cache_dir=cache_dir, rebuild=rebuild)
    return runner, note, cache_dir if note else None


def verify_bundle(folder: str, target: str, threads: int | None = None, device: str = "cpu", bench: bool = True,
                  iterations: int = 20, atol: float | None = None, rtol: float | None = None, fp16: bool = False,
                  rebuild: bool = False) -> dict:
    """Run the bundle's inputs on `target`, compare with PyTorch's outputs, time it. Torch-free.

    The tolerance is the bundle's (tolerance.json, checksummed); `atol`/`rtol` given here replace it, and the
    result says so (`tolerance.source`), louder when looser. fp16 runs when asked here or when the bundle's
    export asked for it (`precision.source` says which); a tolerance the bundle set for fp32, or leaves to
    the precision (null), then follows the precision the runtime reports, and the modules the export kept in
    fp32 are kept again. TensorRT: the engine is built with the bundle's optimization profile (every input
    set fits it), its timing cache and the engine kept in BUNDLE/tensorrt/ and reused (`rebuild` to build
    anyway)."""
    for name, value in (("atol", atol), ("rtol", rtol)):
        if value is not None and (not math.isfinite(value) or value < 0):
            raise BadInput(f"--{name} {value}: a tolerance must be a finite number >= 0")
    bundle = read_bundle(folder)
    asked_by_bundle = bool(bundle.manifest.get("fp16", False))
    precision_source = "command line" if fp16 else "bundle" if asked_by_bundle else "default"
    fp16 = fp16 or asked_by_bundle
    tol = dict(bundle.tolerance)
    if fp16 and tol.get("precision") != "fp16":  # the bundle's tolerance was set for fp32; fp16 has its own unless given
        tol.update(atol=None, rtol=None)
    source = "bundle"
    if atol is not None or rtol is not None:
        from .precision import tolerances

        by_precision = dict(zip(("atol", "rtol"), tolerances("fp16" if fp16 else "fp32")))  # what a null in the bundle means
        looser = any(v is not None and v > (by_precision[k] if tol.get(k) is None else tol[k]) for k, v in (("atol", atol), ("rtol", rtol)))
        source = "command line" + (" (looser than the bundle's)" if looser else "")
        tol.update({k: v for k, v in (("atol", atol), ("rtol", rtol)) if v is not None})
    keep = tuple(bundle.manifest.get("fp16_keep_fp32", [])) if fp16 else ()
    sets = bundle.input_sets()
    runner, note, scratch = _make_runner(bundle, target, RunnerOptions(threads, device, fp16=fp16, keep_fp32=keep), sets, rebuild)
    result: dict = {"bundle": os.path.abspath(folder), "model": bundle.manifest["model"], "target": target,
                    "precision": {"fp16": fp16, "source": precision_source}, "notes": [note] if note else []}
    try:
        return _verify(result, bundle, target, runner, sets, tol, source, fp16, keep, bench, iterations)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def _verify(result: dict, bundle: Bundle, target: str, runner, sets: list, tol: dict, source: str, fp16: bool, keep: tuple,
            bench: bool, iterations: int) -> dict:
    """verify_bundle's run: parity on every input set, then latency on the first."""
    with tempfile.TemporaryDirectory() as work, runner:
        graph, _ = graph_for(target, bundle.onnx, work, fp16, keep)  # ONNX Runtime runs fp16 as an fp16 graph, made here
        parity, _ = check_runner(target, runner, graph, work, sets, bundle.references(), tol["atol"], tol["rtol"],
                                 tol.get("noise_floor"))
        result["parity"] = {target: parity.as_dict()}
        result["tolerance"] = {"atol": parity.atol, "rtol": parity.rtol, "effective_rtol": result["parity"][target]["effective_rtol"],
                               "source": source}
        result["runtime"] = runner.describe()
        if bench and parity.error is None:
            feeds = sets[0][1]
            result["latency_ms"] = {target: measure(lambda: runner.run(feeds), min_iters=iterations).as_dict()}
    result["passed"] = parity.passed
    return result
