"""How good a witness each zoo model is for whole-model parity: does its output depend on its input?

Parity allows 1e-4 of the output's scale (fp32). A model whose output moves by less than that between two random
inputs cannot be told, by parity, from one that ignores its input: a deploy form that mixed up samples or computed
from the wrong activations would still "match". For each zoo model as the tests build it (zoo.instantiate: seeded
random weights and BN statistics), this prints
- input sensitivity: max |y(a) − y(b)| / max |y(a)| for two seeded random inputs (the smallest over outputs),
- the deploy form's distance from the reference, both run in float64: what is left is the fp32 rounding of the
  weights the conversion computed (BN folded, kernels regrouped: ~1e-7 each) as the model carries it to its output,
  so a model that amplifies small differences shows up here (the well-conditioned ones leave ~1e-8),
- the reference's own fp32 error against fp64 (the noise floor parity allows for).

    python benchmarks/witness.py --markdown benchmarks/results/witness.md
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))

from common import machine, md_table, write_outputs  # noqa: E402

from polyexport import zoo  # noqa: E402
from polyexport.convert import convert  # noqa: E402
from polyexport.outputs import flatten_outputs  # noqa: E402


def _inputs(entry, seed: int) -> list[torch.Tensor]:
    if entry.inputs:
        return [torch.from_numpy(a) for a in zoo.example_inputs(entry, seed=seed, test=True)]
    shape = entry.test_shape or entry.input_shape
    return [torch.randn(*shape, generator=torch.Generator().manual_seed(seed))]


def measure(name: str) -> dict:
    entry = zoo.get(name)
    model = zoo.instantiate(name, seed=0)
    deployed, _ = convert(model, "onnxruntime")
    a, b = _inputs(entry, 1), _inputs(entry, 2)
    with torch.no_grad():
        ya, yb = flatten_outputs(model(*[t.clone() for t in a])), flatten_outputs(model(*[t.clone() for t in b]))
        sens = min(float((p - q).abs().max() / p.abs().max()) for p, q in zip(ya, yb)
                   if p.shape == q.shape and p.abs().max() > 0)
        ref64 = flatten_outputs(model.double()(*[t.double() if t.is_floating_point() else t for t in a]))
        dep64 = flatten_outputs(deployed.double()(*[t.double() if t.is_floating_point() else t for t in a]))
        scale = [float(r.abs().max()) or 1.0 for r in ref64]
        exact = max(float((r - d).abs().max()) / s for r, d, s in zip(ref64, dep64, scale))
        floor = max(float((p.double() - r).abs().max()) / s for p, r, s in zip(ya, ref64, scale))
    return {"model": name, "sensitivity": sens, "fp64_deploy_vs_reference": exact, "fp32_vs_fp64": floor, "scale": max(scale)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.time()
    rows = [measure(n) for n in (args.models or [n for n in zoo.names() if not n.startswith("test_")])]
    body = [[r["model"], f"{r['sensitivity']:.1e}", "**weak**" if r["sensitivity"] < 1e-3 else "", f"{r['fp64_deploy_vs_reference']:.1e}",
             f"{r['fp32_vs_fp64']:.1e}", f"{r['scale']:.3g}"] for r in rows]
    md = md_table(["model", "input sensitivity (two random inputs)", "witness (< 1e-3)", "deploy vs reference, both run in fp64",
                   "reference fp32 vs fp64", "output scale"], body)
    md += (f"\n\n{machine()}; zoo.instantiate(seed=0), test shapes, deploy forms in the preferred order for ONNX Runtime, "
           f"BN folded; {time.time() - t0:.0f} s")
    print(md)
    write_outputs(args, md, {"rows": rows})


if __name__ == "__main__":
    main()
