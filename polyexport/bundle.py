"""The portable bundle: what a device without PyTorch needs to prove and time the export.

`polyexport MODEL --bundle` writes DIR/bundle/: model.onnx, inputs.npz (the seeded parity inputs),
reference.npz (PyTorch's outputs for them), tolerance.json (the tolerance the export was judged by,
the model's noise floor per output), report.json, and manifest.json (input specs, output names, and a
SHA-256 of every other file: the tolerance is covered, so editing it is caught like editing the
reference). The manifest is schema-checked field by field. `polyexport verify BUNDLE --target …`
checks the files, runs the inputs on the target runtime, compares with the reference by the bundle's
tolerance (a looser one only from its own command line, and it says so) and times it — importing only
numpy, onnx and the runtime (never torch).
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
from .parity import check_runner
from .runtimes import RunnerOptions, make_runner

FORMAT = 2  # 2: the tolerance moved out of the manifest into the hashed tolerance.json
FILES = ("model.onnx", "inputs.npz", "reference.npz", "tolerance.json", "report.json")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bundle(folder: str, onnx_path: str, input_specs: list[dict], output_names: list[str],
                 parity_sets: list[tuple[str, list[np.ndarray]]], refs: dict[str, list[np.ndarray]],
                 atol: float | None, rtol: float | None, report_json: str, dynamic_batch: bool, model: str,
                 keep_fp32: list[str] | None = None, noise: list[float] | None = None) -> str:
    """Tolerances of None mean "by the precision the device runs" (precision.TOLERANCES); `keep_fp32`:
    the modules the export had to keep in fp32 under fp16, applied again by `verify --fp16`; `noise`: the
    model's own fp32 noise floor per output (parity.NOISE_MULTIPLE)."""
    from .parity import NOISE_MULTIPLE

    os.makedirs(folder, exist_ok=True)
    shutil.copyfile(onnx_path, os.path.join(folder, "model.onnx"))
    names = [s["name"] for s in input_specs]
    np.savez(os.path.join(folder, "inputs.npz"), **{f"{label}/{n}": a for label, arrays in parity_sets for n, a in zip(names, arrays)})
    np.savez(os.path.join(folder, "reference.npz"), **{f"{label}/{i}": o for label, outs in refs.items() for i, o in enumerate(outs)})
    with open(os.path.join(folder, "tolerance.json"), "w") as f:
        json.dump({"atol": atol, "rtol": rtol, "noise_floor": list(noise or []), "noise_multiple": NOISE_MULTIPLE}, f, indent=2)
    with open(os.path.join(folder, "report.json"), "w") as f:
        f.write(report_json)
    manifest = {
        "format": FORMAT, "model": model, "inputs": input_specs, "outputs": output_names, "dynamic_batch": dynamic_batch,
        "parity_sets": [label for label, _ in parity_sets], "fp16_keep_fp32": list(keep_fp32 or []),
        "sha256": {name: _sha256(os.path.join(folder, name)) for name in FILES},
    }
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return folder


def _is_str_list(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) and x for x in v)


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


def _check_tolerance(t: object, where: str) -> dict:
    def number_or_none(v: object) -> bool:
        return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0)

    ok = (isinstance(t, dict) and number_or_none(t.get("atol")) and number_or_none(t.get("rtol"))
          and isinstance(t.get("noise_floor"), list) and all(number_or_none(x) and x is not None for x in t["noise_floor"])
          and number_or_none(t.get("noise_multiple")) and t.get("noise_multiple") is not None)
    if not ok:
        raise BadInput(f"{where}: malformed (atol, rtol: finite numbers >= 0 or null; noise_floor: a list of them; noise_multiple: a number)")
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
    return bundle


def verify_bundle(folder: str, target: str, threads: int | None = None, device: str = "cpu", bench: bool = True,
                  iterations: int = 20, atol: float | None = None, rtol: float | None = None, fp16: bool = False) -> dict:
    """Run the bundle's inputs on `target`, compare with PyTorch's outputs, time it. Torch-free.

    The tolerance is the bundle's (tolerance.json, checksummed); `atol`/`rtol` given here replace it, and the
    result says so (`tolerance.source`), louder when looser. With fp16, a tolerance the bundle leaves to the
    precision (null) follows the precision the runtime reports, and the modules the export kept in fp32 are
    kept again."""
    for name, value in (("atol", atol), ("rtol", rtol)):
        if value is not None and (not math.isfinite(value) or value < 0):
            raise BadInput(f"--{name} {value}: a tolerance must be a finite number >= 0")
    bundle = read_bundle(folder)
    tol = dict(bundle.tolerance)
    if fp16:  # the bundle's tolerance was set for the export's precision; fp16 has its own unless given
        tol.update(atol=None, rtol=None)
    source = "bundle"
    if atol is not None or rtol is not None:
        from .precision import tolerances

        by_precision = dict(zip(("atol", "rtol"), tolerances("fp16" if fp16 else "fp32")))  # what a null in the bundle means
        looser = any(v is not None and v > (by_precision[k] if tol.get(k) is None else tol[k]) for k, v in (("atol", atol), ("rtol", rtol)))
        source = "command line" + (" (looser than the bundle's)" if looser else "")
        tol.update({k: v for k, v in (("atol", atol), ("rtol", rtol)) if v is not None})
    keep = tuple(bundle.manifest.get("fp16_keep_fp32", [])) if fp16 else ()
    runner = make_runner(target, RunnerOptions(threads, device, fp16=fp16, keep_fp32=keep))
    sets = bundle.input_sets()
    result: dict = {"bundle": os.path.abspath(folder), "model": bundle.manifest["model"], "target": target}
    with tempfile.TemporaryDirectory() as work, runner:
        parity, _ = check_runner(target, runner, bundle.onnx, work, sets, bundle.references(), tol["atol"], tol["rtol"],
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
