"""Turn MODEL (a path, `zoo:NAME`, or `package.module:callable`) into an eval-mode nn.Module.

Unpickling a full module runs code from the file, so it is done only when the user says
`--trust-pickle`; the error names the classes the file would import, read without running it.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import BadInput, RuntimeMissing
from .exporter import first_line

#: keys under which training scripts save the module (YOLO: ema preferred over model when set)
MODULE_KEYS = ("ema", "model", "module", "net")
#: keys under which training scripts save a state_dict
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "ema", "net", "weights")


@dataclass
class Loaded:
    model: nn.Module
    source: str  # how it was loaded, for the report
    default_input_shape: tuple[int, ...] | None = None
    notes: list[str] = field(default_factory=list)
    input_specs: list | None = None  # inputs.InputSpec of a model with several inputs (a zoo dynamic head), with named axes
    output_axes: dict[int, str] | None = None


def user_code_paths(imports: list[str] | None) -> None:
    """Make the user's own code importable: the working directory, then `--import` modules.

    Called only where user code is needed (a `module:callable` MODEL or --arch, a trusted pickle, --import),
    and the working directory goes to the *end* of sys.path: a file there named like one of polyexport's
    dependencies (`onnxsim.py`) must never be imported in its place.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    for mod in imports or []:
        try:
            importlib.import_module(mod)
        except Exception as e:  # noqa: BLE001 - any import failure is the user's input
            raise BadInput(f"--import {mod}: {type(e).__name__}: {e}") from e


def resolve_callable(spec: str) -> object:
    """'pkg.mod:attr' (attr may be dotted) -> the object; clear errors for each way it can fail."""
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise BadInput(f"'{spec}' is not of the form package.module:callable")
    try:
        obj = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise BadInput(f"cannot import '{mod_name}' from '{spec}': {e} (is it on sys.path? try --import or run from its folder)") from e
    except Exception as e:  # noqa: BLE001
        raise BadInput(f"importing '{mod_name}' failed: {type(e).__name__}: {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BadInput(f"'{mod_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    return obj


def build_from_spec(spec: str, weights: bool = True) -> Loaded:
    """`zoo:NAME` or `package.module:callable` (called with no arguments) -> module. A zoo model gets seeded random
    weights and BN statistics (no pretrained weights ship): default-initialised, EfficientNet's output does not
    depend on its input at all, and parity on it proves nothing. `weights=False` (--arch, a state_dict follows): as built."""
    if spec.startswith("zoo:"):
        from . import zoo

        name = spec[4:]
        entry = zoo.get(name)
        specs = zoo.input_specs(entry)
        model, source = (zoo.instantiate(name, seed=0), f"zoo:{name} (seeded random weights and BN statistics)") if weights \
            else (entry.build(), f"zoo:{name}")
        return Loaded(model, source, entry.input_shape, input_specs=specs, output_axes=entry.output_axes)
    obj = resolve_callable(spec)
    if isinstance(obj, nn.Module):
        return Loaded(obj, spec)
    if not callable(obj):
        raise BadInput(f"'{spec}' is neither an nn.Module nor callable")
    try:
        model = obj()
    except Exception as e:  # noqa: BLE001
        raise BadInput(f"calling '{spec}()' failed: {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise BadInput(f"'{spec}()' returned {type(model).__name__}, not a torch.nn.Module")
    return Loaded(model, spec, getattr(model, "default_input_shape", None))


def check_model_file(path: str) -> None:
    """MODEL must be a regular file no larger than the memory free to read it (not a folder, a FIFO or a
    device such as /dev/zero, which would hang or eat memory until killed)."""
    import stat

    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise BadInput(f"{path} is a directory, not a model file")
    if not stat.S_ISREG(st.st_mode):
        raise BadInput(f"{path} is not a regular file (a device, FIFO or socket): give a model file")
    free = available_memory()
    if free and st.st_size > free:
        raise BadInput(f"{path} is {st.st_size / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB of memory available to load it")


def available_memory() -> int | None:
    """Bytes of memory available now (Linux's MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _safe_globals() -> list:
    """Plain-data classes training scripts pickle beside the weights, safe to rebuild (no code of the file runs: an
    instance and its data): timm's train.py saves its argparse.Namespace as `args`, and many scripts a numpy scalar
    or array (`best_acc1`); each made the whole checkpoint ask for --trust-pickle. numpy's are those PyTorch's own
    weights_only documentation allows for numpy data."""
    import numpy as np

    multiarray = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray")
    dtypes = [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64, np.uint8, np.bool_)]
    return [argparse.Namespace, np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar, *dtypes]


def _global_name(obj: object) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _unsafe_globals(path: str) -> list[str]:
    """Classes/functions the pickle would import, found without unpickling (zip checkpoints), but those torch.load is
    given as safe (_safe_globals: the same list, so what passes here also loads)."""
    if not zipfile.is_zipfile(path):
        return []
    safe = {_global_name(c) for c in _safe_globals()}
    try:
        return [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in safe]
    except Exception:  # noqa: BLE001 - a broken archive is reported by the load itself
        return []


def _is_safetensors(path: str) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then that many bytes of JSON (an object), then data."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= os.path.getsize(path)


def _read_safetensors(path: str) -> dict:
    """The tensors of a safetensors file (timm's and Hugging Face's format for weights): a state_dict, and no code is
    run to read it, so no --trust-pickle is asked."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise RuntimeMissing("safetensors", "safetensors", f"reading {path} needs it") from None
    try:
        return load_file(path, device="cpu")
    except Exception as e:  # noqa: BLE001 - a corrupt header or truncated data
        raise BadInput(f"{path} is not a readable safetensors file: {first_line(e)}") from e


def _is_torchscript(path: str) -> bool:
    """An archive written by torch.jit.save (it holds constants.pkl beside its compiled code), not by torch.save."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in z.namelist())


def _read_torchscript(path: str, trust_pickle: bool) -> nn.Module:
    """A compiled model: its code runs when it is loaded and run, so it is asked for like a pickle. Its layers are
    compiled and cannot be swapped (convert keeps them, and says so)."""
    if not trust_pickle:
        raise BadInput(f"{path} is a TorchScript archive (torch.jit.save): loading it runs its compiled code. Re-run with "
                       "--trust-pickle if you trust where it came from; it is exported as written, since compiled layers "
                       "cannot be swapped for their deploy forms (a state_dict with --arch deploys them)")
    try:
        return torch.jit.load(path, map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise BadInput(f"{path} is not a readable TorchScript archive: {first_line(e)}") from e


def _looks_like_checkpoint(path: str) -> bool:
    """torch.save writes a zip archive (PyTorch 1.6 on) or a pickle of protocol 2 (before): anything else is not a
    checkpoint, and torch.load's own message for it (about `weights_only`) would send a user to --trust-pickle."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def _read_checkpoint(path: str, trust_pickle: bool) -> object:
    if path.lower().endswith(".onnx"):
        raise BadInput(f"{path} is an ONNX graph: polyexport starts from the PyTorch model (its deploy forms replace "
                       f"PyTorch layers); `polyexport check {path}` reports what TensorRT's parser would refuse in it")
    if not _looks_like_checkpoint(path):
        raise BadInput(f"{path} is not a PyTorch checkpoint: torch.save writes a zip archive (or, before PyTorch 1.6, a "
                       "pickle), safetensors its own header, and this file is none of them (an empty, truncated or foreign file?)")
    if _is_torchscript(path):
        return _read_torchscript(path, trust_pickle)
    unsafe = _unsafe_globals(path)
    if unsafe and not trust_pickle:
        shown = ", ".join(unsafe[:4]) + (f" (+{len(unsafe) - 4} more)" if len(unsafe) > 4 else "")
        raise BadInput(
            f"{path} holds pickled Python objects ({shown}); loading it runs code from the file. "
            "Re-run with --trust-pickle if you trust where it came from, or save a state_dict and pass --arch"
        )
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as e:  # noqa: BLE001
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "WeightsUnpickler error:" in str(e):  # the reason, not torch's advice to load it unsafely
            msg = str(e).split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
        if "Unsupported global" in str(e):  # a legacy (non-zip) pickle naming a class
            raise BadInput(
                f"{path} holds pickled Python objects; loading it runs code from the file. "
                "Re-run with --trust-pickle if you trust where it came from"
            ) from e
        if isinstance(e, (ModuleNotFoundError, AttributeError)):
            raise BadInput(
                f"{path}: unpickling needs code that is not importable here ({msg}); "
                "run from the training code's folder or add --import MODULE"
            ) from e
        raise BadInput(f"{path} is not a readable PyTorch checkpoint: {type(e).__name__}: {msg}") from e


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _find_module(ckpt: Mapping) -> nn.Module | None:
    for key in MODULE_KEYS:
        if isinstance(ckpt.get(key), nn.Module):
            return ckpt[key]
    return None


def _find_state_dict(obj: object) -> Mapping | None:
    if _is_state_dict(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if _is_state_dict(obj.get(key)):
                return obj[key]
    return None


def _strip_prefix(sd: Mapping, model: nn.Module) -> Mapping:
    """DataParallel/DDP and torch.compile save keys with 'module.' / '_orig_mod.' in front."""
    expected = set(model.state_dict())
    for prefix in ("module.", "_orig_mod.", "model."):
        if not (set(sd) & expected) and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_state_dict_into(model: nn.Module, sd: Mapping, where: str) -> None:
    sd = _strip_prefix(sd, model)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                parts.append(f"{len(items)} {label} ({', '.join(items[:3])}{', …' if len(items) > 3 else ''})")
        raise BadInput(f"{where} does not match the architecture: " + "; ".join(parts))
    model.load_state_dict(sd, strict=True)


def load_model(spec: str, *, arch: str | None = None, trust_pickle: bool = False, imports: list[str] | None = None) -> Loaded:
    """Load MODEL as the CLI describes it; raise BadInput with a one-line reason otherwise."""
    if imports or arch or trust_pickle or (":" in spec and not spec.startswith("zoo:") and not os.path.exists(spec)):
        user_code_paths(imports)
    if os.path.exists(spec):
        check_model_file(spec)
        ckpt = _read_safetensors(spec) if _is_safetensors(spec) else _read_checkpoint(spec, trust_pickle)
        if isinstance(ckpt, nn.Module):
            loaded = Loaded(ckpt, f"pickled module {type(ckpt).__name__} from {spec}")
        elif isinstance(ckpt, Mapping) and _find_module(ckpt) is not None:
            module = _find_module(ckpt)
            key = next(k for k in MODULE_KEYS if ckpt.get(k) is module)
            loaded = Loaded(module, f"pickled module under '{key}' in {spec}")
        else:
            sd = _find_state_dict(ckpt)
            if sd is None:
                kind = type(ckpt).__name__
                keys = f" with keys {list(ckpt)[:6]}" if isinstance(ckpt, Mapping) else ""
                raise BadInput(f"{spec} holds a {kind}{keys}: neither an nn.Module nor a state_dict")
            if not arch:
                raise BadInput(f"{spec} holds a state_dict ({len(sd)} tensors): pass --arch package.module:callable (or zoo:NAME) to build the model it belongs to")
            loaded = build_from_spec(arch, weights=False)
            load_state_dict_into(loaded.model, sd, spec)
            loaded.source = f"state_dict {spec} into {arch}"
        if arch and not loaded.source.startswith("state_dict"):
            loaded.notes.append(f"--arch {arch} ignored: {spec} holds a whole module")
    elif spec.startswith("zoo:") or ":" in spec:
        if arch:
            raise BadInput("--arch is only for a state_dict file; MODEL is already an architecture")
        loaded = build_from_spec(spec)
    else:
        raise BadInput(f"{spec}: no such file (MODEL is a path, zoo:NAME, or package.module:callable)")

    model = loaded.model
    if any(p.dtype in (torch.float16, torch.bfloat16) for p in model.parameters()):
        loaded.notes.append("weights were half precision: converted to float32")
        model.float()
    if model.training and os.path.exists(spec):  # a freshly built model is in train mode by nn.Module's default
        warnings.warn("the model was saved in training mode: switched to eval mode for export", stacklevel=2)
        loaded.notes.append("model was saved in training mode: switched to eval() (dropout off, BN uses running statistics)")
    model.eval()
    return loaded
