"""TensorRT: build an engine from the ONNX with the `tensorrt` Python API, serialize it, run it.

Written against the real API of TensorRT 8.6 (JetPack 5) and 10.x (JetPack 6): explicit batch
(a creation flag in 8.x, the only mode in 10), I/O by tensor name (`execute_async_v3`), one
optimization profile for a dynamic batch (min/opt/max), a workspace limit, and a timing cache kept
beside the artifacts. TF32 is cleared for fp32 builds (TensorRT enables it by default, which costs
~1e-3 relative error). GPU memory comes from cuda-python (`cuda.bindings.runtime`, or the older
`cuda.cudart`) so no PyTorch is needed on the device; torch.cuda is the fallback.

NOT VERIFIED HERE: TensorRT cannot be installed on the machines polyexport is developed on; its
tests skip where `tensorrt` does not import. Nothing in the README claims a TensorRT measurement.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..errors import BadInput, RuntimeMissing
from .base import Runner, RunnerOptions


def _trt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise RuntimeMissing("tensorrt", "tensorrt", "needs an NVIDIA GPU with TensorRT 8.6 or 10.x") from e
    return trt


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


class _Buffers:
    """Device buffers and a stream: cuda-python where installed, else torch.cuda."""

    def __init__(self):
        self.cudart = _cudart()
        if self.cudart is None:
            try:
                import torch

                if not torch.cuda.is_available():
                    raise ImportError
            except ImportError as e:
                raise RuntimeMissing("tensorrt", None, "no CUDA access: pip install cuda-python (or a CUDA build of torch)") from e
            self.torch = torch
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


class TensorRTRunner(Runner):
    name = "tensorrt"
    keeps_fp32_modules = True

    def __init__(self, options: RunnerOptions | None = None):
        super().__init__(options)
        self.trt = _trt()
        self.major = int(self.trt.__version__.split(".")[0])
        self._log = _Logger(self.trt).logger
        self.engine = self.context = self.buffers = None
        self.built = {}

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
        its ONNX node, whose name carries the module's scope: precision.scope_prefixes)."""
        from ..precision import scope_prefixes

        prefixes = tuple(p for m in self.options.keep_fp32 for p in scope_prefixes(m))
        kept = 0
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.name.startswith(prefixes):
                layer.precision = self.trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, self.trt.float32)
                kept += 1
        return kept

    def load(self, onnx_path: str, workdir: str) -> dict[str, str]:
        trt = self.trt
        self.buffers = _Buffers()
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
        cache_path = os.path.join(workdir, "timing.cache")
        cache_bytes = open(cache_path, "rb").read() if os.path.exists(cache_path) else b""
        cache = config.create_timing_cache(cache_bytes)
        config.set_timing_cache(cache, ignore_mismatch=False)
        dynamic = [network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)]
        if dynamic:
            lo, opt, hi = self.options.batch_range or (1, 1, 32)
            profile = builder.create_optimization_profile()
            for t in dynamic:
                shape = tuple(t.shape)
                if -1 in shape[1:]:
                    raise BadInput(f"input '{t.name}' has dynamic dimensions besides the batch {shape}: TensorRT needs them fixed")
                profile.set_shape(t.name, (lo, *shape[1:]), (opt, *shape[1:]), (hi, *shape[1:]))
            config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise BadInput("TensorRT could not build an engine: " + "; ".join(self._log.errors[-3:] or ["(no message)"]))
        engine_path = os.path.join(workdir, "model.engine")
        with open(engine_path, "wb") as f:
            f.write(plan)
        with open(cache_path, "wb") as f:
            f.write(config.get_timing_cache().serialize())
        meta = {"tensorrt": trt.__version__, "gpu": gpu_name(), "precision": "fp16" if self.options.fp16 else "fp32 (TF32 off)",
                "kept_fp32": list(self.options.keep_fp32) if self.options.fp16 else [],
                "batch_range": list(self.options.batch_range or (1, 1, 32)) if dynamic else None}
        with open(engine_path + ".json", "w") as f:
            json.dump(meta, f, indent=2)
        self.built = meta
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
        return {"version": self.trt.__version__, "device": gpu_name(), "precision": self.built.get("precision", "fp16" if self.options.fp16 else "fp32 (TF32 off)"),
                "workspace_mb": self.options.workspace_mb, "batch_range": self.built.get("batch_range"), "timing_cache": True}

    def close(self) -> None:
        if self.buffers is not None:
            self.buffers.close()
        self.context = self.engine = self.buffers = None
