"""The device's command lines for a bundle: `polyexport verify`, and the `trtexec` line that builds the engine
verify builds (same ONNX, precision, modules kept in fp32, optimization profile, workspace, TF32 off in fp32).

Flags checked in trtexec's option parser (NVIDIA/TensorRT samples/common/sampleOptions.cpp and
sampleEngines.cpp on release/8.5, 8.6 and 10.3):
- `--onnx`, `--minShapes/--optShapes/--maxShapes` (name:AxBxC, comma-separated; a name with ':' in single
  quotes), `--fp16`, `--noTF32`, `--timingCacheFile`, `--saveEngine`, `--precisionConstraints=obey`,
  `--layerPrecisions`/`--layerOutputTypes` (name:fp32): in all three.
- `--memPoolSize=workspace:N` (N in MiB) in all three; `--workspace` is deprecated in 8.x and gone in 10.
- explicit batch is automatic for an ONNX model (`--explicitBatch` has no effect since 8.5).
- a graph with fixed shapes takes no shape flags: trtexec refuses `--shapes` on it ("Static model does not
  take explicit shapes"), so the static case gives none.
- layer names in `--layerPrecisions` take one '*' wildcard from 10.0 on; 8.x matches whole names only
  (and '*' alone), so there the kept modules' nodes are listed one by one (layers are named after nodes).
trtexec times the engine but does not compare outputs: `polyexport verify` is the parity check.
"""
from __future__ import annotations

import json
import os
import posixpath
import shlex
from typing import Sequence

#: the name trtexec's outputs get in the bundle folder (verify's own cache is BUNDLE/tensorrt/)
TIMING_CACHE = "trtexec-timing.cache"


def _quote(arg: str) -> str:
    """shlex.quote, but readable where the argument holds single quotes (a tensor name with ':')."""
    plain = shlex.quote(arg)
    if plain == arg or "'" not in arg or any(c in arg for c in '"$`\\!'):
        return plain
    return f'"{arg}"'


def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


def _tensor(name: str) -> str:
    return f"'{name}'" if ":" in name else name


def shapes_flag(profile: dict, key: str) -> str:
    """`name:1x3x224x224,other:…` for `key` in min/opt/max."""
    return ",".join(f"{_tensor(n)}:{_dims(p[key])}" for n, p in profile.items())


def _in_bundle(bundle_dir: str, name: str) -> str:
    return name if bundle_dir in ("", ".") else posixpath.join(bundle_dir, name)


def _kept_layers(manifest: dict, rules: str, node_names: Sequence[str] | None) -> list[str] | None:
    """The layer names to pin to fp32: a scope wildcard per module on 10.x; each node's name on 8.x (None
    where the graph's node names are not at hand: a module's scope in the graph depends on which of its
    ancestors were called, see scopes.py)."""
    from .scopes import nodes_of, scope_path

    keep = manifest.get("fp16_keep_fp32", [])
    if node_names is None:
        return None
    if rules == "10":
        return [p + "*" for p in (scope_path(node_names, m) for m in keep) if p]
    return nodes_of(node_names, keep)


def trtexec_command(manifest: dict, trt_version: str = "10", bundle_dir: str = ".",
                    node_names: Sequence[str] | None = None) -> str:
    """The trtexec line for TensorRT `trt_version` ("8.5", "8.6", "10", "10.3"…), run from the folder holding
    the bundle as `bundle_dir` ("." inside it). `node_names`: the graph's, needed on 8.x to pin kept modules."""
    from .runtimes.tensorrt_lint import rules_for

    rules = rules_for(trt_version)
    fp16 = bool(manifest.get("fp16", False))
    args = ["trtexec", f"--onnx={_in_bundle(bundle_dir, 'model.onnx')}"]
    profile = manifest.get("profile")
    if profile:
        args += [f"--{k}Shapes={shapes_flag(profile, k)}" for k in ("min", "opt", "max")]
    args.append(f"--memPoolSize=workspace:{int(manifest.get('workspace_mb', 1024))}")
    if fp16:
        args.append("--fp16")
        layers = _kept_layers(manifest, rules, node_names) if manifest.get("fp16_keep_fp32") else []
        if layers:
            spec = ",".join(f"{_tensor(n)}:fp32" for n in layers)
            args += ["--precisionConstraints=obey", f"--layerPrecisions={spec}", f"--layerOutputTypes={spec}"]
    else:
        args.append("--noTF32")  # verify clears TF32 for fp32 builds (TensorRT enables it by default)
    precision = "fp16" if fp16 else "fp32"
    args += [f"--timingCacheFile={_in_bundle(bundle_dir, TIMING_CACHE)}",
             f"--saveEngine={_in_bundle(bundle_dir, f'model-{precision}-trtexec.engine')}"]
    return " ".join(_quote(a) for a in args)


def verify_command(manifest: dict, bundle_dir: str = ".") -> str:
    """`polyexport verify` for the device; --fp16 spelled out when the bundle asks for it (verify would anyway)."""
    args = ["polyexport", "verify", bundle_dir or ".", "--target", "tensorrt"] + (["--fp16"] if manifest.get("fp16") else [])
    return " ".join(_quote(a) for a in args)


def _load(manifest_or_folder: dict | str) -> tuple[dict, str | None]:
    """(manifest, folder): a folder is read and checked as a bundle (bundle.read_bundle), its profile computed as
    verify computes it where the bundle predates the field; a dict is taken as is."""
    if isinstance(manifest_or_folder, dict):
        return manifest_or_folder, None
    from .bundle import read_bundle, tensorrt_profile

    bundle = read_bundle(manifest_or_folder)
    manifest = dict(bundle.manifest)
    if "profile" not in manifest:
        manifest["profile"] = tensorrt_profile(bundle.onnx, manifest["inputs"], [feeds for _, feeds in bundle.input_sets()])
    return manifest, manifest_or_folder


def _node_names(folder: str | None) -> list[str] | None:
    if folder is None:
        return None
    import onnx

    return [n.name for n in onnx.load(os.path.join(folder, "model.onnx"), load_external_data=False).graph.node]


def device_commands(manifest_or_bundle_folder: dict | str, trt_version: str = "10",
                    bundle_dir: str | None = None) -> dict[str, str]:
    """{"verify": …, "trtexec": …} for a bundle folder (checked) or its manifest. Paths are `bundle_dir`, by
    default the folder as given ("bundle" for a bare manifest). A "note" says what the trtexec line cannot
    carry (8.x, kept modules, no graph at hand)."""
    manifest, folder = _load(manifest_or_bundle_folder)
    where = bundle_dir if bundle_dir is not None else (folder or "bundle")
    from .runtimes.tensorrt_lint import rules_for

    needs_nodes = bool(manifest.get("fp16") and manifest.get("fp16_keep_fp32"))  # 8.x: every node's name; 10: the scope in the graph
    nodes = _node_names(folder) if needs_nodes else None
    out = {"verify": verify_command(manifest, where), "trtexec": trtexec_command(manifest, trt_version, where, nodes)}
    if needs_nodes and nodes is None:
        out["note"] = (f"the modules kept in fp32 ({', '.join(manifest['fp16_keep_fp32'])}) are not pinned in this trtexec line: "
                       f"TensorRT {trt_version}'s --layerPrecisions needs the layers' names from the graph; pass the bundle folder")
    return out


def _describe(manifest: dict) -> list[str]:
    lines = []
    profile = manifest.get("profile")
    if profile:
        for name, p in profile.items():
            lines.append(f"  input {name}: optimization profile min {_dims(p['min'])}, opt {_dims(p['opt'])}, max {_dims(p['max'])}")
    else:
        lines += [f"  input {s['name']}: {_dims(s['shape'])} (fixed)" for s in manifest["inputs"]]
    if manifest.get("fp16"):
        kept = manifest.get("fp16_keep_fp32") or []
        lines.append("  precision: fp16 (the export asked for it)" + (f", kept in fp32: {', '.join(kept)}" if kept else ""))
    else:
        lines.append("  precision: fp32 (TF32 off)")
    lines.append(f"  builder workspace: {manifest.get('workspace_mb', 1024)} MiB")
    return lines


def readme(manifest: dict, folder: str | None = None, trt_versions: Sequence[str] = ("8.6", "10")) -> str:
    """README.txt: what the bundle is and the device's commands, run from inside the bundle folder."""
    nodes = _node_names(folder) if folder and manifest.get("fp16") and manifest.get("fp16_keep_fp32") else None
    lines = [f"polyexport bundle: {manifest.get('model', '')}", "",
             "Build and check the TensorRT engine on the device (a Jetson: JetPack provides TensorRT). It needs numpy,",
             "onnx, cuda-python (for the engine's GPU buffers: the release matching the device's CUDA) and polyexport,",
             "not PyTorch; Python 3.8 or later. Copy this folder there, then inside it:", "",
             "  " + verify_command(manifest, "."), "",
             "builds the engine (timing cache and engine kept in tensorrt/, reused by the next run), compares its",
             "outputs with PyTorch's (reference.npz) by the checksummed tolerance.json, and times it.",
             "Exit 0: parity held; 1: it did not; 2: the bundle is damaged or altered; 3: TensorRT is missing.", "",
             "What it builds:", *_describe(manifest), ""]
    commands: dict[str, list[str]] = {}
    for v in trt_versions:
        commands.setdefault(trtexec_command(manifest, v, ".", nodes), []).append(v)
    lines.append("The same engine with trtexec (it times the engine, but does not check outputs; if trtexec is not on")
    lines.append("PATH, it is in TensorRT's bin folder, on JetPack /usr/src/tensorrt/bin):")
    for command, versions in commands.items():
        lines += ["", f"  # TensorRT {', '.join(versions)}", f"  {command}"]
    lines += ["", "This file is instructions only: it is not covered by manifest.json's checksums, verify never reads it,",
              "and polyexport.trtexec.device_commands(BUNDLE, TRT_VERSION) regenerates these commands from the manifest.", ""]
    return "\n".join(lines)


if __name__ == "__main__":  # python -m polyexport.trtexec BUNDLE [TRT_VERSION]
    import sys

    print(json.dumps(device_commands(sys.argv[1], *(sys.argv[2:3] or ["10"])), indent=2))
