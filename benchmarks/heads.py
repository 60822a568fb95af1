"""Dynamic heads (CondInst, DyCo3D): the deploy form vs the as-written export vs static weights.

At each instance count, on ONNX Runtime and OpenVINO, timed in turns (interleaved, medians of repeats):
- each deploy form (CondInst: batched_matmul and batched_resize, which differ in the upsampling; DyCo3D:
  batched_matmul): ONE graph with a dynamic instance axis, run at every count;
- as_written: the reference exported at that count (instances folded into a grouped conv with run-time
  weights: one graph per count, which TensorRT's parser flags);
- static: the same head with the count's weights frozen into the graph (grouped 1×1 convs with constant
  weights, the rest as the reference computes it): what the computation costs when nothing is dynamic.
Ratios printed: form / as_written and form / static (below 1: the deploy form is faster).
Sizes: the zoo entries (CondInst on the stride-8 map of an 800×1088 image; DyCo3D on 50 000 points).

    python benchmarks/heads.py --markdown benchmarks/results/heads.md --json benchmarks/results/heads.json
    python benchmarks/heads.py --heads condinst --counts 1 10 --repeats 3
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))

from common import load_runner, machine, md_table, runtimes_here, write_outputs  # noqa: E402

from polyexport import zoo  # noqa: E402
from polyexport.bench import interleaved  # noqa: E402
from polyexport.convert import registered_layers  # noqa: E402
from polyexport.exporter import export_onnx  # noqa: E402
from polyexport.layers.condinst import CondInstMaskHead, aligned_bilinear, compute_locations, split_params  # noqa: E402
from polyexport.layers.dyco3d import DyCo3DMaskHead  # noqa: E402
from polyexport.pipeline import versions  # noqa: E402

HEADS = {"condinst": "condinst_mask_head", "dyco3d": "dyco3d_mask_head"}


def frozen_convs(params: torch.Tensor, ref: nn.Module) -> nn.ModuleList:
    """Each generated layer of `params` (n instances) as a grouped 1×1 conv with constant weights."""
    weights, biases = split_params(params, ref.head_in_channels, ref.channels, ref.num_layers)
    n, convs = params.shape[0], nn.ModuleList()
    for w, b in zip(weights, biases):
        conv = nn.Conv2d(n * w.shape[2], n * w.shape[1], 1, groups=n)
        conv.weight.data.copy_(w.reshape(-1, w.shape[2], 1, 1))
        conv.bias.data.copy_(b.reshape(-1))
        convs.append(conv)
    return convs


class StaticCondInst(nn.Module):
    """CondInstMaskHead's computation with one count's generated weights as constants."""

    def __init__(self, ref: CondInstMaskHead, params: torch.Tensor):
        super().__init__()
        self.ref, self.n, self.convs = ref, params.shape[0], frozen_convs(params, ref)

    def forward(self, mask_feats, locations, fpn_levels, im_inds):
        _, c, h, w = mask_feats.shape
        pixels = compute_locations(h, w, self.ref.mask_feat_stride)
        rel = (locations.reshape(-1, 1, 2) - pixels.reshape(1, -1, 2)).permute(0, 2, 1)
        rel = rel / self.ref.sizes_of_interest.float()[fpn_levels].reshape(-1, 1, 1)
        x = torch.cat([rel, mask_feats[im_inds].reshape(self.n, c, h * w)], 1).reshape(1, -1, h, w)
        for i, conv in enumerate(self.convs):
            x = conv(x) if i == len(self.convs) - 1 else F.relu(conv(x))
        return aligned_bilinear(x.reshape(-1, 1, h, w), self.ref.factor)


class StaticDyCo3D(nn.Module):
    """DyCo3DMaskHead's computation with one count's generated weights as constants (1×1 Conv2d on a 1-high map)."""

    def __init__(self, ref: DyCo3DMaskHead, params: torch.Tensor):
        super().__init__()
        self.n, self.convs = params.shape[0], frozen_convs(params, ref)

    def forward(self, mask_features, centres, coords):
        points = mask_features.shape[0]
        rel = (centres.reshape(-1, 1, 3) - coords.reshape(1, -1, 3)).permute(0, 2, 1)
        x = torch.cat([rel, mask_features.t().unsqueeze(0).repeat(self.n, 1, 1)], 1).reshape(1, -1, 1, points)
        for i, conv in enumerate(self.convs):
            x = conv(x) if i == len(self.convs) - 1 else F.relu(conv(x))
        return x.reshape(self.n, points)


def realistic_inputs(head: str, entry: zoo.ZooEntry, ref: nn.Module, n: int, seed: int) -> list[torch.Tensor]:
    """The zoo entry's inputs at n instances, positions inside the image / scene, parameters at a controller's scale."""
    arrays = zoo.example_inputs(entry, seed=seed, sizes={"instances": n})
    rng = np.random.default_rng(seed + 1)
    if head == "condinst":
        h, w = entry.inputs[0].shape[2:]
        arrays[2] = (rng.random((n, 2)) * [w * ref.mask_feat_stride, h * ref.mask_feat_stride]).astype(np.float32)
    else:
        arrays[2] = arrays[3][rng.integers(0, len(arrays[3]), n)]  # centres on points of the scene
    arrays[1] = arrays[1] * np.float32(0.3)
    return [torch.from_numpy(a) for a in arrays]


def run(args) -> list[dict]:
    rows = []
    for head in args.heads:
        name = HEADS[head]
        entry = zoo.get(name)
        ref = zoo.instantiate(name)
        forms = {f"form:{f.name}": f.build(ref) for f in registered_layers()[type(ref)].forms.values()}
        names = [f"input_{i}" for i in range(len(entry.inputs))]  # load_runner's names for several inputs
        axes = {names[i]: dict(spec.axes) for i, spec in enumerate(entry.inputs) if spec.axes} | {"output": dict(entry.output_axes)}
        with tempfile.TemporaryDirectory() as tmp:
            for tag, module in forms.items():  # one graph per form, for every count
                export_onnx(module, tuple(realistic_inputs(head, entry, ref, 3, 0)), os.path.join(tmp, f"{tag}.onnx"),
                            input_names=names, n_outputs=1, dynamic_axes=axes)
            for n in args.counts:
                x = realistic_inputs(head, entry, ref, n, n)
                static = (StaticCondInst if head == "condinst" else StaticDyCo3D)(ref, x[1]).eval() if n else None
                static_x = tuple(t for i, t in enumerate(x) if i != 1)
                for rt in runtimes_here(args.runtimes):
                    fns, errors = {}, {}
                    modules = [(tag, module, x) for tag, module in forms.items()]
                    if n:  # upstream skips the head without instances: nothing to export at 0
                        modules += [("as_written", ref, x), ("static", static, static_x)]
                    for tag, module, example in modules:
                        runner, feeds = load_runner(rt, module, tuple(example), tmp, tag if tag in forms else f"{tag}_{n}", args.threads)
                        if runner is None:
                            errors[tag] = feeds
                        else:
                            fns[tag] = (lambda r, f: lambda: r.run(f))(runner, feeds)
                    stats = interleaved(fns, repeats=args.repeats, warmup=2, warmup_s=0.05, min_iters=args.iters, min_time_s=args.min_time)
                    for tag in forms:
                        row = {"head": head, "instances": n, "runtime": rt, "form": tag.removeprefix("form:"),
                               **{f"{k}_ms": stats[k].p50 for k in (tag, "as_written", "static") if k in stats},
                               "cov": max(v.cov for v in stats.values()), **({"errors": errors} if errors else {})}
                        row["deploy_ms"] = row.pop(f"{tag}_ms", None)
                        for other in ("as_written", "static"):
                            if other in stats and tag in stats:
                                row[f"deploy_vs_{other}"] = stats[tag].p50 / stats[other].p50
                        rows.append(row)
                    print(f"{head:9s} n={n:<4d} {rt:12s} " + "  ".join(f"{k.removeprefix('form:')} {v.p50:8.3f} ms" for k, v in stats.items())
                          + "".join(f"  {k} FAILED {v}" for k, v in errors.items()), flush=True)
    return rows


def to_markdown(rows: list[dict]) -> str:
    fmt = lambda r, k: f"{r[k]:.3f}" if k in r else "—"  # noqa: E731
    ratio = lambda r, k: f"{r[k]:.2f}×" if k in r else "—"  # noqa: E731
    body = [[r["head"], str(r["instances"]), r["runtime"], r["form"], fmt(r, "deploy_ms"), fmt(r, "as_written_ms"), fmt(r, "static_ms"),
             ratio(r, "deploy_vs_as_written"), ratio(r, "deploy_vs_static"), f"{r['cov']:.2f}"] for r in rows]
    return md_table(["head", "instances", "runtime", "deploy form", "form ms (one graph)", "as written ms (graph per count)",
                     "static weights ms", "form / as written", "form / static", "worst CoV of the repeats"], body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", nargs="*", default=list(HEADS), choices=list(HEADS))
    ap.add_argument("--counts", nargs="*", type=int, default=[0, 1, 10, 50, 100])
    ap.add_argument("--runtimes", nargs="*")
    ap.add_argument("--threads", type=int, default=1, help="threads for every runtime (default 1: least noise on shared machines)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.2)
    ap.add_argument("--json", help="write the rows here (benchmarks/results/heads.json)")
    ap.add_argument("--markdown", help="write the table here (benchmarks/results/heads.md)")
    args = ap.parse_args()
    t0, load = time.time(), os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    rows = run(args)
    load = max(load, os.getloadavg()[0])
    md = to_markdown(rows)
    print()
    print(md)
    note = (f"{machine()}; threads={args.threads}; medians of {args.repeats} interleaved repeats; load average {load:.1f} "
            f"at the start or end (other work on the machine: a CoV above ~0.1 marks a row whose ratio is noise-bound); "
            f"zoo sizes: CondInst 1×8×100×136 mask features (169 params per instance), DyCo3D 50 000 points × 16 (337 params per instance)")
    print(f"\n{note}; {time.time() - t0:.0f} s")
    write_outputs(args, md + "\n\n" + note, {"threads": args.threads, "load_average": load, "versions": versions(), "rows": rows})


if __name__ == "__main__":
    main()
