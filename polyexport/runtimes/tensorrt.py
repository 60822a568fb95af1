"""TensorRT: build an engine from the ONNX with the `tensorrt` Python API, serialize it, run it.

Written against the Python API of TensorRT 8.5 (JetPack 5.1), 8.6 (JetPack 6.0) and 10.x (JetPack
6.1/6.2: 10.3), every call checked in NVIDIA/TensorRT's bindings (python/src/infer/pyCore.cpp,
pyGraph.cpp, parsers/pyOnnx.cpp on release/8.5, 8.6 and 10.3): explicit batch (a creation flag in 8.x,
the only mode in 10), I/O by tensor name (`num_io_tensors`, `set_input_shape`, `set_tensor_address`,
`execute_async_v3`: all since 8.5), one optimization profile for the dynamic inputs, a workspace limit
(`set_memory_pool_limit`), and a timing cache. TF32 is cleared for fp32 builds (TensorRT enables it by
default, which costs ~1e-3 relative error). GPU memory comes from cuda-python (`cuda.bindings.runtime`,
or the older `cuda.cudart`) so no PyTorch is needed on the device; torch.cuda is the fallback.

With a `cache_dir` (verify uses one beside the bundle) the timing cache and the engine are kept there,
named by TensorRT version and GPU; an engine is reused only when everything it was built from matches
(ONNX SHA-256, precision, modules kept in fp32, profile, workspace) and its own checksum holds.

NOT VERIFIED HERE: TensorRT cannot be installed on the machines polyexport is developed on; its
tests skip where `tensorrt` does not import. Nothing in the README claims a TensorRT measurement.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time

import numpy as np

from ..errors import BadInput, RuntimeMissing
from .base import Runner, RunnerOptions


#: how to get TensorRT's Python module: pip has it only for x86-64 and SBSA servers, not for a Jetson
INSTALL_HINT = ("TensorRT's Python module `tensorrt` does not import here. On a Jetson, JetPack provides it "
                "(JetPack 5.1: TensorRT 8.5, 6.0: 8.6, 6.1/6.2: 10.3): `sudo apt-get install nvidia-jetpack` installs it "
                "for the system python3 (a virtualenv needs --system-site-packages). On an x86-64 Linux machine with an "
                "NVIDIA GPU: pip install tensorrt")


def require_tensorrt():
    """The `tensorrt` module, or RuntimeMissing (exit 3) saying how to get it."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise RuntimeMissing("tensorrt", None, INSTALL_HINT) from e
    return trt


_trt = require_tensorrt


def _cudart():
    """cuda-python's runtime bindings, under either of their module names; None if absent."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            return None
    return cudart


class _Logger:
    """A TensorRT logger that keeps errors so they can be reported, not just printed."""

    def __init__(self, trt):
        class L(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity, msg):
                if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                    self.errors.append(msg)

        self.logger = L()


#: TensorRT's Python module allocates no GPU memory: cuda-python does (JetPack does not install it)
CUDA_HINT = ("no CUDA access from Python for the engine's buffers: pip install cuda-python, the release matching the "
             "device's CUDA (JetPack 5: 11.x, JetPack 6: 12.x), or use a CUDA build of torch")


def require_cuda():
    """cuda-python's runtime bindings, else a torch with CUDA (returned as ("torch", torch)); RuntimeMissing
    (exit 3) with CUDA_HINT when neither is there."""
    cudart = _cudart()
    if cudart is not None:
        return cudart
    try:
        import torch

        if not torch.cuda.is_available():
            raise ImportError
    except ImportError as e:
        raise RuntimeMissing("tensorrt", None, CUDA_HINT) from e
    return ("torch", torch)


class _Buffers:
    """Device buffers and a stream: cuda-python where installed, else torch.cuda."""

    def __init__(self):
        access = require_cuda()
        self.cudart = None if isinstance(access, tuple) else access
        if self.cudart is None:
            self.torch = torch = access[1]
            self.stream = torch.cuda.Stream()
        else:
            err, self.stream = self.cudart.cudaStreamCreate()
            self._check(err, "cudaStreamCreate")
        self.allocs: dict[str, tuple[int, int, object]] = {}  # name -> (ptr, nbytes, owner)

    def _check(self, err, what):
        if int(err) != 0:
            raise RuntimeError(f"{what} failed: {err}")

    @property
    def stream_handle(self) -> int:
        return self.stream.cuda_stream if self.cudart is None else int(self.stream)

    def ensure(self, name: str, nbytes: int) -> int:
        ptr, size, _ = self.allocs.get(name, (0, -1, None))
        if size >= nbytes:
            return ptr
        if self.cudart is None:
            owner = self.torch.empty(max(nbytes, 1), dtype=self.torch.uint8, device="cuda")
            self.allocs[name] = (owner.data_ptr(), nbytes, owner)
        else:
            if ptr:
                self.cudart.cudaFree(ptr)
            err, new = self.cudart.cudaMalloc(max(nbytes, 1))
            self._check(err, "cudaMalloc")
            self.allocs[name] = (int(new), nbytes, None)
        return self.allocs[name][0]

    def h2d(self, ptr: int, host: np.ndarray) -> None:
        if self.cudart is None:
            src = self.torch.from_numpy(host).reshape(-1).view(self.torch.uint8)
            dst = self._view(ptr, host.nbytes)
            with self.torch.cuda.stream(self.stream):
                dst.copy_(src, non_blocking=False)
        else:
            kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            self._check(self.cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, self.stream)[0], "cudaMemcpyAsync")

    def d2h(self, host: np.ndarray, ptr: int) -> None:
        if self.cudart is None:
            with self.torch.cuda.stream(self.stream):
                data = self._view(ptr, host.nbytes).cpu().numpy()
            host.reshape(-1).view(np.uint8)[:] = data
        else:
            kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            self._check(self.cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, self.stream)[0], "cudaMemcpyAsync")

    def _view(self, ptr: int, nbytes: int):
        for p, _, owner in self.allocs.values():
            if p == ptr:
                return owner[:nbytes]
        raise KeyError(ptr)

    def sync(self) -> None:
        if self.cudart is None:
            self.stream.synchronize()
        else:
            self._check(self.cudart.cudaStreamSynchronize(self.stream)[0], "cudaStreamSynchronize")

    def close(self) -> None:
        if self.cudart is not None:
            for ptr, _, _ in self.allocs.values():
                self.cudart.cudaFree(ptr)
            self.cudart.cudaStreamDestroy(self.stream)
        self.allocs.clear()


def gpu_name() -> str:
    cudart = _cudart()
    if cudart is not None:
        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = props.name
            return name.decode(errors="replace").rstrip("\x00") if isinstance(name, bytes) else str(name)
    try:
        import torch

        return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        return "unknown GPU"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_atomically(path: str, data) -> None:
    """Another verify of the same bundle may be reading the file: write aside, then rename over it."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "gpu"


#: an optimization profile: input name -> {"min": shape, "opt": shape, "max": shape}
Profile = dict


class TensorRTRunner(Runner):
    name = "tensorrt"
    keeps_fp32_modules = True

    def __init__(self, options: RunnerOptions | None = None, *, profile: Profile | None = None,
                 cache_dir: str | None = None, rebuild: bool = False):
        """`profile`: shapes for every dynamic input (else a dynamic batch takes options.batch_range);
        `cache_dir`: where the timing cache and the engine are kept (else the workdir `load` is given);
        `rebuild`: build even when a matching engine is cached."""
        super().__init__(options)
        self.trt = require_tensorrt()
        self.major = int(self.trt.__version__.split(".")[0])
        self._log = _Logger(self.trt).logger
        self.engine = self.context = self.buffers = None
        self.profile, self.cache_dir, self.rebuild = profile, cache_dir, rebuild
        self.built: dict = {}

    # --- build -------------------------------------------------------------------------------
    def _parse(self, builder, onnx_path: str):
        trt = self.trt
        flags = 0 if self.major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self._log)
        with open(onnx_path, "rb") as f:
            ok = parser.parse(f.read(), onnx_path)
        if not ok:
            raise BadInput("TensorRT's ONNX parser rejected the graph: " + "; ".join(self._parser_errors(parser, onnx_path)))
        return network, parser

    def _parser_errors(self, parser, onnx_path: str) -> list[str]:
        """Each error with its ONNX node name (the exporter names nodes by module path)."""
        import onnx

        nodes = onnx.load(onnx_path, load_external_data=False).graph.node
        out = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            name = e.node_name() if hasattr(e, "node_name") else (nodes[e.node()].name if 0 <= e.node() < len(nodes) else "?")
            op = e.node_operator() if hasattr(e, "node_operator") else (nodes[e.node()].op_type if 0 <= e.node() < len(nodes) else "?")
            out.append(f"node '{name}' ({op}): {e.desc()}")
        return out

    def _keep_fp32(self, network) -> int:
        """Pin the layers of the modules in options.keep_fp32 to fp32 (the parser names each layer after
        its ONNX node, whose name carries the module's scopes: scopes.belongs). Layers that compute
        integers, booleans or shapes are left alone, as trtexec's --layerPrecisions does for a wildcard
        (samples/common/sampleEngines.cpp, setLayerPrecisions): pinning those to fp32 fails the build."""
        from ..scopes import belongs

        trt = self.trt
        not_activations = {getattr(trt, n) for n in ("int8", "int32", "int64", "bool", "uint8") if hasattr(trt, n)}
        kept = 0
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if not any(belongs(layer.name, m) for m in self.options.keep_fp32) or layer.precision in not_activations:
                continue
            first_in = layer.get_input(0) if layer.num_inputs else None
            if first_in is not None and (first_in.is_shape_tensor or (
                    first_in.dtype in not_activations and layer.num_outputs and layer.get_output(0).dtype in not_activations)):
                continue
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                if layer.get_output(j).dtype not in not_activations:
                    layer.set_output_type(j, trt.float32)
            kept += 1
        return kept

    def _profile_shapes(self, network) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """(min, opt, max) per dynamic network input: from the explicit profile, else the batch range."""
        out = {}
        for i in range(network.num_inputs):
            t = network.get_input(i)
            shape = tuple(t.shape)
            if -1 not in shape:
                continue
            if self.profile is not None:
                if t.name not in self.profile:
                    raise BadInput(f"input '{t.name}' has dynamic dimensions {shape} but the profile gives it no shapes")
                lo, opt, hi = (tuple(int(d) for d in self.profile[t.name][k]) for k in ("min", "opt", "max"))
                for s in (lo, opt, hi):
                    if len(s) != len(shape) or any(d != -1 and d != x for d, x in zip(shape, s)):
                        raise BadInput(f"input '{t.name}': the profile's shape {list(s)} does not fit the graph's {shape}")
            else:
                if -1 in shape[1:]:
                    raise BadInput(f"input '{t.name}' has dynamic dimensions besides the batch {shape}: TensorRT needs them fixed")
                b_lo, b_opt, b_hi = self.options.batch_range or (1, 1, 32)
                lo, opt, hi = ((b, *shape[1:]) for b in (b_lo, b_opt, b_hi))
            out[t.name] = (lo, opt, hi)
        return out

    def _request(self, onnx_path: str) -> dict:
        """Everything an engine is built from: a cached engine is reused only when all of it matches."""
        fp16 = self.options.fp16
        return {"tensorrt": self.trt.__version__, "gpu": gpu_name(), "onnx_sha256": _sha256(onnx_path),
                "precision": "fp16" if fp16 else "fp32 (TF32 off)", "kept_fp32": sorted(self.options.keep_fp32) if fp16 else [],
                "profile": self.profile, "batch_range": list(self.options.batch_range) if self.options.batch_range and self.profile is None else None,
                "workspace_mb": self.options.workspace_mb}

    def _cached(self, engine_path: str, request: dict) -> dict | None:
        try:
            with open(engine_path + ".json") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in request.items()):
            return None
        if meta.get("engine_sha256") != _sha256(engine_path):
            return None  # truncated or replaced: build again
        return meta

    def _build(self, onnx_path: str, cache_path: str) -> tuple[bytes, dict]:
        """The serialized engine, and what was built (profile, build time); the timing cache updated in place."""
        trt = self.trt
        builder = trt.Builder(self._log)
        network, _parser = self._parse(builder, onnx_path)
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.options.workspace_mb << 20)
        if self.options.fp16:
            config.set_flag(trt.BuilderFlag.FP16)
            kept = self._keep_fp32(network) if self.options.keep_fp32 else 0
            if kept:  # without this flag the builder may still pick fp16 kernels for the marked layers
                config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        else:
            config.clear_flag(trt.BuilderFlag.TF32)
        notes = []
        try:
            with open(cache_path, "rb") as f:
                cache_bytes = f.read()
        except OSError:
            cache_bytes = b""
        cache = config.create_timing_cache(cache_bytes)  # b"": a new, empty cache
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            notes.append(f"the timing cache {cache_path} did not load (another TensorRT or GPU?): started a new one")
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, ignore_mismatch=False)
        shapes = self._profile_shapes(network)
        if shapes:
            profile = builder.create_optimization_profile()
            for name, (lo, opt, hi) in shapes.items():
                profile.set_shape(name, lo, opt, hi)
            config.add_optimization_profile(profile)
        start = time.perf_counter()
        plan = builder.build_serialized_network(network, config)
        build_s = time.perf_counter() - start
        if plan is None:
            raise BadInput("TensorRT could not build an engine: " + "; ".join(self._log.errors[-3:] or ["(no message)"]))
        _write_atomically(cache_path, config.get_timing_cache().serialize())
        built = {"profile_built": {n: {"min": list(lo), "opt": list(opt), "max": list(hi)} for n, (lo, opt, hi) in shapes.items()} or None,
                 "build_s": round(build_s, 3), "notes": notes}
        return bytes(plan), built

    def load(self, onnx_path: str, workdir: str) -> dict[str, str]:
        """Build the engine (or reuse the one cached for exactly this request) and load it."""
        trt = self.trt
        cache_dir = self.cache_dir or workdir
        os.makedirs(cache_dir, exist_ok=True)
        self.buffers = _Buffers()
        request = self._request(onnx_path)
        tag = f"trt{trt.__version__}-{_slug(request['gpu'])}"
        engine_path = os.path.join(cache_dir, f"model-{'fp16' if self.options.fp16 else 'fp32'}-{tag}.engine")
        cache_path = os.path.join(cache_dir, f"timing-{tag}.cache")
        meta = None if self.rebuild else self._cached(engine_path, request)
        if meta is not None:
            self.built = dict(meta, engine="reused", engine_path=engine_path, timing_cache=cache_path, notes=[])
        else:
            plan, built = self._build(onnx_path, cache_path)
            _write_atomically(engine_path, plan)
            meta = dict(request, **built, engine_sha256=_sha256(engine_path), built_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            _write_atomically(engine_path + ".json", json.dumps(meta, indent=2).encode())
            self.built = dict(meta, engine="built", engine_path=engine_path, timing_cache=cache_path)
        self.load_engine(engine_path)
        return {"tensorrt_engine": engine_path, "tensorrt_timing_cache": cache_path}

    # --- run ---------------------------------------------------------------------------------
    def load_engine(self, engine_path: str) -> None:
        """Deserialize an engine; one built by another TensorRT version or for another GPU is a clear error."""
        trt = self.trt
        meta_path = engine_path + ".json"
        meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
        if meta and (meta.get("tensorrt") != trt.__version__ or meta.get("gpu") != gpu_name()):
            raise BadInput(f"{engine_path} was built with TensorRT {meta.get('tensorrt')} for {meta.get('gpu')}; "
                           f"this is TensorRT {trt.__version__} on {gpu_name()}: rebuild it from the ONNX")
        self.buffers = self.buffers or _Buffers()
        with open(engine_path, "rb") as f:
            self.engine = trt.Runtime(self._log).deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise BadInput(f"{engine_path} cannot be loaded by TensorRT {trt.__version__} on {gpu_name()} "
                           f"(built by another version or for another GPU?): {'; '.join(self._log.errors[-2:])}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        trt, ctx, buf = self.trt, self.context, self.buffers
        for name in self.inputs:
            host = np.ascontiguousarray(feeds[name], dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            ctx.set_input_shape(name, host.shape)
            ptr = buf.ensure(name, host.nbytes)
            buf.h2d(ptr, host)
            ctx.set_tensor_address(name, ptr)
        results = []
        for name in self.outputs:
            shape = tuple(ctx.get_tensor_shape(name))
            host = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            ctx.set_tensor_address(name, buf.ensure(name, host.nbytes))
            results.append(host)
        if not ctx.execute_async_v3(buf.stream_handle):
            raise RuntimeError("TensorRT execute_async_v3 failed: " + "; ".join(self._log.errors[-2:]))
        for name, host in zip(self.outputs, results):
            buf.d2h(host, buf.allocs[name][0])
        buf.sync()
        return results

    def describe(self) -> dict:
        b = self.built
        return {"version": self.trt.__version__, "device": gpu_name(), "precision": b.get("precision", "fp16" if self.options.fp16 else "fp32 (TF32 off)"),
                "kept_fp32": b.get("kept_fp32", []), "workspace_mb": self.options.workspace_mb, "profile": b.get("profile_built"),
                "engine": b.get("engine"), "engine_path": b.get("engine_path"), "build_s": b.get("build_s"),
                "timing_cache": b.get("timing_cache"), "notes": b.get("notes", [])}

    def close(self) -> None:
        if self.buffers is not None:
            self.buffers.close()
        self.context = self.engine = self.buffers = None
