"""The portable bundle: what a device without PyTorch needs to prove and time the export.

`polyexport MODEL --bundle` writes DIR/bundle/: model.onnx, inputs.npz (the seeded parity inputs),
reference.npz (PyTorch's outputs for them), report.json, and manifest.json (input specs, output
names, tolerances, and a SHA-256 of every file). `polyexport verify BUNDLE --target …` checks the
files, runs the inputs on the target runtime, compares with the reference and times it — importing
only numpy, onnx and the runtime (never torch).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np

from .bench import measure
from .errors import BadInput
from .parity import check_runner
from .runtimes import RunnerOptions, make_runner

FORMAT = 1
FILES = ("model.onnx", "inputs.npz", "reference.npz", "report.json")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bundle(folder: str, onnx_path: str, input_specs: list[dict], output_names: list[str],
                 parity_sets: list[tuple[str, list[np.ndarray]]], refs: dict[str, list[np.ndarray]],
                 atol: float | None, rtol: float | None, report_json: str, dynamic_batch: bool, model: str,
                 keep_fp32: list[str] | None = None) -> str:
    """Tolerances of None mean "by the precision the device runs" (precision.TOLERANCES); `keep_fp32`:
    the modules the export had to keep in fp32 under fp16, applied again by `verify --fp16`."""
    os.makedirs(folder, exist_ok=True)
    shutil.copyfile(onnx_path, os.path.join(folder, "model.onnx"))
    names = [s["name"] for s in input_specs]
    np.savez(os.path.join(folder, "inputs.npz"), **{f"{label}/{n}": a for label, arrays in parity_sets for n, a in zip(names, arrays)})
    np.savez(os.path.join(folder, "reference.npz"), **{f"{label}/{i}": o for label, outs in refs.items() for i, o in enumerate(outs)})
    with open(os.path.join(folder, "report.json"), "w") as f:
        f.write(report_json)
    manifest = {
        "format": FORMAT, "model": model, "inputs": input_specs, "outputs": output_names, "dynamic_batch": dynamic_batch,
        "parity_sets": [label for label, _ in parity_sets], "tolerance": {"atol": atol, "rtol": rtol},
        "fp16_keep_fp32": list(keep_fp32 or []),
        "sha256": {name: _sha256(os.path.join(folder, name)) for name in FILES},
    }
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return folder


@dataclass
class Bundle:
    folder: str
    manifest: dict

    @property
    def onnx(self) -> str:
        return os.path.join(self.folder, "model.onnx")

    def input_sets(self) -> list[tuple[str, dict[str, np.ndarray]]]:
        names = [s["name"] for s in self.manifest["inputs"]]
        with np.load(os.path.join(self.folder, "inputs.npz")) as z:
            return [(label, {n: z[f"{label}/{n}"] for n in names}) for label in self.manifest["parity_sets"]]

    def references(self) -> dict[str, list[np.ndarray]]:
        n_out = len(self.manifest["outputs"])
        with np.load(os.path.join(self.folder, "reference.npz")) as z:
            return {label: [z[f"{label}/{i}"] for i in range(n_out)] for label in self.manifest["parity_sets"]}


def read_bundle(folder: str) -> Bundle:
    """Open and check a bundle; BadInput (exit 2) for anything missing, unreadable or altered."""
    path = os.path.join(folder, "manifest.json")
    if not os.path.isfile(path):
        raise BadInput(f"{folder} is not a polyexport bundle: no manifest.json")
    try:
        with open(path) as f:
            manifest = json.load(f)
        expected = manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BadInput(f"{path} is unreadable: {type(e).__name__}: {e}") from e
    if manifest.get("format") != FORMAT:
        raise BadInput(f"{folder}: bundle format {manifest.get('format')!r}; this polyexport reads format {FORMAT}")
    for name in FILES:
        file = os.path.join(folder, name)
        if not os.path.isfile(file):
            raise BadInput(f"{folder}: {name} is missing")
        if _sha256(file) != expected.get(name):
            raise BadInput(f"{folder}: {name} does not match its checksum in manifest.json (altered or corrupt)")
    return Bundle(folder, manifest)


def verify_bundle(folder: str, target: str, threads: int | None = None, device: str = "cpu", bench: bool = True,
                  iterations: int = 20, atol: float | None = None, rtol: float | None = None, fp16: bool = False) -> dict:
    """Run the bundle's inputs on `target`, compare with PyTorch's outputs, time it. Torch-free.

    With fp16 the tolerance follows the precision the runtime reports (unless given), and the modules
    the export kept in fp32 are kept again."""
    bundle = read_bundle(folder)
    tol = bundle.manifest["tolerance"]
    if fp16:  # the manifest's tolerance was set for the export's precision; fp16 has its own
        tol = {"atol": None, "rtol": None}
    keep = tuple(bundle.manifest.get("fp16_keep_fp32", [])) if fp16 else ()
    runner = make_runner(target, RunnerOptions(threads, device, fp16=fp16, keep_fp32=keep))
    sets = bundle.input_sets()
    result: dict = {"bundle": os.path.abspath(folder), "model": bundle.manifest["model"], "target": target}
    with tempfile.TemporaryDirectory() as work, runner:
        parity, _ = check_runner(target, runner, bundle.onnx, work, sets, bundle.references(),
                                 tol["atol"] if atol is None else atol, tol["rtol"] if rtol is None else rtol)
        result["parity"] = {target: parity.as_dict()}
        result["runtime"] = runner.describe()
        if bench and parity.error is None:
            feeds = sets[0][1]
            result["latency_ms"] = {target: measure(lambda: runner.run(feeds), min_iters=iterations).as_dict()}
    result["passed"] = parity.passed
    return result
