"""What TensorRT's ONNX parser will refuse, found statically, before a build (no tensorrt import).

Rules come from onnx-tensorrt's operator support matrix for each release (docs/operators.md on the
8.6-GA and 10.1-GA branches) and its importers: the restrictions that bite the layers polyexport
converts are convolution weights computed at run time, the batch folded into a Conv's `group`,
INT64 shape arithmetic, Resize modes, and inputs that must be build-time constants.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx

VERSIONS = ("8.6", "10")  # JetPack 5 ships TensorRT 8.5/8.6; JetPack 6 ships 10.x
MAX_OPSET = {"8.6": 17, "10": 20}
MIN_OPSET = {"8.6": 7, "10": 9}

_UNSUPPORTED_COMMON = {
    "Bernoulli", "BitShift", "BlackmanWindow", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det",
    "DynamicQuantizeLinear", "HammingWindow", "HannWindow", "MatMulInteger", "MaxRoiPool", "MaxUnpool",
    "MelWeightMatrix", "Multinomial", "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement",
    "OptionalHasElement", "QLinearConv", "QLinearMatMul", "STFT", "SequenceAt", "SequenceConstruct",
    "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength", "SequenceMap",
    "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringNormalizer", "TfIdfVectorizer", "Unique",
}
UNSUPPORTED = {
    "8.6": _UNSUPPORTED_COMMON | {"Hardmax"},
    "10": _UNSUPPORTED_COMMON | {"AffineGrid", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "Col2Im",
                                 "CenterCropPad", "ImageDecoder", "RegexFullMatch", "StringConcat", "StringSplit"},
}
RESIZE_COORD = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
RESIZE_MODE = {"nearest", "linear"}
RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
#: (op, input index) that the parser needs as a build-time constant
CONSTANT_INPUTS = {("Slice", 3): "axes", ("Squeeze", 1): "axes", ("Unsqueeze", 1): "axes", ("TopK", 1): "K",
                   ("CumSum", 1): "axis", ("ReduceSum", 1): "axes", ("OneHot", 1): "depth"}


@dataclass
class Finding:
    severity: str  # "error" (the parse or build fails) | "warning" (works, with a cost) | "info"
    rule: str
    node: str
    op: str
    message: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            v = onnx.helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def lint_tensorrt(model: onnx.ModelProto | str, version: str = "8.6") -> list[Finding]:
    """Findings for `model` against TensorRT `version` ("8.6" or "10"), most severe first."""
    if version not in VERSIONS:
        raise ValueError(f"TensorRT version {version!r}: choose one of {VERSIONS}")
    if isinstance(model, str):
        model = onnx.load(model)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - the lint still runs on what it has
        pass
    g = model.graph
    constants = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    types = {v.name: v.type.tensor_type for v in [*g.value_info, *g.input, *g.output]}
    out: list[Finding] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not MIN_OPSET[version] <= opset <= MAX_OPSET[version]:
        out.append(Finding("error", "opset", "", "", f"opset {opset}: TensorRT {version} parses opsets {MIN_OPSET[version]}–{MAX_OPSET[version]} (re-export with --opset {min(max(opset, MIN_OPSET[version]), MAX_OPSET[version])})"))

    batch_dynamic = any(i.type.tensor_type.shape.dim and i.type.tensor_type.shape.dim[0].dim_param for i in g.input)
    for node in g.node:
        name, op = node.name or (node.output[0] if node.output else "?"), node.op_type
        if node.domain not in ("", "ai.onnx"):
            out.append(Finding("error", "custom-op", name, op, f"custom domain '{node.domain}': needs a TensorRT plugin"))
            continue
        if op in UNSUPPORTED[version]:
            out.append(Finding("error", "unsupported-op", name, op, f"{op} is not supported by TensorRT {version}'s ONNX parser"))
        if op in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] not in constants:
            group = _attr(node, "group", 1)
            x_shape = types.get(node.input[0])
            first = x_shape.shape.dim[0].dim_value if x_shape is not None and x_shape.shape.dim else 0
            if group > 1 and first == 1:
                out.append(Finding("error", "batch-in-group", name, op,
                                   f"per-sample weights with the batch folded into group={group}: the engine runs only the exported batch size"
                                   + (" (and the graph has a dynamic batch axis)" if batch_dynamic else "")))
            out.append(Finding("warning", "dynamic-conv-weights", name, op,
                               "convolution weights computed at run time: rejected by TensorRT's parser before 8.5; accepted since as a kernel "
                               "input with a build-time-constant shape, without weight-specialised tactics (use a constant-weight deploy form)"))
        if op == "Resize":
            mode, coord = _attr(node, "mode", "nearest"), _attr(node, "coordinate_transformation_mode", "half_pixel")
            nearest = _attr(node, "nearest_mode", "round_prefer_floor")
            if mode not in RESIZE_MODE:
                out.append(Finding("error", "resize-mode", name, op, f"Resize mode '{mode}' (TensorRT supports {sorted(RESIZE_MODE)})"))
            if coord not in RESIZE_COORD:
                out.append(Finding("error", "resize-coordinates", name, op, f"coordinate_transformation_mode '{coord}' is not supported"))
            if mode == "nearest" and nearest not in RESIZE_NEAREST:
                out.append(Finding("error", "resize-nearest", name, op, f"nearest_mode '{nearest}' is not supported"))
            if _attr(node, "antialias", 0):
                out.append(Finding("error", "resize-antialias", name, op, "antialiasing is not supported"))
        for (cop, idx), what in CONSTANT_INPUTS.items():
            if op == cop and len(node.input) > idx and node.input[idx] and node.input[idx] not in constants:
                out.append(Finding("error", "needs-constant", name, op, f"{op}'s `{what}` must be a build-time constant"))
        if version == "8.6":
            for o in node.output:
                t = types.get(o)
                if t is not None and t.elem_type == onnx.TensorProto.INT64 and op not in ("Shape", "Constant"):
                    out.append(Finding("info", "int64", name, op, "INT64 tensor: TensorRT 8.6 casts it to INT32 (values beyond ±2³¹ clamp)"))
                    break
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(out, key=lambda f: order[f.severity])
