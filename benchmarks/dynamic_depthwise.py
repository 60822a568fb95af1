"""Depthwise convs with input-dependent kernels (issue 15): every exact way to compute one, and the two floors under them.

A depthwise dynamic conv y = Σ_k a_k (W_k ∗ x) has two families of exact forms:
- **constant conv weights**: the per-sample kernel lies in the span of the K experts, so at least min(K, kh·kw)
  static depthwise convs must run (`expert_convs`: K of them mixed by Mul/Add; the two candidates below);
- **a kernel computed at run time** (`sample_conv`, `bank_grouped`, `bank_batched*`, `output_aggregation` reads K·out
  channels instead): the runtime convolves with a kernel that is not an initializer.
The floors time each family's unavoidable core with nothing else: `floor: K static convs` (K constant depthwise convs
summed, no mixing) and `floor: run-time kernel` (one depthwise conv whose kernel is W_0 times a run-time scalar, one
kernel for the whole batch: no per-sample work, no aggregation). Every exact form costs at least the smaller floor.

Two exact candidates not registered as forms, measured here (the issue's "by taps or output aggregation"):
- `taps`: Σ over the kh·kw taps of a shifted slice of x times the per-sample, per-channel tap weight (Mul/Add only);
- `experts in one conv`: x repeated K times along channels, one depthwise conv over the K·C channels (all experts'
  kernels, constant), then Mul by a and ReduceSum over the experts;
- `experts as one grouped conv`: K copies of x, copy k scaled by a_k, interleaved per channel (B, C·K), and one
  grouped conv (groups=C, K inputs a group, the experts' kernels constant) that sums the experts inside the conv.

The layers are the zoo models' own depthwise dynamic layers (CondConv-EfficientNet-B0, DY-MobileNetV3-Small) at
their own inputs (one forward pass), one per distinct shape; each graph framed by identity depthwise 1×1 convs as the
form timer frames forms (autoform.Framed), exported with a dynamic batch (timed at batches 1 and 8 from one session)
and with a static one (each batch its own graph), timed in interleaved repeats on each runtime; every exact form's
output is checked against the layer's. Ratios are to a static depthwise conv of the same shape (the baseline's layer).

    python benchmarks/dynamic_depthwise.py --json benchmarks/results/dynamic_depthwise.json \
        --markdown benchmarks/results/dynamic_depthwise.md
    python benchmarks/dynamic_depthwise.py --ort-kernels --markdown benchmarks/results/dynamic_depthwise_ort_kernels.md
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import onnx
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, md_table, runtimes_here, write_outputs  # noqa: E402
from floors import DEPTHWISE_CORES, constant_convs  # noqa: E402

from polyexport import zoo  # noqa: E402
from polyexport.autoform import Framed, capture_layer_inputs  # noqa: E402
from polyexport.bench import interleaved_medians, median  # noqa: E402
from polyexport.convert import forms_of  # noqa: E402
from polyexport.deploy_layers import condconv as cc_forms, dynamic_conv as dy_forms  # noqa: E402
from polyexport.deploy_layers._kernel_bank import KernelBank, conv_kind  # noqa: E402
from polyexport.exporter import export_onnx  # noqa: E402
from polyexport.layers.condconv import CondConv2d  # noqa: E402
from polyexport.layers.dynamic_conv import Dynamic_conv2d  # noqa: E402
from polyexport.runtimes import RunnerOptions, make_runner  # noqa: E402

MODELS = ["cc_efficientnet_b0", "dy_mobilenetv3_small"]
FORMS = ["expert_convs", "sample_conv", "sample_conv_blocked", "bank_batched_blocked", "output_aggregation", "bank_grouped"]
STATIC_ONLY = {"bank_grouped"}  # the batch folded into the conv's groups
YARDSTICK = "static depthwise conv"
FLOORS = ["floor: K static convs", "floor: run-time kernel"]
CANDIDATES = ["taps", "experts in one conv", "experts as one grouped conv"]


class _OnBank(nn.Module):
    """A computation on the layer's kernel bank, given the layer's own arguments (a CondConv takes its block's routing,
    a DY-Conv computes its attention from x: `route`)."""

    def __init__(self, bank: KernelBank, route: nn.Module):
        super().__init__()
        self.bank, self.route = bank, route  # route a submodule: its weights export as initializers
        self.register_buffer("weights", bank.weight.clone())  # (K, C, 1, kh, kw)
        self.register_buffer("biases", bank.bias.clone())

    def forward(self, x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        return self.compute(x, self.route(x, *rest))


class _ConvsOnly(nn.Module):
    """The yardstick and the floors: convs alone (benchmarks/floors.py's cores), no routing (its cost is the
    attention floor's); the layer's other arguments are ignored."""

    def __init__(self, convs: nn.Module):
        super().__init__()
        self.convs = convs

    def forward(self, x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


def bank_convs(bank: KernelBank) -> list[nn.Conv2d]:
    """The bank's experts as static convs with their biases (its shift left out, as in every floor here)."""
    if bank.same_pad:
        raise ValueError("a layer with dynamic 'same' padding: a static conv cannot stand for it")
    return constant_convs(bank.weight, bank.bias, bank.stride, bank.padding, bank.dilation, bank.groups)


class Taps(_OnBank):
    def compute(self, x, a):
        from polyexport.deploy_layers.drconv import shifted
        from polyexport.layers.condconv import pad_same

        bank = self.bank
        k_count, c, _, kh, kw = self.weights.shape
        padding = bank.padding
        if bank.same_pad:
            x, padding = pad_same(x, (kh, kw), bank.stride, bank.dilation), (0, 0)
        kernels = torch.matmul(a, self.weights.reshape(k_count, -1)).reshape(-1, c, kh * kw, 1, 1)
        y = (torch.matmul(a, self.biases) + bank.shift).reshape(-1, c, 1, 1)
        for t, tap in enumerate(shifted(x, kh, bank.stride, padding, bank.dilation)):
            y = y + tap * kernels[:, :, t]
        return y


class ExpertsInOneConv(_OnBank):
    def compute(self, x, a):
        bank = self.bank
        k_count, c = self.weights.shape[:2]
        y = bank.conv(x.repeat(1, k_count, 1, 1), self.weights.reshape(k_count * c, *self.weights.shape[2:]),
                      self.biases.reshape(-1), k_count * c)
        y = y.reshape(-1, k_count, c, y.shape[-2], y.shape[-1])
        return (y * a.reshape(-1, k_count, 1, 1, 1)).sum(1) + bank.shift.reshape(1, -1, 1, 1)


class ExpertsGrouped(_OnBank):
    def __init__(self, bank: KernelBank, route: nn.Module):
        super().__init__(bank, route)
        k_count, c, _, kh, kw = self.weights.shape  # group c holds expert k's kernel for channel c at input k
        self.register_buffer("grouped", self.weights.transpose(0, 1).reshape(c, k_count, kh, kw).contiguous())

    def compute(self, x, a):
        bank = self.bank
        k_count, c = self.weights.shape[:2]
        scaled = (x.unsqueeze(2) * a.reshape(-1, 1, k_count, 1, 1)).flatten(1, 2)  # (B, C·K): channel c, copy k
        bias = (torch.matmul(a, self.biases) + bank.shift).reshape(-1, c, 1, 1)
        return bank.conv(scaled, self.grouped, None, c) + bias


BUILDERS = {YARDSTICK: lambda bank, route: _ConvsOnly(bank_convs(bank)[0]),
            FLOORS[0]: lambda bank, route: _ConvsOnly(DEPTHWISE_CORES["k_static_convs"](bank_convs(bank))),
            FLOORS[1]: lambda bank, route: _ConvsOnly(DEPTHWISE_CORES["run_time_kernel"](bank_convs(bank)[0])),
            CANDIDATES[0]: Taps, CANDIDATES[1]: ExpertsInOneConv, CANDIDATES[2]: ExpertsGrouped}


def depthwise_layers() -> list[tuple[str, nn.Module, tuple[torch.Tensor, ...]]]:
    """(label, layer, its captured arguments at batch 1), one per distinct shape, from the MODELS."""
    from polyexport.testing import randomize_

    out, seen = [], set()
    for name in MODELS:
        entry = zoo.get(name)
        model = randomize_(entry.build().eval(), 0)
        inputs = capture_layer_inputs(model, (torch.randn(*entry.input_shape),))
        for lname, m in model.named_modules():
            if isinstance(m, (CondConv2d, Dynamic_conv2d)) and conv_kind(m) == "depthwise" and lname in inputs:
                args = inputs[lname]
                k = m.kernel_size if isinstance(m, CondConv2d) else (m.kernel_size, m.kernel_size)
                stride = m.stride if isinstance(m, CondConv2d) else (m.stride, m.stride)
                key = (type(m).__name__, args[0].shape[1], args[0].shape[2], tuple(k), tuple(stride))
                if key not in seen:
                    seen.add(key)
                    label = f"{type(m).__name__} {key[1]}ch {key[2]}×{key[2]} k{k[0]} s{stride[0]}"
                    out.append((label, m.eval(), args))
    return out


class _GivenRouting(nn.Module):
    """A CondConv's routing comes from its block, as the layer's second argument."""

    def forward(self, x: torch.Tensor, routing: torch.Tensor) -> torch.Tensor:
        return routing


def bank_and_route(layer: nn.Module) -> tuple[KernelBank, nn.Module]:
    if isinstance(layer, CondConv2d):
        return cc_forms.kernel_bank(layer), _GivenRouting()
    return dy_forms.kernel_bank(layer), dy_forms.SoftmaxRouter(layer.attention)


def at_batch(args: tuple[torch.Tensor, ...], batch: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(batch)
    return tuple(torch.cat([a] * batch) + 0.01 * torch.randn((batch, *a.shape[1:]), generator=g) for a in args)


def export_framed(module: nn.Module, frame, feed: tuple[torch.Tensor, ...], path: str, dynamic: bool, simplifier: str) -> set[str]:
    """Export the module framed as the form timer frames forms; the graph's input names (the exporter drops an unused one)."""
    export_onnx(Framed(module, *frame).eval(), feed, path, input_names=[f"in{i}" for i in range(len(feed))], n_outputs=1,
                dynamic_batch=dynamic, simplifier=simplifier, validate=False)
    return {i.name for i in onnx.load(path).graph.input}


def load_graphs(rt: str, modules: dict[str, nn.Module], layer: nn.Module, frame, graph: str,
                feeds_at: dict[int, tuple[torch.Tensor, ...]], threads: int, tmp: str) -> tuple[dict, dict[str, str]]:
    """Each module's graph (dynamic: one for every batch; static: one per batch, the only one in feeds_at) loaded on
    `rt`, every exact one checked against the layer at each batch: ({(name, batch): run}, {name: why it failed})."""
    with torch.no_grad():
        wants = {b: Framed(layer, *frame).eval()(*feed)[0].numpy() for b, feed in feeds_at.items()}
    first = next(iter(feeds_at.values()))
    fns, errors = {}, {}
    for n, module in modules.items():
        if graph == "dynamic" and n in STATIC_ONLY:
            continue
        path = os.path.join(tmp, "g.onnx")
        try:
            kept = export_framed(module, frame, first, path, graph == "dynamic", "none" if rt == "onnxruntime" else "onnxsim")
            runner = make_runner(rt, RunnerOptions(threads=threads))
            runner.load(path, tmp)
            for b, inputs in feeds_at.items():
                feed = {f"in{i}": t.numpy() for i, t in enumerate(inputs) if f"in{i}" in kept}
                got = runner.run(feed)[0]
                if n in FORMS or n in CANDIDATES:
                    err = float(np.abs(got - wants[b]).max() / max(np.abs(wants[b]).max(), 1e-12))
                    if err > 1e-5:
                        raise ValueError(f"max error {err:.1e} of the output's scale")
                fns[(n, b)] = (lambda r, f: lambda: r.run(f))(runner, feed)
        except Exception as e:  # noqa: BLE001 - a form that fails here is a result too
            errors[n] = f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"
    return fns, errors


def ort_kernels(layers, names: list[str]) -> list[list[str]]:
    """The ops ONNX Runtime's optimizer (ORT_ENABLE_ALL) leaves in each graph of the first layer: which convs get its
    blocked-layout (com.microsoft.nchwc) kernel and where it reorders around the ones that do not."""
    import onnxruntime as ort

    label, layer, example = layers[0]
    bank, route = bank_and_route(layer)
    registered = forms_of(type(layer))
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in names:
            module = BUILDERS[n](bank, route) if n in BUILDERS else registered[n].build(layer)
            path, optimized = os.path.join(tmp, "g.onnx"), os.path.join(tmp, "g.opt.onnx")
            export_framed(module.eval(), (Framed.channels(example), [example[0].shape[1]]), example, path, True, "none")
            so = ort.SessionOptions()
            so.graph_optimization_level, so.optimized_model_filepath = ort.GraphOptimizationLevel.ORT_ENABLE_ALL, optimized
            so.log_severity_level = 3  # its warning that the saved graph is machine-specific: this is a print, not an artifact
            ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            ops = [f"{node.domain.split('.')[-1]}:{node.op_type}" if node.domain else node.op_type for node in onnx.load(optimized).graph.node]
            table.append([label, n, " ".join(ops)])
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtimes", nargs="*")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--limit", type=int, help="only the first N shapes (a quick look)")
    ap.add_argument("--ort-kernels", action="store_true",
                    help="print the ops ONNX Runtime's optimizer leaves in each graph of the first shape (no timing)")
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args()
    t0, rows, table = time.perf_counter(), [], []
    names = [YARDSTICK, *FLOORS, *FORMS, *CANDIDATES]
    layers = depthwise_layers()[: args.limit]
    if args.ort_kernels:
        rows = ort_kernels(layers, [YARDSTICK, *FLOORS, "expert_convs", "sample_conv"])
        md = md_table(["layer", "graph", "ops after ONNX Runtime's optimizer (framed, dynamic batch)"], rows)
        md += f"\n\nonnxruntime {__import__('onnxruntime').__version__}, ORT_ENABLE_ALL, {machine()}\n"
        print(md)
        write_outputs(args, md, {"rows": [dict(zip(("layer", "graph", "ops"), r)) for r in rows]})
        return
    with tempfile.TemporaryDirectory() as tmp:
        for rt in runtimes_here(args.runtimes):
            for label, layer, example in layers:
                bank, route = bank_and_route(layer)
                modules = {n: BUILDERS[n](bank, route).eval() for n in (YARDSTICK, *FLOORS, *CANDIDATES)}
                registered = forms_of(type(layer))
                modules.update({n: registered[n].build(layer).eval() for n in FORMS})
                frame = Framed.channels(example), [example[0].shape[1]]
                for graph, batches in [("dynamic", (1, 8)), ("static", (1,)), ("static", (8,))]:
                    fns, errors = load_graphs(rt, modules, layer, frame, graph, {b: at_batch(example, b) for b in batches},
                                              args.threads, tmp)
                    for b in batches:
                        timed = {n: fn for (n, bb), fn in fns.items() if bb == b}
                        per = interleaved_medians(timed, repeats=args.repeats, warmup=3, min_iters=10, min_time_s=0.05)
                        base = per.get(YARDSTICK)
                        # each ratio the median of the per-repeat ratios (repeat i of both ran in the same round)
                        ratio = {n: median([v / y for v, y in zip(per[n], base)]) for n in per} if base else {}
                        exact = {n: r for n, r in ratio.items() if n in FORMS or n in CANDIDATES}
                        best = min(exact, key=exact.get) if exact else None
                        row = {"runtime": rt, "layer": label, "graph": graph, "batch": b, "experts": bank.experts,
                               "yardstick_ms": median(base) if base else None, "ratio": ratio, "errors": errors, "fastest": best}
                        rows.append(row)
                        floor = min((ratio[f] for f in FLOORS if f in ratio), default=None)
                        table.append([rt, label, f"{graph} {b}", f"{row['yardstick_ms']:.3f}" if base else "—"]
                                     + [f"{ratio[n]:.2f}×" if n in ratio else ("fails" if n in errors else "—") for n in names[1:]]
                                     + [f"{best} {exact[best]:.2f}×" if best else "—",
                                        f"{exact[best] / floor:.2f}×" if best and floor else "—"])
                        print(" | ".join(table[-1]), flush=True)
    header = (["runtime", "layer", "graph, batch", f"{YARDSTICK} ms"] + [f"{n} / static" for n in names[1:]]
              + ["fastest exact", "fastest exact / lower floor"])
    md = (md_table(header, table) + f"\n\n{machine()}; threads={args.threads}; each ratio the median of {args.repeats} "
          f"interleaved per-repeat ratios to the static depthwise conv; {time.perf_counter() - t0:.0f} s\n")
    print(md)
    write_outputs(args, md, {"threads": args.threads, "repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
    main()
